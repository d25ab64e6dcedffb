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
resolution of the model itself.

Replies are folded in pairs, compiled (numba) so the range check, the products, their
conversion and the integer adds happen in registers. The first reply of a pair is range-checked
on arrival (one read) and held; the second is checked in the pass that folds both, so memory
traffic per reply is 14 bytes per parameter (its range check, its read, half of the 64-bit sum's
read and write) against 12 for a float32 add, and 20 when each reply was folded on its own.
Holding one reply is the price: server memory is the sums plus at most one reply, still
O(model). A term with NaN, inf or a value beyond its bound folds nothing of it (in the pair pass
its share is subtracted back, exactly: integer addition is reversible) and `add` raises
`OutOfRange` for that term alone. NumPy has no fused form and converts float to int64 without
SIMD, which made the same fold 5x a float32 sum; large tensors are split over threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
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
def _count_outside(values: np.ndarray, bound: np.float32) -> np.int64:
    """How many values are not `|v| <= bound` (NaN, inf, out of range): the range check alone."""
    bad = 0
    for i in range(values.size):
        bad += not (abs(values[i]) <= bound)            # True for NaN
    return bad


@njit(nogil=True, cache=True, error_model="numpy")
def _fold(values: np.ndarray, total: np.ndarray, factor: np.float32, bound: np.float32) -> np.int64:
    """`total += int64(float32(v * factor))` for every `|v| <= bound` (truncated toward zero), in
    one pass; returns how many values were not (NaN, inf, out of range: folded as 0). A negated
    factor subtracts exactly what the factor added (IEEE products and truncation are symmetric)."""
    bad = 0
    for i in range(values.size):
        v = values[i]
        inside = abs(v) <= bound                        # False for NaN
        total[i] += np.int64((v if inside else np.float32(0.0)) * factor)
        bad += not inside
    return bad


@njit(nogil=True, cache=True, error_model="numpy")
def _fold_pair(first: np.ndarray, values: np.ndarray, total: np.ndarray, first_factor: np.float32,
               factor: np.float32, bound: np.float32) -> np.int64:
    """`_fold` of an already range-checked `first` and of `values` in one pass over the sum: each
    term truncated onto the grid on its own, exactly as two `_fold`s; returns `values`' count of
    values outside the bound (folded as 0)."""
    bad = 0
    for i in range(values.size):
        v = values[i]
        inside = abs(v) <= bound                        # False for NaN
        total[i] += np.int64(first[i] * first_factor) + np.int64(
            (v if inside else np.float32(0.0)) * factor)
        bad += not inside
    return bad


@njit(nogil=True, cache=True, error_model="numpy")
def _scaled(total: np.ndarray, out: np.ndarray, divisor: np.float64) -> None:
    """`out = float64(total) / divisor` in one pass (what `astype` then `/` does in two)."""
    for i in range(total.size):
        out[i] = np.float64(total[i]) / divisor


class OutOfRange(ValueError):
    """A term with NaN, inf or a value beyond its tensor's bound; the sums are as they were."""


def range_violation(name: str, low: float, high: float, bound: float) -> str | None:
    """Why a tensor with extremes `low`, `high` cannot be aggregated within `±bound`, or None."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"'{name}' holds non-finite values (NaN or inf)"
    if max(-low, high) > bound:
        return (f"'{name}' holds {low if -low > high else high:g}, outside the aggregation "
                f"range ±{bound:g}")
    return None


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

    `add` requires `|x| <= value_bounds[name]` (it raises `OutOfRange` otherwise) and the weights
    added over the round to stay within `weight_bound`. `mean` or `total` reads the result once,
    in place of the sums: they end the round. Terms are folded in pairs (module docstring): after
    an odd number of `add`s the last term is held, by reference, until the next one or the result.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], value_bounds: Mapping[str, float],
                 weight_bound: float, threads: int | None = None) -> None:
        if not weight_bound > 0 or not math.isfinite(weight_bound):
            raise ValueError(f"weight_bound must be a positive number, got {weight_bound}")
        self.weight_bound = float(weight_bound)
        self.value_bounds = {k: float(value_bounds[k]) for k in shapes}
        self._scale = {k: 2.0 ** (_GRID_BITS - math.ceil(math.log2(self.weight_bound * b)))
                       for k, b in self.value_bounds.items()}
        self._bound32 = {k: np.float32(b) for k, b in self.value_bounds.items()}
        self._sums = {k: np.zeros(shape, dtype=np.int64) for k, shape in shapes.items()}
        #: a range-checked term not yet in the sums: its float32 terms and factors
        self._pending: tuple[dict[str, np.ndarray], dict[str, np.float32]] | None = None
        self._weights: list[float] = []
        #: per tensor, the float32 factors `w * scale` applied (the weights actually used)
        self._factors: dict[str, list[float]] = {k: [] for k in shapes}
        self._threads = max(1, threads or min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 1 else None
        self._released = False

    @property
    def count(self) -> int:
        """Number of terms added."""
        return len(self._weights)

    @property
    def weight_sum(self) -> float:
        """Sum of the weights added, exactly rounded (order-independent too)."""
        return math.fsum(self._weights)

    def add(self, arrays: Mapping[str, np.ndarray], weight: float = 1.0) -> None:
        """Fold `weight * arrays` into the sums, or raise `OutOfRange` and fold nothing of them.

        The arrays may be held (by reference) until the next `add` or the result: do not change
        them in place meanwhile."""
        self._check_open()
        weight = float(weight)
        if not weight > 0 or not math.isfinite(weight):
            raise ValueError(f"weight must be a positive number, got {weight}")
        if math.fsum([*self._weights, weight]) > self.weight_bound * (1 + 1e-12):
            raise ValueError(f"weights exceed the round's bound {self.weight_bound:g}")
        # float32 terms whatever the reply's dtype: the precision the error bound assumes
        terms = {name: np.asarray(arrays[name], dtype=np.float32).reshape(-1) for name in self._sums}
        factors = {name: np.float32(weight * self._scale[name]) for name in self._sums}
        if self._pending is None:
            self._raise_if_outside(terms, self._per_tensor(_count_outside, {
                name: ((terms[name],), (self._bound32[name],)) for name in self._sums}))
            self._pending = (terms, factors)              # folded with the next term, or at the end
        else:
            first, first_factors = self._pending
            bad = self._per_tensor(_fold_pair, {
                name: ((first[name], terms[name], total.reshape(-1)),
                       (first_factors[name], factors[name], self._bound32[name]))
                for name, total in self._sums.items()})
            self._pending = None                          # the held term is in the sums now
            if any(bad.values()):
                self._fold_all(terms, {n: -f for n, f in factors.items()})   # exact: this term out
                self._raise_if_outside(terms, bad)
        for name, factor in factors.items():
            self._factors[name].append(float(factor))
        self._weights.append(weight)

    def _raise_if_outside(self, terms: Mapping[str, np.ndarray], bad: Mapping[str, int]) -> None:
        """`OutOfRange` naming the first tensor with values outside its bound, if any."""
        name = next((n for n, count in bad.items() if count), None)
        if name is None:
            return
        values = terms[name]
        raise OutOfRange(range_violation(name, float(np.min(values)), float(np.max(values)),
                                         self.value_bounds[name])
                         or f"'{name}' holds values outside the aggregation range")

    def _settle(self) -> None:
        """Fold the held term on its own (it was range-checked when it was added)."""
        if self._pending is not None:
            terms, factors = self._pending
            self._pending = None
            self._fold_all(terms, factors)

    def _slices(self, size: int) -> list[tuple[int, int]]:
        """One contiguous slice of a large tensor per thread."""
        cuts = [int(c) for c in np.linspace(0, size, self._threads + 1)]
        return list(zip(cuts[:-1], cuts[1:]))

    def _per_tensor(self, kernel: Callable[..., Any],
                    calls: Mapping[str, tuple[tuple[np.ndarray, ...], tuple[Any, ...]]]
                    ) -> dict[str, int]:
        """`kernel(*arrays, *scalars)` for each tensor's flat arrays, a large tensor cut into one
        slice per thread; each tensor's kernel results (counts) summed, 0 where it returns None."""
        results = dict.fromkeys(calls, 0)
        jobs: list[tuple[str, Any]] = []
        for name, (arrays, scalars) in calls.items():
            size = arrays[0].size
            if self._pool is None or size < _CHUNK:
                results[name] += int(kernel(*arrays, *scalars) or 0)
                continue
            jobs += [(name, self._pool.submit(kernel, *(x[a:b] for x in arrays), *scalars))
                     for a, b in self._slices(size)]
        for name, job in jobs:
            results[name] += int(job.result() or 0)
        return results

    def _fold_all(self, terms: Mapping[str, np.ndarray], factors: Mapping[str, np.float32]
                  ) -> dict[str, int]:
        """Run `_fold` over every tensor; the count of out-of-range values per tensor."""
        return self._per_tensor(_fold, {
            name: ((terms[name], total.reshape(-1)), (factors[name], self._bound32[name]))
            for name, total in self._sums.items()})

    def _release(self, divisors: Mapping[str, float]) -> NDArrays:
        """Each sum over its divisor, as float64, written over the sum itself (an int64 and a
        float64 are both 8 bytes): one pass and no second model-sized array to fault in. A round
        reads its sums once, so this ends them (large tensors split over threads)."""
        self._check_open()
        self._settle()
        self._released = True
        out = {k: s.view(np.float64) for k, s in self._sums.items()}
        self._per_tensor(_scaled, {
            name: ((total.reshape(-1), out[name].reshape(-1)), (np.float64(divisors[name]),))
            for name, total in self._sums.items()})
        return out

    def total(self) -> NDArrays:
        """The weighted sums (float64); releases them (see `_release`)."""
        return self._release(self._scale)

    def mean(self) -> NDArrays:
        """The weighted mean: sums / sum of the weights applied; releases the sums."""
        if not self._weights:
            raise ValueError("no terms were added")
        return self._release({k: math.fsum(f) for k, f in self._factors.items()})

    def _check_open(self) -> None:
        if self._released:
            raise RuntimeError("the sums were already turned into the round's result "
                               "(mean/total end an ExactSum)")

    def close(self) -> None:
        """Release the threads (`mean` and `total` still work, in one thread)."""
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
