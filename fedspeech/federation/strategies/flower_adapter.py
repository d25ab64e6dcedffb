"""Flower's own Message-API strategies inside fedspeech's loop: one adapter for all of them.

`strategy=fedmedian`, `fedtrimmedavg`, `krum`, `multikrum`, `bulyan`, `flower_fedavgm` or
`dp_adaptive` runs `flwr.serverapp.strategy.<X>` with fedspeech's seeded sampling, per-reply
screening, failure policy, run records and checkpoint/resume. Flower's class builds the train
messages (its `configure_train` sees only the cohort fedspeech sampled) and aggregates them (its
`aggregate_train`), so the aggregation rule is exactly Flower's.

Replies reach Flower's `aggregate_train` in partition order, whatever order they arrived in, so
the result is the same in every run and after a resume. Memory: robust rules (median, trimmed mean, Krum, Bulyan) need every reply of a round at once,
so with these the server holds the round's screened replies until they are aggregated: memory
grows with the cohort, unlike fedspeech's streaming strategies.

State kept across rounds by Flower's classes and restored on resume: FedAvgM's momentum, the
adaptive-clipping norm, and NumPy's global generator, which Flower's DP wrappers draw their noise
from (it is seeded from the run seed when the adapter is built).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedspeech.federation.aggregation import NDArrays
from fedspeech.federation.grid_proxy import GridProxy
from fedspeech.federation.parameters import record_arrays
from fedspeech.federation.screening import Reply
from fedspeech.federation.strategies.base import SpeechStrategy, StateDict

#: attributes of Flower strategies that carry state from one round to the next
_STATE_ATTRS = ("momentum_vector", "clipping_norm")


class CohortGrid(GridProxy):
    """The real grid, seen by a Flower strategy as holding only the cohort fedspeech sampled."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        super().__init__(grid)
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    target = getattr(factory, "func", factory)
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


class FlowerStrategy(SpeechStrategy):
    """Adapter: a Flower strategy built by `flower(...)`, optionally wrapping `wraps(...)`.

    `flower` (and `wraps`) are callables returning the Flower strategy, e.g. Hydra partials of
    `flwr.serverapp.strategy.FedMedian`. fedspeech fixes the arguments that would conflict
    with its own sampling: the Flower class trains every node of the cohort it is shown, and
    never evaluates on clients. A DP wrapper (`wraps` given) gets `num_sampled_clients` = the
    cohort size.
    """

    def __init__(self, *, flower: Callable[..., Strategy], wraps: Callable[..., Strategy] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.privacy is not None:
            raise ValueError("strategy/dp applies to fedspeech's own strategies; with Flower's "
                             "strategies use strategy=dp_adaptive")
        seed = int(self.sampler.seed)
        common = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1,
                  "min_evaluate_nodes": 0, "min_available_nodes": 1,
                  "weighted_by_key": self.weighted_by_key}
        if wraps is not None:
            if self.population is None:
                raise ValueError("a Flower DP wrapper needs the population to size its cohort")
            cohort = self.sampler.cohort_size(self.population)
            extra = {"num_sampled_clients": cohort} if _accepts(flower, "num_sampled_clients") else {}
            self.flower = flower(strategy=wraps(**common), **extra)
            np.random.seed(seed)            # Flower's DP wrappers draw from NumPy's global generator
        else:
            self.flower = flower(**common)
        if not isinstance(self.flower, Strategy):
            raise TypeError(f"{type(self.flower).__name__} is not a flwr.serverapp.strategy.Strategy")

    def _strategies(self) -> list[Strategy]:
        out: list[Strategy] = [self.flower]
        while isinstance(getattr(out[-1], "strategy", None), Strategy):
            out.append(out[-1].strategy)
        return out

    def make_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                      node_ids: list[int], grid: Grid) -> list[Message]:
        for strategy in self._strategies():
            if hasattr(strategy, "current_arrays"):
                strategy.current_arrays = arrays      # what the previous round left (also after a resume)
        messages = list(self.flower.configure_train(server_round, arrays, config,
                                                    CohortGrid(grid, node_ids)))
        for message in messages:                      # a task's records (e.g. k-means centroids)
            for key, record in self.extra_records.items():
                message.content[key] = record
        return messages

    def fold_checks_values(self) -> bool:
        return False                                  # Flower sums whatever it is given

    def new_aggregate(self, spec: Any, cohort: int) -> list[tuple[int, Message]]:
        return []

    def fold(self, aggregate: list[tuple[int, Message]], reply: Reply, message: Message) -> None:
        aggregate.append((reply.partition_id if reply.partition_id is not None else -1, message))

    def apply_aggregate(self, server_round: int, aggregate: list[tuple[int, Message]],
                        metrics: MetricRecord) -> NDArrays | None:
        # Flower sums in the order it is given (float32): give it the partition order, so the
        # result does not depend on which client answered first
        replies = [msg for _, msg in sorted(aggregate, key=lambda item: item[0])]
        arrays, flower_metrics = self.flower.aggregate_train(server_round, replies)
        for key, value in (flower_metrics or {}).items():
            metrics.setdefault(key, value)
        if arrays is None:
            return None
        current = self.require_current_arrays()
        return {k: np.asarray(v, dtype=current[k].dtype) for k, v in record_arrays(arrays).items()}

    def state_dict(self) -> StateDict:
        state = super().state_dict()
        for depth, strategy in enumerate(self._strategies()):
            for attr in _STATE_ATTRS:
                value = getattr(strategy, attr, None)
                if value is None:
                    continue
                if isinstance(value, list):
                    for i, x in enumerate(value):
                        state[f"flower/{depth}/{attr}/{i:05d}"] = np.asarray(x)
                else:
                    state[f"flower/{depth}/{attr}"] = float(value)
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["flower/np_random/keys"] = np.asarray(keys)
        state["flower/np_random/pos"] = int(pos)
        state["flower/np_random/gauss"] = np.asarray([has_gauss, cached], dtype=np.float64)
        return state

    def _load_own_state(self, rest: dict[str, Any]) -> None:
        for depth, strategy in enumerate(self._strategies()):
            for attr in _STATE_ATTRS:
                prefix = f"flower/{depth}/{attr}"
                items = sorted(k for k in rest if k.startswith(prefix + "/"))
                if items:
                    setattr(strategy, attr, [np.array(rest.pop(k)) for k in items])
                elif prefix in rest:
                    setattr(strategy, attr, float(np.asarray(rest.pop(prefix))))
        if "flower/np_random/keys" in rest:
            keys = np.asarray(rest.pop("flower/np_random/keys"), dtype=np.uint32)
            pos = int(np.asarray(rest.pop("flower/np_random/pos")))
            has_gauss, cached = np.asarray(rest.pop("flower/np_random/gauss"), dtype=np.float64)
            np.random.set_state(("MT19937", keys, pos, int(has_gauss), float(cached)))

    def summary(self) -> None:
        super().summary()
        self.flower.summary()
