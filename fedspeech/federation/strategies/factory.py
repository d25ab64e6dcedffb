"""Build the configured strategy from the Hydra `strategy` node.

Shared keys (`conf/strategy_common.yaml`) become keyword arguments of `builder` (`_target_` plus
its own settings, instantiated recursively so schedules in it are built); `strategy.dp` adds
user-level DP to the aggregation. `round_timeout` and `max_in_flight` are read by the round loop,
`name` names the run.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedspeech.federation.privacy import UserLevelDP
from fedspeech.federation.sampling import strategy_cohort_size
from fedspeech.federation.schedules import Schedule, as_schedule
from fedspeech.federation.strategies.base import SpeechStrategy

#: keys of `cfg.strategy` passed to every strategy's constructor
COMMON_KEYS = ("fraction_train", "num_train_nodes", "min_train_nodes", "min_available_nodes",
               "weighted_by_key", "accept_failures", "proximal_mu", "max_update_norm",
               "node_wait_timeout_s")
#: keys of `cfg.strategy` read by this factory or by the round loop
OTHER_KEYS = ("name", "round_timeout", "max_in_flight", "client_lr", "builder", "dp")


def build_privacy(dp_cfg: Any, cfg: DictConfig, population: int, seed: int) -> UserLevelDP | None:
    """`strategy.dp` as a `UserLevelDP` component, or None when it is disabled."""
    if dp_cfg is None or not bool(dp_cfg.get("enabled", False)):
        return None
    kwargs = OmegaConf.to_container(dp_cfg, resolve=True)
    assert isinstance(kwargs, dict)
    kwargs.pop("enabled")
    cohort = strategy_cohort_size(cfg, population)
    return UserLevelDP(population=population, cohort=cohort, seed=seed, **kwargs)


def client_lr_schedule(cfg_strategy: Any) -> Schedule:
    """`strategy.client_lr` (a number or a schedule's config) as the per-round schedule: what
    the strategy sends its clients, and what the centralised baseline trains with."""
    client_lr = cfg_strategy.get("client_lr", 1e-3)
    return as_schedule(instantiate(client_lr) if isinstance(client_lr, DictConfig) else client_lr)


def build_strategy(cfg_strategy: Any, population: int, seed: int) -> SpeechStrategy:
    """The configured strategy for `population` clients, seeded with `seed`."""
    cfg = cfg_strategy if isinstance(cfg_strategy, DictConfig) else OmegaConf.create(cfg_strategy)
    if int(population) < 1:
        raise ValueError(f"population must be >= 1, got {population}")
    unknown = set(cfg.keys()) - set(COMMON_KEYS) - set(OTHER_KEYS)
    if unknown:
        raise ValueError(f"unknown strategy config keys: {sorted(unknown)}")
    if "builder" not in cfg or "_target_" not in cfg.builder:
        raise ValueError("strategy config needs builder._target_")
    client_lr = client_lr_schedule(cfg)
    kwargs = {k: cfg[k] for k in COMMON_KEYS if k in cfg}
    make = instantiate(cfg.builder, _partial_=True)
    strategy = make(client_lr=client_lr, seed=int(seed), population=int(population),
                    privacy=build_privacy(cfg.get("dp"), cfg, int(population), int(seed)), **kwargs)
    if not isinstance(strategy, SpeechStrategy):
        raise TypeError(f"{type(strategy).__name__} is not a fedspeech strategy")
    return strategy
