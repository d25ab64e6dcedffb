"""Round checkpoints: global parameters, server-strategy state, round, run history.

Tensors go to safetensors and everything else to JSON, so resuming never unpickles anything from
disk. A checkpoint is a folder written under a temporary name, every file fsync'ed, then renamed:
a killed run leaves the previous checkpoint or the new one, never half of one. `state.json`
carries the SHA-256 of both tensor files; a checkpoint whose files are missing, truncated or do
not match is reported by path and reason, and resuming falls back to the newest valid one.

What a checkpoint does not need: a global RNG. Every random choice of the server draws from a
generator held by the strategy (cohort sampling, DP noise), whose state is in `server_state`;
clients derive their seeds from (run seed, round, partition).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.supercore import log
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from fedspeech.files import atomic_write_text, fsync_dir

_ROUND_DIR = re.compile(r"^round_(\d+)$")
TENSOR_FILES = ("arrays.safetensors", "server_state.safetensors")
STATE_FILE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be used (names the folder and the reason)."""


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]          # global exchanged parameters
    server_state: dict[str, Any]           # strategy.state_dict(): arrays and scalars
    state: dict[str, Any]                  # history, participation, anything JSON


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def save_checkpoint(folder: Path, ckpt: Checkpoint, keep: int | None = None) -> Path:
    """Write `round_NNNN/` atomically and durably; keep the newest `keep` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"round_{ckpt.round:04d}"
    tmp = folder / f".tmp_round_{ckpt.round:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in ckpt.arrays.items()}, str(tmp / TENSOR_FILES[0]))
    tensors = {k: np.ascontiguousarray(v) for k, v in ckpt.server_state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in ckpt.server_state.items() if not isinstance(v, np.ndarray)}
    save_file(tensors or {"_empty": np.zeros(0)}, str(tmp / TENSOR_FILES[1]))
    for name in TENSOR_FILES:
        _fsync(tmp / name)
    checksums = {name: _sha256(tmp / name) for name in TENSOR_FILES}
    atomic_write_text(tmp / STATE_FILE, json.dumps(
        {"round": ckpt.round, "sha256": checksums, "server_scalars": scalars, **ckpt.state},
        default=_jsonable))
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(folder)
    if keep:
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _ROUND_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_ROUND_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify one checkpoint folder; `CheckpointError` says what is wrong with it."""
    path = Path(path)
    state_file = path / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{state_file}: unreadable ({err})") from err
    checksums = state.pop("sha256", None)
    if not isinstance(checksums, dict):
        raise CheckpointError(f"{state_file}: no checksums (written by an older fedspeech?)")
    for name in TENSOR_FILES:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        if _sha256(file) != checksums.get(name):
            raise CheckpointError(f"{file}: checksum mismatch (truncated or corrupt)")
    try:
        arrays = load_file(str(path / TENSOR_FILES[0]))
        server_state: dict[str, Any] = {k: v for k, v in load_file(str(path / TENSOR_FILES[1])).items()
                                        if k != "_empty"}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    server_state.update(state.pop("server_scalars", {}))
    return Checkpoint(round=int(state.pop("round")), arrays=arrays, server_state=server_state, state=state)


def _candidates(resume: bool | str | None, run_dir: Path) -> Iterator[Path]:
    if resume is None or resume is False or str(resume).lower() == "false":
        return
    if resume is True or str(resume).lower() == "true":
        yield from reversed(list_checkpoints(run_dir / "checkpoints"))
        return
    path = Path(str(resume))
    if (path / STATE_FILE).is_file() or _ROUND_DIR.match(path.name):
        yield path
        return
    for folder in (path / "checkpoints", path):
        found = list_checkpoints(folder)
        if found:
            yield from reversed(found)
            return
    raise FileNotFoundError(f"resume={resume}: no checkpoint found there")


def resume_checkpoint(resume: bool | str | None, run_dir: Path) -> tuple[Path, Checkpoint] | None:
    """The newest valid checkpoint that `resume` names (None: start afresh).

    `resume=true`: the latest in this run dir (None if there is none); a path: that checkpoint
    folder, or the latest inside a `checkpoints/` folder or a run dir it names. A corrupt newest
    checkpoint is reported (path and reason) and the one before it is used.
    """
    problems: list[str] = []
    for path in _candidates(resume, run_dir):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:
            log(WARNING, "checkpoint %s cannot be used: %s", path, err)
            print(f"checkpoint {path} cannot be used: {err}", flush=True)
            problems.append(str(err))
            continue
        if problems:
            print(f"falling back to {path}", flush=True)
        return path, ckpt
    if problems:
        raise CheckpointError("no valid checkpoint to resume from: " + "; ".join(problems))
    return None
