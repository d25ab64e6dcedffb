"""Schema of `conf/strategy/*.yaml`: the keys every strategy shares (`conf/strategy_common.yaml`),
user-level DP, the server rule (`builder`, chosen by its `_target_`) and learning-rate schedules.

A new strategy class adds its builder schema to `BUILDERS`; a new schedule to `SCHEDULES`.
Flower's own strategies (the adapter's `flower` / `wraps` nodes) take the keyword parameters of
their class, minus those the adapter sets itself (`FlowerStrategies`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from fedspeech.schema.slots import slot

SCHEDULES_MODULE = "fedspeech.federation.schedules"
STRATEGIES_MODULE = "fedspeech.federation.strategies"

#: `_target_` of a learning-rate schedule -> schema (filled below; LinearWarmup nests one)
SCHEDULES: dict[str, type] = {}


@dataclass
class Constant:
    _target_: str = f"{SCHEDULES_MODULE}.Constant"
    value: float = 1e-3


@dataclass
class StepDecay:
    _target_: str = f"{SCHEDULES_MODULE}.StepDecay"
    value: float = 1e-3
    gamma: float = 0.5
    every: int = 10


@dataclass
class LinearWarmup:
    _target_: str = f"{SCHEDULES_MODULE}.LinearWarmup"
    value: float = 1e-3
    warmup_rounds: int = 1
    then: Any = slot(SCHEDULES)


SCHEDULES.update({s._target_: s for s in (Constant, StepDecay, LinearWarmup)})


class FlowerStrategies(Mapping):
    """`flwr.serverapp.strategy.<Class>` -> a schema of that class's own hyper-parameters.

    Made from the class's signature when first asked (Flower is imported then), so every
    Message-API strategy Flower ships is covered and a misspelt keyword fails before the run.
    """

    PREFIX = "flwr.serverapp.strategy."
    #: what `FlowerStrategy` passes itself (cohort and weighting come from fedspeech's keys, the
    #: wrapped strategy and cohort size of a DP wrapper from the adapter); record keys and metric
    #: callbacks are fedspeech's
    SET_BY_ADAPTER = frozenset({
        "fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes",
        "min_available_nodes", "weighted_by_key", "strategy", "num_sampled_clients",
        "arrayrecord_key", "configrecord_key", "train_metrics_aggr_fn", "evaluate_metrics_aggr_fn"})

    def __init__(self) -> None:
        self._schemas: dict[str, type] | None = None

    def _all(self) -> dict[str, type]:
        if self._schemas is None:
            import flwr.serverapp.strategy as flower

            classes = {name: obj for name, obj in vars(flower).items()
                       if inspect.isclass(obj) and issubclass(obj, flower.Strategy)
                       and obj is not flower.Strategy and not inspect.isabstract(obj)}
            self._schemas = {self.PREFIX + name: self._schema(name, cls) for name, cls in classes.items()}
        return self._schemas

    def _schema(self, name: str, cls: type) -> type:
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = [p for p in inspect.signature(cls).parameters.values()
                  if p.kind in kinds and p.name not in self.SET_BY_ADAPTER]
        return dataclasses.make_dataclass(name, [
            ("_target_", str, field(default=self.PREFIX + name)),
            ("_partial_", bool, field(default=True)),
            *[(p.name, Any, field(default=None)) for p in params]])

    def __getitem__(self, target: str) -> type:
        return self._all()[target]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


FLOWER_STRATEGIES = FlowerStrategies()


@dataclass
class FedAvgBuilder:
    _target_: str = f"{STRATEGIES_MODULE}.SpeechFedAvg"


@dataclass
class FedAvgMBuilder:
    _target_: str = f"{STRATEGIES_MODULE}.SpeechFedAvgM"
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0


@dataclass
class FlowerBuilder:
    """Flower's own strategy `flower`, optionally wrapping `wraps` (a DP wrapper around FedAvg)."""

    _target_: str = f"{STRATEGIES_MODULE}.FlowerStrategy"
    flower: Any = slot(FLOWER_STRATEGIES)
    wraps: Any = slot(FLOWER_STRATEGIES)


@dataclass
class ServerOptimizer:
    """Keys of every server optimiser (the FedOpt family)."""

    eta: Any = slot(SCHEDULES, default=1e-2)     # server learning rate: a number or a schedule
    tau: float = 1e-3


@dataclass
class FedAdagradBuilder(ServerOptimizer):
    _target_: str = f"{STRATEGIES_MODULE}.SpeechFedAdagrad"


@dataclass
class FedAdamBuilder(ServerOptimizer):
    _target_: str = f"{STRATEGIES_MODULE}.SpeechFedAdam"
    beta_1: float = 0.9
    beta_2: float = 0.99


@dataclass
class FedYogiBuilder(FedAdamBuilder):
    _target_: str = f"{STRATEGIES_MODULE}.SpeechFedYogi"


@dataclass
class FedLAMBBuilder(FedAdamBuilder):
    _target_: str = f"{STRATEGIES_MODULE}.FedLAMB"
    beta_2: float = 0.999
    tau: float = 1e-6
    weight_decay: float = 0.0


#: `strategy.builder._target_` -> schema
BUILDERS: dict[str, type] = {s._target_: s for s in (
    FedAvgBuilder, FedAvgMBuilder, FedAdamBuilder, FedYogiBuilder, FedAdagradBuilder, FedLAMBBuilder,
    FlowerBuilder)}


@dataclass
class DPConfig:
    """`conf/strategy/dp/*.yaml`: central user-level DP."""

    enabled: bool = False
    clip_norm: float = 1.0
    clipping: str = "global"
    noise_multiplier: float = 0.0
    delta: float = 1e-6
    accountant: str = "pld"
    virtual_cohort: Optional[int] = None
    virtual_population: Optional[int] = None
    normalize: Optional[str] = None


@dataclass
class StrategyConfig:
    name: str = "???"
    fraction_train: Optional[float] = 0.1
    num_train_nodes: Optional[int] = None
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    weighted_by_key: str = "num-seconds"
    accept_failures: bool = True
    round_timeout: float = 86400.0
    node_wait_timeout_s: float = 600.0
    max_update_norm: Optional[float] = None
    max_in_flight: Optional[int] = None
    client_lr: Any = slot(SCHEDULES, default=1e-3)   # a number or a schedule
    proximal_mu: float = 0.0
    builder: Any = slot(BUILDERS)
    dp: DPConfig = field(default_factory=DPConfig)
