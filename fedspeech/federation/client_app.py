"""The ClientApp: a speaker's (or a group's) local training on its own utterances.

The model is built once per worker process (`cached_model`) and receives each client's global
weights; only trainable tensors come back.
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from fedspeech.data.batching import UtteranceLoader
from fedspeech.experiment_data import load_experiment_data
from fedspeech.federation.parameters import load_record, to_record
from fedspeech.models.factory import cached_model
from fedspeech.training import train_local


def worker_device() -> torch.device:
    """GPU when Ray granted this actor one (CUDA_VISIBLE_DEVICES is set per actor), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(cfg: DictConfig) -> None:
    threads = cfg.train.num_threads or max(1, int(cfg.client_resources.num_cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(int(threads))


def client_train(cfg: DictConfig, msg: Message, context: Context) -> Message:
    """Train the received global model on this client's partition for one round."""
    t0 = time.perf_counter()
    set_threads(cfg)
    data = load_experiment_data(cfg)
    client = int(context.node_config["partition-id"])
    conf = msg.content["config"]
    server_round = int(conf.get("server-round", 0))
    device = worker_device()
    model = cached_model(cfg.model, data.tokenizer, cfg.seed).to(device)
    load_record(model, msg.content["arrays"])
    seed = int(cfg.seed) * 1_000_003 + server_round * 10_007 + client
    torch.manual_seed(seed)
    loader = UtteranceLoader(data.client_rows(client), data.audio_cache, cfg.train.batch_seconds,
                             shuffle=True, seed=seed, max_utterances=cfg.train.max_batch_utterances)
    train_cfg = cfg.train
    result = train_local(
        model, loader, device,
        lr=float(conf.get("lr", train_cfg.lr)),
        weight_decay=float(train_cfg.weight_decay),
        epochs=int(conf.get("local-epochs", train_cfg.local_epochs)),
        max_steps=train_cfg.max_steps,
        grad_clip=train_cfg.grad_clip,
        grad_accum=int(train_cfg.grad_accum),
        precision=str(train_cfg.precision),
        proximal_mu=float(conf.get("proximal-mu", 0.0)),
    )
    metrics = MetricRecord({
        "num-examples": result.num_examples, "num-seconds": result.num_seconds,
        "train-loss": result.loss, "train-steps": result.steps, "partition-id": client,
        "client-compute-s": result.compute_s, "client-total-s": time.perf_counter() - t0,
    })
    reply: ArrayRecord = to_record(model)
    return Message(content=RecordDict({"arrays": reply, "metrics": metrics}), reply_to=msg)


def client_identity(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random per run)."""
    metrics = MetricRecord({"partition-id": int(context.node_config["partition-id"])})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def make_client_app(cfg: DictConfig) -> ClientApp:
    """A ClientApp bound to an experiment config (simulation passes it to the Ray workers)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return client_train(cfg, msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return client_identity(msg, context)

    return app
