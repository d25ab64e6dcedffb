"""Centralised baseline (`federated=false`): the same model on the pooled training data.

It runs as many "rounds" as the federated run and, per round, trains on as much audio as a
federated round would (expected cohort share of the training seconds x local epochs), drawn from
the pooled data, at the learning rate the strategy would send its clients that round
(`strategy.client_lr`), evaluated on the same rounds (`eval.every`); so FL and central runs are
compared at the same sample budget and schedule, and both write the same run-directory files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from fedspeech.data.batching import UtteranceLoader
from fedspeech.experiment_data import load_experiment_data
from fedspeech.federation.checkpoint import Checkpoint, resume_checkpoint, save_checkpoint
from fedspeech.federation.evaluation import CentralEvaluator, is_evaluation_round
from fedspeech.federation.parameters import trainable_state
from fedspeech.federation.sampling import strategy_cohort_size
from fedspeech.federation.strategies.factory import client_lr_schedule
from fedspeech.models.factory import build_model
from fedspeech.run_outputs import RunRecorder
from fedspeech.seeding import torch_seeded
from fedspeech.training import train_local


def round_budget_share(cfg: DictConfig, num_clients: int) -> float:
    """Share of the training data a federated round trains on: cohort / population, with the
    cohort the federated run's sampler draws (`strategy_cohort_size`), so both runs see the
    same audio per round."""
    return strategy_cohort_size(cfg.strategy, num_clients) / num_clients


def run_centralised(cfg: DictConfig, run_dir: Path) -> RunRecorder:
    data = load_experiment_data(cfg)
    torch.set_num_threads(int(cfg.train.num_threads or torch.get_num_threads()))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model, data.tokenizer, seed=int(cfg.seed)).to(device)
    evaluator = CentralEvaluator(cfg, data, model, device)
    recorder = RunRecorder(cfg, run_dir, data)
    pooled = data.train_rows().reset_index(drop=True)
    share = round_budget_share(cfg, data.num_clients)
    per_round = max(1, int(round(share * len(pooled))))
    round_lr = client_lr_schedule(cfg.strategy)
    print(f"centralised run: {len(pooled)} pooled utterances, {per_round} per round "
          f"(share {share:.3f} of the data, as a federated round), {cfg.num_rounds} rounds", flush=True)

    start = 1
    resumed = resume_checkpoint(cfg.resume, run_dir)
    if resumed is not None:
        _, ckpt = resumed
        model.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.arrays.items()}, strict=False)
        recorder.load_state(ckpt.state)
        start = ckpt.round + 1
    else:
        metrics, _ = evaluator()
        recorder.add_round0(metrics)

    for rnd in range(start, int(cfg.num_rounds) + 1):
        t0 = time.perf_counter()
        rng = np.random.default_rng(int(cfg.seed) * 7919 + rnd)
        rows = pooled.iloc[np.sort(rng.choice(len(pooled), per_round, replace=False))]
        # participation, as for clients: a speaker's client takes part when its audio is drawn
        drawn = sorted(set(data.clients.loc[data.clients["id"].isin(set(rows["id"])), "client"]))
        loader = UtteranceLoader(rows, data.audio_cache, cfg.train.batch_seconds, shuffle=True,
                                 seed=int(cfg.seed) + rnd, max_utterances=cfg.train.max_batch_utterances)
        lr = float(round_lr(rnd))
        with torch_seeded(int(cfg.seed) * 1_000_003 + rnd):      # dropout of this round
            stats = train_local(model, loader, device, lr=lr,
                                weight_decay=float(cfg.train.weight_decay),
                                epochs=int(cfg.train.local_epochs), max_steps=cfg.train.max_steps,
                                grad_clip=cfg.train.grad_clip, grad_accum=int(cfg.train.grad_accum),
                                precision=str(cfg.train.precision),
                                speed_perturb=cfg.train.get("speed_perturb"))
        t_train = time.perf_counter() - t0
        metrics, records = {}, None
        if is_evaluation_round(cfg, rnd):
            metrics, records = evaluator()
        recorder.add_pooled_round(rnd, metrics=metrics, train_loss=stats.loss,
                                  train_seconds=stats.num_seconds, participants=drawn,
                                  lr=lr, train_wall_s=t_train,
                                  wall_s=time.perf_counter() - t0, records=records)
        save_checkpoint(run_dir / "checkpoints", Checkpoint(
            round=rnd, arrays={k: v.numpy() for k, v in trainable_state(model).items()},
            server_state={}, state=recorder.state()), keep=cfg.keep_checkpoints)
    recorder.finish()
    return recorder
