"""Clients carried by a few simulated SuperNodes give the same run as one SuperNode per client."""

from __future__ import annotations

import pytest

from conftest import TINY_CORPUS, TINY_HUBERT, TINY_RUN, read_history, run_module
from flower_federation import LocalFederation

pytestmark = pytest.mark.slow     # whole runs of `python -m fedspeech.main` on Ray

# 6 clients, 3 a round, one client's crash injected now and then: failures must stay attributed
RUN = [*TINY_CORPUS, *TINY_RUN, "partitioner=iid", "partitioner.num_clients=6", "num_rounds=3",
       "strategy.num_train_nodes=3", "faults.crash_prob=0.3"]
SAME = ("wer", "cer", "loss", "train_loss", "participants", "rejected", "skipped",
        "clients_sampled", "clients_replied", "train_seconds", "bytes_up", "train_steps")


def test_two_carrier_nodes_reproduce_one_node_per_client(tiny_data, tmp_path):
    one_each, carried = tmp_path / "one_each", tmp_path / "carried"
    run_module("fedspeech.main", f"paths.data={tiny_data}", *RUN, f"hydra.run.dir={one_each}")
    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *RUN, "simulation.nodes=2",
                      f"hydra.run.dir={carried}")
    assert "6 clients on 2 simulated SuperNodes" in proc.stdout
    assert "6 nodes ready" in proc.stdout           # every client, no identity query sent
    expected, got = read_history(one_each), read_history(carried)
    assert [h["round"] for h in got] == [0, 1, 2, 3]
    assert any(h["failed"] for h in got[1:]), "the injected crashes should fail some client"
    for want, have in zip(expected, got):
        assert {k: have.get(k) for k in SAME} == {k: want.get(k) for k in SAME}, want["round"]
        # the same clients failed, each named by its own partition (Ray's traceback text differs)
        assert sorted(have.get("failed", {})) == sorted(want.get("failed", {}))
        for pid, why in have.get("failed", {}).items():
            assert f"injected crash of partition {pid} in round {have['round']}" in why
    # the virtual node ids the server saw are the partition ids
    assert all(sorted(h["participant_nodes"]) == sorted(h["participants"]) for h in got[1:])


def test_pretraining_on_carrier_nodes_reproduces_one_node_per_client(tiny_data, tmp_path):
    """The k-means phase's queries reach each client through its carrier too: same centroids (each
    step's inertia), same losses. Replies are taken in partition order, so arrival order cannot
    change the k-means++ seeding or the sums (this catches a regression there only in the runs
    whose replies arrive in different orders: about half of them here)."""
    run = [*TINY_CORPUS, *TINY_HUBERT, "task=pretrain", "num_rounds=2", "strategy.num_train_nodes=2",
           "task.kmeans.steps=2", "eval.every=1"]
    one_each, carried = tmp_path / "one_each", tmp_path / "carried"
    run_module("fedspeech.main", f"paths.data={tiny_data}", *run, f"hydra.run.dir={one_each}")
    run_module("fedspeech.main", f"paths.data={tiny_data}", *run, "simulation.nodes=2",
               f"hydra.run.dir={carried}")
    expected, got = read_history(one_each), read_history(carried)
    assert [s.get("inertia") for s in got[0]["kmeans"]] == [s.get("inertia") for s in expected[0]["kmeans"]]
    for key in ("loss", "unit_acc", "participants", "train_loss"):
        assert [h.get(key) for h in got] == [h.get(key) for h in expected], key


def test_only_a_carrier_node_works_for_the_partition_a_message_names(tiny_data):
    """A deployment's SuperNode answers for its own partition whatever a message names; a
    simulation carrier for the named one, and refuses a message that names none."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

    from fedspeech.config import compose_config
    from fedspeech.federation.client_app import client_query
    from fedspeech.federation.nodes import IDENTITY_QUERY
    from fedspeech.federation.virtual_nodes import KEY_PARTITION

    cfg = compose_config([f"paths.data={tiny_data}", *TINY_CORPUS])
    node = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3},
                   state=RecordDict(), run_config={})

    def ask(config: dict, carried: bool) -> int:
        msg = Message(content=RecordDict({"config": ConfigRecord(config)}), dst_node_id=7,
                      message_type=MessageType.QUERY)
        reply = client_query(cfg, msg, node, carried=carried)
        return int(reply.content["metrics"]["partition-id"])

    naming_two = {"query": IDENTITY_QUERY, KEY_PARTITION: 2}
    with LocalFederation(1, lambda pid, msg: None):     # a run for the messages to belong to
        assert ask(naming_two, carried=False) == 0
        assert ask(naming_two, carried=True) == 2
        with pytest.raises(ValueError, match="must name its client"):
            ask({"query": IDENTITY_QUERY}, carried=True)
