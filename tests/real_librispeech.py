"""The real LibriSpeech sample in `../shared/data/real/`, as manifest rows for model tests."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from fedspeech.data.text import normalize_text

LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "LibriSpeech"


def shortest_rows(n: int = 2) -> pd.DataFrame:
    """The `n` shortest real utterances (2.1 s and 3.3 s for n=2) as manifest rows (skips without data)."""
    if not LIBRISPEECH.is_dir():
        pytest.skip(f"real sample data not found at {LIBRISPEECH}")
    import soundfile as sf

    records = []
    for trans in sorted(LIBRISPEECH.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            audio = trans.parent / f"{uid}.flac"
            records.append({"id": uid, "audio": str(audio), "start": 0.0, "end": math.nan,
                            "duration": sf.info(str(audio)).duration, "speaker": uid.split("-")[0],
                            "text": normalize_text(text), "split": "train"})
    return pd.DataFrame(records).sort_values(["duration", "id"]).head(n).reset_index(drop=True)
