"""ExactSum: the running sum behind every fedspeech strategy is exact to its grid and
independent of the order of the replies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedspeech.federation.aggregation import ExactSum, OutOfRange, aggregate_metrics, value_bounds


def terms(n: int = 12, size: int = 4000, seed: int = 0) -> list[tuple[dict[str, np.ndarray], float]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scale = 10.0 ** rng.integers(-7, 1, size=size)          # values over 7 decades
        out.append(({"a": (rng.standard_normal(size) * scale).astype(np.float32),
                     "b": rng.standard_normal((3, 2)).astype(np.float32)},
                    float(rng.uniform(1, 300))))
    return out


def fold(items, order):  # noqa: ANN001, ANN201
    bounds = value_bounds({"a": np.ones(1, np.float32), "b": np.ones(1, np.float32)})
    total = ExactSum({"a": items[0][0]["a"].shape, "b": (3, 2)}, bounds,
                     weight_bound=sum(w for _, w in items), threads=2)
    for i in order:
        total.add(*items[i])
    return total


def test_sum_is_bit_identical_in_any_order():
    items = terms()
    orders = [list(range(len(items))), list(reversed(range(len(items)))),
              list(np.random.default_rng(3).permutation(len(items)))]
    sums = [fold(items, o).total() for o in orders]
    for other in sums[1:]:
        for k in sums[0]:
            np.testing.assert_array_equal(sums[0][k], other[k])
    # a plain float sum of the same terms is not: the test would catch one
    plain = [sum(w * x["a"].astype(np.float64) for x, w in (items[i] for i in o)) for o in orders]
    assert any(not np.array_equal(plain[0], p) for p in plain[1:])


def test_mean_is_within_the_documented_error_of_the_exact_mean():
    items = terms(n=8, size=500)
    total = fold(items, range(len(items)))
    weights = [w for _, w in items]
    exact = np.array([math.fsum(w * float(x["a"][j]) for x, w in items) / math.fsum(weights)
                      for j in range(500)])
    # the docstring's bound: float32 rounding of each factor and product (2**-24 relative each, and
    # the factors again in the divisor) + one grid step per term
    magnitude = np.array([math.fsum(w * abs(float(x["a"][j])) for x, w in items) / math.fsum(weights)
                          for j in range(500)])
    step = value_bounds({"a": np.ones(1)})["a"] * math.fsum(weights) / 2.0**60
    assert np.all(np.abs(total.mean()["a"] - exact) <= 3 * 2.0**-24 * magnitude + len(items) * step)
    assert total.weight_sum == math.fsum(weights) and total.count == len(items)


def test_weights_beyond_the_round_bound_are_refused():
    total = ExactSum({"a": (2,)}, {"a": 256.0}, weight_bound=10.0, threads=1)
    total.add({"a": np.ones(2, np.float32)}, 6.0)
    with pytest.raises(ValueError, match="exceed the round's bound"):
        total.add({"a": np.ones(2, np.float32)}, 5.0)


def test_large_tensors_folded_in_threads_equal_a_single_thread():
    rng = np.random.default_rng(1)
    big = [({"a": rng.standard_normal(1 << 21).astype(np.float32)}, float(w)) for w in (1.0, 2.5, 7.0)]
    results = []
    for threads in (1, 3):
        s = ExactSum({"a": (1 << 21,)}, {"a": 256.0}, weight_bound=10.5, threads=threads)
        for arrays, w in big:
            s.add(arrays, w)
        results.append(s.total()["a"])
        s.close()
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("bad, reason", [("nan", "non-finite"), ("inf", "non-finite"),
                                         ("range", "outside the aggregation range")])
@pytest.mark.parametrize("position", ["held", "paired"])
def test_a_term_outside_the_range_raises_and_counts_for_nothing(bad, reason, position):
    """A bad term is refused whether it arrives first of a pair (range-checked on arrival) or
    second (checked in the pass that folds both, then subtracted back out exactly, from every
    threaded chunk of a large tensor): the result is bit for bit that of the good terms alone."""
    rng = np.random.default_rng(5)
    shapes = {"big": (1 << 21,), "small": (7,)}
    good = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)]
    poisoned = {k: v * 2 for k, v in good[0].items()}
    poisoned["big"][(1 << 21) - 5] = {"nan": np.nan, "inf": -np.inf, "range": 300.0}[bad]
    bounds = {"big": 256.0, "small": 256.0}

    def run(with_bad: bool) -> dict[str, np.ndarray]:
        s = ExactSum(shapes, bounds, weight_bound=10.0, threads=2)
        before_bad = 0 if position == "held" else 1
        for i, (arrays, w) in enumerate(zip(good, (3.0, 2.0, 1.5))):
            if with_bad and i == before_bad:
                with pytest.raises(OutOfRange, match=f"'big' holds.*{reason}"):
                    s.add(poisoned, 2.0)
                assert s.count == i and s.weight_sum == sum((3.0, 2.0, 1.5)[:i])
            s.add(arrays, w)
        result = s.total()
        s.close()
        return result

    clean, refused = run(False), run(True)
    for k in shapes:
        np.testing.assert_array_equal(refused[k], clean[k])


def test_a_pair_folds_each_term_exactly_as_alone():
    """Folding in pairs (and the held last term alone) is the same integer sum, term by term."""
    rng = np.random.default_rng(9)
    items = [({"a": rng.standard_normal(3000).astype(np.float32)}, float(w)) for w in (1.0, 2.0, 3.5)]
    for count in (1, 2, 3):
        s = ExactSum({"a": (3000,)}, {"a": 256.0}, weight_bound=6.5, threads=1)
        for arrays, w in items[:count]:
            s.add(arrays, w)
        s._settle()
        expected = sum((items[i][0]["a"] * np.float32(items[i][1] * s._scale["a"])).astype(np.int64)
                       for i in range(count))
        np.testing.assert_array_equal(s._sums["a"], expected)


def test_the_result_is_read_once_in_place_of_the_sums():
    s = ExactSum({"a": (3,)}, {"a": 256.0}, weight_bound=2.0, threads=1)
    s.add({"a": np.array([0.5, -1.0, 2.0], np.float32)}, 2.0)
    np.testing.assert_array_equal(s.mean()["a"], [0.5, -1.0, 2.0])
    for again in (s.mean, s.total, lambda: s.add({"a": np.zeros(3, np.float32)}, 1.0)):
        with pytest.raises(RuntimeError, match="already turned into the round's result"):
            again()


def test_the_compiled_fold_adds_each_float32_term_truncated_onto_the_grid():
    """The fold is compiled code: pin its arithmetic to the documented one, term by term, for a
    float32 reply, a read-only one (how Flower hands buffers over) and a float64 one."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(5000) * 10.0 ** rng.integers(-6, 2, size=5000)).astype(np.float32)
    readonly = x.copy()
    readonly.flags.writeable = False
    weights = (3.0, 0.7, 11.0)
    total = ExactSum({"a": (5000,)}, {"a": 256.0}, weight_bound=sum(weights), threads=1)
    for arrays, w in zip(({"a": x}, {"a": readonly}, {"a": x.astype(np.float64)}), weights):
        total.add(arrays, w)
    total._settle()                                      # the third term was held
    expected = np.zeros(5000, np.int64)
    for w in weights:
        factor = np.float32(w * total._scale["a"])
        expected += (x * factor).astype(np.float32).astype(np.int64)  # truncation toward zero
    np.testing.assert_array_equal(total._sums["a"], expected)


def test_metrics_are_totals_or_weighted_means_in_any_order():
    per = [(2.0, {"num-seconds": 2.0, "train-loss": 1.0, "partition-id": 0}),
           (6.0, {"num-seconds": 6.0, "train-loss": 3.0, "partition-id": 1})]
    a, b = aggregate_metrics(per), aggregate_metrics(per[::-1])
    assert a == b
    assert a["num-seconds"] == 8.0 and a["train-loss"] == pytest.approx(2.5)
    assert "partition-id" not in a
