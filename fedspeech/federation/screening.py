"""Per-reply screening: the one place that decides whether a reply can be aggregated.

A reply that carries an error, no content, missing or extra arrays, wrong shapes or dtypes,
non-finite or absurdly large values, an impossible weight, or (optionally) an update whose norm
exceeds `max_update_norm` is that client's failure for the round, with a reason. It never reaches
the running sums and never aborts the run (unless the strategy was told not to accept failures).

Values (NaN, inf, beyond the aggregation range) are checked where it costs least: a plain
weighted mean checks them in the pass that folds them (`aggregation.ExactSum.add` raises
`OutOfRange`, which the strategy turns into this reply's rejection), so screening reads a reply's
values only when something else reads them first — DP clipping, a norm bound, a Flower strategy
(`ReplySpec.check_values`): then one multithreaded min/max pass per tensor (NaN propagates through
it, so it also finds NaN and inf), and the update norm, when bounded, one more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Message

from fedspeech.federation.aggregation import range_violation
from fedspeech.federation.parameters import array_view, readonly_tensor

ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"


class ReplyRejected(Exception):
    """A reply that cannot be aggregated. `kind` is `failed` (the client reported an error or
    sent nothing) or `rejected` (it sent something unusable)."""

    def __init__(self, reason: str, kind: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class ReplySpec:
    """What a usable reply of one round looks like."""

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, np.dtype]
    #: |value| must be <= this, per tensor (the aggregation range; NaN/inf always fail)
    value_bounds: Mapping[str, float]
    #: reply metric used as weight; None = uniform weights (user-level DP)
    weight_key: str | None
    #: per node id, the largest weight it can honestly report (its data x local epochs)
    weight_bounds: Mapping[int, float] = field(default_factory=dict)
    #: node id -> partition id, as each node reported it when the run started
    partitions: Mapping[int, int] = field(default_factory=dict)
    #: the global arrays the round started from (needed for the norm bound)
    current: Mapping[str, np.ndarray] | None = None
    max_update_norm: float | None = None
    #: check the values here (False: the fold checks them as it adds them)
    check_values: bool = True


@dataclass
class Reply:
    """A screened reply: read-only views of its arrays, its metrics and its weight."""

    node_id: int
    partition_id: int | None
    arrays: dict[str, np.ndarray]
    metrics: dict[str, Any]
    weight: float
    update_norm: float | None = None


def _metrics(msg: Message) -> dict[str, Any]:
    content = msg.content
    if len(content.metric_records) != 1:
        raise ReplyRejected(f"expected one MetricRecord, got {len(content.metric_records)}")
    return dict(next(iter(content.metric_records.values())))


def _weight(metrics: Mapping[str, Any], spec: ReplySpec, node_id: int) -> float:
    if spec.weight_key is None:
        return 1.0
    if spec.weight_key not in metrics:
        raise ReplyRejected(f"metrics lack the weight '{spec.weight_key}'")
    weight = float(metrics[spec.weight_key])
    if not math.isfinite(weight) or weight <= 0:
        raise ReplyRejected(f"weight '{spec.weight_key}'={weight} is not a positive number")
    bound = spec.weight_bounds.get(node_id)
    if bound is not None and weight > bound:
        raise ReplyRejected(f"weight '{spec.weight_key}'={weight:g} exceeds the {bound:g} its data allows")
    return weight


def _arrays(msg: Message, spec: ReplySpec) -> dict[str, np.ndarray]:
    content = msg.content
    if ARRAYS_KEY not in content.array_records or len(content.array_records) != 1:
        raise ReplyRejected(f"expected exactly one ArrayRecord '{ARRAYS_KEY}', got "
                            f"{sorted(content.array_records.keys())}")
    record = content.array_records[ARRAYS_KEY]
    got, want = set(record.keys()), set(spec.shapes)
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        raise ReplyRejected(f"arrays do not match the global model: missing {missing[:3]}"
                            f"{'...' if len(missing) > 3 else ''} ({len(missing)}), "
                            f"extra {extra[:3]}{'...' if len(extra) > 3 else ''} ({len(extra)})")
    arrays: dict[str, np.ndarray] = {}
    for name, arr in record.items():
        if tuple(arr.shape) != tuple(spec.shapes[name]):
            raise ReplyRejected(f"'{name}' has shape {tuple(arr.shape)}, the global one "
                                f"{tuple(spec.shapes[name])}")
        if np.dtype(arr.dtype) != spec.dtypes[name]:
            raise ReplyRejected(f"'{name}' has dtype {arr.dtype}, the global one {spec.dtypes[name]}")
        try:
            arrays[name] = array_view(arr)
        except (ValueError, TypeError) as err:
            raise ReplyRejected(f"'{name}' cannot be read: {err}") from err
    return arrays


def check_values(arrays: Mapping[str, np.ndarray], bounds: Mapping[str, float]) -> None:
    for name, values in arrays.items():
        if values.size == 0:
            continue
        low, high = (float(v) for v in torch.aminmax(readonly_tensor(values)))
        reason = range_violation(name, low, high, bounds[name])
        if reason is not None:
            raise ReplyRejected(reason)


def update_norm(arrays: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray]) -> float:
    """L2 norm of `arrays - current` over every tensor."""
    total = 0.0
    for name, values in arrays.items():
        dist = float(torch.dist(readonly_tensor(values), readonly_tensor(current[name])))
        total += dist * dist
    return math.sqrt(total)


def screen_reply(msg: Message, spec: ReplySpec) -> Reply:
    """The usable content of `msg`, or `ReplyRejected` with the reason."""
    node_id = int(msg.metadata.src_node_id)
    if msg.has_error():
        raise ReplyRejected(f"client error {msg.error.code}: {msg.error.reason}", kind="failed")
    if not msg.has_content():
        raise ReplyRejected("reply without content", kind="failed")
    metrics = _metrics(msg)
    partition = spec.partitions.get(node_id)
    claimed = metrics.get("partition-id")
    if partition is not None and claimed is not None and int(claimed) != partition:
        raise ReplyRejected(f"reply claims partition {claimed}, the node holds {partition}")
    weight = _weight(metrics, spec, node_id)
    arrays = _arrays(msg, spec)
    if spec.check_values:
        check_values(arrays, spec.value_bounds)
    norm = None
    if spec.max_update_norm is not None:
        if spec.current is None:
            raise ValueError("a norm bound needs the round's global arrays")
        norm = update_norm(arrays, spec.current)
        if norm > spec.max_update_norm:
            raise ReplyRejected(f"update norm {norm:.4g} exceeds max_update_norm {spec.max_update_norm:g}")
    return Reply(node_id=node_id, partition_id=partition, arrays=arrays, metrics=metrics,
                 weight=weight, update_norm=norm)
