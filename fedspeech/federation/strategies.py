"""Server strategies for federated speech training (Flower Message API).

Built on Flower's own strategies (``FedAvg``, ``FedAdam``, ``FedYogi``, ``FedAdagrad``,
``FedOpt``) through two mixins rather than forks:

* :class:`SpeechStrategyMixin` -- what every speech strategy needs on the server:
  seeded cohort sampling (Flower samples with the global ``random`` module, which a
  resumed run cannot reproduce), the client learning rate of the round and the FedProx
  ``mu`` in the train ConfigRecord, aggregation weighted by audio seconds, an explicit
  failure policy, and ``state_dict``/``load_state_dict`` for checkpoints.
* :class:`ServerOptimizerMixin` -- server optimisers (Reddi et al., 2021): the weighted
  average delta is a pseudo-gradient fed to a pure update function (``adam_step``,
  ``yogi_step``, ``adagrad_step``, ``lamb_step``) with a server learning-rate schedule.

Aggregation is split into hooks so that the DP wrapper in
:mod:`fedspeech.federation.privacy` can replace the averaging but keep the optimiser:
``screen_replies`` -> average -> ``apply_average``/``apply_delta``.

Train ConfigRecord keys sent to clients: ``server-round`` (int), ``lr`` (float, client
learning rate of this round) and ``proximal-mu`` (float, only when ``proximal_mu > 0``;
the client adds ``mu/2 * ||w - w_global||^2``).

The update rules live in :mod:`fedspeech.federation.server_updates` and the seeded
sampling in :mod:`fedspeech.federation.sampling`; their public names are re-exported
here so ``_target_: fedspeech.federation.strategies.X`` and older imports keep working.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedYogi, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore import log

from .sampling import CohortSampler, make_rng, rng_state_from_array, rng_state_to_array
from .schedules import Schedule, as_schedule
from .server_updates import NDArrays, adagrad_step, adam_step, lamb_step, yogi_step

__all__ = [
    # re-exported from .server_updates and .sampling so existing imports keep working
    "NDArrays",
    "adam_step",
    "yogi_step",
    "adagrad_step",
    "lamb_step",
    "CohortSampler",
    "make_rng",
    "rng_state_to_array",
    "rng_state_from_array",
    # defined here
    "StateDict",
    "KEY_SERVER_ROUND",
    "KEY_LR",
    "KEY_PROXIMAL_MU",
    "SUM_METRIC_KEYS",
    "ID_METRIC_KEYS",
    "ClientFailuresError",
    "aggregate_train_metrics",
    "RoundReport",
    "SpeechStrategyMixin",
    "ServerOptimizerMixin",
    "SpeechFedAvg",
    "SpeechFedAdam",
    "SpeechFedYogi",
    "SpeechFedAdagrad",
    "FedLAMB",
    "build_strategy",
]

StateDict = dict[str, "np.ndarray | float | int"]

KEY_SERVER_ROUND = "server-round"
KEY_LR = "lr"
KEY_PROXIMAL_MU = "proximal-mu"
#: Reply metrics that are totals over the cohort, not per-client averages.
SUM_METRIC_KEYS = ("num-examples", "num-seconds")
#: Reply metrics that identify a client; averaging them is meaningless.
ID_METRIC_KEYS = ("partition-id",)


class ClientFailuresError(AggregationError):
    """Raised when clients failed and the strategy does not accept failures."""


# --------------------------------------------------------------------------- metrics
def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Aggregate client train metrics: totals for counts, weighted means otherwise.

    ``num-examples`` and ``num-seconds`` are summed (the round's training volume),
    ``partition-id`` is dropped, every other scalar or list metric is averaged with
    weights ``weighted_by_key``. Flower's default would drop the weight key and average
    the ids, which loses the audio seconds the run history needs.
    """
    weights = []
    for record in records:
        metrics = _only_metricrecord(record)
        if weighted_by_key not in metrics:
            raise AggregationError(reason=f"reply metrics lack '{weighted_by_key}'")
        weights.append(float(cast(float, metrics[weighted_by_key])))
    total = sum(weights)
    if not total > 0:
        raise AggregationError(reason=f"'{weighted_by_key}' sums to {total}; cannot weight")
    out = MetricRecord()
    for record, weight in zip(records, weights, strict=True):
        factor = weight / total
        for key, value in _only_metricrecord(record).items():
            if key in ID_METRIC_KEYS:
                continue
            if key in SUM_METRIC_KEYS:
                out[key] = cast(float, out.get(key, 0)) + value  # type: ignore[operator]
            elif isinstance(value, list):
                prev = cast(list[float], out.get(key, [0.0] * len(value)))
                out[key] = [p + float(v) * factor for p, v in zip(prev, value, strict=True)]
            else:
                out[key] = cast(float, out.get(key, 0.0)) + float(value) * factor
    return out


def _only_metricrecord(record: RecordDict) -> MetricRecord:
    if len(record.metric_records) != 1:
        raise AggregationError(
            reason=f"expected one MetricRecord per reply, got {len(record.metric_records)}"
        )
    return next(iter(record.metric_records.values()))


@dataclass
class RoundReport:
    """Who was asked, who answered and why others did not (one training round)."""

    server_round: int
    sampled: list[int] = field(default_factory=list)
    replied: list[int] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------------- mixins
class SpeechStrategyMixin:
    """Sampling, client LR/FedProx config, failure policy and checkpoint state.

    Mixed in before a Flower ``FedAvg``-family class; forwards Flower's arguments.

    Parameters
    ----------
    fraction_train, num_train_nodes, min_train_nodes, min_available_nodes
        Cohort size, see :class:`CohortSampler`. ``num_train_nodes`` wins when set.
    weighted_by_key
        Reply metric used as aggregation weight: ``num-seconds`` (default: a client
        with more audio moves the model more, like centralised training over
        utterances) or ``num-examples``.
    client_lr
        Client learning rate, a number or a schedule of the round, sent as ``lr``.
    proximal_mu
        FedProx coefficient sent as ``proximal-mu`` when > 0 (the client applies it).
    accept_failures
        If false, any client error or missing reply aborts the round with
        :class:`ClientFailuresError`; if true, what replied is aggregated and the
        failures are logged, counted in the metrics and kept in ``last_round``.
    seed
        Seed of the cohort sampler.
    """

    current_arrays: NDArrays | None
    weighted_by_key: str
    arrayrecord_key: str
    configrecord_key: str
    train_metrics_aggr_fn: Any

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        num_train_nodes: int | None = None,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-seconds",
        client_lr: float | Schedule = 1e-3,
        proximal_mu: float = 0.0,
        accept_failures: bool = True,
        seed: int = 0,
        node_wait_timeout_s: float = 600.0,
        **strategy_kwargs: Any,
    ) -> None:
        if float(proximal_mu) < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
        if not weighted_by_key:
            raise ValueError("weighted_by_key must name a reply metric")
        self.sampler = CohortSampler(
            seed,
            fraction=fraction_train,
            num_nodes=num_train_nodes,
            min_nodes=min_train_nodes,
            min_available_nodes=min_available_nodes,
            wait_timeout_s=node_wait_timeout_s,
        )
        self.client_lr = as_schedule(client_lr)
        self.proximal_mu = float(proximal_mu)
        self.accept_failures = bool(accept_failures)
        self.num_train_nodes = self.sampler.num_nodes
        self.current_arrays = None
        self.last_round: RoundReport | None = None
        self._sampled: dict[int, list[int]] = {}
        super().__init__(  # type: ignore[call-arg]
            fraction_train=fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            train_metrics_aggr_fn=aggregate_train_metrics,
            **strategy_kwargs,
        )

    # -- configuration ------------------------------------------------------------
    def set_node_partitions(self, mapping: Mapping[int, int]) -> None:
        """Node-id -> partition-id map; makes sampling reproducible across runs."""
        self.sampler.set_node_partitions(mapping)

    def train_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """The ConfigRecord sent to clients: a copy of ``config`` plus round keys."""
        out = ConfigRecord(dict(config))
        out[KEY_SERVER_ROUND] = int(server_round)
        out[KEY_LR] = float(self.client_lr(server_round))
        if self.proximal_mu > 0:
            out[KEY_PROXIMAL_MU] = self.proximal_mu
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample the cohort (seeded) and send it the global arrays and round config."""
        self.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        node_ids, connected = self.sampler.sample(grid)
        self._sampled[server_round] = list(node_ids)
        cfg = self.train_config(server_round, config)
        log(
            INFO,
            "configure_train: round %d, sampled %d of %d nodes, lr=%.4g",
            server_round,
            len(node_ids),
            len(connected),
            cfg[KEY_LR],
        )
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
        return [
            Message(content=record, dst_node_id=nid, message_type=MessageType.TRAIN)
            for nid in node_ids
        ]

    # -- aggregation hooks --------------------------------------------------------
    def screen_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Split replies into usable ones and failures; apply the failure policy.

        A failure is an error reply, or a sampled node that sent no reply (timeout).
        """
        replies = list(replies)
        sampled = self._sampled.pop(server_round, None)
        report = RoundReport(server_round, sampled=list(sampled or []))
        valid: list[Message] = []
        for msg in replies:
            nid = msg.metadata.src_node_id
            if msg.has_error():
                report.failures[nid] = f"error {msg.error.code}: {msg.error.reason}"
            elif not msg.has_content():
                report.failures[nid] = "reply without content"
            else:
                valid.append(msg)
                report.replied.append(nid)
        if sampled is not None:
            answered = {m.metadata.src_node_id for m in replies}
            for nid in sampled:
                if nid not in answered:
                    report.failures[nid] = "no reply before the round timeout"
        self.last_round = report
        for nid, reason in report.failures.items():
            log(WARNING, "round %d: node %d failed: %s", server_round, nid, reason)
        if report.failures and not self.accept_failures:
            detail = "; ".join(f"node {n}: {r}" for n, r in report.failures.items())
            raise ClientFailuresError(
                reason=f"round {server_round}: {len(report.failures)} client(s) failed "
                f"and accept_failures is false ({detail})"
            )
        if valid:
            self._check_reply_arrays(valid)
        return valid

    def _check_reply_arrays(self, replies: list[Message]) -> None:
        for msg in replies:
            content = msg.content
            if self.arrayrecord_key not in content.array_records:
                raise AggregationError(
                    reason=f"reply from node {msg.metadata.src_node_id} has no "
                    f"ArrayRecord '{self.arrayrecord_key}'"
                )
            if len(content.array_records) != 1:
                raise AggregationError(reason="expected exactly one ArrayRecord per reply")
            if self.current_arrays is not None:
                record = content[self.arrayrecord_key]
                got, want = set(record.keys()), set(self.current_arrays)
                if got != want:
                    raise AggregationError(
                        reason=f"reply from node {msg.metadata.src_node_id} has arrays "
                        f"{sorted(got ^ want)[:5]} not matching the global ones"
                    )
                for k, arr in record.items():  # no silent broadcasting later
                    if tuple(arr.shape) != self.current_arrays[k].shape:
                        raise AggregationError(
                            reason=f"reply from node {msg.metadata.src_node_id}: '{k}' has "
                            f"shape {tuple(arr.shape)}, global {self.current_arrays[k].shape}"
                        )

    def aggregate_metrics(self, server_round: int, replies: list[Message]) -> MetricRecord:
        """Client train metrics plus ``num-sampled``, ``num-replied``, ``num-failed``."""
        metrics = (
            self.train_metrics_aggr_fn([m.content for m in replies], self.weighted_by_key)
            if replies
            else MetricRecord()
        )
        report = self.last_round or RoundReport(server_round)
        metrics["num-sampled"] = len(report.sampled)
        metrics["num-replied"] = len(report.replied)
        metrics["num-failed"] = len(report.failures)
        return metrics

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted average of the replies, then this strategy's server update."""
        valid = self.screen_replies(server_round, replies)
        metrics = self.aggregate_metrics(server_round, valid)
        if not valid:
            log(WARNING, "round %d: no usable replies, global model unchanged", server_round)
            return None, metrics
        averaged = aggregate_arrayrecords([m.content for m in valid], self.weighted_by_key)
        return self.apply_average(server_round, averaged), metrics

    def apply_average(self, server_round: int, averaged: ArrayRecord) -> ArrayRecord:
        """Turn the averaged client arrays into the new global arrays."""
        return self.apply_delta(server_round, self._delta_from(averaged))

    def apply_delta(self, server_round: int, delta: NDArrays) -> ArrayRecord:
        """Apply an (already averaged) model delta; plain FedAvg adds it."""
        current = self.require_current_arrays()
        return _to_record({k: current[k] + d.astype(current[k].dtype) for k, d in delta.items()})

    def require_current_arrays(self) -> NDArrays:
        if self.current_arrays is None:
            raise AggregationError(
                reason="global arrays unknown; configure_train must run before aggregation"
            )
        return self.current_arrays

    def _delta_from(self, averaged: ArrayRecord) -> NDArrays:
        current = self.require_current_arrays()
        arrays = {k: a.numpy() for k, a in averaged.items()}
        if set(arrays) != set(current):
            raise AggregationError(reason="averaged and global arrays have different keys")
        for k, x in arrays.items():
            if x.shape != current[k].shape:
                raise AggregationError(
                    reason=f"shape of '{k}' {x.shape} differs from global {current[k].shape}"
                )
        return {k: x - current[k] for k, x in arrays.items()}

    # -- checkpoint state ---------------------------------------------------------
    def state_dict(self) -> StateDict:
        """Server-side state needed to resume: sampler RNG (+ optimiser moments)."""
        return self._state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; unknown keys are an error."""
        rest = dict(state)
        self._load_state(rest)
        if rest:
            raise KeyError(f"unknown strategy state keys: {sorted(rest)[:10]}")

    def _state(self) -> StateDict:
        return {"sampler/rng": rng_state_to_array(self.sampler.rng)}

    def _load_state(self, rest: dict[str, Any]) -> None:
        if "sampler/rng" not in rest:
            raise KeyError("strategy state lacks 'sampler/rng'")
        rng_state_from_array(self.sampler.rng, rest.pop("sampler/rng"))

    def summary(self) -> None:
        """Log the speech-specific settings, then Flower's."""
        log(INFO, "\t├──> Speech settings:")
        log(
            INFO,
            "\t│\t├── cohort: %s",
            (
                f"{self.num_train_nodes} nodes"
                if self.num_train_nodes
                else f"fraction {self.sampler.fraction}"
            ),
        )
        log(INFO, "\t│\t├── client lr: %r", self.client_lr)
        log(INFO, "\t│\t├── proximal mu: %g", self.proximal_mu)
        log(INFO, "\t│\t└── accept failures: %s", self.accept_failures)
        super().summary()  # type: ignore[misc]


def _to_record(arrays: NDArrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


class ServerOptimizerMixin(SpeechStrategyMixin):
    """Server optimiser on the average delta, with a server learning-rate schedule.

    ``eta`` may be a number or a schedule; ``self.eta`` holds the rate of the round
    being aggregated (Flower's ``summary`` prints it). Moments live in Flower's
    ``m_t``/``v_t`` attributes and are checkpointed as ``m/<name>``, ``v/<name>``.
    """

    m_t: NDArrays | None
    v_t: NDArrays | None
    eta: float

    def __init__(self, *, eta: float | Schedule = 1e-2, **kwargs: Any) -> None:
        self.eta_schedule = as_schedule(eta)
        client_lr = as_schedule(kwargs.get("client_lr", 1e-3))
        super().__init__(eta=self.eta_schedule(1), eta_l=client_lr(1), **kwargs)

    def apply_delta(self, server_round: int, delta: NDArrays) -> ArrayRecord:
        """Apply one server-optimiser step to the global arrays."""
        current = self.require_current_arrays()
        self.eta = float(self.eta_schedule(server_round))
        delta = {k: d.astype(current[k].dtype, copy=False) for k, d in delta.items()}
        new = self.server_step(server_round, current, delta)
        # keep the model's dtype (NumPy promotes float32 by float64 scalars to float64)
        return _to_record({k: x.astype(current[k].dtype, copy=False) for k, x in new.items()})

    def server_step(self, server_round: int, params: NDArrays, delta: NDArrays) -> NDArrays:
        """One optimiser step; updates the moment state."""
        raise NotImplementedError

    def _state(self) -> StateDict:
        state = super()._state()
        for prefix, moments in (("m/", self.m_t), ("v/", self.v_t)):
            for k, x in (moments or {}).items():
                state[prefix + k] = x
        return state

    def _load_state(self, rest: dict[str, Any]) -> None:
        super()._load_state(rest)
        for prefix, attr in (("m/", "m_t"), ("v/", "v_t")):
            keys = [k for k in rest if k.startswith(prefix)]
            moments = {k[len(prefix) :]: np.array(rest.pop(k)) for k in keys}
            setattr(self, attr, moments or None)


class SpeechFedAvg(SpeechStrategyMixin, FedAvg):
    """FedAvg weighted by audio seconds, with seeded sampling and client LR.

    With ``proximal_mu > 0`` it is FedProx (the server side of FedProx is FedAvg).
    """

    def apply_average(self, server_round: int, averaged: ArrayRecord) -> ArrayRecord:
        """The weighted average is the new global model."""
        return averaged


class SpeechFedAdam(ServerOptimizerMixin, FedAdam):
    """FedAdam (Reddi et al.) through :func:`adam_step`, Flower's bias correction."""

    def server_step(self, server_round: int, params: NDArrays, delta: NDArrays) -> NDArrays:
        new, self.m_t, self.v_t = adam_step(
            params,
            delta,
            self.m_t,
            self.v_t,
            eta=self.eta,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            tau=self.tau,
            t=server_round + 1.0,
        )
        return new


class SpeechFedYogi(ServerOptimizerMixin, FedYogi):
    """FedYogi through :func:`yogi_step`."""

    def server_step(self, server_round: int, params: NDArrays, delta: NDArrays) -> NDArrays:
        new, self.m_t, self.v_t = yogi_step(
            params,
            delta,
            self.m_t,
            self.v_t,
            eta=self.eta,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            tau=self.tau,
        )
        return new


class SpeechFedAdagrad(ServerOptimizerMixin, FedAdagrad):
    """FedAdagrad through :func:`adagrad_step` (``m_t`` is unused and stays empty)."""

    def server_step(self, server_round: int, params: NDArrays, delta: NDArrays) -> NDArrays:
        new, self.v_t = adagrad_step(params, delta, self.v_t, eta=self.eta, tau=self.tau)
        return new


class FedLAMB(ServerOptimizerMixin, FedOpt):
    """Server LAMB (:func:`lamb_step`): Adam moments, per-tensor trust ratio.

    ``tau`` is LAMB's epsilon. ``lamb_step_count`` counts applied server updates (rounds
    without usable replies do not step) and is checkpointed as ``lamb/step``. The last
    trust ratios are kept in ``last_trust_ratios`` for inspection.
    """

    def __init__(
        self,
        *,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        tau: float = 1e-6,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)
        self.lamb_step_count = 0
        self.last_trust_ratios: dict[str, float] = {}

    def server_step(self, server_round: int, params: NDArrays, delta: NDArrays) -> NDArrays:
        self.lamb_step_count += 1
        new, self.m_t, self.v_t, self.last_trust_ratios = lamb_step(
            params,
            delta,
            self.m_t,
            self.v_t,
            eta=self.eta,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            eps=self.tau,
            step=self.lamb_step_count,
            weight_decay=self.weight_decay,
        )
        return new

    def _state(self) -> StateDict:
        state = super()._state()
        state["lamb/step"] = int(self.lamb_step_count)
        return state

    def _load_state(self, rest: dict[str, Any]) -> None:
        super()._load_state(rest)
        self.lamb_step_count = int(np.asarray(rest.pop("lamb/step", 0)))


# --------------------------------------------------------------------- factory
_COMMON_KEYS = (
    "fraction_train",
    "num_train_nodes",
    "min_train_nodes",
    "min_available_nodes",
    "weighted_by_key",
    "accept_failures",
    "proximal_mu",
    "node_wait_timeout_s",
)
#: Keys of ``cfg.strategy`` read elsewhere (the ServerApp) or by this factory itself.
_OTHER_KEYS = ("name", "round_timeout", "client_lr", "builder", "dp")


def build_strategy(cfg_strategy: Any, population: int, seed: int) -> Strategy:
    """Build the configured strategy (wrapped in user-level DP when ``dp.enabled``).

    ``cfg_strategy`` is the ``strategy`` node of the Hydra config (DictConfig or dict):
    shared keys (sampling, weighting, failures, ``client_lr``, ``proximal_mu``) are
    passed as keyword arguments to ``builder`` (``_target_`` plus optimiser-specific
    arguments, instantiated recursively so schedules in it are built). ``population``
    is the number of clients (partitions), ``seed`` seeds sampling and DP noise.
    """
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    cfg = (
        OmegaConf.create(cfg_strategy) if not isinstance(cfg_strategy, DictConfig) else cfg_strategy
    )
    if int(population) < 1:
        raise ValueError(f"population must be >= 1, got {population}")
    unknown = set(cfg.keys()) - set(_COMMON_KEYS) - set(_OTHER_KEYS)
    if unknown:
        raise ValueError(f"unknown strategy config keys: {sorted(unknown)}")
    if "builder" not in cfg or "_target_" not in cfg.builder:
        raise ValueError("strategy config needs builder._target_")
    client_lr_cfg = cfg.get("client_lr", 1e-3)
    client_lr = (
        instantiate(client_lr_cfg) if isinstance(client_lr_cfg, DictConfig) else client_lr_cfg
    )
    kwargs = {k: cfg[k] for k in _COMMON_KEYS if k in cfg}
    make = instantiate(cfg.builder, _partial_=True)
    strategy = make(client_lr=client_lr, seed=int(seed), **kwargs)
    if not isinstance(strategy, SpeechStrategyMixin):
        raise TypeError(f"{type(strategy).__name__} is not a fedspeech strategy")
    num = strategy.num_train_nodes
    if num is not None and num > population:
        raise ValueError(f"num_train_nodes={num} exceeds the population of {population}")

    dp_cfg = cfg.get("dp")
    if dp_cfg is not None and bool(dp_cfg.get("enabled", False)):
        from .privacy import UserLevelDP

        dp_kwargs = OmegaConf.to_container(dp_cfg, resolve=True)
        assert isinstance(dp_kwargs, dict)
        dp_kwargs.pop("enabled")
        return UserLevelDP(strategy, population=int(population), seed=int(seed), **dp_kwargs)
    return strategy
