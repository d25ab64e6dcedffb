"""Schemas of `conf/task/*.yaml` (chosen by `task._target_`): what a federated run trains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ASRTask:
    _target_: str = "fedspeech.tasks.asr.ASRTask"
    name: str = "asr"


@dataclass
class KMeansConfig:
    steps: int = 10
    max_frames_per_client: Optional[int] = 20000
    clients_per_step: Optional[int] = None
    eval_max_frames: Optional[int] = 20000


@dataclass
class PretrainTask:
    _target_: str = "fedspeech.tasks.pretrain.PretrainTask"
    name: str = "pretrain"
    targets: str = "federated_kmeans"
    iteration: int = 1
    features_from: Optional[str] = None
    feature_layer: Optional[int] = None
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)


@dataclass
class DistillTask:
    _target_: str = "fedspeech.tasks.distill.DistillTask"
    name: str = "distill"


#: `task._target_` -> schema. A new task registers its schema here.
TASKS: dict[str, type] = {s._target_: s for s in (ASRTask, PretrainTask, DistillTask)}
