"""User-level DP: clipping, noise on the sum, the fixed denominator, accounting and state,
on a real Flower grid (tests/flower_federation.py)."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedspeech.federation.nodes import query_nodes
from fedspeech.federation.parameters import numpy_record, record_arrays
from fedspeech.federation.privacy import UserLevelDP, clip_delta, layer_budgets, normalize_delta
from fedspeech.federation.privacy_accounting import UserLevelAccountant
from fedspeech.federation.strategies import FedLAMB, SpeechFedAvg
from flower_federation import LocalFederation

SHAPES = {"a": (3, 4), "b": (5,), "c": (2, 2)}


def global_arrays(shapes: dict = SHAPES, zero: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: (np.zeros(s) if zero else rng.normal(0, 1, s)).astype(np.float32) for k, s in shapes.items()}


def random_deltas(n: int, scale: float, seed: int = 1, shapes: dict = SHAPES) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(0, scale, s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


def norm(d: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in d.values())))


def nodes_adding(deltas: list[dict[str, np.ndarray]], seconds: list[float], silent: set[int] = frozenset()):  # noqa: ANN201
    """Node `i` replies with `global + deltas[i]`, weighted by `seconds[i]` (ignored under DP)."""
    def handle(pid: int, msg: Message) -> RecordDict | None:
        if msg.metadata.message_type == "query":
            return RecordDict({"metrics": MetricRecord({"partition-id": pid, "num-examples": 1 + pid,
                                                        "num-seconds": seconds[pid]})})
        if pid in silent:
            import time
            time.sleep(5)
        arrays = {k: v + deltas[pid][k] for k, v in record_arrays(msg.content["arrays"]).items()}
        return RecordDict({"arrays": numpy_record(arrays), "metrics": MetricRecord(
            {"num-examples": 1 + pid, "num-seconds": seconds[pid], "train-loss": 1.0, "partition-id": pid})})
    return handle


def run_round(strategy, deltas, seconds=None, rounds: int = 1, arrays=None, timeout: float = 30,  # noqa: ANN001, ANN201
              silent: set[int] = frozenset()):
    seconds = seconds or [1.0] * len(deltas)
    with LocalFederation(len(deltas), nodes_adding(deltas, seconds, silent)) as fed:
        strategy.set_nodes(query_nodes(fed.grid, len(deltas), wait_s=10, timeout=30))
        result = strategy.start(fed.grid, numpy_record(arrays or global_arrays()), num_rounds=rounds,
                                timeout=timeout, train_config=ConfigRecord({"local-epochs": 1}))
    return ({k: np.array(v) for k, v in record_arrays(result.arrays).items()},
            result.train_metrics_clientapp[rounds])


def dp_fedavg(n: int, population: int | None = None, cohort: int | None = None, **dp) -> SpeechFedAvg:
    privacy = UserLevelDP(population=population or n, cohort=cohort or n, seed=9, **dp)
    return SpeechFedAvg(num_train_nodes=cohort or n, seed=4, privacy=privacy)


def new_minus_global(new: dict[str, np.ndarray], start: dict | None = None) -> dict[str, np.ndarray]:
    g = start or global_arrays()
    return {k: new[k].astype(np.float64) - g[k] for k in g}


# ----------------------------------------------------------------- clipping
def test_global_clipping_norms():
    big, small = random_deltas(2, 1.0)[0], random_deltas(1, 1e-3, seed=2)[0]
    out, before, after, was = clip_delta(big, 0.5, "global")
    assert before > 0.5 and was
    assert norm(out) == pytest.approx(0.5, rel=1e-6) == after
    # direction kept
    np.testing.assert_allclose(
        out["a"] / out["a"].ravel()[0], big["a"] / big["a"].ravel()[0], rtol=1e-5
    )
    out, before, after, was = clip_delta(small, 0.5, "global")
    assert not was and after == pytest.approx(before)
    np.testing.assert_array_equal(out["b"], small["b"])


@pytest.mark.parametrize("mode", ["per_layer_uniform", "per_layer_size"])
def test_per_layer_clipping_norms(mode):
    delta = random_deltas(1, 3.0)[0]
    delta["c"] *= 1e-4  # one tensor far below its budget
    budgets = layer_budgets({k: v.shape for k, v in delta.items()}, 2.0, mode)
    assert sum(b**2 for b in budgets.values()) == pytest.approx(4.0)
    if mode == "per_layer_uniform":
        assert all(b == pytest.approx(2.0 / np.sqrt(3)) for b in budgets.values())
    else:
        assert budgets["a"] == pytest.approx(2.0 * np.sqrt(12 / 21))
    out, _, after, was = clip_delta(delta, 2.0, mode)
    assert was and after <= 2.0 + 1e-6
    for k in ("a", "b"):
        assert np.linalg.norm(out[k]) == pytest.approx(budgets[k], rel=1e-5)
    np.testing.assert_array_equal(out["c"], delta["c"])


def test_normalize_delta():
    d = random_deltas(1, 0.3)[0]
    assert norm(normalize_delta(d, "global")) == pytest.approx(1.0, rel=1e-6)
    for x in normalize_delta(d, "per_layer").values():
        assert np.linalg.norm(x) == pytest.approx(1.0, rel=1e-6)


# ------------------------------------------------------- averaging and noise
def test_without_noise_the_update_is_the_unweighted_mean_of_clipped_deltas():
    deltas = random_deltas(4, 0.5)
    st = dp_fedavg(4, clip_norm=0.6, noise_multiplier=0.0)
    new, metrics = run_round(st, deltas, seconds=[1.0, 50.0, 3.0, 400.0])  # very unequal weights
    clipped = [clip_delta(d, 0.6)[0] for d in deltas]
    for k in SHAPES:
        expect = np.mean([c[k] for c in clipped], axis=0)
        np.testing.assert_allclose(new_minus_global(new)[k], expect, rtol=1e-4, atol=1e-6)
    assert metrics["num-replied"] == 4
    norms = [norm(d) for d in deltas]
    assert metrics["dp-clipped-fraction"] == pytest.approx(np.mean([n > 0.6 for n in norms]))
    assert metrics["dp-norm-max"] == pytest.approx(max(norms), rel=1e-6)
    assert metrics["dp-clipped-norm-max"] <= 0.6 + 1e-6
    assert metrics["dp-noise-norm"] == 0.0
    assert "epsilon" not in metrics


def test_missing_clients_count_in_the_fixed_denominator():
    deltas = random_deltas(4, 0.01)  # below the clip norm: nothing is clipped
    st = dp_fedavg(4, clip_norm=1.0, noise_multiplier=0.0)
    new, metrics = run_round(st, deltas, timeout=2.0, silent={3})   # the last node times out
    assert metrics["num-failed"] == 1
    for k in SHAPES:
        expect = sum(d[k].astype(np.float64) for d in deltas[:3]) / 4
        np.testing.assert_allclose(new_minus_global(new)[k], expect, rtol=1e-3, atol=1e-6)


def test_noise_has_sigma_z_c_on_the_sum():
    shapes = {"w": (400, 250)}
    n, z, c = 4, 1.5, 0.2
    zero = [{"w": np.zeros(shapes["w"], np.float32)} for _ in range(n)]
    st = dp_fedavg(n, population=40, clip_norm=c, noise_multiplier=z)
    new, metrics = run_round(st, zero, arrays=global_arrays(shapes, zero=True))
    noise_avg = new["w"]
    # average of a sum noised with std z*C over n clients
    assert noise_avg.std() == pytest.approx(z * c / n, rel=0.02)
    assert abs(noise_avg.mean()) < 5 * z * c / n / np.sqrt(noise_avg.size)
    assert metrics["dp-noise-std"] == pytest.approx(z * c / n)
    assert metrics["dp-noise-norm"] == pytest.approx(np.linalg.norm(noise_avg), rel=1e-4)
    assert metrics["epsilon"] > 0


def test_virtual_cohort_scales_noise_and_accounting():
    shapes = {"w": (300, 300)}
    n, v, z, c = 4, 400, 1.0, 1.0
    zero = [{"w": np.zeros(shapes["w"], np.float32)}] * n
    st = dp_fedavg(n, population=20, clip_norm=c, noise_multiplier=z, virtual_cohort=v,
                   virtual_population=100_000)
    new, _ = run_round(st, zero, arrays=global_arrays(shapes, zero=True))
    assert new["w"].std() == pytest.approx(z * c / v, rel=0.02)
    assert st.privacy.accountant.q == pytest.approx(v / 100_000)
    with pytest.raises(ValueError, match="virtual_population"):
        UserLevelDP(population=20, cohort=n, seed=0, clip_norm=c, noise_multiplier=z, virtual_cohort=v)


def test_noise_changes_the_update_and_works_with_fedlamb():
    deltas = random_deltas(3, 0.1)
    quiet = dp_fedavg(3, clip_norm=1.0, noise_multiplier=0.0)
    noisy = dp_fedavg(3, clip_norm=1.0, noise_multiplier=1.0)
    a, _ = run_round(quiet, deltas)
    b, _ = run_round(noisy, deltas)
    assert not np.allclose(a["a"], b["a"])
    privacy = UserLevelDP(population=30, cohort=3, seed=1, clip_norm=0.5, noise_multiplier=1.0,
                          clipping="per_layer_uniform")
    lamb = FedLAMB(num_train_nodes=3, eta=0.01, privacy=privacy)
    new, metrics = run_round(lamb, deltas)
    assert lamb.slots is not None and lamb.steps == 1
    g = global_arrays()
    for k in SHAPES:  # LAMB's first step moves each tensor by eta * ||w||
        moved = np.linalg.norm(new[k] - g[k])
        assert moved == pytest.approx(0.01 * np.linalg.norm(g[k]), rel=1e-3)
    assert metrics["epsilon"] > 0


def test_cohort_must_match_the_accounting():
    privacy = UserLevelDP(population=10, cohort=3, seed=0, clip_norm=1.0, noise_multiplier=1.0)
    st = SpeechFedAvg(fraction_train=1.0, privacy=privacy)   # samples all 6 connected, not 3
    with pytest.raises(Exception, match="accounted for a cohort of 3"):
        run_round(st, random_deltas(6, 0.1))


# -------------------------------------------------------------- accounting
def test_epsilon_decreases_as_noise_grows():
    eps = [UserLevelAccountant(z, 0.02, 1e-6, "pld").epsilon(200) for z in (0.7, 1.0, 1.5)]
    assert all(a > b for a, b in zip(eps, eps[1:]))
    rdp_eps = [UserLevelAccountant(z, 0.02, 1e-6, "rdp").epsilon(200) for z in (0.7, 1.0, 1.5)]
    assert all(a > b for a, b in zip(rdp_eps, rdp_eps[1:]))
    # RDP is an upper bound, PLD is tight
    assert rdp_eps[1] >= eps[1]


def test_epsilon_matches_dp_accounting_pld():
    z, q, rounds, delta = 1.0, 0.01, 2000, 1e-9
    ref = pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    ref.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    expected = ref.get_epsilon(delta)
    ours = UserLevelAccountant(z, q, delta, "pld").epsilon(rounds)
    assert ours == pytest.approx(expected, rel=1e-6)
    assert ours == pytest.approx(3.96, abs=0.02)


# ------------------------------------------------------------------- state
def test_state_round_trip_gives_identical_next_round_and_epsilon():
    deltas = random_deltas(10, 0.3)
    kw = dict(
        population=10,
        seed=3,
        clip_norm=0.4,
        noise_multiplier=0.8,
        clipping="per_layer_size",
        accountant="rdp",
    )

    def make() -> FedLAMB:
        return FedLAMB(num_train_nodes=4, seed=8, eta=0.02, privacy=UserLevelDP(cohort=4, **kw))

    first = make()
    arrays, _ = run_round(first, deltas)
    state = first.state_dict()
    assert state["dp/rounds"] == 1 and "opt/step" in state and "sampler/rng" in state
    resumed = make()
    resumed.load_state_dict(state)
    a1, m1 = run_round(first, deltas, arrays=arrays)
    a2, m2 = run_round(resumed, deltas, arrays=arrays)
    for k in SHAPES:
        np.testing.assert_array_equal(a1[k], a2[k])
    assert m1["epsilon"] == m2["epsilon"] == first.privacy.epsilon(2)
    assert m1["epsilon"] > UserLevelAccountant(0.8, 0.4, 1e-6, "rdp").epsilon(1)
