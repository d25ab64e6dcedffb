"""Multilingual LibriSpeech (OpenSLR SLR94): `mls_<language>[_opus]/<split>/audio/<spk>/<book>/*`.

`root` holds one folder per language as the archives unpack (`mls_german_opus/`, `mls_french/`
...). Each utterance is a whole file (`end` empty). `segments.txt` gives the position of each
utterance in the original LibriVox recording, not in our file, so it is not needed here.
"""

from __future__ import annotations

from pathlib import Path

from fedspeech.data.corpora.common import CorpusLayoutError, rows_with_durations, whole_file_row
from fedspeech.data.download import Archive, fetch_and_extract
from fedspeech.data.manifest import CorpusRows, Rejection

LANGUAGES = ("english", "german", "dutch", "french", "spanish", "italian", "portuguese", "polish")
SPLITS = ("train", "dev", "test")
BASE_URL = "https://dl.fbaipublicfiles.com/mls"
_GENDER = {"F": "female", "M": "male"}


def archive(language: str, opus: bool = True) -> Archive:
    """SLR94 archive of one language. OpenSLR publishes no checksums for MLS, so the download
    is verified against the size the server announces (Content-Length) and by gzip's own CRC
    while extracting."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown MLS language {language!r}; available: {list(LANGUAGES)}")
    return Archive(f"{BASE_URL}/mls_{language}{'_opus' if opus else ''}.tar.gz")


def read_metainfo(path: Path) -> dict[str, str]:
    """metainfo.txt (`SPEAKER | GENDER | PARTITION | ...`, one header line) -> speaker -> gender."""
    genders: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 2 and fields[1].upper() in _GENDER:
            genders[fields[0]] = _GENDER[fields[1].upper()]
    return genders


def _language_dirs(root: Path, languages: list[str] | None, opus: bool | None) -> dict[str, Path]:
    """Language -> folder; with opus=None the opus variant is used where both are present."""
    found: dict[str, Path] = {}
    for folder in sorted(root.glob("mls_*")):
        parts = folder.name.split("_")
        is_opus = len(parts) == 3 and parts[2] == "opus"
        if not folder.is_dir() or parts[1] not in LANGUAGES or not (len(parts) == 2 or is_opus):
            continue
        if opus is not None and is_opus != opus:
            continue
        if parts[1] not in found or is_opus:
            found[parts[1]] = folder
    if languages is None:
        if not found:
            raise CorpusLayoutError(f"{root} holds no MLS language folder (expected e.g. "
                                    "`mls_german_opus/` with `train/ dev/ test/ metainfo.txt`)")
        return found
    missing = [lang for lang in languages if lang not in found]
    if missing:
        raise CorpusLayoutError(f"MLS languages {missing} not found under {root} (expected "
                                f"folders like `mls_{missing[0]}_opus/`); present: "
                                f"{sorted(found) or 'none'} (set download=true to fetch them)")
    return {lang: found[lang] for lang in languages}


def _read_transcripts(path: Path, split_dir: Path, ext: str,
                      rejected: list[Rejection]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        utt, sep, text = line.partition("\t")
        parts = utt.split("_")
        book = parts[1] if len(parts) > 1 else ""
        audio = split_dir / "audio" / parts[0] / book / f"{utt}{ext}"
        if not sep or len(parts) != 3:
            rejected.append(Rejection(utt, str(audio), f"malformed transcript line: "
                                      f"{path}:{number} (expected `<spk>_<book>_<seg>\\t<text>`)"))
        elif utt in texts:
            rejected.append(Rejection(utt, str(audio),
                                      f"duplicate transcript line: {path}:{number}"))
        else:
            texts[utt] = text
    return texts


def _read_language(language: str, folder: Path, rejected: list[Rejection]) -> list[dict]:
    ext = ".opus" if folder.name.endswith("_opus") else ".flac"
    metainfo = folder / "metainfo.txt"
    genders = read_metainfo(metainfo) if metainfo.is_file() else {}
    splits = [s for s in SPLITS if (folder / s).is_dir()]
    if not splits:
        raise CorpusLayoutError(f"{folder} has none of the split folders {list(SPLITS)}")
    pending = []
    for split in splits:
        split_dir = folder / split
        audio_files = {p.stem: p for p in (split_dir / "audio").glob(f"*/*/*{ext}")}
        trans = split_dir / "transcripts.txt"
        texts = _read_transcripts(trans, split_dir, ext, rejected) if trans.is_file() else {}
        for utt in sorted(set(audio_files) - set(texts)):
            why = f"not in {trans}" if trans.is_file() else f"{trans} missing"
            rejected.append(Rejection(utt, str(audio_files[utt]), f"no transcript: {why}"))
        for utt, raw in texts.items():
            speaker, book, _ = utt.split("_")
            audio = audio_files.get(utt, split_dir / "audio" / speaker / book / f"{utt}{ext}")
            row = whole_file_row(utt, audio, raw, speaker, split, rejected,
                                 gender=genders.get(speaker, ""), language=language, book=book)
            if row is not None:
                pending.append(row)
    return pending


def read_corpus(root: str | Path, languages: list[str] | None = None, opus: bool | None = None,
                verify: str = "tail", num_workers: int = 4) -> CorpusRows:
    """Read MLS languages into manifest rows with a `language` column (+ rejections).

    `languages` defaults to every `mls_<language>[_opus]` folder in `root`; `opus` picks the
    variant (None: opus where present, else flac).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CorpusLayoutError(f"MLS root {root} does not exist; expected a folder holding "
                                "`mls_<language>_opus/` folders (or set download=true)")
    rejected: list[Rejection] = []
    pending: list[dict] = []
    for language, folder in _language_dirs(root, languages, opus).items():
        pending.extend(_read_language(language, folder, rejected))
    return rows_with_durations(pending, rejected, verify, num_workers, "MLS audio")


def download(root: str | Path, languages: list[str], opus: bool = True, keep_archives: bool = True,
             progress: bool = True) -> Path:
    """Fetch MLS languages into `root` (resumable; size-verified, see `archive`)."""
    root = Path(root).expanduser().resolve()
    if not languages:
        raise ValueError(f"name the MLS languages to download, from {list(LANGUAGES)}")
    archives = [archive(lang, opus) for lang in languages]  # validate every name first
    for item in archives:
        fetch_and_extract(item, root / ".archives", root, keep_archive=keep_archives,
                          progress=progress)
    return root
