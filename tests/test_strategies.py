"""Server strategies: equality with Flower's own, LAMB rule, schedules, sampling, state."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedspeech.federation.schedules import Constant, LinearWarmup, StepDecay
from fedspeech.federation.strategies import (
    ClientFailuresError,
    FedLAMB,
    SpeechFedAdam,
    SpeechFedAvg,
    build_strategy,
    lamb_step,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _as_server(server_identity):
    """Every test here builds Messages as a ServerApp does."""


class LocalGrid(Grid):
    """In-process Grid: every train message is answered at once by ``client_fn``.

    ``client_fn(node_id, message)`` returns the reply RecordDict, an ``Error``, or
    ``None`` (the node never answers, as on a round timeout).
    """

    def __init__(self, node_ids: list[int], client_fn: Callable) -> None:
        self.node_ids = list(node_ids)
        self.client_fn = client_fn

    def set_run(self, run):  # noqa: D102 - not used by strategies
        raise NotImplementedError

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages):  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: D102
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            out = self.client_fn(msg.metadata.dst_node_id, msg)
            if out is None:
                continue
            replies.append(Message(out, reply_to=msg))
        return replies


def client_update(partition: int, msg: Message) -> RecordDict:
    """A deterministic local 'training' result for one partition and round."""
    rnd = int(msg.content["config"]["server-round"])
    rng = np.random.default_rng([partition, rnd])
    arrays = {
        k: a.numpy() + rng.normal(0, 0.05 * (1 + partition % 3), a.shape).astype(np.float32)
        for k, a in msg.content["arrays"].items()
    }
    metrics = MetricRecord(
        {
            "num-examples": 5 + partition,
            "num-seconds": 12.5 * (1 + partition) + 0.25 * rnd,
            "train-loss": 2.0 / (1 + partition) + 0.1 * rnd,
            "partition-id": partition,
        }
    )
    return RecordDict(
        {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": metrics}
    )


def node_ids_for(n: int, offset: int = 1000) -> list[int]:
    return [offset + 7 * i for i in range(n)]


def make_grid(nodes: list[int], fail: dict[int, str] | None = None) -> LocalGrid:
    """Grid whose node ``nodes[i]`` holds partition ``i``; ``fail`` maps node->mode."""
    part = {nid: i for i, nid in enumerate(nodes)}
    fail = fail or {}

    def fn(nid: int, msg: Message):
        mode = fail.get(nid)
        if mode == "error":
            return Error(code=1, reason="CUDA out of memory")
        if mode == "silent":
            return None
        return client_update(part[nid], msg)

    return LocalGrid(nodes, fn)


def global_arrays(seed: int = 0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    shapes = {"enc.w": (6, 4), "enc.b": (4,), "ctc.w": (4, 5)}
    return ArrayRecord(
        {k: Array(rng.normal(0, 1, s).astype(np.float32)) for k, s in shapes.items()}
    )


def one_round(strategy, grid: LocalGrid, rnd: int, arrays: ArrayRecord):
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
    replies = grid.send_and_receive(msgs)
    new, metrics = strategy.aggregate_train(rnd, replies)
    return msgs, new, metrics


def to_np(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


# -------------------------------------------------------- equality with Flower
@pytest.mark.parametrize("key", ["num-examples", "num-seconds"])
def test_fedavg_equals_flower_weighted(key):
    nodes = node_ids_for(5)
    grid = make_grid(nodes)
    arrays = global_arrays()
    ours = SpeechFedAvg(fraction_train=1.0, weighted_by_key=key, seed=3)
    flower = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, weighted_by_key=key)
    _, a_ours, m_ours = one_round(ours, grid, 1, arrays)
    _, a_flwr, m_flwr = one_round(flower, grid, 1, arrays)
    for k, x in to_np(a_flwr).items():
        np.testing.assert_allclose(to_np(a_ours)[k], x, rtol=1e-6, atol=1e-7)
    assert m_ours["train-loss"] == pytest.approx(m_flwr["train-loss"], rel=1e-12)
    # counts are totals over the cohort, ids are not averaged
    assert m_ours["num-examples"] == sum(5 + i for i in range(5))
    assert "partition-id" not in m_ours
    assert (m_ours["num-sampled"], m_ours["num-replied"], m_ours["num-failed"]) == (5, 5, 0)


def test_weighting_key_changes_the_average():
    nodes = node_ids_for(4)
    arrays = global_arrays()
    by_sec = one_round(SpeechFedAvg(weighted_by_key="num-seconds"), make_grid(nodes), 1, arrays)[1]
    by_ex = one_round(SpeechFedAvg(weighted_by_key="num-examples"), make_grid(nodes), 1, arrays)[1]
    assert not np.allclose(to_np(by_sec)["enc.w"], to_np(by_ex)["enc.w"])


def test_fedadam_equals_flower_over_rounds():
    nodes = node_ids_for(4)
    grid = make_grid(nodes)
    hp = dict(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3)
    ours = SpeechFedAdam(fraction_train=1.0, weighted_by_key="num-examples", **hp)
    flower = FedAdam(
        fraction_train=1.0, fraction_evaluate=0.0, weighted_by_key="num-examples", **hp
    )
    a_ours = a_flwr = global_arrays()
    for rnd in (1, 2, 3):
        _, a_ours, _ = one_round(ours, grid, rnd, a_ours)
        _, a_flwr, _ = one_round(flower, grid, rnd, a_flwr)
        for k, x in to_np(a_flwr).items():
            np.testing.assert_allclose(to_np(a_ours)[k], x, rtol=2e-6, atol=2e-6)
    # the update really moved the model
    assert not np.allclose(to_np(a_ours)["enc.w"], to_np(global_arrays())["enc.w"])
    # the global model keeps its dtype
    assert to_np(a_ours)["enc.w"].dtype == np.float32


# ------------------------------------------------------------------- LAMB rule
def test_lamb_step_hand_checked():
    w = {"a": np.array([3.0, 4.0]), "z": np.zeros(3)}
    d = {"a": np.array([2.0, -1.0]), "z": np.array([0.5, 0.5, 0.5])}
    new, m, v, ratios = lamb_step(
        w, d, None, None, eta=0.1, beta_1=0.9, beta_2=0.99, eps=0.0, step=1
    )
    # m = 0.1 d, v = 0.01 d^2 -> bias corrected m_hat = d, v_hat = d^2 -> r = sign(d)
    np.testing.assert_allclose(m["a"], [0.2, -0.1])
    np.testing.assert_allclose(v["a"], [0.04, 0.01])
    # trust ratio ||w|| / ||r|| = 5 / sqrt(2)
    assert ratios["a"] == pytest.approx(5 / np.sqrt(2))
    np.testing.assert_allclose(new["a"], [3 + 0.5 / np.sqrt(2), 4 - 0.5 / np.sqrt(2)])
    # zero-norm tensor: ratio 1, plain Adam step of eta * sign(d)
    assert ratios["z"] == 1.0
    np.testing.assert_allclose(new["z"], [0.1, 0.1, 0.1])


def test_fedlamb_strategy_moves_each_tensor_by_eta_times_its_norm():
    nodes = node_ids_for(3)
    arrays = global_arrays()
    lamb = FedLAMB(eta=0.01, fraction_train=1.0, tau=1e-12)
    _, new, _ = one_round(lamb, make_grid(nodes), 1, arrays)
    old = to_np(arrays)
    for k, x in to_np(new).items():
        # first LAMB step: ||w_new - w|| = eta * ||w|| for every tensor
        assert np.linalg.norm(x - old[k]) == pytest.approx(0.01 * np.linalg.norm(old[k]), rel=1e-4)
    assert lamb.lamb_step_count == 1


# ------------------------------------------------------------ config and LR
def test_schedules():
    assert Constant(0.1)(7) == 0.1
    step = StepDecay(1.0, gamma=0.5, every=10)
    assert [step(r) for r in (1, 10, 11, 21)] == [1.0, 1.0, 0.5, 0.25]
    warm = LinearWarmup(0.4, warmup_rounds=4, then=StepDecay(0.4, gamma=0.1, every=2))
    assert [round(warm(r), 6) for r in (1, 2, 4, 5, 6, 7)] == [0.1, 0.2, 0.4, 0.4, 0.4, 0.04]
    with pytest.raises(ValueError):
        Constant(0.1)(0)
    with pytest.raises(ValueError):
        StepDecay(1.0, gamma=0.5, every=0)


def test_train_config_keys():
    nodes = node_ids_for(3)
    arrays = global_arrays()
    plain = SpeechFedAvg(client_lr=StepDecay(0.2, gamma=0.5, every=1), fraction_train=1.0)
    cfg = list(plain.configure_train(3, arrays, ConfigRecord({"epochs": 1}), make_grid(nodes)))[
        0
    ].content["config"]
    assert dict(cfg) == {"epochs": 1, "server-round": 3, "lr": pytest.approx(0.05)}
    prox = SpeechFedAvg(proximal_mu=0.01, fraction_train=1.0)
    cfg = list(prox.configure_train(1, arrays, ConfigRecord(), make_grid(nodes)))[0].content[
        "config"
    ]
    assert cfg["proximal-mu"] == 0.01


# ---------------------------------------------------------------- sampling
def sampled_partitions(strategy, nodes, rounds=6):
    part = {nid: i for i, nid in enumerate(nodes)}
    grid = make_grid(nodes)
    out = []
    for rnd in range(1, rounds + 1):
        msgs = strategy.configure_train(rnd, global_arrays(), ConfigRecord(), grid)
        out.append(sorted(part[m.metadata.dst_node_id] for m in msgs))
    return out


def test_seeded_sampling_is_reproducible():
    nodes = node_ids_for(20)
    a = sampled_partitions(SpeechFedAvg(num_train_nodes=4, seed=11), nodes)
    b = sampled_partitions(SpeechFedAvg(num_train_nodes=4, seed=11), nodes)
    c = sampled_partitions(SpeechFedAvg(num_train_nodes=4, seed=12), nodes)
    assert a == b
    assert a != c
    assert all(len(s) == 4 for s in a)
    frac = sampled_partitions(SpeechFedAvg(fraction_train=0.25, min_train_nodes=2), nodes, 1)
    assert len(frac[0]) == 5


def test_partition_map_makes_sampling_independent_of_node_ids():
    """A new simulation run gets new random node ids; the cohort must not change."""
    runs = []
    for offset in (10, 987654):
        nodes = node_ids_for(12, offset)[::-1]
        st = SpeechFedAvg(num_train_nodes=3, seed=5)
        st.set_node_partitions({nid: i for i, nid in enumerate(nodes)})
        runs.append(sampled_partitions(st, nodes, 4))
    assert runs[0] == runs[1]


def test_sampling_fails_clearly_when_nodes_are_missing():
    st = SpeechFedAvg(num_train_nodes=5, node_wait_timeout_s=0.0)
    with pytest.raises(RuntimeError, match="only 3 nodes connected"):
        list(st.configure_train(1, global_arrays(), ConfigRecord(), make_grid(node_ids_for(3))))


# ---------------------------------------------------------------- failures
def test_accept_failures_aggregates_the_rest_and_records_why():
    nodes = node_ids_for(5)
    grid = make_grid(nodes, fail={nodes[1]: "error", nodes[3]: "silent"})
    st = SpeechFedAvg(fraction_train=1.0, accept_failures=True)
    _, new, metrics = one_round(st, grid, 1, global_arrays())
    assert new is not None
    assert (metrics["num-sampled"], metrics["num-replied"], metrics["num-failed"]) == (5, 3, 2)
    assert "CUDA out of memory" in st.last_round.failures[nodes[1]]
    assert "no reply" in st.last_round.failures[nodes[3]]
    # the average is over the three that replied
    ok = [client_update(i, _msg_for(nodes[i], 1)) for i in (0, 2, 4)]
    w = np.array([r["metrics"]["num-seconds"] for r in ok])
    expect = sum(wi * r["arrays"]["enc.w"].numpy() for wi, r in zip(w / w.sum(), ok))
    np.testing.assert_allclose(to_np(new)["enc.w"], expect, rtol=1e-5, atol=1e-6)


def test_failures_abort_when_not_accepted():
    nodes = node_ids_for(4)
    grid = make_grid(nodes, fail={nodes[2]: "error"})
    st = SpeechFedAvg(fraction_train=1.0, accept_failures=False)
    with pytest.raises(ClientFailuresError, match="accept_failures is false"):
        one_round(st, grid, 1, global_arrays())


def test_reply_with_wrong_shape_is_rejected():
    def bad(nid, msg):
        out = client_update(0, msg)
        out["arrays"]["enc.b"] = Array(np.zeros((1, 4), np.float32))
        return out

    st = SpeechFedAvg(fraction_train=1.0)
    with pytest.raises(AggregationError, match="'enc.b' has shape"):
        one_round(st, LocalGrid(node_ids_for(2), bad), 1, global_arrays())


def _msg_for(nid: int, rnd: int) -> Message:
    content = RecordDict({"arrays": global_arrays(), "config": ConfigRecord({"server-round": rnd})})
    return Message(content, nid, "train")


# ------------------------------------------------------------------- state
def save_and_load(state: dict, tmp_path: Path) -> dict:
    """Round trip the way a checkpoint does: tensors to safetensors, scalars to JSON."""
    from safetensors.numpy import load_file, save_file

    tensors = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    assert all(isinstance(v, (int, float)) for v in scalars.values())
    save_file(tensors, str(tmp_path / "strategy.safetensors"))
    (tmp_path / "strategy.json").write_text(json.dumps(scalars))
    return {
        **load_file(str(tmp_path / "strategy.safetensors")),
        **json.loads((tmp_path / "strategy.json").read_text()),
    }


@pytest.mark.parametrize("cls", [FedLAMB, SpeechFedAdam])
def test_state_dict_round_trip_gives_identical_next_round(cls, tmp_path):
    nodes = node_ids_for(10)
    kw = dict(num_train_nodes=3, seed=21, eta=0.01)
    first = cls(**kw)
    _, arrays, _ = one_round(first, make_grid(nodes), 1, global_arrays())
    restored = cls(**kw)
    restored.load_state_dict(save_and_load(first.state_dict(), tmp_path))
    m1, a1, _ = one_round(first, make_grid(nodes), 2, arrays)
    m2, a2, _ = one_round(restored, make_grid(nodes), 2, arrays)
    assert [m.metadata.dst_node_id for m in m1] == [m.metadata.dst_node_id for m in m2]
    for k, x in to_np(a1).items():
        np.testing.assert_array_equal(to_np(a2)[k], x)
    # without the state the next round differs (moments and sampler are really restored)
    fresh = cls(**kw)
    m3, a3, _ = one_round(fresh, make_grid(nodes), 2, arrays)
    differs = [m.metadata.dst_node_id for m in m3] != [m.metadata.dst_node_id for m in m1]
    assert differs or not np.array_equal(to_np(a3)["enc.w"], to_np(a1)["enc.w"])


def test_load_state_dict_rejects_unknown_keys():
    st = SpeechFedAvg()
    state = st.state_dict()
    state["m/typo"] = np.zeros(2)
    with pytest.raises(KeyError, match="unknown strategy state keys"):
        st.load_state_dict(state)


# ---------------------------------------------------------------- factory
STRATEGY_CLASSES = {
    "fedavg": "SpeechFedAvg",
    "fedprox": "SpeechFedAvg",
    "fedadam": "SpeechFedAdam",
    "fedyogi": "SpeechFedYogi",
    "fedadagrad": "SpeechFedAdagrad",
    "fedlamb": "FedLAMB",
}


def compose_strategy(tmp_path: Path, name: str, overrides: list[str] = ()):
    from hydra import compose, initialize_config_dir

    (tmp_path / "config.yaml").write_text(
        f"defaults:\n  - strategy: {name}\n  - _self_\n"
        "train:\n  lr: 0.003\n"
        f"hydra:\n  searchpath:\n    - file://{REPO / 'conf'}\n"
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides)).strategy


@pytest.mark.parametrize("name", sorted(STRATEGY_CLASSES))
def test_build_strategy_from_each_conf_file(name, tmp_path):
    cfg = compose_strategy(tmp_path, name)
    st = build_strategy(cfg, population=20, seed=0)
    assert type(st).__name__ == STRATEGY_CLASSES[name]
    assert st.weighted_by_key == "num-seconds"
    msgs = list(st.configure_train(1, global_arrays(), ConfigRecord(), make_grid(node_ids_for(20))))
    assert len(msgs) == max(cfg.min_train_nodes, int(20 * cfg.fraction_train))
    assert ("proximal-mu" in msgs[0].content["config"]) == (name == "fedprox")
    assert msgs[0].content["config"]["lr"] == pytest.approx(0.003)  # ${train.lr}


def test_build_strategy_wraps_dp_and_rejects_typos(tmp_path):
    from fedspeech.federation.privacy import UserLevelDP

    cfg = compose_strategy(
        tmp_path, "fedlamb", ["strategy/dp=gaussian", "strategy.num_train_nodes=5"]
    )
    st = build_strategy(cfg, population=50, seed=0)
    assert isinstance(st, UserLevelDP) and isinstance(st.strategy, FedLAMB)
    assert st.accountant.q == pytest.approx(0.1)
    cfg = compose_strategy(tmp_path, "fedavg", ["+strategy.fracton_train=0.5"])
    with pytest.raises(ValueError, match="fracton_train"):
        build_strategy(cfg, population=10, seed=0)
    cfg = compose_strategy(tmp_path, "fedavg", ["strategy.num_train_nodes=11"])
    with pytest.raises(ValueError, match="exceeds the population"):
        build_strategy(cfg, population=10, seed=0)
