"""Schemas of `conf/task/*.yaml` (chosen by `task._target_`): what a federated run trains."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ASRTask:
    _target_: str = "fedspeech.tasks.asr.ASRTask"
    name: str = "asr"


#: `task._target_` -> schema. A new task (pretrain, distill) registers its schema here.
TASKS: dict[str, type] = {s._target_: s for s in (ASRTask,)}
