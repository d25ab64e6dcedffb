"""The ServerApp: sample, train, aggregate, evaluate centrally, record and checkpoint each round.

The round loop is ours (Flower's `Strategy.start` cannot resume): it calls the strategy's hooks
`configure_train` / `aggregate_train`, so any `flwr.serverapp.strategy` subclass plugs in.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from fedspeech import LAUNCH_TIME
from fedspeech.experiment_data import load_experiment_data
from fedspeech.federation.checkpoint import (Checkpoint, find_checkpoint, load_checkpoint,
                                             save_checkpoint)
from fedspeech.federation.evaluation import CentralEvaluator
from fedspeech.federation.parameters import load_record, record_nbytes, to_record
from fedspeech.federation.strategies import build_strategy
from fedspeech.models.factory import build_model
from fedspeech.run_outputs import RunRecorder


def _rng_state() -> dict:
    return {"python": repr(random.getstate()), "numpy": np.random.get_state()[1].tolist(),
            "torch_seed": torch.initial_seed()}


def node_partitions(grid: Grid, expected: int, timeout: float, wait_s: float = 600.0) -> dict[int, int]:
    """Ask every node for its partition id, so sampling and participation are reproducible."""
    t0 = time.time()
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < expected and time.time() - t0 < wait_s:
        time.sleep(0.5)
        node_ids = list(grid.get_node_ids())
    if len(node_ids) < expected:
        raise RuntimeError(f"only {len(node_ids)} of {expected} nodes connected after {wait_s:.0f} s")
    messages = [Message(content=RecordDict({"config": ConfigRecord({"query": "partition-id"})}),
                        dst_node_id=nid, message_type=MessageType.QUERY) for nid in node_ids]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to report its partition: "
                               f"{reply.error.reason}")
        mapping[reply.metadata.src_node_id] = int(reply.content["metrics"]["partition-id"])
    return mapping


def run_federated(cfg: DictConfig, run_dir: Path, grid: Grid) -> RunRecorder:
    data = load_experiment_data(cfg)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    torch.manual_seed(int(cfg.seed))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model, data.tokenizer).to(device)
    evaluator = CentralEvaluator(cfg, data, model, device)
    population = data.num_clients
    strategy = build_strategy(cfg.strategy, population=population, seed=int(cfg.seed))
    recorder = RunRecorder(cfg, run_dir, data)
    arrays = to_record(model)
    start_round = 1
    ckpt_path = find_checkpoint(cfg.resume, run_dir)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        arrays = ArrayRecord({k: Array(v) for k, v in ckpt.arrays.items()})
        strategy.load_state_dict(ckpt.server_state)
        recorder.load_state(ckpt.state)
        start_round = ckpt.round + 1
        print(f"resuming from {ckpt_path} (round {ckpt.round} done)", flush=True)
    elif recorder.wants_round0():       # evaluated while the Ray workers are still starting
        load_record(model, arrays)
        metrics, _ = evaluator()
        recorder.add_round0(metrics)

    timeout = float(cfg.strategy.round_timeout)
    partition_of = node_partitions(grid, population, timeout)
    strategy.set_node_partitions(partition_of)
    if cfg.get("verbose", True):
        print(f"{len(partition_of)} nodes ready, {time.time() - LAUNCH_TIME:.1f} s after launch", flush=True)

    for rnd in range(start_round, int(cfg.num_rounds) + 1):
        t0 = time.perf_counter()
        train_config = ConfigRecord({"server-round": rnd, "local-epochs": int(cfg.train.local_epochs)})
        messages = list(strategy.configure_train(rnd, arrays, train_config, grid))
        bytes_down = record_nbytes(arrays) * len(messages)
        # replies arrive in completion order; aggregate in partition order so sums are reproducible
        replies = sorted(grid.send_and_receive(messages, timeout=timeout),
                         key=lambda m: partition_of.get(m.metadata.src_node_id, -1))
        ok = [m for m in replies if not m.has_error()]
        bytes_up = sum(record_nbytes(m.content["arrays"]) for m in ok)
        new_arrays, agg = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = new_arrays
        t_train = time.perf_counter() - t0
        load_record(model, arrays)
        metrics, records = evaluator() if rnd % int(cfg.eval.every) == 0 or rnd == cfg.num_rounds \
            else ({}, None)
        sent_lr = messages[0].content["config"].get("lr") if messages else None
        recorder.add_round(rnd, metrics=metrics, sampled=len(messages), replies=ok,
                           failures=len(messages) - len(ok), bytes_up=bytes_up, bytes_down=bytes_down,
                           aggregated=dict(agg) if agg is not None else {}, lr=sent_lr,
                           train_wall_s=t_train, wall_s=time.perf_counter() - t0, records=records)
        save_checkpoint(run_dir / "checkpoints", Checkpoint(
            round=rnd, arrays={k: v.numpy() for k, v in arrays.items()},
            server_state=strategy.state_dict(), state={**recorder.state(), "rng": _rng_state()}),
            keep=cfg.keep_checkpoints)
    recorder.finish(arrays)
    return recorder


def make_server_app(cfg: DictConfig, run_dir: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federated(cfg, run_dir, grid)

    return app
