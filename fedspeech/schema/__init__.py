"""Typed schemas of fedspeech's configs: `typed_schema(cfg)` is the structured config that a
composed experiment config must merge into (see `fedspeech.config.validate_config`)."""

from omegaconf import DictConfig

from fedspeech.schema.experiment import ExperimentConfig
from fedspeech.schema.slots import SchemaChoiceError, typed


def typed_schema(cfg: DictConfig) -> DictConfig:
    """The experiment schema with each group's schema chosen by `cfg` (its `_target_`s, `logger.name`)."""
    return typed(ExperimentConfig, cfg)


__all__ = ["ExperimentConfig", "SchemaChoiceError", "typed_schema"]
