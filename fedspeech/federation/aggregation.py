"""Running sums of a round's replies: O(model) memory, and the same result in any arrival order.

Replies arrive in completion order, which differs between runs (and between a run and its
resumption). Floating-point addition is not associative, so a plain float sum of the replies
would depend on that order in its last bits. `ExactSum` makes the sum exact instead: each term
`w * x` is computed in float32 (the precision of the model and of its update), scaled onto a
fixed-point grid chosen per tensor before the round starts, and added as a 64-bit integer.
Integer addition is associative, so the total is a function of the *set* of replies only.

The grid is set by a bound on the values (`value_bounds`, enforced by screening) and a bound on
the total weight (`weight_bound`): with `B` the value bound of a tensor and `W` the weight
bound, every partial sum stays below `2**61` grid steps, and a step is at most `B * W / 2**60`.
Each term's factor `w * scale` and its product with `x` are rounded to float32 (relative error
2**-24 each, what a float32 weighted mean has anyway) and truncated onto the grid (at most one
step, ~1e-16 of the bound); `mean` divides by the sum of the rounded factors. Its error is thus
below `3 * 2**-24 * sum(w|x|) / sum(w)` plus one grid step per term: far below the float32
resolution of the model itself. Costs one pass over each reply tensor, compiled (numba) so the
product, its conversion and the integer add happen in registers: memory traffic is the reply read
once and the 64-bit sum read and written once (20 bytes per parameter against 12 for a float32
add). NumPy has no fused form and converts float to int64 without SIMD, which made the same fold
5x a float32 sum; large tensors are split over threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numba import njit

NDArrays = dict[str, np.ndarray]

#: Replies may hold values up to this many times the largest magnitude of the global tensor
#: (or of 1.0, whichever is larger) before screening calls them absurd.
VALUE_RANGE_FACTOR = 2.0**8
#: partial sums stay below 2**_GRID_BITS grid steps (int64 holds 2**63)
_GRID_BITS = 61
#: tensors at least this large are split across threads
_CHUNK = 1 << 20


@njit(nogil=True, cache=True, error_model="numpy")
def _fold(values: np.ndarray, total: np.ndarray, factor: np.float32) -> None:
    """`total += int64(float32(values * factor))`, truncated toward zero, in one pass."""
    for i in range(values.size):
        total[i] += np.int64(values[i] * factor)


def _power_of_two_at_least(value: float) -> float:
    return 2.0 ** math.ceil(math.log2(value)) if value > 0 else 1.0


def value_bounds(current: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The aggregation range of each tensor: a power of two, VALUE_RANGE_FACTOR x its scale."""
    out = {}
    for name, values in current.items():
        scale = float(np.max(np.abs(values))) if values.size else 0.0
        out[name] = _power_of_two_at_least(max(scale, 1.0)) * VALUE_RANGE_FACTOR
    return out


class ExactSum:
    """`sum_i w_i * x_i` over dicts of float arrays, identical for every order of the terms.

    `add` requires `|x| <= value_bounds[name]` (screening guarantees it) and the weights added
    over the round to stay within `weight_bound`.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], value_bounds: Mapping[str, float],
                 weight_bound: float, threads: int | None = None) -> None:
        if not weight_bound > 0 or not math.isfinite(weight_bound):
            raise ValueError(f"weight_bound must be a positive number, got {weight_bound}")
        self.weight_bound = float(weight_bound)
        self.value_bounds = {k: float(value_bounds[k]) for k in shapes}
        self._scale = {k: 2.0 ** (_GRID_BITS - math.ceil(math.log2(self.weight_bound * b)))
                       for k, b in self.value_bounds.items()}
        self._sums = {k: np.zeros(shape, dtype=np.int64) for k, shape in shapes.items()}
        self._weights: list[float] = []
        #: per tensor, the float32 factors `w * scale` applied (the weights actually used)
        self._factors: dict[str, list[float]] = {k: [] for k in shapes}
        self._threads = max(1, threads or min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 1 else None

    @property
    def count(self) -> int:
        """Number of terms added."""
        return len(self._weights)

    @property
    def weight_sum(self) -> float:
        """Sum of the weights added, exactly rounded (order-independent too)."""
        return math.fsum(self._weights)

    def add(self, arrays: Mapping[str, np.ndarray], weight: float = 1.0) -> None:
        """Fold `weight * arrays` into the sums."""
        weight = float(weight)
        if not weight > 0 or not math.isfinite(weight):
            raise ValueError(f"weight must be a positive number, got {weight}")
        if math.fsum([*self._weights, weight]) > self.weight_bound * (1 + 1e-12):
            raise ValueError(f"weights exceed the round's bound {self.weight_bound:g}")
        jobs = []
        for name, total in self._sums.items():
            # float32 terms whatever the reply's dtype: the precision the error bound assumes
            values = np.asarray(arrays[name], dtype=np.float32).reshape(-1)
            flat = total.reshape(-1)
            factor = np.float32(weight * self._scale[name])
            self._factors[name].append(float(factor))
            if self._pool is None or flat.size < _CHUNK:
                _fold(values, flat, factor)
                continue
            bounds = np.linspace(0, flat.size, self._threads + 1, dtype=np.int64)
            jobs += [self._pool.submit(_fold, values[a:b], flat[a:b], factor)
                     for a, b in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()
        self._weights.append(weight)

    def total(self) -> NDArrays:
        """The weighted sums (float64)."""
        return {k: s.astype(np.float64) / self._scale[k] for k, s in self._sums.items()}

    def mean(self) -> NDArrays:
        """The weighted mean: sums / sum of the weights applied."""
        if not self._weights:
            raise ValueError("no terms were added")
        return {k: s.astype(np.float64) / math.fsum(self._factors[k]) for k, s in self._sums.items()}

    def close(self) -> None:
        """Release the threads (the sums stay readable)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


# ----------------------------------------------------------------------- metrics
#: reply metrics that are totals over the cohort, not per-client averages
SUM_METRIC_KEYS = ("num-examples", "num-seconds", "skipped-utterances", "client-compute-s",
                   "client-total-s")
#: reply metrics whose round value is the largest over the cohort
MAX_METRIC_KEYS = ("gpu-peak-mb",)
#: reply metrics that identify a client: never aggregated
PER_CLIENT_KEYS = ("partition-id",)


def aggregate_metrics(per_client: list[tuple[float, Mapping[str, Any]]]) -> dict[str, float]:
    """Totals for counts, maxima for peaks, weighted means otherwise; order-independent (fsum).

    `per_client` holds `(weight, metrics)` of every accepted reply.
    """
    out: dict[str, float] = {}
    if not per_client:
        return out
    total_weight = math.fsum(w for w, _ in per_client)
    keys = sorted({k for _, m in per_client for k in m})
    for key in keys:
        if key in PER_CLIENT_KEYS:
            continue
        pairs = [(w, m[key]) for w, m in per_client if key in m and isinstance(m[key], (int, float))]
        if not pairs:
            continue
        if key in SUM_METRIC_KEYS:
            out[key] = math.fsum(float(v) for _, v in pairs)
        elif key in MAX_METRIC_KEYS:
            out[key] = max(float(v) for _, v in pairs)
        else:
            weight = math.fsum(w for w, _ in pairs) or total_weight
            out[key] = math.fsum(w * float(v) for w, v in pairs) / weight
    return out
