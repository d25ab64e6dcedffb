"""Schema of `conf/strategy/*.yaml`: the keys every strategy shares, user-level DP, the server
optimiser (`builder`, chosen by its `_target_`) and learning-rate schedules.

A new strategy class adds its builder schema to `BUILDERS`; a new schedule to `SCHEDULES`.
"""

from __future__ import annotations

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


@dataclass
class FedAvgBuilder:
    _target_: str = f"{STRATEGIES_MODULE}.SpeechFedAvg"


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
    FedAvgBuilder, FedAdamBuilder, FedYogiBuilder, FedAdagradBuilder, FedLAMBBuilder)}


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
