"""`task=distill`: federated DistilHuBERT on unlabelled audio; the student goes to `export/`.

The teacher (`model.teacher`) is frozen and runs on each client's own audio; the student and
its prediction heads are what clients train and the strategy aggregates. The server scores the
global student on held-out audio: the distillation loss and, with `model.objective=layers`, the
cosine similarity per target layer; with `units`, the KL term, the masked cross-entropy and the
masked-unit accuracy against the teacher's units (a fixed mask per batch).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import ConfigRecord, RecordDict
from omegaconf import DictConfig

from fedspeech.data.batching import UtteranceLoader
from fedspeech.experiment_data import ExperimentData
from fedspeech.federation.evaluation import evaluation_rows
from fedspeech.models.base import SpeechModel
from fedspeech.models.pretraining.distil import DistilHubert
from fedspeech.tasks.asr import train_on_rows
from fedspeech.tasks.base import Evaluator, Task
from fedspeech.training import TrainStats


def _student(model: SpeechModel) -> DistilHubert:
    if not isinstance(model, DistilHubert):
        raise TypeError(f"task=distill trains model=distilhubert, not {type(model).__name__}")
    return model


class DistillTask(Task):
    """DistilHuBERT: regression of teacher layers, or distillation of the teacher's units."""

    def train(self, cfg: DictConfig, model: SpeechModel, rows: pd.DataFrame, data: ExperimentData,
              device: torch.device, config: ConfigRecord, extras: RecordDict, seed: int) -> TrainStats:
        return train_on_rows(cfg, _student(model), rows, data, device, config, seed)

    def evaluator(self, cfg: DictConfig, data: ExperimentData, model: SpeechModel,
                  device: torch.device) -> Evaluator:
        student = _student(model)
        loader = UtteranceLoader(evaluation_rows(cfg, data), data.audio_cache,
                                 cfg.eval.batch_seconds, shuffle=False)

        def evaluate() -> tuple[dict[str, float], None]:
            t0 = time.perf_counter()
            student.eval()
            sums: dict[str, float] = {}
            n = 0
            for i, batch in enumerate(loader):
                batch.to(device)
                for key, value in student.distill_scores(batch, seed=int(cfg.seed) * 7919 + i).items():
                    sums[key] = sums.get(key, 0.0) + value * len(batch)
                n += len(batch)
            metrics = {k: v / max(n, 1) for k, v in sums.items()}
            metrics.update(student.parameter_ratio(), eval_s=time.perf_counter() - t0)
            return {k: float(np.round(v, 6)) for k, v in metrics.items()}, None

        return evaluate

    def after_rounds(self, cfg: DictConfig, model: SpeechModel, run_dir: Path) -> None:
        out = _student(model).export(Path(run_dir) / "export",
                                     info={"task": "distill", "rounds": int(cfg.num_rounds)})
        print(f"export: {out}", flush=True)
