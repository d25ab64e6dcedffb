"""A real Flower federation in one process, for strategy tests that should not start Ray.

It builds what `flwr.simulation.run_simulation` builds — an in-memory LinkState with a run and
registered nodes, Flower's `InMemoryGrid` over it, and the ServerApp task identity — and replaces
only the Ray backend: a thread hands each instruction to `handler(partition_id, message)` (which
returns the reply content, or raises like a crashing ClientApp) and stores the reply in the
LinkState, as Flower's simulation engine does. `reply_order` holds replies back and releases them
in a chosen order, to test that aggregation does not depend on arrival order.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import cast
from uuid import uuid4

from flwr.app import Error, Message, RecordDict
from flwr.common.constant import (HEARTBEAT_INTERVAL_INF, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID,
                                  SUPERLINK_NODE_ID, ErrorCode)
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

Handler = Callable[[int, Message], "RecordDict | None"]


class LocalFederation:
    """`with LocalFederation(n, handler) as fed:` gives `fed.grid` and `fed.partition_of`."""

    def __init__(self, num_nodes: int, handler: Handler, *,
                 reply_order: Callable[[list[int]], list[int]] | None = None,
                 batch: int | None = None) -> None:
        self.handler = handler
        self.reply_order = reply_order
        self.batch = batch          # with reply_order: release replies once this many are ready
        self.factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                                        ObjectStoreFactory())
        self.state = cast(InMemoryLinkState, self.factory.state())
        self.run = Run.create_empty(run_id=secrets.randbelow(2**62) + 1)
        self.run.primary_task_id = secrets.randbelow(2**62) + 1
        self.run.federation_id = NOOP_FEDERATION_ID
        self.state.run_ids[self.run.run_id] = RunRecord(run=self.run)
        self.state.task_store[self.run.primary_task_id] = Task(task_id=self.run.primary_task_id,
                                                               run_id=self.run.run_id)
        self.partition_of: dict[int, int] = {}
        for pid in range(num_nodes):
            nid = self.state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, secrets.token_bytes(32),
                                         heartbeat_interval=HEARTBEAT_INTERVAL_INF)
            self.state.acknowledge_node_heartbeat(node_id=nid, heartbeat_interval=HEARTBEAT_INTERVAL_INF)
            self.partition_of[nid] = pid
        self.grid = InMemoryGrid(state_factory=self.factory)
        self.grid.set_run(self.run)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._identity = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)  # noqa: SLF001

    def __enter__(self) -> "LocalFederation":
        # the identity a ServerApp process has (run_simulation sets it the same way)
        TaskIdentity.task_id = int(self.run.primary_task_id)
        TaskIdentity.run_id = self.run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = self._identity

    def _answer(self, msg: Message) -> Message:
        pid = self.partition_of[msg.metadata.dst_node_id]
        try:
            content = self.handler(pid, msg)
        except Exception as err:  # noqa: BLE001 - a crashing client becomes an error reply
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=repr(err)),
                           reply_to=msg)
        if content is None:
            return Message(Error(code=ErrorCode.UNKNOWN, reason="dropped"), reply_to=msg)
        return Message(content, reply_to=msg)

    def _store(self, reply: Message) -> None:
        reply.metadata.__dict__["_message_id"] = str(uuid4())   # as the simulation engine does
        self.state.store_message_res(reply)

    def _serve(self) -> None:
        held: list[Message] = []
        pending: list[Future] = []
        with ThreadPoolExecutor(max_workers=8) as pool:     # clients run side by side
            while not self._stop.is_set():
                for nid in self.partition_of:
                    for msg in self.state.get_message_ins(node_id=nid, limit=None):
                        pending.append(pool.submit(self._answer, msg))
                for future in [f for f in pending if f.done()]:
                    pending.remove(future)
                    if self.reply_order is None:
                        self._store(future.result())
                    else:
                        held.append(future.result())
                held = self._release(held)
                time.sleep(0.01)

    def _release(self, held: list[Message]) -> list[Message]:
        if not held or (self.batch is not None and len(held) < self.batch):
            return held
        assert self.reply_order is not None
        by_pid = {self.partition_of[r.metadata.src_node_id]: r for r in held}
        for pid in self.reply_order(list(by_pid)):
            self._store(by_pid[pid])
        return []
