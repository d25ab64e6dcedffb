"""Tasks: what a federated experiment trains and how it is judged (`task=asr|pretrain|distill`).

The round loop, sampling, aggregation and DP are the same for every task; a task supplies the
client's local training, the server's central evaluation, optional phases before the first round
(e.g. federated k-means) and after the last (e.g. an export), and answers to its own queries.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from fedspeech.tasks.base import Task


def build_task(cfg: DictConfig) -> Task:
    """The configured task (`cfg.task`, a Hydra group with a `_target_`)."""
    task = instantiate(cfg.task, _convert_="all")
    if not isinstance(task, Task):
        raise TypeError(f"task.{cfg.task.get('_target_')} is not a fedspeech Task")
    return task
