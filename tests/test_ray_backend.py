"""`StagedRayBackend` on a real Ray: every message reaches a ClientApp once and its reply comes
back to it, a ClientApp that raises gives its actor back, and the actor serves the next one."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import PARTITION_ID_KEY
from flwr.supercore.task_identity import TaskIdentity

from conftest import SHARED_RAY


def echo_app() -> ClientApp:
    """Replies with the message's number and the actor's pid; raises where asked to."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        conf = msg.content["config"]
        if conf["fail"]:
            raise ValueError(f"asked to fail on message {conf['n']}")
        metrics = MetricRecord({"n": conf["n"], "pid": os.getpid(),
                                "partition": int(context.node_config[PARTITION_ID_KEY])})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def message(n: int, fail: bool = False) -> Message:
    return Message(content=RecordDict({"config": ConfigRecord({"n": n, "fail": int(fail)})}),
                   dst_node_id=n + 1, message_type=MessageType.QUERY)


def context(n: int) -> Context:
    return Context(run_id=1, node_id=n + 1, node_config={PARTITION_ID_KEY: n}, state=RecordDict(),
                   run_config={})


@pytest.mark.slow
def test_staged_backend_answers_every_message_and_survives_a_failing_client(monkeypatch):
    import ray

    from fedspeech.federation.ray_backend import THREADS_PER_ACTOR, StagedRayBackend
    for key, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):   # as a ServerApp's grid has
        monkeypatch.setattr(TaskIdentity, key, value)
    ray.init(address=SHARED_RAY.start(), runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
             log_to_driver=False)
    backend = None
    try:
        backend = StagedRayBackend({"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                    "init_args": {}})
        backend.build(echo_app)
        assert backend.num_workers == THREADS_PER_ACTOR * backend.pool.num_actors >= 2
        # more failing calls than actors: an actor not given back after a failure would leave
        # the later calls waiting for ever (each call has a deadline)
        failing = range(backend.pool.num_actors + 1)
        for n in failing:
            with pytest.raises(Exception, match=f"asked to fail on message {n}"):
                ThreadPoolExecutor(1).submit(backend.process_message, message(n, fail=True),
                                             context(n)).result(timeout=60)
        replies: dict[int, MetricRecord] = {}
        lock = threading.Lock()

        def call(n: int) -> None:
            out, _ = backend.process_message(message(n), context(n))
            with lock:
                replies[n] = out.content["metrics"]

        with ThreadPoolExecutor(backend.num_workers) as pool:
            for job in [pool.submit(call, n) for n in range(12)]:
                job.result(timeout=120)
        assert sorted(replies) == list(range(12))
        assert all(m["n"] == n and m["partition"] == n for n, m in replies.items())
        assert len({m["pid"] for m in replies.values()}) <= backend.pool.num_actors
    finally:
        if backend is not None:
            backend.terminate()
        ray.shutdown()
