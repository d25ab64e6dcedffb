"""Seeded blocks that leave the caller's random state alone.

Model initialisation and dropout draw from torch's global generator; seeding it directly would
reset the state of whoever called us (a user's script, the round loop). `torch_seeded` forks it,
seeds the fork and restores the caller's state on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU (and visible CUDA) generators seeded with `seed`."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield
