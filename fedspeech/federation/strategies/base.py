"""`SpeechStrategy`: what every fedspeech strategy does, as a plain Flower `Strategy`.

fedspeech's strategies subclass `flwr.serverapp.strategy.Strategy` directly, not Flower's FedAvg:
Flower's `aggregate_train` needs every reply of a round at once, while these fold each reply into
running sums as it arrives (server memory O(model), not O(cohort x model)). The hooks are
Flower's (`configure_train`, `aggregate_train`, `start`); what a speech run needs on top:

* seeded, resumable cohort sampling (`CohortSampler`; Flower samples with the global `random`);
* the round's client learning rate (`lr`) and FedProx `proximal-mu` in the train config;
* per-reply screening (`screening.screen_reply`) and an explicit failure policy: a bad reply is
  that client's failure with a reason, recorded in `last_round`; too few usable replies
  (`min_train_nodes`) leave the model unchanged for the round;
* an exact, order-independent weighted mean of the replies (`aggregation.ExactSum`), weighted by
  `weighted_by_key` (audio seconds by default) — or, with `privacy` set, user-level DP's clipped,
  noised, uniformly weighted mean (`privacy.UserLevelDP`);
* `state_dict` / `load_state_dict` for checkpoints.

Subclasses decide only what a round's mean does to the model: `apply_mean` (FedAvg: it *is* the
new model) or `apply_delta` (server optimisers: a step along `mean - current`).

Train config keys sent to clients: `server-round` (int), `lr` (float, this round's client
learning rate), `local-epochs` (int, from the loop's train config) and `proximal-mu` (float, only
when `proximal_mu > 0`; the client adds `mu/2 * ||w - w_global||^2`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from fedspeech.federation.aggregation import (ExactSum, NDArrays, OutOfRange, aggregate_metrics,
                                              value_bounds)
from fedspeech.federation.nodes import ClientInfo
from fedspeech.federation.parameters import array_view, numpy_record
from fedspeech.federation.privacy import UserLevelDP
from fedspeech.federation.round_loop import EvaluateFn, RoundOutcome, run_rounds
from fedspeech.federation.round_report import CLIENT_METRIC_KEYS, NO_REPLY, RoundReport
from fedspeech.federation.sampling import CohortSampler, rng_state_from_array, rng_state_to_array
from fedspeech.federation.schedules import Schedule, as_schedule
from fedspeech.federation.screening import Reply, ReplyRejected, ReplySpec, screen_reply

KEY_SERVER_ROUND = "server-round"
KEY_LR = "lr"
KEY_LOCAL_EPOCHS = "local-epochs"
KEY_PROXIMAL_MU = "proximal-mu"
#: keys a reply may be weighted by: sizes every fedspeech client reports at start
WEIGHT_KEYS = ("num-seconds", "num-examples")
#: a client's reported weight may exceed its data x epochs by this much (decoding rounding)
WEIGHT_SLACK = 1.01

StateDict = dict[str, Any]


class ClientFailuresError(AggregationError):
    """Clients failed and the strategy was told not to accept failures."""


class SpeechStrategy(Strategy):
    """Sampling, round config, screening, exact streaming aggregation and checkpoint state.

    Parameters
    ----------
    fraction_train, num_train_nodes, min_train_nodes, min_available_nodes
        Cohort size (`CohortSampler`): `num_train_nodes` when set, else
        `max(int(available * fraction_train), min_train_nodes)`. A round with fewer than
        `min_train_nodes` usable replies leaves the model unchanged.
    weighted_by_key
        Reply metric used as aggregation weight: `num-seconds` (a client with more audio moves
        the model more, as centralised training over utterances would) or `num-examples`.
    client_lr
        Client learning rate, a number or a schedule of the round, sent as `lr`.
    proximal_mu
        FedProx coefficient sent as `proximal-mu` when > 0 (the client applies it).
    accept_failures
        If false, any failed or rejected client aborts the run with `ClientFailuresError`.
    max_update_norm
        Optional bound on the L2 norm of a reply's update (`reply - global`); larger ones are
        rejected as absurd.
    node_wait_timeout_s
        How long sampling waits for enough connected nodes.
    seed
        Seed of the cohort sampler.
    population
        Number of clients, when known at construction (checks `num_train_nodes` against it).
    privacy
        User-level DP applied to the aggregation (`privacy.UserLevelDP`), or None.
    """

    arrayrecord_key = "arrays"
    configrecord_key = "config"

    def __init__(self, *, fraction_train: float = 1.0, num_train_nodes: int | None = None,
                 min_train_nodes: int = 2, min_available_nodes: int = 2,
                 weighted_by_key: str = "num-seconds", client_lr: float | Schedule = 1e-3,
                 proximal_mu: float = 0.0, accept_failures: bool = True,
                 max_update_norm: float | None = None, node_wait_timeout_s: float = 600.0,
                 seed: int = 0, population: int | None = None,
                 privacy: UserLevelDP | None = None) -> None:
        if float(proximal_mu) < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
        if weighted_by_key not in WEIGHT_KEYS:
            raise ValueError(f"weighted_by_key must be one of {WEIGHT_KEYS}, got {weighted_by_key!r}")
        if max_update_norm is not None and not float(max_update_norm) > 0:
            raise ValueError(f"max_update_norm must be > 0 or null, got {max_update_norm}")
        self.sampler = CohortSampler(seed, fraction=fraction_train, num_nodes=num_train_nodes,
                                     min_nodes=min_train_nodes,
                                     min_available_nodes=min_available_nodes,
                                     wait_timeout_s=node_wait_timeout_s)
        if population is not None and num_train_nodes is not None and num_train_nodes > population:
            raise ValueError(f"num_train_nodes={num_train_nodes} exceeds the population of {population}")
        self.population = population
        self.min_train_nodes = int(min_train_nodes)
        self.weighted_by_key = weighted_by_key
        self.client_lr = as_schedule(client_lr)
        self.proximal_mu = float(proximal_mu)
        self.accept_failures = bool(accept_failures)
        self.max_update_norm = None if max_update_norm is None else float(max_update_norm)
        self.privacy = privacy
        self.nodes: dict[int, ClientInfo] = {}
        self.current_arrays: NDArrays | None = None
        self.last_round: RoundReport | None = None
        #: called with (server_round, reply) for every reply that passed screening
        self.reply_listeners: list[Callable[[int, Reply], None]] = []
        #: records sent with every train message besides arrays and config (a task's, e.g.
        #: k-means centroids)
        self.extra_records: dict[str, Any] = {}
        self._spec: ReplySpec | None = None

    # ---------------------------------------------------------------- nodes and config
    def set_nodes(self, nodes: Mapping[int, ClientInfo]) -> None:
        """What every node reported at start: partition ids (canonical sampling order) and sizes."""
        missing = [n for n, info in nodes.items() if self.weighted_by_key not in info.sizes]
        if missing:
            raise ValueError(f"nodes {missing[:5]} did not report '{self.weighted_by_key}' at start; "
                             "it bounds each client's aggregation weight")
        self.nodes = dict(nodes)
        self.sampler.set_node_partitions({n: info.partition_id for n, info in nodes.items()})

    def train_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """The ConfigRecord sent to clients: a copy of `config` plus this round's keys."""
        out = ConfigRecord(dict(config))
        out[KEY_SERVER_ROUND] = int(server_round)
        out[KEY_LR] = float(self.client_lr(server_round))
        out.setdefault(KEY_LOCAL_EPOCHS, 1)
        if self.proximal_mu > 0:
            out[KEY_PROXIMAL_MU] = self.proximal_mu
        return out

    def _weight_bounds(self, node_ids: list[int], epochs: int) -> dict[int, float]:
        if self.privacy is not None:
            return {}
        return {n: self.nodes[n].sizes[self.weighted_by_key] * epochs * WEIGHT_SLACK + 1.0
                for n in node_ids if n in self.nodes}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample the cohort (seeded) and send it the global arrays and the round config."""
        self.current_arrays = {k: array_view(a) for k, a in arrays.items()}
        node_ids, connected = self.sampler.sample(grid)
        cfg = self.train_config(server_round, config)
        if self.privacy is not None:
            self.privacy.check_cohort(len(node_ids))
        self._spec = ReplySpec(
            shapes={k: v.shape for k, v in self.current_arrays.items()},
            dtypes={k: v.dtype for k, v in self.current_arrays.items()},
            value_bounds=value_bounds(self.current_arrays),
            weight_key=None if self.privacy is not None else self.weighted_by_key,
            weight_bounds=self._weight_bounds(node_ids, int(cfg[KEY_LOCAL_EPOCHS])),
            partitions={n: info.partition_id for n, info in self.nodes.items()},
            current=self.current_arrays, max_update_norm=self.max_update_norm,
            check_values=not self.fold_checks_values())
        self.last_round = RoundReport(server_round, sampled=list(node_ids))
        log(INFO, "configure_train: round %d, sampled %d of %d nodes, lr=%.4g", server_round,
            len(node_ids), len(connected), cfg[KEY_LR])
        return self.make_messages(server_round, arrays, cfg, node_ids, grid)

    def make_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                      node_ids: list[int], grid: Grid) -> list[Message]:
        """The train instructions for the sampled nodes (one shared record)."""
        record = RecordDict({**self.extra_records, self.arrayrecord_key: arrays,
                             self.configrecord_key: config})
        return [Message(content=record, dst_node_id=nid, message_type=MessageType.TRAIN)
                for nid in node_ids]

    # ---------------------------------------------------------------- aggregation
    def new_aggregate(self, spec: ReplySpec, cohort: int) -> Any:
        """The running aggregate of one round (what `fold` adds each reply to)."""
        if self.privacy is not None:
            return self.privacy.new_aggregate(self.require_current_arrays(), cohort)
        weight_bound = math.fsum(spec.weight_bounds.values())
        return ExactSum(spec.shapes, spec.value_bounds, weight_bound)

    def fold_checks_values(self) -> bool:
        """Whether `fold` itself rejects NaN/inf/out-of-range values, in the pass that adds them
        (the plain weighted mean); otherwise screening reads them first (DP clipping and the norm
        bound read the values before anything is added)."""
        return self.privacy is None and self.max_update_norm is None

    def fold(self, aggregate: Any, reply: Reply, message: Message) -> None:
        """Add one screened reply to the round's aggregate (`message` is the raw reply)."""
        try:
            if self.privacy is not None:
                self.privacy.fold(aggregate, reply.arrays)
            else:
                aggregate.add(reply.arrays, reply.weight)
        except OutOfRange as why:
            raise ReplyRejected(str(why)) from why

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen each reply as it arrives, fold it into the round's sums, then update the model."""
        spec, report = self._spec, self.last_round
        if spec is None or report is None or report.server_round != server_round:
            raise AggregationError(reason=f"round {server_round} was not configured by this strategy")
        aggregate = self.new_aggregate(spec, len(report.sampled))
        per_client: list[tuple[float, dict[str, Any]]] = []
        seen: set[int] = set()
        try:
            for msg in replies:
                node_id = int(msg.metadata.src_node_id)
                seen.add(node_id)
                try:
                    reply = screen_reply(msg, spec)
                    self.fold(aggregate, reply, msg)
                except ReplyRejected as why:
                    target = report.failed if why.kind == "failed" else report.rejected
                    target[node_id] = why.reason
                    log(WARNING, "round %d: node %d (partition %s) %s: %s", server_round, node_id,
                        spec.partitions.get(node_id), why.kind, why.reason)
                    continue
                report.accepted.append(node_id)
                report.client_metrics[node_id] = {k: float(reply.metrics[k]) for k in CLIENT_METRIC_KEYS
                                                  if isinstance(reply.metrics.get(k), (int, float))}
                per_client.append((reply.weight, reply.metrics))
                for listener in self.reply_listeners:
                    listener(server_round, reply)
            for node_id in report.sampled:
                if node_id not in seen:
                    report.failed[node_id] = NO_REPLY
            if report.problems() and not self.accept_failures:
                detail = "; ".join(f"partition {spec.partitions.get(n, n)}: {r}"
                                   for n, r in report.problems().items())
                raise ClientFailuresError(reason=f"round {server_round}: {len(report.problems())} "
                                          f"client(s) failed and accept_failures is false ({detail})")
            metrics = MetricRecord(aggregate_metrics(per_client))
            metrics["num-sampled"] = len(report.sampled)
            metrics["num-replied"] = len(report.accepted)
            metrics["num-failed"] = len(report.failed)
            metrics["num-rejected"] = len(report.rejected)
            if len(report.accepted) < self.min_train_nodes:
                report.skipped = (f"{len(report.accepted)} usable replies, fewer than "
                                  f"min_train_nodes={self.min_train_nodes}: model unchanged")
                log(WARNING, "round %d: %s", server_round, report.skipped)
                return None, metrics
            new = self.apply_aggregate(server_round, aggregate, metrics)
            if new is None:
                report.skipped = report.skipped or "the strategy released no update"
                return None, metrics
        finally:
            if hasattr(aggregate, "close"):
                aggregate.close()
        return numpy_record(new), metrics

    def apply_aggregate(self, server_round: int, aggregate: Any,
                        metrics: MetricRecord) -> NDArrays | None:
        """Turn the round's aggregate into the new global arrays (None: leave the model as is)."""
        if self.privacy is not None:
            delta, stats = self.privacy.release(aggregate)
            for key, value in stats.items():
                metrics[key] = value
            return self.apply_delta(server_round, delta)
        return self.apply_mean(server_round, aggregate.mean())

    def apply_mean(self, server_round: int, mean: NDArrays) -> NDArrays:
        """Default: a step along the round delta `mean - current` (`apply_delta`)."""
        current = self.require_current_arrays()
        return self.apply_delta(server_round, {k: mean[k] - current[k] for k in current})

    def apply_delta(self, server_round: int, delta: NDArrays) -> NDArrays:
        """Default: add the delta (FedAvg); server optimisers take a step instead."""
        current = self.require_current_arrays()
        return {k: (current[k] + delta[k]).astype(current[k].dtype) for k in current}

    def require_current_arrays(self) -> NDArrays:
        if self.current_arrays is None:
            raise AggregationError(reason="global arrays unknown: configure_train must run first")
        return self.current_arrays

    # ---------------------------------------------------------------- evaluation
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """No client-side evaluation: fedspeech evaluates the global model centrally."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Nothing to aggregate (see `configure_evaluate`)."""
        return None

    # ---------------------------------------------------------------- the loop
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn: EvaluateFn | None = None,
              *, start_round: int = 1, on_round_end: Callable[[RoundOutcome], None] | None = None,
              max_in_flight: int | None = None) -> Result:
        """Flower's `Strategy.start`, resumable at `start_round`, calling `on_round_end`."""
        return run_rounds(self, grid, initial_arrays, num_rounds=num_rounds, timeout=timeout,
                          train_config=train_config, evaluate_fn=evaluate_fn,
                          start_round=start_round, on_round_end=on_round_end,
                          max_in_flight=max_in_flight)

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> StateDict:
        """Server-side state needed to resume: sampler RNG (+ optimiser / DP state)."""
        state: StateDict = {"sampler/rng": rng_state_to_array(self.sampler.rng)}
        if self.privacy is not None:
            state.update(self.privacy.state_dict())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict` output; a missing or unknown key is an error."""
        rest = dict(state)
        if "sampler/rng" not in rest:
            raise KeyError("strategy state lacks 'sampler/rng'")
        rng_state_from_array(self.sampler.rng, rest.pop("sampler/rng"))
        if self.privacy is not None:
            self.privacy.load_state_dict(rest)
        self._load_own_state(rest)
        if rest:
            raise KeyError(f"unknown strategy state keys: {sorted(rest)[:10]}")

    def _load_own_state(self, rest: dict[str, Any]) -> None:
        """Subclasses pop their own keys from `rest`."""

    def summary(self) -> None:
        """Log the settings (Flower calls this when a run starts)."""
        size = (f"{self.sampler.num_nodes} nodes" if self.sampler.num_nodes
                else f"fraction {self.sampler.fraction} (at least {self.min_train_nodes})")
        log(INFO, "\t├──> %s: cohort %s, weighted by %s, client lr %r, proximal mu %g, "
            "accept failures %s, max update norm %s", type(self).__name__, size,
            "uniform (DP)" if self.privacy else self.weighted_by_key, self.client_lr,
            self.proximal_mu, self.accept_failures, self.max_update_norm)
        if self.privacy is not None:
            self.privacy.summary()


def moments_state(prefix: str, slots: Mapping[str, NDArrays]) -> StateDict:
    """Flatten optimiser slots into checkpoint keys `<prefix>/<slot>/<tensor>`."""
    return {f"{prefix}/{slot}/{name}": np.asarray(x) for slot, arrays in slots.items()
            for name, x in arrays.items()}


def moments_from_state(prefix: str, rest: dict[str, Any]) -> dict[str, NDArrays]:
    """Pop `<prefix>/<slot>/<tensor>` keys from `rest` back into slots."""
    slots: dict[str, NDArrays] = {}
    for key in [k for k in rest if k.startswith(prefix + "/")]:
        slot, name = key[len(prefix) + 1:].split("/", 1)
        slots.setdefault(slot, {})[name] = np.array(rest.pop(key))
    return slots
