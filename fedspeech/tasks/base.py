"""The interface every task implements; the ASR task (`tasks.asr`) is the reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig

from fedspeech.experiment_data import ExperimentData
from fedspeech.models.base import SpeechModel
from fedspeech.training import TrainStats

#: central evaluation: () -> (metrics, one row per evaluated utterance or None)
Evaluator = Callable[[], "tuple[dict[str, float], pd.DataFrame | None]"]


class Task:
    """Base class of tasks; the defaults are what a task without extra phases needs."""

    #: True when central evaluation needs what `before_rounds` makes (e.g. unit targets): the
    #: server then evaluates the initial model after that phase, not while the nodes start
    setup_before_round0: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        #: what `before_rounds` reports for the round-0 record of history.json
        self.setup_record: dict = {}

    def client_rows(self, data: ExperimentData, partition_id: int) -> pd.DataFrame:
        """The utterances a client trains on."""
        return data.client_rows(partition_id)

    def client_sizes(self, data: ExperimentData, partition_id: int) -> dict[str, float]:
        """num-examples and num-seconds of `client_rows`, which bound the client's aggregation
        weight (a task whose `client_rows` drops utterances must say so here too)."""
        return data.client_index.sizes(partition_id)

    def train(self, cfg: DictConfig, model: SpeechModel, rows: pd.DataFrame, data: ExperimentData,
              device: torch.device, config: ConfigRecord, extras: RecordDict, seed: int) -> TrainStats:
        """Client side, one round: train `model` on `rows`."""
        raise NotImplementedError

    def evaluator(self, cfg: DictConfig, data: ExperimentData, model: SpeechModel,
                  device: torch.device) -> Evaluator:
        """Server side: central evaluation of the global model, called after rounds."""
        raise NotImplementedError

    def before_rounds(self, cfg: DictConfig, grid: Grid, node_partitions: dict[int, int],
                      run_dir: Path) -> RecordDict | None:
        """Server side, before round 1: a phase of its own (cached in `run_dir`); returns records
        sent with every train message, or None."""
        return None

    def answer(self, cfg: DictConfig, msg: Message, client: int,
               data: ExperimentData) -> Message | None:
        """Client side: answer this task's own QUERY messages for partition `client`; None = not
        one of ours."""
        return None

    def after_rounds(self, cfg: DictConfig, model: SpeechModel, run_dir: Path) -> None:
        """Server side, after the last round (e.g. write `export/`)."""
