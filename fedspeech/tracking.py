"""Experiment tracking: each round's numbers to TensorBoard or Weights & Biases (`logger=`).

The run directory's own files (history.json, plots) are the record of a run; a tracker mirrors the
per-round scalars for the tools people browse runs with. `make_logger(cfg, run_dir)` gives a
`RunLogger`; the round loop calls `log_round(round, record)` with each round's history record
(every finite numeric value is logged: WER, CER, loss, epsilon, bytes, ...) and `close()` at the
end. `logger=none` (the default) logs nothing. W&B runs in offline mode unless told otherwise,
so it needs neither network nor account (`wandb sync` uploads later).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

TENSORBOARD_DIR = "tensorboard"


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a history record (lists, strings, flags and NaN are left out)."""
    return {key: float(value) for key, value in record.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)) and key != "round"}


class RunLogger:
    """No tracking; the interface every tracker has (also a context manager)."""

    def log_round(self, round: int, record: Mapping[str, Any]) -> None:
        """Log the numeric values of one round's record at step `round`."""

    def close(self) -> None:
        """Flush and release the tracker."""

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardLogger(RunLogger):
    """Event files in `<run_dir>/tensorboard/`, one scalar series per key."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_round(self, round: int, record: Mapping[str, Any]) -> None:
        for key, value in scalars(record).items():
            self._writer.add_scalar(key, value, global_step=int(round))
        self._writer.flush()          # a live TensorBoard shows the round now, not in 2 minutes

    def close(self) -> None:
        self._writer.close()


class WandbLogger(RunLogger):
    """A W&B run in `<run_dir>/wandb/` with the resolved config; offline by default."""

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str = "fedspeech",
                 entity: str | None = None, mode: str = "offline") -> None:
        import wandb

        self._run = wandb.init(dir=str(run_dir), project=project, entity=entity, mode=mode,
                               name=Path(run_dir).name, config=config)

    def log_round(self, round: int, record: Mapping[str, Any]) -> None:
        self._run.log(scalars(record), step=int(round))

    def close(self) -> None:
        """Finish the run and stop W&B's service process.

        In offline mode `finish()` can return before the service has written the run's records
        to `run-*.wandb` (wandb 0.31: a 7-byte header, the rest a moment later); `teardown()`
        waits for the service to exit, so the run folder is complete when `close()` returns.
        """
        import wandb

        self._run.finish()
        wandb.teardown()


def make_logger(cfg: DictConfig, run_dir: Path) -> RunLogger:
    """The tracker `cfg.logger` names (none when the config has no `logger`)."""
    options = cfg.get("logger")
    name = options.name if options is not None else "none"
    if name == "none":
        return RunLogger()
    if name == "tensorboard":
        return TensorBoardLogger(run_dir)
    if name == "wandb":
        config = OmegaConf.to_container(cfg, resolve=True)
        return WandbLogger(run_dir, config, project=options.project, entity=options.entity,
                           mode=options.mode)
    raise ValueError(f"logger.name: unknown tracker {name!r}; choose none, tensorboard or wandb")
