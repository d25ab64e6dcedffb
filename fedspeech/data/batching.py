"""Duration-bucketed batches of utterances.

Batches are filled up to a budget of *padded* audio seconds (batch size x longest utterance), after
sorting utterances by duration inside shuffled buckets: little padding, a stable memory peak, and
still a different batch order every epoch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from fedspeech.data.audio import SAMPLE_RATE, AudioCache, AudioError

log = logging.getLogger(__name__)

ATTRIBUTE_COLUMNS = ("gender", "age", "accent", "emotion", "language")


@dataclass
class Batch:
    """One padded batch; models take what they need from it."""

    ids: list[str]
    speakers: list[str]
    texts: list[str]
    audio: torch.Tensor                 # (B, T) float32 at 16 kHz, zero padded
    audio_lens: torch.Tensor            # (B,) valid samples
    attributes: list[dict[str, str]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return float(self.audio_lens.sum()) / SAMPLE_RATE

    @property
    def padded_seconds(self) -> float:
        return self.audio.numel() / SAMPLE_RATE

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "Batch":
        self.audio = self.audio.to(device, non_blocking=True)
        self.audio_lens = self.audio_lens.to(device, non_blocking=True)
        return self


def duration_batches(durations: Sequence[float], batch_seconds: float, shuffle: bool,
                     seed: int = 0, bucket_size: int = 64,
                     max_utterances: int | None = None) -> list[list[int]]:
    """Index lists whose padded length (n x max duration) stays within `batch_seconds`
    (and at most `max_utterances` long, when given).

    Utterances longer than the budget get a batch of their own rather than being dropped.
    """
    durations = np.asarray(durations, dtype=float)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(durations)) if shuffle else np.arange(len(durations))
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket_size):
        bucket = order[start:start + bucket_size]
        bucket = bucket[np.argsort(durations[bucket], kind="stable")]
        current: list[int] = []
        longest = 0.0
        for idx in bucket:
            d = durations[idx]
            full = max_utterances is not None and len(current) >= max_utterances
            if current and (full or max(longest, d) * (len(current) + 1) > batch_seconds):
                batches.append(current)
                current, longest = [], 0.0
            current.append(int(idx))
            longest = max(longest, d)
        if current:
            batches.append(current)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def real_fraction(durations: Sequence[float], batches: list[list[int]]) -> float:
    """Real / padded audio over `batches` (1.0 = no padding): what duration bucketing buys."""
    durations = np.asarray(durations, dtype=float)
    real = sum(float(durations[b].sum()) for b in batches)
    padded = sum(float(durations[b].max()) * len(b) for b in batches)
    return real / padded if padded else 1.0


class UtteranceLoader:
    """Iterates duration-bucketed `Batch`es over manifest rows, decoding through an AudioCache."""

    def __init__(self, rows: pd.DataFrame, cache: AudioCache, batch_seconds: float,
                 shuffle: bool, seed: int = 0, max_utterances: int | None = None) -> None:
        if len(rows) == 0:
            raise ValueError("no utterances to load")
        self.rows = rows.reset_index(drop=True)
        self.cache = cache
        self.batch_seconds = batch_seconds
        self.shuffle = shuffle
        self.seed = seed
        self.max_utterances = max_utterances
        self.epoch = 0
        #: utterances that could not be decoded: id -> reason (skipped, never silently)
        self.skipped: dict[str, str] = {}
        self.attribute_columns = [c for c in ATTRIBUTE_COLUMNS if c in self.rows.columns]

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else epoch
        return duration_batches(self.rows["duration"].to_numpy(), self.batch_seconds,
                                self.shuffle, seed=self.seed * 100_003 + epoch,
                                max_utterances=self.max_utterances)

    def __len__(self) -> int:
        return len(self.plan())

    def __iter__(self) -> Iterator[Batch]:
        plan = self.plan()
        self.epoch += 1
        for idx in plan:
            batch = self._make_batch(idx)
            if batch is not None:
                yield batch
        if len(self.skipped) == len(self.rows):
            raise AudioError(f"none of the {len(self.rows)} utterances could be decoded, e.g. "
                             f"{next(iter(self.skipped.values()))}")

    def _decode(self, row) -> np.ndarray | None:  # noqa: ANN001 (a pandas row tuple)
        if row.id in self.skipped:
            return None
        end = row.end if isinstance(row.end, float) and not math.isnan(row.end) else None
        try:
            return self.cache.get(row.audio, float(row.start or 0.0), end)
        except AudioError as err:
            self.skipped[row.id] = str(err)
            log.warning("skipping utterance %s: %s", row.id, err)
            return None

    def _make_batch(self, idx: list[int]) -> Batch | None:
        """The padded batch of the decodable utterances among `idx` (None if there is none)."""
        sub = self.rows.iloc[idx]
        decoded = [self._decode(r) for r in sub.itertuples(index=False)]
        keep = [i for i, w in enumerate(decoded) if w is not None]
        if not keep:
            return None
        sub = sub.iloc[keep]
        waves = [decoded[i] for i in keep]
        lens = torch.tensor([len(w) for w in waves], dtype=torch.long)
        audio = torch.zeros(len(waves), int(lens.max()))
        for i, w in enumerate(waves):
            audio[i, : len(w)] = torch.from_numpy(w)
        attrs = [{c: str(getattr(r, c)) for c in self.attribute_columns if str(getattr(r, c))}
                 for r in sub.itertuples(index=False)]
        return Batch(ids=list(sub["id"]), speakers=list(sub["speaker"]), texts=list(sub["text"]),
                     audio=audio, audio_lens=lens, attributes=attrs)
