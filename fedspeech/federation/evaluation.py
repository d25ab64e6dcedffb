"""Central evaluation of the global model on the evaluation split (server side)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from fedspeech.data.batching import UtteranceLoader
from fedspeech.experiment_data import ExperimentData
from fedspeech.metrics import attribute_accuracy, error_rates
from fedspeech.models.base import SpeechModel
from fedspeech.training import evaluate


class CentralEvaluator:
    """Holds the evaluation loader and the set of speakers seen in training."""

    def __init__(self, cfg: DictConfig, data: ExperimentData, model: SpeechModel,
                 device: torch.device) -> None:
        self.model = model
        self.device = device
        self.precision = str(cfg.train.precision)
        rows = data.split_rows(cfg.eval.split, cfg.eval.max_utterances)
        self.loader = UtteranceLoader(rows, data.audio_cache, cfg.eval.batch_seconds, shuffle=False)
        self.train_speakers = set(data.train_rows()["speaker"])

    def __call__(self) -> tuple[dict[str, float], pd.DataFrame]:
        t0 = time.perf_counter()
        out = evaluate(self.model, self.loader, self.device, self.precision)
        records = pd.DataFrame(out.records)
        metrics: dict[str, float] = {"loss": out.loss,
                                     **error_rates(list(records["ref"]), list(records["hyp"]))}
        seen = records["speaker"].isin(self.train_speakers)
        for name, mask in (("seen", seen), ("unseen", ~seen)):
            if mask.any():
                rates = error_rates(list(records.loc[mask, "ref"]), list(records.loc[mask, "hyp"]))
                metrics[f"wer_{name}"] = rates["wer"]
                metrics[f"cer_{name}"] = rates["cer"]
        metrics.update(attribute_accuracy(records))
        metrics["eval_s"] = time.perf_counter() - t0
        return {k: float(np.round(v, 6)) for k, v in metrics.items()}, records
