"""`task=pretrain`: federated HuBERT pretraining on unlabelled audio (transcripts are not used).

Before round 1 the unit targets are made: with `targets=federated_kmeans` (default) a k-means
phase of its own (`federation/kmeans.py`: QUERY messages, clients return per-cluster sums and
counts) gives one codebook that travels with every train message; with `local_kmeans` each
client fits its own MiniBatchKMeans, whose cluster ids are *not* aligned across clients. Each
round the clients train masked-unit prediction; the server measures masked-unit accuracy, loss
and codebook usage on held-out audio. After the last round the encoder goes to `export/`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from fedspeech.data.batching import UtteranceLoader
from fedspeech.experiment_data import ExperimentData
from fedspeech.federation.evaluation import evaluation_rows
from fedspeech.federation.kmeans import QUERIES, answer_kmeans, centroid_record, federated_kmeans
from fedspeech.federation.parameters import array_view
from fedspeech.files import atomic_write_text
from fedspeech.models.base import SpeechModel
from fedspeech.models.factory import cached_model
from fedspeech.models.pretraining.features import stack_frames
from fedspeech.models.pretraining.hubert import HubertPretrain
from fedspeech.models.pretraining.units import UnitLabeller
from fedspeech.tasks.asr import train_on_rows
from fedspeech.tasks.base import Evaluator, Task
from fedspeech.tasks.unit_targets import (TARGETS, FeatureSpec, client_frames, local_codebook,
                                          utterance_frames)
from fedspeech.training import TrainStats

CENTROIDS_KEY = "centroids"


def _pretrain_model(model: SpeechModel) -> HubertPretrain:
    if not isinstance(model, HubertPretrain):
        raise TypeError(f"task=pretrain trains model=hubert_pretrain, not {type(model).__name__}")
    return model


class PretrainTask(Task):
    """HuBERT masked-unit prediction with k-means targets."""

    setup_before_round0 = True

    def __init__(self, name: str = "pretrain", targets: str = "federated_kmeans", iteration: int = 1,
                 features_from: str | None = None, feature_layer: int | None = None,
                 kmeans: dict[str, Any] | None = None) -> None:
        super().__init__(name)
        if targets not in TARGETS:
            raise ValueError(f"task.targets must be one of {', '.join(TARGETS)}; got {targets!r}")
        if iteration not in (1, 2):
            raise ValueError(f"task.iteration must be 1 (MFCC) or 2 (hidden states); got {iteration}")
        if iteration == 2 and not features_from:
            raise ValueError("task.iteration=2 clusters the hidden states of a previous export: "
                             "set task.features_from=<pretrain run>/export")
        self.targets = targets
        self.spec = FeatureSpec(iteration, features_from if iteration == 2 else None, feature_layer)
        km = dict(kmeans or {})
        self.steps = int(km.get("steps", 10))
        self.max_frames = km.get("max_frames_per_client")
        self.clients_per_step = km.get("clients_per_step")
        self.eval_max_frames = km.get("eval_max_frames")
        self.centroids: np.ndarray | None = None
        self.setup_record: dict[str, Any] = {}

    # ---- client side -------------------------------------------------------------------
    def client_rows(self, data: ExperimentData, partition_id: int) -> pd.DataFrame:
        """The client's utterances, tagged with its partition id (its local codebook's key)."""
        return data.client_rows(partition_id).assign(client=partition_id)

    def _frames(self, cfg: DictConfig, model: HubertPretrain, rows: pd.DataFrame,
                data: ExperimentData, client: int) -> np.ndarray:
        return client_frames(self.spec, model, rows, data, client=client,
                             max_frames=self.max_frames, seed=int(cfg.seed),
                             batch_seconds=float(cfg.eval.batch_seconds))

    def answer(self, cfg: DictConfig, msg: Message, client: int,
               data: ExperimentData) -> Message | None:
        query = msg.content["config"].get("query") if "config" in msg.content else None
        if query not in QUERIES:
            return None
        model = _pretrain_model(cached_model(cfg.model, data.tokenizer, cfg.seed))
        frames = self._frames(cfg, model, self.client_rows(data, client), data, client)
        return Message(content=answer_kmeans(msg, frames, seed=int(cfg.seed) + client),
                       reply_to=msg)

    def train(self, cfg: DictConfig, model: SpeechModel, rows: pd.DataFrame, data: ExperimentData,
              device: torch.device, config: ConfigRecord, extras: RecordDict, seed: int) -> TrainStats:
        model = _pretrain_model(model)
        features = self.spec.build(model)
        if self.targets == "federated_kmeans":
            if CENTROIDS_KEY not in extras:
                raise KeyError("the train message carries no k-means centroids")
            centroids = np.array(array_view(extras[CENTROIDS_KEY][CENTROIDS_KEY]))
        else:
            client = int(rows["client"].iloc[0])
            frames = self._frames(cfg, model, rows, data, client)
            centroids = local_codebook(frames, model.num_clusters, seed=int(cfg.seed) + client,
                                       key=(self.spec, client, len(rows), model.num_clusters))
        model.set_labeller(UnitLabeller(features, centroids))
        return train_on_rows(cfg, model, rows, data, device, config, seed)

    # ---- server side -------------------------------------------------------------------
    def _cache_key(self, cfg: DictConfig, node_partitions: dict[int, int]) -> str:
        spec = {"targets": self.targets, "spec": repr(self.spec), "steps": self.steps,
                "max_frames": self.max_frames, "clients_per_step": self.clients_per_step,
                "k": int(cfg.model.num_clusters), "seed": int(cfg.seed),
                "clients": sorted(node_partitions.values()),
                "partition": str(cfg.paths.partition), "model": OmegaConf.to_container(cfg.model)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def before_rounds(self, cfg: DictConfig, grid: Grid, node_partitions: dict[int, int],
                      run_dir: Path) -> RecordDict | None:
        if self.targets == "local_kmeans":
            self.setup_record = {"targets": "local_kmeans"}
            return None
        cache = Path(run_dir) / "kmeans"
        key = self._cache_key(cfg, node_partitions)
        info_file, centroids_file = cache / "kmeans.json", cache / "centroids.npy"
        if info_file.is_file() and centroids_file.is_file() \
                and json.loads(info_file.read_text()).get("key") == key:
            info = json.loads(info_file.read_text())
            self.centroids = np.load(centroids_file)
            print(f"federated k-means: reusing {centroids_file} ({len(self.centroids)} clusters)",
                  flush=True)
        else:
            t0 = time.perf_counter()
            result = federated_kmeans(grid, node_partitions, int(cfg.model.num_clusters),
                                      steps=self.steps, seed=int(cfg.seed),
                                      timeout=float(cfg.strategy.round_timeout),
                                      clients_per_step=self.clients_per_step)
            self.centroids = result.centroids
            info = {"key": key, "steps": result.steps,
                    "skipped": {str(k): v for k, v in result.skipped.items()},
                    "wall_s": round(time.perf_counter() - t0, 3)}
            cache.mkdir(parents=True, exist_ok=True)
            np.save(centroids_file, self.centroids)
            atomic_write_text(info_file, json.dumps(info, indent=1))
            last = result.steps[-1] if result.steps else {}
            print(f"federated k-means: {len(self.centroids)} clusters, {self.steps} steps, "
                  f"inertia/frame {last.get('inertia_per_frame', float('nan')):.4f}, "
                  f"{len(result.skipped)} clients skipped, {info['wall_s']:.1f} s", flush=True)
        self.setup_record = {"targets": "federated_kmeans", "kmeans": info["steps"],
                             "kmeans_skipped": info["skipped"]}
        return RecordDict({CENTROIDS_KEY: centroid_record(self.centroids)})

    def evaluator(self, cfg: DictConfig, data: ExperimentData, model: SpeechModel,
                  device: torch.device) -> Evaluator:
        return UnitEvaluator(self, cfg, data, _pretrain_model(model), device)

    def after_rounds(self, cfg: DictConfig, model: SpeechModel, run_dir: Path) -> None:
        model = _pretrain_model(model)
        out = model.export(Path(run_dir) / "export", info={
            "task": "pretrain", "targets": self.targets, "iteration": self.spec.iteration,
            "num_clusters": model.num_clusters, "rounds": int(cfg.num_rounds)})
        if self.centroids is not None:
            np.save(out / "kmeans_centroids.npy", self.centroids)
        print(f"export: {out}", flush=True)


def perplexity(histogram: torch.Tensor) -> float:
    """exp(entropy) of a histogram: how many units are in use (1..K)."""
    p = histogram / histogram.sum().clamp(min=1)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum())) if len(p) else 0.0


class UnitEvaluator:
    """Masked-unit loss and accuracy of the global model on `eval.split`, with a fixed mask
    per batch, and codebook usage (perplexity of targets and of predictions).

    Targets: the federated codebook; with `local_kmeans` (no shared codebook exists) a k-means
    the server fits on the held-out frames themselves.
    """

    def __init__(self, task: PretrainTask, cfg: DictConfig, data: ExperimentData,
                 model: HubertPretrain, device: torch.device) -> None:
        self.task, self.cfg, self.data, self.model, self.device = task, cfg, data, model, device
        self.rows = evaluation_rows(cfg, data)
        self.loader = UtteranceLoader(self.rows, data.audio_cache, cfg.eval.batch_seconds,
                                      shuffle=False)
        self.labeller: UnitLabeller | None = None

    def _labeller(self) -> UnitLabeller:
        if self.labeller is None:
            features = self.task.spec.build(self.model)
            centroids = self.task.centroids
            if centroids is None:
                feats = utterance_frames(features, self.rows, self.data,
                                         float(self.cfg.eval.batch_seconds))
                frames = stack_frames(feats, self.task.eval_max_frames, int(self.cfg.seed))
                centroids = local_codebook(frames, self.model.num_clusters, seed=int(self.cfg.seed),
                                           key=("eval", self.task.spec, len(self.rows)))
            self.labeller = UnitLabeller(features, centroids)
        return self.labeller

    def __call__(self) -> tuple[dict[str, float], None]:
        t0 = time.perf_counter()
        model = self.model
        model.set_labeller(self._labeller())
        model.eval()
        loss = masked = correct = 0.0
        predicted = torch.zeros(model.num_clusters)
        targets = torch.zeros(model.num_clusters)
        for i, batch in enumerate(self.loader):
            batch.to(self.device)
            scores = model.unit_scores(batch, seed=int(self.cfg.seed) * 7919 + i)
            loss += scores.loss_sum
            masked += scores.masked
            correct += scores.correct
            predicted += scores.predicted
            targets += scores.targets
        metrics = {"loss": loss / max(masked, 1), "unit_acc": correct / max(masked, 1),
                   "masked_frames": masked, "pred_perplexity": perplexity(predicted),
                   "target_perplexity": perplexity(targets), "eval_s": time.perf_counter() - t0}
        return {k: float(np.round(v, 6)) for k, v in metrics.items()}, None
