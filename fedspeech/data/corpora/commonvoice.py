"""Mozilla Common Voice: `<cv-corpus>/<locale>/clips/*.mp3` + `train.tsv`, `dev.tsv`, `test.tsv`.

`root` is the `cv-corpus-<version>/` folder or its `<locale>/` folder. The speaker is the contributor's `client_id`
(an anonymous hash), kept also as the `client_id` column, with gender, age and accent where the
contributor gave them. Common Voice is handed out only after accepting Mozilla's terms, so
`download` works from an archive the user obtained, never from a fixed URL.
"""

from __future__ import annotations

import csv
import urllib.parse
from pathlib import Path

from fedspeech.data.corpora.common import CorpusLayoutError, rows_with_durations
from fedspeech.data.download import (DownloadError, download_file, extract, extraction_marker,
                                     verify_file)
from fedspeech.data.manifest import CorpusRows, Rejection
from fedspeech.data.text import normalize_text

DEFAULT_SPLITS = {"train": "train", "dev": "dev", "test": "test"}
REQUIRED = ("client_id", "path", "sentence")
# a clip listed in several tsv files is kept once, in the first of these splits
_PRIORITY = ("test", "dev", "train")


def _gender(value: str) -> str:
    """v13 writes `male`/`female`; v17+ writes `male_masculine`/`female_feminine`."""
    value = value.strip().lower()
    for name in ("female", "male"):
        if value == name or value.startswith(name + "_"):
            return name
    return value


def read_tsv(path: Path) -> list[dict[str, str]]:
    """A Common Voice tsv as dicts; raises ValueError naming the file and any missing column."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise ValueError(f"{path} lacks required column(s) {missing}; it has {columns}")
        rows = []
        for number, row in enumerate(reader, 2):
            row["_line"] = str(number)
            rows.append(row)
        return rows


def locale_folder(root: Path, locale: str) -> Path:
    """`<root>/<locale>/`, or `root` itself when it is already that locale's folder."""
    if (root / locale).is_dir():
        return root / locale
    if (root / "clips").is_dir() or any(root.glob("*.tsv")):
        if root.name != locale:
            raise CorpusLayoutError(f"{root} is the Common Voice folder of locale {root.name!r}, "
                                    f"not of locale {locale!r}: set locale={root.name} or point "
                                    f"root at {root.parent / locale}")
        return root
    found = sorted(p.name for p in root.iterdir() if (p / "clips").is_dir()) if root.is_dir() else []
    raise CorpusLayoutError(f"Common Voice locale folder {root / locale} not found; expected "
                            f"`<cv-corpus>/{locale}/clips/*.mp3` with `train.tsv` etc. "
                            f"(locales present: {found or 'none'})")


def read_corpus(root: str | Path, locale: str = "en", splits: dict[str, str] | None = None,
                verify: str = "tail", num_workers: int = 4) -> CorpusRows:
    """Read one Common Voice locale into manifest rows (+ rejections with reasons).

    `splits` maps our split names to tsv file stems, e.g. `{train: validated, dev: dev,
    test: test}`; a clip in several of them is kept once (test before dev before train), so
    `validated` can serve as training data without leaking dev/test clips.
    """
    root = Path(root).expanduser().resolve()
    splits = dict(splits or DEFAULT_SPLITS)
    bad = sorted(set(splits) - set(_PRIORITY))
    if bad:
        raise ValueError(f"unknown split names {bad}; use train/dev/test")
    locale_dir = locale_folder(root, locale)
    clips = locale_dir / "clips"
    if not clips.is_dir():
        raise CorpusLayoutError(f"{clips} not found: the locale folder must hold `clips/`")

    rejected: list[Rejection] = []
    pending: list[dict] = []
    seen: dict[str, str] = {}
    for split in sorted(splits, key=_PRIORITY.index):
        tsv = locale_dir / f"{splits[split]}.tsv"
        if not tsv.is_file():
            raise CorpusLayoutError(f"{tsv} not found (split {split!r}); tsv files present: "
                                    f"{sorted(p.name for p in locale_dir.glob('*.tsv'))}")
        for row in read_tsv(tsv):
            name = (row.get("path") or "").strip()
            utt = Path(name).stem
            audio = clips / name
            where = f"{tsv.name}:{row['_line']}"
            if None in row or not name or not (row.get("client_id") or "").strip():
                rejected.append(Rejection(utt or where, str(audio), f"malformed tsv row: {where}"))
                continue
            if utt in seen:
                rejected.append(Rejection(utt, str(audio), f"duplicate clip: {where} repeats a "
                                          f"clip already in {seen[utt]}"))
                continue
            seen[utt] = where
            text = normalize_text(row.get("sentence") or "")
            if not text:
                rejected.append(Rejection(utt, str(audio), f"empty transcript: {where}"))
                continue
            accent = row.get("accents", row.get("accent", "")) or ""
            pending.append({"id": utt, "audio": str(audio), "start": 0.0, "end": None,
                            "speaker": row["client_id"].strip(), "text": text, "split": split,
                            "client_id": row["client_id"].strip(),
                            "gender": _gender(row.get("gender") or ""),
                            "age": (row.get("age") or "").strip(), "accent": accent.strip(),
                            "language": (row.get("locale") or locale).strip() or locale})

    return rows_with_durations(pending, rejected, verify, num_workers, "Common Voice clips")


def download(root: str | Path, archive: str | None = None, md5: str | None = None,
             sha256: str | None = None, progress: bool = True) -> Path:
    """Verify and extract a Common Voice archive the user obtained, into `root`.

    `archive` is a local path or an http(s) URL (such as the time-limited link Mozilla sends
    after the terms are accepted). The archive's top folder (`cv-corpus-<version>/`) is
    stripped, so `root` becomes that folder. A URL is downloaded resumably into
    `root/.archives/`; a local file is never moved or changed.
    """
    if not archive:
        raise ValueError(
            "Common Voice cannot be downloaded automatically: Mozilla hands it out only after "
            "you accept its terms. Download the archive of your locale (e.g. "
            "cv-corpus-13.0-2023-03-09-en.tar.gz) yourself, then pass its path or the download "
            "link you received: dataset.downloader.archive=/path/to/archive.tar.gz "
            "(optionally dataset.downloader.sha256=...).")
    root = Path(root).expanduser().resolve()
    scheme = urllib.parse.urlparse(archive).scheme
    if scheme in ("http", "https"):
        name = Path(urllib.parse.urlparse(archive).path).name or "commonvoice.tar.gz"
        if extraction_marker(name, root).exists():
            print(f"{name}: already extracted into {root}")
            return root
        path = download_file(archive, root / ".archives" / name, md5=md5, sha256=sha256,
                             progress=progress)
        return extract(path, root, strip_components=1, progress=progress)
    path = Path(archive).expanduser()
    if not path.is_file():
        raise DownloadError(f"Common Voice archive {path} does not exist")
    if extraction_marker(path, root).exists():
        print(f"{path.name}: already extracted into {root}")
        return root
    verify_file(path, md5, sha256, progress=progress, quarantine=False)
    return extract(path, root, strip_components=1, progress=progress, quarantine=False)
