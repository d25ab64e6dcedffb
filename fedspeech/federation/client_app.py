"""The ClientApp: a speaker's (or a group's) local training on its own utterances.

The model is built once per worker process (`cached_model`) and receives each client's global
weights; only trainable tensors come back. What the client trains on and how is the task's
(`fedspeech.tasks`); injected faults (`faults` config group) act here, in the real client path.
"""

from __future__ import annotations

import time

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from fedspeech.experiment_data import load_experiment_data
from fedspeech.federation.faults import FaultPlan, InjectedFault, poison_with_nan
from fedspeech.federation.nodes import IDENTITY_QUERY
from fedspeech.federation.parameters import load_record, to_record
from fedspeech.federation.ray_transport import send_arrays_out_of_band
from fedspeech.federation.virtual_nodes import message_partition
from fedspeech.models.factory import cached_model
from fedspeech.tasks import build_task

#: records of a train message besides the global arrays and the config (e.g. k-means centroids)
_STANDARD_KEYS = ("arrays", "config")


def worker_device() -> torch.device:
    """GPU when Ray granted this actor one (CUDA_VISIBLE_DEVICES is set per actor), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(cfg: DictConfig) -> None:
    threads = cfg.train.num_threads or max(1, int(cfg.client_resources.num_cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(int(threads))


def fault_plan(cfg: DictConfig) -> FaultPlan:
    faults = cfg.get("faults") or {}
    return FaultPlan(seed=int(cfg.seed), crash_prob=float(faults.get("crash_prob", 0.0)),
                     nan_prob=float(faults.get("nan_prob", 0.0)),
                     delay_prob=float(faults.get("delay_prob", 0.0)),
                     delay_s=float(faults.get("delay_s", 0.0)))


def client_seed(cfg: DictConfig, server_round: int, partition_id: int) -> int:
    """The seed of one client's round: the same in every run (and resumption) of this config."""
    return int(cfg.seed) * 1_000_003 + server_round * 10_007 + partition_id


def client_train(cfg: DictConfig, msg: Message, context: Context, *, carried: bool = False) -> Message:
    """Train the received global model on this client's partition for one round (`carried`: this
    node is a simulation carrier and the message names the client, `federation/virtual_nodes.py`)."""
    t0 = time.perf_counter()
    set_threads(cfg)
    send_arrays_out_of_band()         # in a Ray worker: the reply's arrays leave uncopied
    client = message_partition(msg, context, carried=carried)
    conf = msg.content["config"]
    server_round = int(conf.get("server-round", 0))
    faults = fault_plan(cfg).draw(server_round, client)
    if faults.delay_s:
        time.sleep(faults.delay_s)
    if faults.crash:
        raise InjectedFault(f"injected crash of partition {client} in round {server_round}")
    data = load_experiment_data(cfg)
    task = build_task(cfg)
    device = worker_device()
    model = cached_model(cfg.model, data.tokenizer, cfg.seed).to(device)
    load_record(model, msg.content["arrays"])
    extras = RecordDict({k: v for k, v in msg.content.items() if k not in _STANDARD_KEYS})
    seed = client_seed(cfg, server_round, client)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)       # dropout and augmentation of this round, not the process's
        result = task.train(cfg, model, task.client_rows(data, client), data, device,
                            ConfigRecord(dict(conf)), extras, seed)
    arrays = to_record(model)
    if faults.nan:
        arrays = poison_with_nan(arrays)
    metrics = MetricRecord({
        "num-examples": result.num_examples, "num-seconds": result.num_seconds,
        "train-loss": result.loss, "train-steps": result.steps, "partition-id": client,
        "skipped-utterances": result.skipped_utterances,
        "client-compute-s": result.compute_s,
        "client-total-s": time.perf_counter() - t0,   # the whole call, the reply's arrays built
    })
    if device.type == "cuda":
        metrics["gpu-peak-mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def client_identity(cfg: DictConfig, msg: Message, client: int) -> Message:
    """Tell the server which partition this node holds and how much training data it has."""
    sizes = build_task(cfg).client_sizes(load_experiment_data(cfg), client)
    metrics = MetricRecord({"partition-id": client, **sizes})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def client_query(cfg: DictConfig, msg: Message, context: Context, *, carried: bool = False) -> Message:
    """QUERY messages: the identity query, or one of the task's own."""
    query = msg.content["config"].get("query") if "config" in msg.content else None
    send_arrays_out_of_band()
    client = message_partition(msg, context, carried=carried)
    if query == IDENTITY_QUERY:
        return client_identity(cfg, msg, client)
    reply = build_task(cfg).answer(cfg, msg, client, load_experiment_data(cfg))
    if reply is None:
        raise ValueError(f"unknown query {query!r}")
    return reply


def make_client_app(cfg: DictConfig, *, carried: bool = False) -> ClientApp:
    """A ClientApp bound to an experiment config (simulation passes it to the Ray workers);
    `carried`: its nodes carry every client (`simulation.nodes`)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return client_train(cfg, msg, context, carried=carried)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return client_query(cfg, msg, context, carried=carried)

    return app
