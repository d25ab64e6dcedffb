"""What every corpus reader needs: probing audio files and reporting layout errors clearly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import soundfile as sf
from tqdm import tqdm

from fedspeech.data.manifest import CorpusRows, Rejection
from fedspeech.data.text import normalize_text

TAIL_SECONDS = 0.1
VERIFY_MODES = ("header", "tail", "decode")


class CorpusLayoutError(FileNotFoundError):
    """The corpus folder is missing or is not laid out as the corpus ships."""


@dataclass(frozen=True)
class AudioInfo:
    duration: float
    samplerate: int
    frames: int


def probe_audio(path: str | Path, verify: str = "tail") -> AudioInfo:
    """Duration of an audio file, raising ValueError with a readable reason if it is unusable.

    `verify` trades time for certainty: "header" trusts the header; "tail" (default) also
    decodes the last 0.1 s, which catches truncated files (their header still claims the full
    length) at the cost of one seek and corrects the small overestimates of MP3 headers;
    "decode" decodes the whole file and reports the decoded length.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"audio file missing: {path}")
    try:
        with sf.SoundFile(path) as handle:
            frames, rate = handle.frames, handle.samplerate
            if frames <= 0 or rate <= 0:
                raise ValueError(f"empty audio: frames={frames}, rate={rate}")
            if verify == "tail":
                want = min(frames, max(1, int(TAIL_SECONDS * rate)))
                handle.seek(frames - want)
                got = len(handle.read(want))
                if got == 0:
                    raise ValueError(f"truncated audio: header says {frames} frames, nothing "
                                     f"decodable after frame {frames - want}")
                frames -= want - got
            elif verify == "decode":
                got = 0
                while block := len(handle.read(1 << 16)):
                    got += block
                if got < frames - max(int(TAIL_SECONDS * rate), frames // 50):
                    raise ValueError(f"truncated audio: header says {frames} frames, "
                                     f"decoded {got}")
                frames = got
    except (sf.LibsndfileError, RuntimeError, OSError, EOFError) as err:
        raise ValueError(f"unreadable audio: {type(err).__name__}: {err}") from err
    if frames <= 0:
        raise ValueError(f"empty audio: nothing decodable in {path.name}")
    return AudioInfo(duration=frames / rate, samplerate=rate, frames=frames)


def require_dir(path: Path, what: str) -> Path:
    """Raise CorpusLayoutError naming the expected folder if `path` is not a directory."""
    if not path.is_dir():
        raise CorpusLayoutError(f"{what}: expected a directory at {path}, found "
                                f"{'a file' if path.exists() else 'nothing'}")
    return path


def probe_many(paths: Sequence[str | Path], verify: str = "tail", num_workers: int = 4,
               desc: str = "probing audio") -> list[AudioInfo | str]:
    """Probe many files in threads (libsndfile releases the GIL); an error becomes its reason."""

    def one(path: str | Path) -> AudioInfo | str:
        try:
            return probe_audio(path, verify)
        except ValueError as err:
            return str(err)

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        return list(tqdm(pool.map(one, paths), total=len(paths), desc=desc, unit="file",
                         disable=len(paths) < 1000))


def whole_file_row(utt: str, audio: Path, raw_text: str, speaker: str, split: str,
                   rejected: list[Rejection], **attributes: object) -> dict | None:
    """The pending manifest row of an utterance that is a whole audio file (its duration comes
    from probing), or None with a Rejection when nothing is left of its text after normalising."""
    text = normalize_text(raw_text)
    if not text:
        rejected.append(Rejection(utt, str(audio), "empty transcript"))
        return None
    return {"id": utt, "audio": str(audio), "start": 0.0, "end": None, "speaker": speaker,
            "text": text, "split": split, **attributes}


def rows_with_durations(pending: list[dict], rejected: list[Rejection], verify: str, num_workers: int,
                        desc: str) -> CorpusRows:
    """Probe every pending row's audio: readable rows get `duration`, the others a Rejection."""
    rows = []
    for row, info in zip(pending, probe_many([r["audio"] for r in pending], verify, num_workers, desc)):
        if isinstance(info, AudioInfo):
            rows.append({**row, "duration": info.duration})
        else:
            rejected.append(Rejection(row["id"], row["audio"], info))
    return CorpusRows(rows=rows, rejected=rejected)
