"""Schemas of `conf/logger/*.yaml` (chosen by `logger.name`), read by `fedspeech.tracking`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class NoLogger:
    name: str = "none"


@dataclass
class TensorBoardLogger:
    name: str = "tensorboard"


@dataclass
class WandbLogger:
    name: str = "wandb"
    project: str = "fedspeech"
    entity: Optional[str] = None
    mode: str = "offline"


#: `logger.name` -> schema
LOGGERS: dict[str, type] = {s.name: s for s in (NoLogger, TensorBoardLogger, WandbLogger)}
