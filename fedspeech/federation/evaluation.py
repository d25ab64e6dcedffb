"""Central evaluation of the global model on the evaluation split (server side)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from fedspeech.data.batching import UtteranceLoader
from fedspeech.data.partition import PAPER_EVAL_SETS, paper_eval_ids
from fedspeech.experiment_data import ExperimentData
from fedspeech.metrics import attribute_accuracy, error_rates
from fedspeech.models.base import SpeechModel
from fedspeech.training import evaluate


def is_evaluation_round(cfg: DictConfig, server_round: int) -> bool:
    """Whether round `server_round` is evaluated centrally: every `eval.every`-th and the last,
    for federated and centralised runs alike."""
    return server_round % int(cfg.eval.every) == 0 or server_round == int(cfg.num_rounds)


def evaluation_rows(cfg: DictConfig, data: ExperimentData) -> pd.DataFrame:
    """Rows of `eval.split`: a manifest split, or one of the TED-LIUM 3 paper's held-out sets
    (`ted_train_full5`: 5 held-out minutes of each participating talk; `ted_train_wo5`)."""
    split = str(cfg.eval.split)
    if split not in PAPER_EVAL_SETS:
        return data.split_rows(split, cfg.eval.max_utterances)
    if cfg.partitioner.name != "tedlium_paper":
        raise ValueError(f"eval.split={split} needs partitioner=tedlium_paper (it names the "
                         f"held-out utterances of the published client map)")
    ids = set(paper_eval_ids(cfg.partitioner.map_path, split, cfg.partitioner.num_clients))
    rows = data.manifest.loc[data.manifest["id"].isin(ids)]
    if rows.empty:
        raise ValueError(f"none of the {len(ids)} {split} utterances of the map are in the manifest")
    if cfg.eval.max_utterances:
        rows = rows.sort_values("id").head(int(cfg.eval.max_utterances))
    return rows


class CentralEvaluator:
    """Holds the evaluation loader and the set of speakers seen in training."""

    def __init__(self, cfg: DictConfig, data: ExperimentData, model: SpeechModel,
                 device: torch.device) -> None:
        self.model = model
        self.device = device
        self.precision = str(cfg.train.precision)
        rows = evaluation_rows(cfg, data)
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
