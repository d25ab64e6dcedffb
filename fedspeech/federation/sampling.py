"""Seeded, resumable randomness for the server: RNG streams and cohort sampling.

Flower samples cohorts with the global ``random`` module, which a resumed run cannot
reproduce. Here every random choice draws from its own PCG64 stream of the run seed
(:func:`make_rng`), whose state is encoded as a small array for checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import INFO
from typing import Any

import numpy as np
from flwr.serverapp import Grid
from flwr.supercore import log


def rng_state_to_array(gen: np.random.Generator) -> np.ndarray:
    """Encode a PCG64 generator's state as 6 uint64 values (fits safetensors/JSON)."""
    st = gen.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise TypeError(f"only PCG64 state is supported, got {st['bit_generator']}")
    mask = (1 << 64) - 1
    s, inc = int(st["state"]["state"]), int(st["state"]["inc"])
    return np.array(
        [s >> 64, s & mask, inc >> 64, inc & mask, st["has_uint32"], st["uinteger"]],
        dtype=np.uint64,
    )


def rng_state_from_array(gen: np.random.Generator, arr: Any) -> None:
    """Restore a state written by :func:`rng_state_to_array` into ``gen``."""
    a = [int(x) for x in np.asarray(arr, dtype=np.uint64).ravel()]
    if len(a) != 6:
        raise ValueError(f"RNG state must have 6 values, got {len(a)}")
    gen.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (a[0] << 64) | a[1], "inc": (a[2] << 64) | a[3]},
        "has_uint32": a[4],
        "uinteger": a[5],
    }


def make_rng(seed: int, stream: int) -> np.random.Generator:
    """Independent, reproducible stream ``stream`` of run seed ``seed``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), stream])))


# ------------------------------------------------------------------- sampling
def cohort_size(num_available: int, fraction: float, num_nodes: int | None, min_nodes: int) -> int:
    """Clients per round: `num_nodes` when set, else `max(int(available * fraction), min_nodes)`.

    The one rule every part of fedspeech uses (sampling, DP accounting, the centralised
    baseline's per-round budget).
    """
    if num_nodes is not None:
        return int(num_nodes)
    return max(int(num_available * float(fraction)), int(min_nodes))


def strategy_cohort_size(strategy: Mapping[str, Any], population: int) -> int:
    """The cohort a `strategy` config node's sampler draws when all `population` clients connect.

    Read from the same keys, with the same defaults, as the strategies' `CohortSampler`; the
    DP accountant and the centralised baseline's per-round budget call this, not a copy of it.
    """
    return min(int(population), cohort_size(int(population), float(strategy.get("fraction_train", 1.0)),
                                            strategy.get("num_train_nodes"),
                                            int(strategy.get("min_train_nodes", 2))))


class CohortSampler:
    """Seeded choice of the training cohort among connected nodes.

    Cohort size: ``num_nodes`` when set, else ``max(int(available * fraction),
    min_nodes)``. Nodes are put in a canonical order before drawing -- by partition id
    when :meth:`set_node_partitions` was given the map (simulation node ids are random
    per run, partition ids are not), else by node id -- so the same seed draws the same
    clients in every run and after a resume (the generator state is checkpointed).
    """

    def __init__(
        self,
        seed: int,
        fraction: float = 1.0,
        num_nodes: int | None = None,
        min_nodes: int = 2,
        min_available_nodes: int = 2,
        wait_timeout_s: float = 600.0,
    ) -> None:
        if num_nodes is None and not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction_train must be in (0, 1], got {fraction}")
        if num_nodes is not None and int(num_nodes) < 1:
            raise ValueError(f"num_train_nodes must be >= 1, got {num_nodes}")
        if int(min_nodes) < 1:
            raise ValueError(f"min_train_nodes must be >= 1, got {min_nodes}")
        self.seed = int(seed)
        self.fraction = float(fraction)
        self.num_nodes = None if num_nodes is None else int(num_nodes)
        self.min_nodes = int(min_nodes)
        self.min_available_nodes = int(min_available_nodes)
        self.wait_timeout_s = float(wait_timeout_s)
        self.rng = make_rng(seed, 1)
        self.node_partitions: dict[int, int] = {}

    def cohort_size(self, num_available: int) -> int:
        """Cohort size for ``num_available`` connected nodes (see `cohort_size`)."""
        return cohort_size(num_available, self.fraction, self.num_nodes, self.min_nodes)

    def set_node_partitions(self, mapping: Mapping[int, int]) -> None:
        """Give the node-id -> partition-id map that defines the canonical order."""
        self.node_partitions = {int(k): int(v) for k, v in mapping.items()}

    def _order(self, node_ids: Iterable[int]) -> list[int]:
        def key(nid: int) -> tuple[int, int]:
            pid = self.node_partitions.get(nid)
            return (0, pid) if pid is not None else (1, nid)

        return sorted(node_ids, key=key)

    def sample(self, grid: Grid) -> tuple[list[int], list[int]]:
        """Wait for enough nodes, then draw the cohort. Returns (sampled, connected)."""
        start = time.monotonic()
        while True:
            nodes = list(grid.get_node_ids())
            size = self.cohort_size(len(nodes))
            need = max(size, self.min_available_nodes)
            if len(nodes) >= need:
                break
            waited = time.monotonic() - start
            if waited > self.wait_timeout_s:
                raise RuntimeError(
                    f"only {len(nodes)} nodes connected after {waited:.0f}s, the cohort "
                    f"needs {need}; lower num_train_nodes/min_train_nodes or start more "
                    "nodes"
                )
            log(INFO, "Waiting for nodes: %d connected, %d needed", len(nodes), need)
            time.sleep(1.0)
        ordered = self._order(nodes)
        idx = self.rng.choice(len(ordered), size=size, replace=False)
        return [ordered[i] for i in sorted(idx)], nodes
