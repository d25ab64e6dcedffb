"""User-level DP: clipping norms, noise, uniform averaging, accountant, state."""

from __future__ import annotations

from collections.abc import Iterable

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedspeech.federation.privacy import (
    UserLevelAccountant,
    UserLevelDP,
    clip_delta,
    layer_budgets,
    normalize_delta,
)
from fedspeech.federation.strategies import FedLAMB, SpeechFedAvg


@pytest.fixture(autouse=True)
def _as_server(server_identity):
    """Every test here builds Messages as a ServerApp does."""


class NodesGrid(Grid):
    """In-process Grid: nodes answer with ``global + deltas[partition]``."""

    def __init__(self, deltas: list[dict[str, np.ndarray]], seconds: list[float]) -> None:
        self.nodes = [500 + 3 * i for i in range(len(deltas))]
        self.deltas = deltas
        self.seconds = seconds

    def set_run(self, run):  # noqa: D102 - not used by strategies
        raise NotImplementedError

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError

    def push_messages(self, messages):  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        out = []
        for msg in messages:
            i = self.nodes.index(msg.metadata.dst_node_id)
            arrays = {
                k: Array(a.numpy() + self.deltas[i][k]) for k, a in msg.content["arrays"].items()
            }
            metrics = MetricRecord(
                {
                    "num-examples": 1 + i,
                    "num-seconds": self.seconds[i],
                    "train-loss": 1.0,
                    "partition-id": i,
                }
            )
            out.append(
                Message(
                    RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg
                )
            )
        return out


SHAPES = {"a": (3, 4), "b": (5,), "c": (2, 2)}


def global_arrays() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord(
        {k: Array(rng.normal(0, 1, s).astype(np.float32)) for k, s in SHAPES.items()}
    )


def random_deltas(n: int, scale: float, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {k: (rng.normal(0, scale, s)).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(n)
    ]


def norm(d: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in d.values())))


def run_round(strategy, grid, rnd=1, arrays=None):
    arrays = arrays or global_arrays()
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
    return strategy.aggregate_train(rnd, grid.send_and_receive(msgs))


def dp_fedavg(n: int, population: int | None = None, **dp) -> UserLevelDP:
    inner = SpeechFedAvg(num_train_nodes=n, seed=4)
    return UserLevelDP(inner, population=population or n, seed=9, **dp)


def new_minus_global(record: ArrayRecord) -> dict[str, np.ndarray]:
    g = global_arrays()
    return {k: record[k].numpy().astype(np.float64) - g[k].numpy() for k in SHAPES}


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
    grid = NodesGrid(deltas, seconds=[1.0, 50.0, 3.0, 400.0])  # very unequal weights
    st = dp_fedavg(4, clip_norm=0.6, noise_multiplier=0.0)
    new, metrics = run_round(st, grid)
    clipped = [clip_delta(d, 0.6)[0] for d in deltas]
    for k in SHAPES:
        expect = np.mean([c[k] for c in clipped], axis=0)
        np.testing.assert_allclose(new_minus_global(new)[k], expect, rtol=1e-4, atol=1e-6)
    norms = [norm(d) for d in deltas]
    assert metrics["dp-clipped-fraction"] == pytest.approx(np.mean([n > 0.6 for n in norms]))
    assert metrics["dp-norm-max"] == pytest.approx(max(norms), rel=1e-6)
    assert metrics["dp-clipped-norm-max"] <= 0.6 + 1e-6
    assert metrics["dp-noise-norm"] == 0.0
    assert "epsilon" not in metrics


def test_missing_clients_count_in_the_fixed_denominator():
    deltas = random_deltas(4, 0.01)  # below the clip norm: nothing is clipped
    grid = NodesGrid(deltas, seconds=[1.0] * 4)
    st = dp_fedavg(4, clip_norm=1.0, noise_multiplier=0.0)
    msgs = list(st.configure_train(1, global_arrays(), ConfigRecord(), grid))
    replies = grid.send_and_receive(msgs)[:3]  # the last node timed out
    new, metrics = st.aggregate_train(1, replies)
    assert metrics["num-failed"] == 1
    for k in SHAPES:
        expect = sum(d[k].astype(np.float64) for d in deltas[:3]) / 4
        np.testing.assert_allclose(new_minus_global(new)[k], expect, rtol=1e-3, atol=1e-6)


def test_noise_has_sigma_z_c_on_the_sum():
    shapes = {"w": (400, 250)}
    g = ArrayRecord({"w": Array(np.zeros(shapes["w"], np.float32))})
    n, z, c = 4, 1.5, 0.2
    zero = [{"w": np.zeros(shapes["w"], np.float32)} for _ in range(n)]
    grid = NodesGrid(zero, seconds=[1.0] * n)
    st = UserLevelDP(
        SpeechFedAvg(num_train_nodes=n), population=40, seed=0, clip_norm=c, noise_multiplier=z
    )
    msgs = list(st.configure_train(1, g, ConfigRecord(), grid))
    new, metrics = st.aggregate_train(1, grid.send_and_receive(msgs))
    noise_avg = new["w"].numpy()
    # average of a sum noised with std z*C over n clients
    assert noise_avg.std() == pytest.approx(z * c / n, rel=0.02)
    assert abs(noise_avg.mean()) < 5 * z * c / n / np.sqrt(noise_avg.size)
    assert metrics["dp-noise-std"] == pytest.approx(z * c / n)
    assert metrics["dp-noise-norm"] == pytest.approx(np.linalg.norm(noise_avg), rel=1e-4)
    assert metrics["epsilon"] > 0


def test_virtual_cohort_scales_noise_and_accounting():
    shapes = {"w": (300, 300)}
    g = ArrayRecord({"w": Array(np.zeros(shapes["w"], np.float32))})
    n, v, z, c = 4, 400, 1.0, 1.0
    grid = NodesGrid([{"w": np.zeros(shapes["w"], np.float32)}] * n, seconds=[1.0] * n)
    st = UserLevelDP(
        SpeechFedAvg(num_train_nodes=n),
        population=20,
        seed=0,
        clip_norm=c,
        noise_multiplier=z,
        virtual_cohort=v,
        virtual_population=100_000,
    )
    msgs = list(st.configure_train(1, g, ConfigRecord(), grid))
    new, _ = st.aggregate_train(1, grid.send_and_receive(msgs))
    assert new["w"].numpy().std() == pytest.approx(z * c / v, rel=0.02)
    assert st.accountant.q == pytest.approx(v / 100_000)
    with pytest.raises(ValueError, match="virtual_population"):
        UserLevelDP(
            SpeechFedAvg(num_train_nodes=n),
            population=20,
            seed=0,
            clip_norm=c,
            noise_multiplier=z,
            virtual_cohort=v,
        )


def test_noise_changes_the_update_and_works_with_fedlamb():
    deltas = random_deltas(3, 0.1)
    quiet = dp_fedavg(3, clip_norm=1.0, noise_multiplier=0.0)
    noisy = dp_fedavg(3, clip_norm=1.0, noise_multiplier=1.0)
    a, _ = run_round(quiet, NodesGrid(deltas, [1.0] * 3))
    b, _ = run_round(noisy, NodesGrid(deltas, [1.0] * 3))
    assert not np.allclose(a["a"].numpy(), b["a"].numpy())
    lamb = UserLevelDP(
        FedLAMB(num_train_nodes=3, eta=0.01),
        population=30,
        seed=1,
        clip_norm=0.5,
        noise_multiplier=1.0,
        clipping="per_layer_uniform",
    )
    new, metrics = run_round(lamb, NodesGrid(deltas, [1.0] * 3))
    assert lamb.strategy.m_t is not None and lamb.strategy.lamb_step_count == 1
    g = global_arrays()
    for k in SHAPES:  # LAMB's first step moves each tensor by eta * ||w||
        moved = np.linalg.norm(new[k].numpy() - g[k].numpy())
        assert moved == pytest.approx(0.01 * np.linalg.norm(g[k].numpy()), rel=1e-3)
    assert metrics["epsilon"] > 0


def test_cohort_must_match_the_accounting():
    st = UserLevelDP(
        SpeechFedAvg(num_train_nodes=3), population=10, seed=0, clip_norm=1.0, noise_multiplier=1.0
    )
    grid = NodesGrid(random_deltas(6, 0.1), [1.0] * 6)  # 6 nodes connected, 10 declared
    st.strategy.sampler.num_nodes = None  # a fraction-based cohort now: 6 * 1.0 = 6 != 3
    with pytest.raises(Exception, match="accounted for a cohort of 3"):
        list(st.configure_train(1, global_arrays(), ConfigRecord(), grid))


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

    def make():
        return UserLevelDP(FedLAMB(num_train_nodes=4, seed=8, eta=0.02), **kw)

    first = make()
    arrays, _ = run_round(first, NodesGrid(deltas, [1.0] * 10), 1)
    state = first.state_dict()
    assert state["dp/rounds"] == 1 and "lamb/step" in state and "sampler/rng" in state
    resumed = make()
    resumed.load_state_dict(state)
    a1, m1 = run_round(first, NodesGrid(deltas, [1.0] * 10), 2, arrays)
    a2, m2 = run_round(resumed, NodesGrid(deltas, [1.0] * 10), 2, arrays)
    for k in SHAPES:
        np.testing.assert_array_equal(a1[k].numpy(), a2[k].numpy())
    assert m1["epsilon"] == m2["epsilon"] == first.epsilon(2)
    assert m1["epsilon"] > UserLevelAccountant(0.8, 0.4, 1e-6, "rdp").epsilon(1)
