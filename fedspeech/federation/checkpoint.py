"""Round checkpoints: global parameters, server-optimiser state, round, history, RNG.

Tensors go to safetensors and everything else to JSON, so resuming never unpickles anything from
disk. Each checkpoint is written to a temp folder and renamed, so a killed run leaves either the
previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

_ROUND_DIR = re.compile(r"^round_(\d+)$")


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]          # global exchanged parameters
    server_state: dict[str, Any]           # strategy.state_dict(): arrays and scalars
    state: dict[str, Any]                  # history, participation, anything JSON


def save_checkpoint(folder: Path, ckpt: Checkpoint, keep: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"round_{ckpt.round:04d}"
    tmp = folder / f".tmp_round_{ckpt.round:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in ckpt.arrays.items()}, str(tmp / "arrays.safetensors"))
    tensors = {k: np.ascontiguousarray(v) for k, v in ckpt.server_state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in ckpt.server_state.items() if not isinstance(v, np.ndarray)}
    save_file(tensors or {"_empty": np.zeros(0)}, str(tmp / "server_state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(
        {"round": ckpt.round, "server_scalars": scalars, **ckpt.state}, default=_jsonable))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep:
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _ROUND_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_ROUND_DIR.match(p.name).group(1)))


def find_checkpoint(resume: bool | str, run_dir: Path) -> Path | None:
    """`resume=true`: latest in this run dir (None if there is none); a path: that checkpoint
    folder, or the latest inside a `checkpoints/` folder or a run dir it names."""
    if resume is False or resume is None or str(resume).lower() == "false":
        return None
    if resume is True or str(resume).lower() == "true":
        found = list_checkpoints(run_dir / "checkpoints")
        return found[-1] if found else None
    path = Path(str(resume))
    if (path / "state.json").is_file():
        return path
    for candidate in (path / "checkpoints", path):
        found = list_checkpoints(candidate)
        if found:
            return found[-1]
    raise FileNotFoundError(f"resume={resume}: no checkpoint found there")


def load_checkpoint(path: Path) -> Checkpoint:
    state = json.loads((path / "state.json").read_text())
    server_state: dict[str, Any] = {k: v for k, v in load_file(str(path / "server_state.safetensors")).items()
                                    if k != "_empty"}
    server_state.update(state.pop("server_scalars", {}))
    return Checkpoint(round=int(state.pop("round")), arrays=load_file(str(path / "arrays.safetensors")),
                      server_state=server_state, state=state)
