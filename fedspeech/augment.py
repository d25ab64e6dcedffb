"""Speed perturbation of training batches (Ko et al., Interspeech 2015), `train.speed_perturb`.

Each batch is played at one speed factor drawn from the configured list (e.g. [0.9, 1.0, 1.1]:
> 1 is faster and shorter), so a client's few minutes of audio are heard at several speaking
rates and pitches. Resampling is torchaudio's `Speed` transform, which also gives the new valid
lengths; the draw uses its own seeded generator, so the same client round sees the same speeds
and the global torch RNG is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torchaudio.transforms as T

from fedspeech.data.audio import SAMPLE_RATE
from fedspeech.data.batching import Batch


class SpeedPerturbation:
    """Resample each batch by a factor drawn uniformly from `factors` (1.0 = unchanged)."""

    def __init__(self, factors: Sequence[float], seed: int, sample_rate: int = SAMPLE_RATE) -> None:
        if not factors or any(not 0 < float(f) for f in factors):
            raise ValueError(f"speed factors must be a non-empty list of positive numbers, got {factors}")
        self.factors = [float(f) for f in factors]
        self._speeds = [T.Speed(sample_rate, f) for f in self.factors]
        self._generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, batch: Batch) -> Batch:
        """The batch at a drawn speed: audio resampled, `audio_lens` scaled to match."""
        i = int(torch.randint(len(self._speeds), (), generator=self._generator))
        if self.factors[i] == 1.0:
            return batch
        audio, lens = self._speeds[i](batch.audio, batch.audio_lens)
        return replace(batch, audio=audio, audio_lens=lens.to(batch.audio_lens.dtype))
