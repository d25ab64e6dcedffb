"""The ServerApp: set up an experiment, then run the strategy's round loop with its recorders.

`run_federated` is the one server entry, used by the simulation and by the Deployment Engine
(`federation/deployment.py`). Setup (`ServerExperiment.build`) and the loop are apart: the loop
is the strategy's own `start(...)` (`federation/round_loop.py`); what this module adds are the
callbacks that make a run directory out of it — central evaluation after each round, the
history record, speakers.csv, checkpoints, tracking and (opt-in) recorded client updates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from fedspeech.experiment_data import ExperimentData, load_experiment_data
from fedspeech.federation.checkpoint import Checkpoint, resume_checkpoint, save_checkpoint
from fedspeech.federation.evaluation import is_evaluation_round
from fedspeech.federation.nodes import ClientInfo, query_nodes, wait_for_nodes
from fedspeech.federation.parameters import load_record, numpy_record, record_arrays, to_record
from fedspeech.federation.round_loop import RoundOutcome
from fedspeech.federation.screening import Reply
from fedspeech.federation.strategies import SpeechStrategy, build_strategy
from fedspeech.federation.virtual_nodes import VirtualClientGrid
from fedspeech.models.base import SpeechModel
from fedspeech.models.factory import build_model
from fedspeech.run_outputs import RunRecorder
from fedspeech.tasks import build_task
from fedspeech.tasks.base import Evaluator, Task


@dataclass
class ServerExperiment:
    """Everything the server needs before the first round."""

    cfg: DictConfig
    data: ExperimentData
    task: Task
    model: SpeechModel
    device: torch.device
    evaluator: Evaluator
    strategy: SpeechStrategy

    @classmethod
    def build(cls, cfg: DictConfig) -> "ServerExperiment":
        data = load_experiment_data(cfg)
        task = build_task(cfg)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))        # the initial model: the same in every run
            model = build_model(cfg.model, data.tokenizer).to(device)
        evaluator = task.evaluator(cfg, data, model, device)
        strategy = build_strategy(cfg.strategy, population=data.num_clients, seed=int(cfg.seed))
        return cls(cfg, data, task, model, device, evaluator, strategy)

    def clients(self, grid: Grid, wait_s: float) -> dict[int, ClientInfo]:
        """Who takes part: each node says which partition it holds and its data sizes; nodes
        that carry every client (`VirtualClientGrid`) are not asked, the partitions on disk say."""
        num = self.data.num_clients
        if not isinstance(grid, VirtualClientGrid):
            return query_nodes(grid, num, wait_s=wait_s, timeout=wait_s)
        wait_for_nodes(grid, num, wait_s)
        return {pid: ClientInfo(pid, self.task.client_sizes(self.data, pid))
                for pid in range(num)}


def run_federated(cfg: DictConfig, run_dir: Path, grid: Grid, *, started_at: float | None = None,
                  on_round_end: Callable[[dict], None] | None = None,
                  node_keys: dict[int, str] | None = None) -> RunRecorder:
    """Run the configured federated experiment on `grid`, writing `run_dir`.

    `node_keys` (node id -> public-key fingerprint, from a deployment's SuperNode registry) adds
    supernodes.csv: which authenticated SuperNode took part in which round.
    """
    exp = ServerExperiment.build(cfg)
    recorder = RunRecorder(cfg, run_dir, exp.data, started_at=started_at)
    recorder.node_keys = node_keys
    arrays = to_record(exp.model)
    start_round = 1
    resumed = resume_checkpoint(cfg.resume, run_dir)
    if resumed is not None:
        path, ckpt = resumed
        arrays = numpy_record(ckpt.arrays)
        exp.strategy.load_state_dict(ckpt.server_state)
        recorder.load_state(ckpt.state)
        start_round = ckpt.round + 1
        print(f"resuming from {path} (round {ckpt.round} done)", flush=True)
    round0 = resumed is None and recorder.wants_round0()
    if round0 and not exp.task.setup_before_round0:   # evaluated while the Ray workers start
        recorder.add_round0(exp.evaluator()[0])

    timeout = float(cfg.strategy.round_timeout)
    wait_s = float(cfg.strategy.node_wait_timeout_s)     # to connect, then to answer who they are
    nodes = exp.clients(grid, wait_s)
    exp.strategy.set_nodes(nodes)
    recorder.node_partitions = {n: c.partition_id for n, c in nodes.items()}
    recorder.nodes_ready()
    extras = exp.task.before_rounds(cfg, grid, recorder.node_partitions, run_dir)
    if extras is not None:
        exp.strategy.extra_records = dict(extras)
    if round0 and exp.task.setup_before_round0:
        recorder.add_round0({**exp.evaluator()[0], **exp.task.setup_record})
    updates = _update_recorder(cfg, run_dir, exp)

    latest_records = {}

    def evaluate(server_round: int, round_arrays: ArrayRecord) -> MetricRecord | None:
        if not is_evaluation_round(cfg, server_round):
            return None
        load_record(exp.model, round_arrays)
        metrics, records = exp.evaluator()
        latest_records[server_round] = records
        return MetricRecord(metrics)

    def round_end(outcome: RoundOutcome) -> None:
        records = latest_records.pop(outcome.server_round, None)
        record = recorder.add_round(outcome, records)
        save_checkpoint(run_dir / "checkpoints", Checkpoint(
            round=outcome.server_round, arrays=record_arrays(outcome.arrays),
            server_state=exp.strategy.state_dict(), state=recorder.state()),
            keep=cfg.keep_checkpoints)
        if on_round_end is not None:
            on_round_end(record)

    train_config = ConfigRecord({"local-epochs": int(cfg.train.local_epochs)})
    exp.strategy.start(grid, arrays, num_rounds=int(cfg.num_rounds), timeout=timeout,
                       train_config=train_config, evaluate_fn=evaluate, start_round=start_round,
                       on_round_end=round_end, max_in_flight=cfg.strategy.get("max_in_flight"))
    if updates is not None:
        updates.close()
    exp.task.after_rounds(cfg, exp.model, run_dir)
    recorder.finish()
    return recorder


def _update_recorder(cfg: DictConfig, run_dir: Path, exp: ServerExperiment):  # noqa: ANN202
    """With `record_updates=true`: keep the screened replies of the chosen rounds in `updates/`."""
    if not cfg.get("record_updates", False):
        return None
    from fedspeech.federation.update_recording import UpdateRecorder

    strategy = exp.strategy
    # named from the manifest, so the index carries each client's speakers and gender
    updates = UpdateRecorder.for_experiment(
        run_dir, cfg.get("record_updates_rounds"), exp.data,
        weight_key=str(cfg.strategy.get("weighted_by_key") or "num-seconds"))
    begun: set[int] = set()

    def record(server_round: int, reply: Reply) -> None:
        if not updates.wants(server_round):
            return
        if server_round not in begun:
            updates.begin_round(server_round, dict(strategy.require_current_arrays()))
            begun.add(server_round)
        updates.record(server_round, reply.partition_id, reply.arrays, reply.metrics)

    strategy.reply_listeners.append(record)
    return updates


def make_server_app(cfg: DictConfig, run_dir: Path, started_at: float | None = None, *,
                    carriers: int | None = None) -> ServerApp:
    """The simulation's ServerApp; `carriers`: that many simulated SuperNodes carry every client."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if carriers is not None:
            grid = VirtualClientGrid(grid, load_experiment_data(cfg).num_clients, carriers)
        run_federated(cfg, run_dir, grid, started_at=started_at)

    return app
