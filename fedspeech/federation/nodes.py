"""Which nodes take part, which partition each holds and how much data it has.

Node ids are random per run; partition ids are not. At start the server asks every node for its
partition id and the size of its training data (a QUERY message), so that sampling,
participation and the order-independent aggregation (which needs an upper bound on each
client's weight before its reply arrives) are reproducible and checkable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedspeech.federation.replies import ReplyStream

IDENTITY_QUERY = "partition-id"
#: identity queries outstanding at once: a simulation engine scans every pending message for
#: every node on each poll, so thousands at once make start-up quadratic in the population
IDENTITY_IN_FLIGHT = 32


@dataclass(frozen=True)
class ClientInfo:
    """What a node reported about itself when the run started."""

    partition_id: int
    #: sizes of its training data by reply-metric name, e.g. num-examples, num-seconds
    sizes: dict[str, float] = field(default_factory=dict)


def identity_query() -> RecordDict:
    """The QUERY content that asks a node who it is."""
    return RecordDict({"config": ConfigRecord({"query": IDENTITY_QUERY})})


def wait_for_nodes(grid: Grid, expected: int, wait_s: float) -> list[int]:
    """Node ids once `expected` nodes are connected; a clear error after `wait_s` seconds."""
    t0 = time.monotonic()
    node_ids = list(grid.get_node_ids())
    last_log = t0
    while len(node_ids) < expected:
        now = time.monotonic()
        if now - t0 > wait_s:
            raise RuntimeError(f"only {len(node_ids)} of {expected} nodes connected after "
                               f"{wait_s:.0f} s (strategy.node_wait_timeout_s)")
        if now - last_log > 10:
            log(INFO, "waiting for nodes: %d of %d connected", len(node_ids), expected)
            last_log = now
        time.sleep(0.2)
        node_ids = list(grid.get_node_ids())
    return node_ids


def query_nodes(grid: Grid, expected: int, *, wait_s: float, timeout: float) -> dict[int, ClientInfo]:
    """Ask every connected node for its partition id and data sizes."""
    node_ids = wait_for_nodes(grid, expected, wait_s)
    messages = [Message(content=identity_query(), dst_node_id=nid, message_type=MessageType.QUERY)
                for nid in node_ids]
    found: dict[int, ClientInfo] = {}
    stream = ReplyStream(grid, messages, timeout=timeout, max_in_flight=IDENTITY_IN_FLIGHT)
    for reply in stream:
        nid = reply.metadata.src_node_id
        if reply.has_error():
            raise RuntimeError(f"node {nid} failed to report its partition: {reply.error.reason}")
        metrics = dict(reply.content["metrics"])
        pid = int(metrics.pop("partition-id"))
        found[nid] = ClientInfo(pid, {k: float(v) for k, v in metrics.items()})
    if stream.unanswered:
        raise RuntimeError(f"nodes {sorted(stream.unanswered)[:10]} did not report their partition "
                           f"within {timeout:.0f} s")
    pids = [c.partition_id for c in found.values()]
    if len(set(pids)) != len(pids):
        raise RuntimeError("two nodes report the same partition id: each SuperNode must hold its own")
    return found
