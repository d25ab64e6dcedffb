"""The flat utterance manifest: the one table every later stage reads.

Corpus readers produce rows; this module validates them, writes them atomically and keeps a
`rejected.csv` beside the manifest, so that nothing a reader could not use disappears silently.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from fedspeech.files import atomic_write_with

REQUIRED_COLUMNS = ["id", "audio", "start", "end", "duration", "speaker", "text", "split"]
OPTIONAL_COLUMNS = ["gender", "age", "accent", "emotion", "language", "client_id"]
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Rejection:
    """One utterance or file a reader could not use, and why."""

    id: str
    audio: str
    reason: str


@dataclass
class CorpusRows:
    """What a corpus reader returns: usable rows and the rejected ones."""

    rows: list[dict]
    rejected: list[Rejection]


class ManifestError(ValueError):
    """A manifest that breaks the contract (missing column, bad split, duplicate id)."""


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Atomically (`fedspeech.files`): a reader never sees a half-written table."""
    atomic_write_with(path, lambda tmp: frame.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL))


def to_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows -> a validated frame with the contract's column order."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise ManifestError("the corpus reader produced no usable utterances")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"manifest rows lack required columns: {missing}")
    bad_split = sorted(set(frame["split"]) - set(SPLITS))
    if bad_split:
        raise ManifestError(f"unknown split values {bad_split}; allowed: {list(SPLITS)}")
    dup = frame["id"][frame["id"].duplicated()].unique()
    if len(dup):
        raise ManifestError(f"duplicate utterance ids, e.g. {list(dup[:5])}")
    extra = [c for c in frame.columns if c not in REQUIRED_COLUMNS]
    frame["id"] = frame["id"].astype(str)
    frame["speaker"] = frame["speaker"].astype(str)
    return frame[REQUIRED_COLUMNS + extra]


def write_manifest(corpus: CorpusRows, out_dir: str | Path, verbose: bool = True) -> Path:
    """Write `manifest.csv` and `rejected.csv` (always, possibly empty) into `out_dir`."""
    out_dir = Path(out_dir)
    frame = to_frame(corpus.rows)
    target = out_dir / "manifest.csv"
    _write_csv(frame, target)
    rejected = pd.DataFrame([asdict(r) for r in corpus.rejected], columns=["id", "audio", "reason"])
    _write_csv(rejected, out_dir / "rejected.csv")
    if verbose:
        hours = frame["duration"].sum() / 3600
        per_split = frame.groupby("split")["duration"].agg(["count", "sum"])
        print(f"manifest: {len(frame)} utterances, {hours:.2f} h, "
              f"{frame['speaker'].nunique()} speakers -> {target}")
        for split, row in per_split.iterrows():
            print(f"  {split:5s} {int(row['count']):7d} utts {row['sum'] / 3600:8.2f} h")
        if len(rejected):
            print(f"rejected: {len(rejected)} (reasons in {out_dir / 'rejected.csv'})")
            for reason, n in rejected["reason"].str.split(":").str[0].value_counts().items():
                print(f"  {n:6d}  {reason}")
    return target


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest, keeping ids and speakers as strings and empty `end` as NaN."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}; run `python -m fedspeech.dataset_preparation`")
    frame = pd.read_csv(path, dtype={"id": str, "speaker": str, "text": str, "client_id": str},
                        keep_default_na=False, na_values={"end": [""], "start": [""]})
    frame["text"] = frame["text"].fillna("")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path} lacks required columns: {missing}")
    return frame
