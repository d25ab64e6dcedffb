"""Speech recognition with CTC (or the SpeechLLM's answers): fedspeech's default task."""

from __future__ import annotations

import pandas as pd
import torch
from flwr.app import ConfigRecord, RecordDict
from omegaconf import DictConfig

from fedspeech.data.batching import UtteranceLoader
from fedspeech.experiment_data import ExperimentData
from fedspeech.federation.evaluation import CentralEvaluator
from fedspeech.models.base import SpeechModel
from fedspeech.tasks.base import Evaluator, Task
from fedspeech.training import TrainStats, train_local


def train_on_rows(cfg: DictConfig, model: SpeechModel, rows: pd.DataFrame, data: ExperimentData,
                  device: torch.device, config: ConfigRecord, seed: int) -> TrainStats:
    """One client's local training on `rows` with `cfg.train` and this round's `config` (lr,
    local epochs, FedProx mu): the loop every task that minimises `model.loss` shares."""
    loader = UtteranceLoader(rows, data.audio_cache, cfg.train.batch_seconds, shuffle=True,
                             seed=seed, max_utterances=cfg.train.max_batch_utterances)
    train = cfg.train
    return train_local(
        model, loader, device,
        lr=float(config.get("lr", train.lr)),
        base_lr=float(train.lr),
        weight_decay=float(train.weight_decay),
        epochs=int(config.get("local-epochs", train.local_epochs)),
        max_steps=train.max_steps,
        grad_clip=train.grad_clip,
        grad_accum=int(train.grad_accum),
        precision=str(train.precision),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        speed_perturb=train.get("speed_perturb"),
    )


class ASRTask(Task):
    """Local training on transcribed utterances; WER/CER of the global model on `eval.split`."""

    def train(self, cfg: DictConfig, model: SpeechModel, rows: pd.DataFrame, data: ExperimentData,
              device: torch.device, config: ConfigRecord, extras: RecordDict, seed: int) -> TrainStats:
        return train_on_rows(cfg, model, rows, data, device, config, seed)

    def evaluator(self, cfg: DictConfig, data: ExperimentData, model: SpeechModel,
                  device: torch.device) -> Evaluator:
        return CentralEvaluator(cfg, data, model, device)
