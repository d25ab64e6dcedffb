"""Seeded fault injection inside the real client path (`faults` config group; default none).

Tests and benchmarks use it to make clients crash, send NaN updates or straggle, exactly where a
real failure would happen: in the ClientApp's train handler, through Flower and Ray. Whether a
client misbehaves in a round is drawn from (run seed, round, partition), so a run and its
resumption inject the same faults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord

from fedspeech.federation.parameters import array_from_numpy, array_view

#: seed stream of fault draws (distinct from sampling, noise and training streams)
FAULT_STREAM = 0xFA17


class InjectedFault(RuntimeError):
    """A failure fedspeech injected on purpose (`faults.crash_prob`)."""


@dataclass(frozen=True)
class RoundFaults:
    """What one client does wrong in one round."""

    crash: bool = False
    nan: bool = False
    delay_s: float = 0.0


@dataclass(frozen=True)
class FaultPlan:
    """Probabilities of each fault, drawn independently per (round, partition)."""

    seed: int
    crash_prob: float = 0.0
    nan_prob: float = 0.0
    delay_prob: float = 0.0
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("crash_prob", "nan_prob", "delay_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"faults.{name} must be in [0, 1], got {value}")
        if self.delay_s < 0:
            raise ValueError(f"faults.delay_s must be >= 0, got {self.delay_s}")

    @property
    def active(self) -> bool:
        return self.crash_prob > 0 or self.nan_prob > 0 or (self.delay_prob > 0 and self.delay_s > 0)

    def draw(self, server_round: int, partition_id: int) -> RoundFaults:
        """The faults of `partition_id` in `server_round` (the same in every run of this seed)."""
        if not self.active:
            return RoundFaults()
        rng = np.random.default_rng([int(self.seed), FAULT_STREAM, int(server_round), int(partition_id)])
        crash, nan, delay = rng.random(3)
        return RoundFaults(crash=bool(crash < self.crash_prob), nan=bool(nan < self.nan_prob),
                           delay_s=self.delay_s if delay < self.delay_prob else 0.0)


def poison_with_nan(record: ArrayRecord) -> ArrayRecord:
    """A copy of `record` whose first tensor holds NaN (what a diverged client would send)."""
    out = ArrayRecord()
    for i, (name, arr) in enumerate(record.items()):
        values = array_view(arr)
        if i == 0 and values.size and np.issubdtype(values.dtype, np.floating):
            values = values.copy()
            values.reshape(-1)[0] = np.nan
            out[name] = array_from_numpy(values)
        else:
            out[name] = arr
    return out
