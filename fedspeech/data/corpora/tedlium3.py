"""TED-LIUM 3 (OpenSLR SLR51): whole talks in NIST sphere + one `stm` per talk with segment times.

`root` is the `TEDLIUM_release-3/` folder. Each stm line (`talk channel speaker start end
<label> text`) becomes one utterance over its talk's audio, `start`/`end` in seconds. Utterance
ids are `<talk>_<start>_<end>` with the times exactly as the stm writes them, which is the id
format of the published TED-LIUM 3 federated client map (so that map joins on `id`).
"""

from __future__ import annotations

import re
from pathlib import Path

from fedspeech.data.corpora.common import (AudioInfo, CorpusLayoutError, probe_many,
                                           require_dir)
from fedspeech.data.download import Archive, fetch_and_extract
from fedspeech.data.manifest import CorpusRows, Rejection
from fedspeech.data.text import normalize_text

# sha256 of the OpenSLR SLR51 archive (as pinned by torchaudio's TEDLIUM dataset).
ARCHIVE = Archive("https://www.openslr.org/resources/51/TEDLIUM_release-3.tgz",
                  sha256="ad1e454d14d1ad550bc2564c462d87c7a7ec83d4dc2b9210f22ab4973b9eccdb")
LAYOUTS = {"legacy": ("train", "dev", "test"), "speaker-adaptation": ("train", "dev", "test"),
           "data": None}
IGNORE = "ignore_time_segment_in_scoring"
# stm times are rounded to 10 ms; a segment may end this far past the audio and still be read
END_TOLERANCE = 0.05
_MARKUP = re.compile(r"<[^>\s]*>|\{[^}\s]*\}|\[[^\]\s]*\]")  # <unk>, {NOISE}, [laughter]
_CLITIC = re.compile(r"(\w) '(\w)")  # TED-LIUM splits `it's` as `it 's`


def normalize_ted_text(text: str) -> str:
    """TED-LIUM transcript -> scoring text: markup tokens dropped, split clitics re-joined."""
    text = _MARKUP.sub(" ", text)
    text = _CLITIC.sub(r"\1'\2", " ".join(text.split()))
    return normalize_text(text)


def _gender(label: str) -> str:
    """`<o,f0,male>` -> `male`; anything else -> ``."""
    parts = label.strip("<>").split(",")
    return parts[2] if len(parts) >= 3 and parts[2] in ("male", "female") else ""


def _split_dirs(root: Path, layout: str) -> list[tuple[str, Path]]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown TED-LIUM 3 layout {layout!r}; choose one of {list(LAYOUTS)}")
    if layout == "data":
        return [("train", require_dir(root / "data", "TED-LIUM 3 layout 'data'"))]
    base = require_dir(root / layout, f"TED-LIUM 3 layout {layout!r}")
    return [(split, require_dir(base / split, f"TED-LIUM 3 {layout}/{split}"))
            for split in LAYOUTS[layout]]


def _parse_stm(stm: Path, split: str, audio: Path, rejected: list[Rejection]) -> list[dict]:
    """One talk's stm -> candidate rows (times not yet checked against the audio)."""
    rows = []
    seen: set[str] = set()
    lines = stm.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or line.startswith(";;"):
            continue
        where = f"{stm.name}:{number}"
        if len(fields) < 5:
            rejected.append(Rejection(f"{stm.stem}:{number}", str(audio),
                                      f"malformed stm line: {where} has {len(fields)} fields"))
            continue
        talk, _, speaker, start_s, end_s, *rest = fields
        label = rest[0] if rest and rest[0].startswith("<") and rest[0].endswith(">") else ""
        words = rest[1:] if label else rest
        raw = " ".join(words)
        if raw == IGNORE or speaker == "inter_segment_gap":
            continue  # not speech to score: TED-LIUM marks gaps this way
        utt = f"{talk}_{start_s}_{end_s}"
        try:
            start, end = float(start_s), float(end_s)
        except ValueError:
            rejected.append(Rejection(utt, str(audio), f"bad stm times: {where} has unparsable "
                                      f"start/end {start_s!r} {end_s!r}"))
            continue
        if not (0 <= start < end):
            rejected.append(Rejection(utt, str(audio), f"bad stm times: {where} start {start_s} "
                                      f"end {end_s} (need 0 <= start < end)"))
            continue
        if utt in seen:
            rejected.append(Rejection(utt, str(audio), f"duplicate segment: {where}"))
            continue
        seen.add(utt)
        text = normalize_ted_text(raw)
        if not text:
            rejected.append(Rejection(utt, str(audio), f"empty transcript: {where}"))
            continue
        rows.append({"id": utt, "audio": str(audio), "start": start, "end": end,
                     "speaker": speaker, "text": text, "split": split,
                     "gender": _gender(label), "talk": talk})
    return rows


def read_corpus(root: str | Path, layout: str = "legacy", verify: str = "tail",
                num_workers: int = 4) -> CorpusRows:
    """Read TED-LIUM 3 segments into manifest rows (+ rejections with reasons).

    `layout`: "legacy" (`legacy/{train,dev,test}`), "speaker-adaptation"
    (`speaker-adaptation/{train,dev,test}`) or "data" (`data/`, every talk as train).
    `speaker` is the stm speaker field (equal to the talk id except for some legacy dev/test
    segments by other speakers); `talk` keeps the talk id. `ignore_time_segment_in_scoring`
    lines are skipped by design.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CorpusLayoutError(f"TED-LIUM 3 root {root} does not exist; expected the "
                                "`TEDLIUM_release-3/` folder holding `legacy/{train,dev,test}/"
                                "{sph,stm}/` (or set download=true)")
    rejected: list[Rejection] = []
    pending: list[dict] = []
    talks: list[Path] = []
    for split, split_dir in _split_dirs(root, layout):
        stm_dir = require_dir(split_dir / "stm", f"TED-LIUM 3 {split} transcripts")
        sph_dir = require_dir(split_dir / "sph", f"TED-LIUM 3 {split} audio")
        stms = {p.stem: p for p in stm_dir.glob("*.stm")}
        sphs = {p.stem: p for p in sph_dir.glob("*.sph")}
        if not stms:
            raise CorpusLayoutError(f"no .stm files in {stm_dir}")
        for talk in sorted(set(sphs) - set(stms)):
            rejected.append(Rejection(talk, str(sphs[talk]), f"no transcript: {talk}.stm missing "
                                      f"in {stm_dir}"))
        for talk, stm in sorted(stms.items()):
            audio = sphs.get(talk, sph_dir / f"{talk}.sph")
            pending.extend(_parse_stm(stm, split, audio, rejected))
            talks.append(audio)

    infos = dict(zip(talks, probe_many(talks, verify, num_workers, "TED-LIUM 3 talks")))
    rows = []
    for row in pending:
        info = infos[Path(row["audio"])]
        if not isinstance(info, AudioInfo):
            rejected.append(Rejection(row["id"], row["audio"], info))
        elif row["end"] > info.duration + END_TOLERANCE:
            rejected.append(Rejection(row["id"], row["audio"], f"bad stm times: segment ends at "
                                      f"{row['end']} s, beyond the audio ({info.duration:.3f} s)"))
        else:
            duration = round(min(row["end"], info.duration) - row["start"], 6)
            rows.append({**row, "duration": duration})
    return CorpusRows(rows=rows, rejected=rejected)


def download(root: str | Path, keep_archive: bool = True, progress: bool = True) -> Path:
    """Fetch SLR51 into `root` (the `TEDLIUM_release-3/` folder), sha256-verified, resumable.

    The archive (~51 GB) is kept in `root/.archives/`; its top folder is stripped so the
    layouts land directly in `root`.
    """
    root = Path(root).expanduser().resolve()
    return fetch_and_extract(ARCHIVE, root / ".archives", root, strip_components=1,
                             keep_archive=keep_archive, progress=progress)
