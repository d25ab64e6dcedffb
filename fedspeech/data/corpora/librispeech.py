"""LibriSpeech (OpenSLR SLR12): `<subset>/<speaker>/<chapter>/*.flac`, a `.trans.txt` per chapter.

`root` is the `LibriSpeech/` folder. Each utterance is a whole FLAC file, so `end` is empty.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from fedspeech.data.corpora.common import (CorpusLayoutError, require_dir, rows_with_durations,
                                           whole_file_row)
from fedspeech.data.download import Archive, fetch_and_extract
from fedspeech.data.manifest import CorpusRows, Rejection

BASE_URL = "https://www.openslr.org/resources/12"
# md5 sums as published by OpenSLR for SLR12 (resources/12/md5sum.txt).
ARCHIVES: dict[str, Archive] = {
    name: Archive(f"{BASE_URL}/{name}.tar.gz", md5=md5) for name, md5 in {
        "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
        "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
        "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
        "test-other": "fb5a50374b501bb3bac4815ee91d3135",
        "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
        "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
        "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
    }.items()
}
SPLIT_PREFIXES = ("train", "dev", "test")
_UTT_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_GENDER = {"F": "female", "M": "male"}


def split_of(subset: str) -> str:
    """`train-clean-100` -> `train`; the split is the subset name's prefix."""
    prefix = subset.split("-", 1)[0]
    if prefix not in SPLIT_PREFIXES:
        raise ValueError(f"LibriSpeech subset {subset!r} does not start with one of "
                         f"{SPLIT_PREFIXES}")
    return prefix


def read_speakers(path: Path) -> dict[str, str]:
    """SPEAKERS.TXT (`ID | SEX | SUBSET | MINUTES | NAME`, `;` comments) -> speaker -> gender."""
    genders: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 2 and fields[1].upper() in _GENDER:
            genders[fields[0]] = _GENDER[fields[1].upper()]
    return genders


def _present_subsets(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name.split("-", 1)[0] in SPLIT_PREFIXES)


def _read_transcripts(path: Path, speaker: str, chapter: str,
                      rejected: list[Rejection], chapter_dir: Path) -> dict[str, str]:
    """One chapter's transcript file -> {utterance id: raw text}; bad lines become rejections."""
    texts: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        utt, _, text = line.strip().partition(" ")
        match = _UTT_ID.match(utt)
        audio = str(chapter_dir / f"{utt}.flac")
        if not match or match.group(1) != speaker or match.group(2) != chapter:
            rejected.append(Rejection(utt, audio, f"malformed transcript line: {path.name}:"
                                      f"{number} does not name an utterance of "
                                      f"{speaker}-{chapter}"))
        elif utt in texts:
            rejected.append(Rejection(utt, audio,
                                      f"duplicate transcript line: {path.name}:{number}"))
        else:
            texts[utt] = text
    return texts


def _chapter_dirs(subset_dir: Path) -> Iterable[tuple[str, str, Path]]:
    for speaker_dir in sorted(p for p in subset_dir.iterdir() if p.is_dir()):
        for chapter_dir in sorted(p for p in speaker_dir.iterdir() if p.is_dir()):
            yield speaker_dir.name, chapter_dir.name, chapter_dir


def read_corpus(root: str | Path, subsets: list[str] | None = None, verify: str = "tail",
                num_workers: int = 4) -> CorpusRows:
    """Read LibriSpeech subsets into manifest rows (+ rejections with reasons).

    `subsets` defaults to every `train-*`/`dev-*`/`test-*` folder under `root`. `verify` is
    passed to `probe_audio` ("header", "tail" or "decode").
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CorpusLayoutError(f"LibriSpeech root {root} does not exist; expected the "
                                "`LibriSpeech/` folder holding subset folders such as "
                                "`dev-clean/<speaker>/<chapter>/*.flac` (or set download=true)")
    present = _present_subsets(root)
    if subsets is None:
        subsets = present
        if not subsets:
            hint = " (it has a `LibriSpeech/` folder: point root there)" \
                if (root / "LibriSpeech").is_dir() else ""
            raise CorpusLayoutError(f"{root} holds no LibriSpeech subset folder (expected e.g. "
                                    f"`train-clean-100/`, `dev-clean/`, `test-clean/`){hint}")
    missing = [s for s in subsets if s not in present]
    if missing:
        raise CorpusLayoutError(f"LibriSpeech subsets {missing} not found under {root}; present: "
                                f"{present or 'none'} (set download=true to fetch them)")
    speakers_txt = root / "SPEAKERS.TXT"
    genders = read_speakers(speakers_txt) if speakers_txt.is_file() else {}

    rejected: list[Rejection] = []
    pending: list[dict] = []
    for subset in subsets:
        split = split_of(subset)
        subset_dir = require_dir(root / subset, f"LibriSpeech subset {subset}")
        for speaker, chapter, chapter_dir in _chapter_dirs(subset_dir):
            trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
            texts = _read_transcripts(trans, speaker, chapter, rejected, chapter_dir) \
                if trans.is_file() else {}
            flacs = {p.stem: p for p in chapter_dir.glob("*.flac")}
            for utt in sorted(set(flacs) - set(texts)):
                why = "no transcript: " + (f"{utt} not in {trans.name}" if trans.is_file()
                                           else f"{trans.name} missing")
                rejected.append(Rejection(utt, str(flacs[utt]), why))
            for utt, raw in texts.items():
                audio = flacs.get(utt, chapter_dir / f"{utt}.flac")
                row = whole_file_row(utt, audio, raw, speaker, split, rejected,
                                     gender=genders.get(speaker, ""), chapter=chapter)
                if row is not None:
                    pending.append(row)

    return rows_with_durations(pending, rejected, verify, num_workers, "LibriSpeech audio")


def download(root: str | Path, subsets: list[str], keep_archives: bool = True,
             progress: bool = True) -> Path:
    """Fetch SLR12 subsets into `root` (the `LibriSpeech/` folder); finished subsets are skipped.

    Archives are kept in `root/.archives/` (resumable, md5-verified); each archive's top
    `LibriSpeech/` folder is stripped so the subsets land directly in `root`.
    """
    root = Path(root).expanduser().resolve()
    unknown = [s for s in subsets if s not in ARCHIVES]
    if unknown:
        raise ValueError(f"unknown LibriSpeech subsets {unknown}; available: {sorted(ARCHIVES)}")
    for subset in subsets:
        fetch_and_extract(ARCHIVES[subset], root / ".archives", root, strip_components=1,
                          keep_archive=keep_archives, progress=progress)
    return root
