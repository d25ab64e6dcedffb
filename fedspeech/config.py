"""Checks of composed configs: a bad value fails before anything starts, naming the key."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig


class ConfigError(ValueError):
    """A config value that is out of range or of the wrong kind."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate_config(cfg: DictConfig) -> None:
    _require(int(cfg.num_rounds) >= 1, "num_rounds", f"must be >= 1, got {cfg.num_rounds}")
    res = cfg.client_resources
    _require(float(res.num_cpus) > 0, "client_resources.num_cpus", f"must be > 0, got {res.num_cpus}")
    _require(float(res.num_gpus) >= 0, "client_resources.num_gpus", f"must be >= 0, got {res.num_gpus}")
    _require(float(res.num_gpus) <= 1 or float(res.num_gpus).is_integer(), "client_resources.num_gpus",
             f"a fraction must be <= 1, got {res.num_gpus}")
    train = cfg.train
    _require(float(train.lr) > 0, "train.lr", f"must be > 0, got {train.lr}")
    _require(int(train.local_epochs) >= 1, "train.local_epochs", f"must be >= 1, got {train.local_epochs}")
    _require(float(train.batch_seconds) > 0, "train.batch_seconds", f"must be > 0, got {train.batch_seconds}")
    _require(int(train.grad_accum) >= 1, "train.grad_accum", f"must be >= 1, got {train.grad_accum}")
    _require(str(train.precision) in ("fp32", "bf16", "fp16"), "train.precision",
             f"must be fp32, bf16 or fp16, got {train.precision!r}")
    splits = ("train", "dev", "test", "ted_train_full5", "ted_train_wo5")
    _require(str(cfg.eval.split) in splits, "eval.split", f"must be one of {splits}, got {cfg.eval.split!r}")
    _require(int(cfg.eval.every) >= 1, "eval.every", f"must be >= 1, got {cfg.eval.every}")
    strategy = cfg.strategy
    if "fraction_train" in strategy and strategy.fraction_train is not None:
        _require(0 < float(strategy.fraction_train) <= 1, "strategy.fraction_train",
                 f"must be in (0, 1], got {strategy.fraction_train}")
    _validate_update_recording(cfg)
    _require(str(cfg.dataset.root) not in ("", "???"), "dataset.root", "is required for this dataset")


def _validate_update_recording(cfg: DictConfig) -> None:
    if not cfg.get("record_updates", False):
        return
    _require(bool(cfg.federated), "record_updates",
             "needs federated=true (the centralised baseline exchanges no updates)")
    rounds = cfg.get("record_updates_rounds")
    if rounds is None:
        return
    _require(isinstance(rounds, ListConfig) and len(rounds) > 0
             and all(isinstance(r, int) and 1 <= r <= int(cfg.num_rounds) for r in rounds),
             "record_updates_rounds",
             f"must be null or a list of rounds in 1..num_rounds={cfg.num_rounds}, e.g. [1,3]; "
             f"got {rounds}")
