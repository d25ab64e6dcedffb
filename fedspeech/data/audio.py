"""Decoding utterances to 16 kHz mono float32, with a per-process cache.

soundfile (libsndfile) reads flac, wav, NIST sphere, ogg/opus and mp3; segments are read by frame
offsets so a 20-minute TED talk is never decoded whole for one 5-second utterance.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000


class AudioError(RuntimeError):
    """An utterance that cannot be decoded (missing, corrupt, or empty segment)."""


def load_audio(path: str, start: float = 0.0, end: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Return mono float32 samples of [start, end) seconds at `sample_rate`."""
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            first = int(round(start * sr))
            last = f.frames if end is None or (isinstance(end, float) and math.isnan(end)) \
                else min(int(round(end * sr)), f.frames)
            if first > 0:
                f.seek(first)
            data = f.read(max(last - first, 0), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise AudioError(f"cannot decode {path}: {err}") from err
    if data.shape[0] == 0:
        raise AudioError(f"empty segment {path} [{start}, {end})")
    mono = data.mean(axis=1)
    if sr != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), sr, sample_rate).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


class AudioCache:
    """LRU of decoded utterances (int16 to halve memory), bounded in megabytes.

    A worker trains several clients over many rounds; with the cache each utterance is decoded once
    per worker rather than once per epoch.
    """

    def __init__(self, max_mb: float = 1024) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, path: str, start: float, end: float | None) -> np.ndarray:
        key = (path, float(start), None if end is None or end != end else float(end))
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            return item.astype(np.float32) / 32767.0
        audio = load_audio(path, start, key[2])
        stored = np.clip(audio * 32767.0, -32768, 32767).astype(np.int16)
        if stored.nbytes <= self.max_bytes:
            self._items[key] = stored
            self._bytes += stored.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return stored.astype(np.float32) / 32767.0  # same values on a hit and on a miss
