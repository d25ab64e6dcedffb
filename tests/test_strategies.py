"""Strategies on a real Flower grid (tests/flower_federation.py): aggregation, server optimisers,
screening, failures, arrival order, sampling, state and the factory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedMedian

from fedspeech.federation.nodes import query_nodes
from fedspeech.federation.parameters import array_view, numpy_record, record_arrays
from fedspeech.federation.schedules import Constant, LinearWarmup, StepDecay
from fedspeech.federation.server_updates import adam_step, lamb_step
from fedspeech.federation.strategies import (ClientFailuresError, FedLAMB, FlowerStrategy,
                                             SpeechFedAdam, SpeechFedAvg, SpeechFedAvgM,
                                             SpeechFedYogi, build_strategy)
from flower_federation import LocalFederation

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"enc.w": (6, 5), "enc.b": (5,), "head.w": (5, 3)}


def global_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def data_seconds(pid: int) -> float:
    return 40.0 + 10 * pid


def update_of(pid: int, msg: Message) -> dict[str, np.ndarray]:
    """A client's trained arrays: deterministic in (partition, round)."""
    rnd = int(msg.content["config"]["server-round"])
    rng = np.random.default_rng(1000 * rnd + pid)
    arrays = record_arrays(msg.content["arrays"])
    return {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.1 for k, v in arrays.items()}


def reply_content(pid: int, arrays: dict[str, np.ndarray], **metrics: float) -> RecordDict:
    values = {"num-examples": 5 + pid, "num-seconds": data_seconds(pid) - 1.0,
              "train-loss": 1.0 + pid, "partition-id": pid, **metrics}
    return RecordDict({"arrays": numpy_record(arrays), "metrics": MetricRecord(values)})


def handler_from(train):  # noqa: ANN001, ANN201
    """A node: answers the identity query with its data sizes, and trains with `train`."""
    def handle(pid: int, msg: Message) -> RecordDict | None:
        if msg.metadata.message_type == "query":
            return RecordDict({"metrics": MetricRecord({
                "partition-id": pid, "num-examples": 5 + pid, "num-seconds": data_seconds(pid)})})
        return train(pid, msg)
    return handle


def honest(pid: int, msg: Message) -> RecordDict:
    return reply_content(pid, update_of(pid, msg))


def rounds(strategy, fed: LocalFederation, num_rounds: int = 1,
           arrays: dict[str, np.ndarray] | None = None):  # noqa: ANN201
    """Run `num_rounds` of `strategy.start` on the federation; returns (arrays, Result)."""
    strategy.set_nodes(query_nodes(fed.grid, len(fed.partition_of), wait_s=10, timeout=30))
    result = strategy.start(fed.grid, numpy_record(arrays or global_arrays()), num_rounds=num_rounds,
                            timeout=30, train_config=ConfigRecord({"local-epochs": 1}))
    return {k: np.array(v) for k, v in record_arrays(result.arrays).items()}, result


def run(strategy, num_nodes: int = 5, train=honest, num_rounds: int = 1, **fed_kw):  # noqa: ANN001, ANN201
    with LocalFederation(num_nodes, handler_from(train), **fed_kw) as fed:
        return rounds(strategy, fed, num_rounds)


def weighted_mean(pids: list[int], rnd: int, arrays: dict[str, np.ndarray], key: str = "num-seconds"):  # noqa: ANN201
    """The exact weighted mean of the honest replies of `pids` (float64)."""
    msg_cfg = RecordDict({"arrays": numpy_record(arrays), "config": ConfigRecord({"server-round": rnd})})

    class _Msg:  # only `content` is read by update_of
        content = msg_cfg

    ups = [update_of(p, _Msg) for p in pids]
    w = np.array([5 + p if key == "num-examples" else data_seconds(p) - 1.0 for p in pids], dtype=np.float64)
    return {k: sum(wi * u[k].astype(np.float64) for wi, u in zip(w, ups)) / w.sum() for k in arrays}


def flower_round(flower, num_nodes: int = 5):  # noqa: ANN001, ANN201
    """One round of a Flower strategy on the same federation and replies (Flower's own loop)."""
    with LocalFederation(num_nodes, handler_from(honest)) as fed:
        result = flower.start(fed.grid, numpy_record(global_arrays()), num_rounds=1, timeout=30)
    return {k: np.array(v) for k, v in record_arrays(result.arrays).items()}


# -------------------------------------------------------- aggregation
@pytest.mark.parametrize("key", ["num-examples", "num-seconds"])
def test_fedavg_equals_flower_fedavg_and_the_exact_weighted_mean(key):
    ours, result = run(SpeechFedAvg(fraction_train=1.0, weighted_by_key=key, seed=3))
    flower = flower_round(FedAvg(fraction_train=1.0, fraction_evaluate=0.0, weighted_by_key=key))
    exact = weighted_mean(list(range(5)), 1, global_arrays(), key)
    for k in SHAPES:
        np.testing.assert_allclose(ours[k], flower[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ours[k], exact[k], rtol=1e-6, atol=1e-7)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["num-examples"] == sum(5 + i for i in range(5))    # totals, not means
    assert "partition-id" not in metrics
    assert (metrics["num-sampled"], metrics["num-replied"], metrics["num-failed"]) == (5, 5, 0)


def test_weighting_key_changes_the_average():
    by_sec = run(SpeechFedAvg(fraction_train=1.0, weighted_by_key="num-seconds"))[0]
    by_ex = run(SpeechFedAvg(fraction_train=1.0, weighted_by_key="num-examples"))[0]
    assert not np.allclose(by_sec["enc.w"], by_ex["enc.w"])


@pytest.mark.parametrize("make", [
    lambda: SpeechFedAdam(fraction_train=1.0, eta=0.05),
    lambda: SpeechFedYogi(fraction_train=1.0, eta=0.05),
    lambda: FedLAMB(fraction_train=1.0, eta=0.05),
    lambda: SpeechFedAvgM(fraction_train=1.0, server_learning_rate=1.0, server_momentum=0.9),
], ids=["fedadam", "fedyogi", "fedlamb", "fedavgm"])
def test_server_optimisers_do_not_silently_run_fedavg(make):
    """Two rounds on the same replies: an optimiser that ran FedAvg would give FedAvg's arrays."""
    fedavg = run(SpeechFedAvg(fraction_train=1.0), num_rounds=2)[0]
    other = run(make(), num_rounds=2)[0]
    assert not np.allclose(other["enc.w"], fedavg["enc.w"], atol=1e-4)


def test_fedadam_is_adam_on_the_round_delta():
    hp = dict(beta_1=0.9, beta_2=0.99, tau=1e-3)
    ours = run(SpeechFedAdam(fraction_train=1.0, eta=0.05, **hp))[0]
    start = global_arrays()
    mean = weighted_mean(list(range(5)), 1, start)
    expect, _ = adam_step(start, {k: mean[k] - start[k] for k in start}, None, eta=0.05, step=1, **hp)
    for k in SHAPES:
        np.testing.assert_allclose(ours[k], expect[k], rtol=1e-6, atol=1e-7)


def test_fedavgm_equals_flower_fedavgm_over_two_rounds():
    ours = run(SpeechFedAvgM(fraction_train=1.0, weighted_by_key="num-examples",
                             server_learning_rate=0.7, server_momentum=0.5), num_rounds=2)[0]
    flower = FedAvgM(fraction_train=1.0, fraction_evaluate=0.0, server_learning_rate=0.7,
                     server_momentum=0.5)
    with LocalFederation(5, handler_from(honest)) as fed:
        result = flower.start(fed.grid, numpy_record(global_arrays()), num_rounds=2, timeout=30)
    theirs = record_arrays(result.arrays)
    for k in SHAPES:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6)


def test_lamb_step_hand_checked():
    w = {"a": np.array([3.0, 4.0]), "z": np.zeros(3)}
    d = {"a": np.array([2.0, -1.0]), "z": np.array([0.5, 0.5, 0.5])}
    new, slots = lamb_step(w, d, None, eta=0.1, step=1, beta_1=0.9, beta_2=0.99, tau=0.0)
    # m = 0.1 d, v = 0.01 d^2 -> bias corrected m_hat = d, v_hat = d^2 -> r = sign(d)
    np.testing.assert_allclose(slots["m"]["a"], [0.2, -0.1])
    np.testing.assert_allclose(slots["v"]["a"], [0.04, 0.01])
    # trust ratio ||w|| / ||r|| = 5 / sqrt(2)
    np.testing.assert_allclose(new["a"], [3 + 0.5 / np.sqrt(2), 4 - 0.5 / np.sqrt(2)])
    # zero-norm tensor: ratio 1, a plain Adam step of eta * sign(d)
    np.testing.assert_allclose(new["z"], [0.1, 0.1, 0.1])


def test_fedlamb_moves_each_tensor_by_eta_times_its_norm():
    lamb = FedLAMB(eta=0.01, fraction_train=1.0, tau=1e-12)
    new = run(lamb, num_nodes=3)[0]
    old = global_arrays()
    for k, x in new.items():
        # first LAMB step: ||w_new - w|| = eta * ||w|| for every tensor
        assert np.linalg.norm(x - old[k]) == pytest.approx(0.01 * np.linalg.norm(old[k]), rel=1e-4)
    assert lamb.steps == 1


# -------------------------------------------------------- arrival order
def _reverse(pids: list[int]) -> list[int]:
    return sorted(pids, reverse=True)


def _forward(pids: list[int]) -> list[int]:
    return sorted(pids)


@pytest.mark.parametrize("make", [
    lambda: SpeechFedAvg(fraction_train=1.0),
    lambda: SpeechFedAdam(fraction_train=1.0, eta=0.05),
    lambda: build_strategy({**_common(), "fraction_train": 1.0,
                            "builder": {"_target_": "fedspeech.federation.strategies.SpeechFedAvg"},
                            "dp": {"enabled": True, "clip_norm": 0.5, "noise_multiplier": 0.7}},
                           population=9, seed=4),
], ids=["fedavg", "fedadam", "dp"])
def test_result_does_not_depend_on_arrival_order(make):
    """The same replies, released in two opposite orders: identical arrays, bit for bit."""
    big = {"enc.w": (300, 200), "enc.b": (5,), "head.w": (5, 3)}

    def train(pid: int, msg: Message) -> RecordDict:
        rng = np.random.default_rng(pid)
        arrays = record_arrays(msg.content["arrays"])
        return reply_content(pid, {k: v + rng.standard_normal(v.shape).astype(np.float32)
                                   * 10.0 ** rng.integers(-6, 1) for k, v in arrays.items()})

    start = {k: np.random.default_rng(1).standard_normal(s).astype(np.float32) for k, s in big.items()}
    results = []
    for order in (_forward, _reverse):
        with LocalFederation(9, handler_from(train), reply_order=order, batch=9) as fed:
            results.append(rounds(make(), fed, 2, start)[0])
    for k in big:
        np.testing.assert_array_equal(results[0][k], results[1][k])


# -------------------------------------------------------- screening and failures
def faulty(bad: dict[int, str]):  # noqa: ANN201
    """Honest clients, except those in `bad`, which misbehave in the named way."""
    def train(pid: int, msg: Message) -> RecordDict | None:
        arrays = update_of(pid, msg)
        kind = bad.get(pid)
        if kind == "crash":
            raise RuntimeError("CUDA out of memory")
        if kind == "nan":
            arrays["enc.b"][2] = np.nan
        elif kind == "inf":
            arrays["head.w"][0, 0] = np.inf
        elif kind == "shape":
            arrays["enc.b"] = np.zeros((1, 5), np.float32)
        elif kind == "missing":
            del arrays["head.w"]
        elif kind == "extra":
            arrays["other"] = np.zeros(2, np.float32)
        elif kind == "huge":
            arrays["enc.w"] = arrays["enc.w"] + 100.0
        elif kind == "weight":
            return reply_content(pid, arrays, **{"num-seconds": 1e6})
        elif kind == "absurd":
            arrays["enc.w"] = arrays["enc.w"] * 1e6
        return reply_content(pid, arrays)
    return train


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_bad_replies_are_rejected_per_client_and_the_rest_aggregated(dp):
    bad = {1: "crash", 2: "nan", 3: "shape", 4: "missing", 5: "extra", 6: "weight", 7: "inf",
           8: "absurd"}
    kw = {"dp": {"enabled": True, "clip_norm": 1.0, "noise_multiplier": 0.0}} if dp else {}
    st = build_strategy({**_common(), "fraction_train": 1.0, "min_train_nodes": 2,
                         "builder": {"_target_": "fedspeech.federation.strategies.SpeechFedAvg"}, **kw},
                        population=11, seed=0)
    new, result = run(st, num_nodes=11, train=faulty(bad))
    report = st.last_round
    by_pid = {st.nodes[n].partition_id: why for n, why in report.problems().items()}
    assert set(by_pid) == set(bad) if not dp else set(bad) - {6}     # DP ignores weights
    assert "CUDA out of memory" in by_pid[1]
    assert "non-finite" in by_pid[2] and "non-finite" in by_pid[7]
    assert "shape" in by_pid[3]
    assert "missing ['head.w']" in by_pid[4] and "extra ['other']" in by_pid[5]
    assert "aggregation range" in by_pid[8]
    if not dp:
        assert "exceeds" in by_pid[6]
    good = [p for p in range(11) if p not in by_pid]
    assert sorted(st.nodes[n].partition_id for n in report.accepted) == good
    metrics = result.train_metrics_clientapp[1]
    assert metrics["num-replied"] == len(good)
    assert metrics["num-failed"] + metrics["num-rejected"] == len(by_pid)
    if not dp:
        exact = weighted_mean(good, 1, global_arrays())
        for k in SHAPES:
            np.testing.assert_allclose(new[k], exact[k], rtol=1e-6, atol=1e-7)
    assert all(np.isfinite(v).all() for v in new.values())


def test_max_update_norm_rejects_absurd_updates():
    st = SpeechFedAvg(fraction_train=1.0, max_update_norm=5.0)
    new, _ = run(st, num_nodes=4, train=faulty({2: "huge"}))
    (why,) = st.last_round.rejected.values()
    assert "exceeds max_update_norm 5" in why
    exact = weighted_mean([0, 1, 3], 1, global_arrays())
    np.testing.assert_allclose(new["enc.w"], exact["enc.w"], rtol=1e-6, atol=1e-7)


def test_too_few_usable_replies_leave_the_model_unchanged():
    st = SpeechFedAdam(fraction_train=1.0, min_train_nodes=3, eta=0.05)
    new, result = run(st, num_nodes=4, train=faulty({0: "crash", 1: "nan"}))
    for k, x in global_arrays().items():
        np.testing.assert_array_equal(new[k], x)
    assert "fewer than min_train_nodes=3" in st.last_round.skipped
    assert st.steps == 0                       # the server optimiser did not step
    assert result.train_metrics_clientapp[1]["num-replied"] == 2


def test_failures_abort_when_not_accepted():
    st = SpeechFedAvg(fraction_train=1.0, accept_failures=False)
    with pytest.raises(ClientFailuresError, match="accept_failures is false"):
        run(st, num_nodes=4, train=faulty({2: "crash"}))


def test_a_straggler_beyond_the_round_timeout_is_counted_and_ignored():
    import time

    def slow(pid: int, msg: Message) -> RecordDict:
        if pid == 1:
            time.sleep(3.0)
        return honest(pid, msg)

    st = SpeechFedAvg(fraction_train=1.0)
    with LocalFederation(3, handler_from(slow)) as fed:
        st.set_nodes(query_nodes(fed.grid, 3, wait_s=10, timeout=30))
        result = st.start(fed.grid, numpy_record(global_arrays()), num_rounds=1, timeout=1.0)
    assert [st.nodes[n].partition_id for n in st.last_round.timed_out] == [1]
    exact = weighted_mean([0, 2], 1, global_arrays())
    np.testing.assert_allclose(record_arrays(result.arrays)["enc.w"], exact["enc.w"], rtol=1e-6, atol=1e-7)


# -------------------------------------------------------- config and sampling
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


def configured(strategy, num_nodes: int, rnd: int = 1, config: ConfigRecord | None = None):  # noqa: ANN201
    with LocalFederation(num_nodes, handler_from(honest)) as fed:
        strategy.set_nodes(query_nodes(fed.grid, num_nodes, wait_s=10, timeout=30))
        msgs = list(strategy.configure_train(rnd, numpy_record(global_arrays()),
                                             config or ConfigRecord(), fed.grid))
        return [strategy.nodes[m.metadata.dst_node_id].partition_id for m in msgs], msgs


def test_train_config_keys():
    st = SpeechFedAvg(client_lr=StepDecay(0.2, gamma=0.5, every=1), fraction_train=1.0)
    _, msgs = configured(st, 3, rnd=3, config=ConfigRecord({"local-epochs": 2}))
    assert dict(msgs[0].content["config"]) == {"local-epochs": 2, "server-round": 3,
                                               "lr": pytest.approx(0.05)}
    _, msgs = configured(SpeechFedAvg(proximal_mu=0.01, fraction_train=1.0), 3)
    assert msgs[0].content["config"]["proximal-mu"] == 0.01


def test_seeded_sampling_is_reproducible_and_independent_of_node_ids():
    """Node ids are random per run; the same seed must draw the same partitions."""
    def cohorts(seed: int) -> list[list[int]]:
        st = SpeechFedAvg(num_train_nodes=4, seed=seed)
        with LocalFederation(20, handler_from(honest)) as fed:    # new random node ids each time
            st.set_nodes(query_nodes(fed.grid, 20, wait_s=10, timeout=30))
            return [sorted(st.nodes[m.metadata.dst_node_id].partition_id for m in
                           st.configure_train(r, numpy_record(global_arrays()), ConfigRecord(), fed.grid))
                    for r in range(1, 6)]

    a, b, c = cohorts(11), cohorts(11), cohorts(12)
    assert a == b and a != c and all(len(s) == 4 for s in a)
    pids, _ = configured(SpeechFedAvg(fraction_train=0.25, min_train_nodes=2), 20)
    assert len(pids) == 5


def test_sampling_fails_clearly_when_nodes_are_missing():
    st = SpeechFedAvg(num_train_nodes=5, node_wait_timeout_s=0.0)
    with pytest.raises(RuntimeError, match="only 3 nodes connected"):
        configured(st, 3)


# -------------------------------------------------------- state
def save_and_load(state: dict, tmp_path: Path) -> dict:
    """Round trip the way a checkpoint does: tensors to safetensors, scalars to JSON."""
    from safetensors.numpy import load_file, save_file

    tensors = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    assert all(isinstance(v, (int, float)) for v in scalars.values())
    save_file(tensors, str(tmp_path / "strategy.safetensors"))
    (tmp_path / "strategy.json").write_text(json.dumps(scalars))
    return {**load_file(str(tmp_path / "strategy.safetensors")),
            **json.loads((tmp_path / "strategy.json").read_text())}


@pytest.mark.parametrize("make", [
    lambda: FedLAMB(num_train_nodes=3, seed=21, eta=0.01),
    lambda: SpeechFedAdam(num_train_nodes=3, seed=21, eta=0.01),
    lambda: FlowerStrategy(num_train_nodes=3, seed=21, flower=lambda **kw: FedAvgM(
        server_momentum=0.9, **kw)),
], ids=["fedlamb", "fedadam", "flower_fedavgm"])
def test_state_dict_round_trip_gives_identical_next_round(make, tmp_path):
    with LocalFederation(10, handler_from(honest)) as fed:
        first = make()
        after1 = rounds(first, fed, 1)[0]
        restored = make()
        restored.load_state_dict(save_and_load(first.state_dict(), tmp_path))
        fresh = make()
        a1 = rounds(first, fed, 1, after1)[0]
        a2 = rounds(restored, fed, 1, after1)[0]
        a3 = rounds(fresh, fed, 1, after1)[0]
    for k in SHAPES:
        np.testing.assert_array_equal(a1[k], a2[k])
    # without the state the next round differs (moments and sampler are really restored)
    assert not np.array_equal(a3["enc.w"], a1["enc.w"])


def test_load_state_dict_rejects_unknown_keys():
    st = SpeechFedAvg()
    state = st.state_dict()
    state["opt/typo"] = np.zeros(2)
    with pytest.raises(KeyError, match="unknown strategy state keys"):
        st.load_state_dict(state)


# -------------------------------------------------------- Flower's strategies
def test_flower_fedmedian_through_the_adapter_is_flowers_median():
    ours = run(FlowerStrategy(fraction_train=1.0, flower=FedMedian))[0]
    theirs = flower_round(FedMedian(fraction_train=1.0, fraction_evaluate=0.0))
    for k in SHAPES:
        np.testing.assert_array_equal(ours[k], theirs[k])


@pytest.mark.parametrize("make", [lambda: SpeechFedAvg(fraction_train=1.0),
                                  lambda: FlowerStrategy(fraction_train=1.0, flower=FedMedian)],
                         ids=["fedavg", "flower_fedmedian"])
def test_a_tasks_extra_records_reach_every_client(make):
    """What a task's `before_rounds` returns (e.g. k-means centroids) travels with each train message."""
    seen: dict[int, np.ndarray] = {}

    def train(pid: int, msg: Message) -> RecordDict:
        seen[pid] = np.array(array_view(msg.content["centroids"]["c"]))    # header parsed under the lock
        return honest(pid, msg)

    strategy = make()
    strategy.extra_records = {"centroids": numpy_record({"c": np.arange(6.0).reshape(2, 3)})}
    run(strategy, num_nodes=3, train=train)
    assert sorted(seen) == [0, 1, 2]
    assert all(np.array_equal(c, np.arange(6.0).reshape(2, 3)) for c in seen.values())


def test_adapter_screens_before_flower_aggregates():
    st = FlowerStrategy(fraction_train=1.0, flower=FedMedian)
    new, _ = run(st, num_nodes=5, train=faulty({3: "nan"}))
    assert len(st.last_round.rejected) == 1 and all(np.isfinite(v).all() for v in new.values())


# -------------------------------------------------------- factory
def _common() -> dict:
    from omegaconf import OmegaConf
    common = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "strategy_common.yaml"))
    common["client_lr"] = 1e-3
    return {**common, "name": "test"}


STRATEGY_CLASSES = {
    "fedavg": "SpeechFedAvg", "fedprox": "SpeechFedAvg", "fedadam": "SpeechFedAdam",
    "fedyogi": "SpeechFedYogi", "fedadagrad": "SpeechFedAdagrad", "fedlamb": "FedLAMB",
    "fedavgm": "SpeechFedAvgM", "speechllm_fedavg": "SpeechFedAvg", "fedmedian": "FlowerStrategy",
    "fedtrimmedavg": "FlowerStrategy", "krum": "FlowerStrategy", "multikrum": "FlowerStrategy",
    "bulyan": "FlowerStrategy", "flower_fedavgm": "FlowerStrategy", "dp_adaptive": "FlowerStrategy",
}


def compose_strategy(name: str, overrides: list[str] = ()):  # noqa: ANN201
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"strategy={name}", "train.lr=0.003",
                                                        *overrides]).strategy


def test_every_strategy_file_is_tested():
    files = {p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml")}
    assert files == set(STRATEGY_CLASSES)


@pytest.mark.parametrize("name", sorted(STRATEGY_CLASSES))
def test_build_strategy_from_each_conf_file(name):
    cfg = compose_strategy(name)
    st = build_strategy(cfg, population=20, seed=0)
    assert type(st).__name__ == STRATEGY_CLASSES[name]
    pids, msgs = configured(st, 20)
    assert len(msgs) == max(cfg.min_train_nodes, int(20 * cfg.fraction_train))
    assert ("proximal-mu" in msgs[0].content["config"]) == (name == "fedprox")
    lr = 1e-4 if name == "speechllm_fedavg" else 0.003       # ${train.lr}, or its own schedule
    assert msgs[0].content["config"]["lr"] == pytest.approx(lr)


def test_build_strategy_adds_dp_and_rejects_typos():
    st = build_strategy(compose_strategy("fedlamb", ["strategy/dp=gaussian",
                                                     "strategy.num_train_nodes=5"]),
                        population=50, seed=0)
    assert isinstance(st, FedLAMB) and st.privacy is not None
    assert st.privacy.accountant.q == pytest.approx(0.1)
    assert math.isfinite(st.privacy.epsilon(10))
    with pytest.raises(ValueError, match="fracton_train"):
        build_strategy(compose_strategy("fedavg", ["+strategy.fracton_train=0.5"]), population=10, seed=0)
    with pytest.raises(ValueError, match="exceeds the population"):
        build_strategy(compose_strategy("fedavg", ["strategy.num_train_nodes=11"]), population=10, seed=0)
    with pytest.raises(ValueError, match="strategy=dp_adaptive"):
        build_strategy(compose_strategy("krum", ["strategy/dp=gaussian"]), population=10, seed=0)


@pytest.mark.parametrize("overrides, population", [
    ([], 35),                                                        # int(3.5) = 3 clients, not round() = 4
    (["strategy.fraction_train=0.1"], 18),                           # min_train_nodes = 2 wins over int(1.8)
    (["strategy.fraction_train=0.25", "strategy.min_train_nodes=1"], 18),
    (["strategy.num_train_nodes=4"], 20),
], ids=["35-clients", "min-nodes", "fraction", "fixed-cohort"])
def test_centralised_round_budget_is_the_cohort_the_sampler_draws(overrides, population):
    """The centralised baseline trains per round on the share of the data a federated round does."""
    from fedspeech.centralised import round_budget_share
    from fedspeech.config import compose_config

    cfg = compose_config(["strategy=fedavg", *overrides])
    pids, _ = configured(build_strategy(cfg.strategy, population=population, seed=0), population)
    assert round_budget_share(cfg, population) * population == pytest.approx(len(pids))
    dp = build_strategy(compose_config(["strategy=fedavg", "strategy/dp=gaussian", *overrides]).strategy,
                        population=population, seed=0).privacy
    assert dp is not None and dp.cohort == len(pids)          # the accountant's sampling rate too
