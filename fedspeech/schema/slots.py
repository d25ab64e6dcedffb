"""Variant slots: config fields whose schema is chosen by the config itself.

A model, a corpus reader, a partitioner or a server optimiser each take other keys, so one
dataclass cannot describe, say, every `model` node. A field declared with `slot(table)` names the
schemas it may hold, keyed by a discriminator the node carries (`_target_`, or `name`); `typed`
builds the structured schema of a composed config by following those choices, so that merging the
config into it rejects unknown keys and wrong types with the full key of the offending value.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

VARIANTS = "variants"
DISCRIMINATOR = "by"


class SchemaChoiceError(KeyError):
    """A node whose `_target_`/`name` has no schema; `key` is the full key of the discriminator."""

    def __init__(self, key: str, value: object, choices: list[str]) -> None:
        super().__init__(key)
        self.key, self.value, self.choices = key, value, choices

    def __str__(self) -> str:
        return f"{self.key}: no schema for {self.value!r}; known: {', '.join(self.choices)}"


def slot(variants: dict[str, type], *, by: str = "_target_", default: Any = None) -> Any:
    """A dataclass field holding one of `variants` (schemas keyed by the node's `by` value).

    A slot whose config value is not a mapping (e.g. a bare learning rate, or null) is left as is.
    """
    return dataclasses.field(default=default, metadata={VARIANTS: variants, DISCRIMINATOR: by})


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass an annotation names (also inside Optional[...]), else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def typed(schema: type, cfg: Any, prefix: str = "") -> DictConfig:
    """The structured config of `schema`, with every slot filled by the schema `cfg` chooses."""
    node = OmegaConf.structured(schema)
    hints = _hints(schema)
    for field in dataclasses.fields(schema):
        value = cfg.get(field.name) if isinstance(cfg, DictConfig) and field.name in cfg else None
        key = f"{prefix}{field.name}"
        variants = field.metadata.get(VARIANTS)
        if variants is not None:
            if isinstance(value, DictConfig):
                by = field.metadata[DISCRIMINATOR]
                choice = OmegaConf.select(value, by, default=None)
                if choice not in variants:
                    raise SchemaChoiceError(f"{key}.{by}", choice, sorted(variants))
                node[field.name] = typed(variants[choice], value, f"{key}.")
            continue
        inner = _dataclass_of(hints[field.name])
        if inner is not None and isinstance(value, DictConfig):
            node[field.name] = typed(inner, value, f"{key}.")
    return node


def fields_of(schema: type) -> list[str]:
    """The keys a schema accepts (for error messages)."""
    return [f.name for f in dataclasses.fields(schema)]
