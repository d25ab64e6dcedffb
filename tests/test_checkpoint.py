"""Checkpoints: round trip, the newest kept, checksums, and falling back from a corrupt one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedspeech.federation.checkpoint import (Checkpoint, CheckpointError, load_checkpoint,
                                             resume_checkpoint, save_checkpoint)


def write_rounds(folder, rounds=(1, 2, 3), keep=2):  # noqa: ANN001, ANN201
    for r in rounds:
        save_checkpoint(folder, Checkpoint(round=r, arrays={"w": np.full(3, r, np.float32)},
                                           server_state={"m": np.ones(2), "step": r},
                                           state={"history": [{"round": r}]}), keep=keep)


def test_round_trip_and_latest(tmp_path):
    folder = tmp_path / "checkpoints"
    write_rounds(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["round_0002", "round_0003"]
    path, ckpt = resume_checkpoint(True, tmp_path)
    assert path.name == "round_0003"
    assert ckpt.round == 3 and ckpt.arrays["w"].tolist() == [3, 3, 3]
    assert ckpt.server_state["step"] == 3 and ckpt.server_state["m"].tolist() == [1, 1]
    assert ckpt.state["history"] == [{"round": 3}]
    assert resume_checkpoint(str(tmp_path), tmp_path / "elsewhere")[0] == path
    assert resume_checkpoint(True, tmp_path / "fresh") is None          # nothing yet: start afresh
    assert resume_checkpoint(False, tmp_path) is None
    with pytest.raises(FileNotFoundError):
        resume_checkpoint(str(tmp_path / "nothing"), tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "state"])
def test_a_corrupt_newest_checkpoint_is_named_and_the_previous_one_used(tmp_path, capsys, damage):
    folder = tmp_path / "checkpoints"
    write_rounds(folder)
    newest = folder / "round_0003"
    target = newest / ("state.json" if damage == "state" else "arrays.safetensors")
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text(data.decode()[:10])
    with pytest.raises(CheckpointError, match=str(newest)):
        load_checkpoint(newest)
    path, ckpt = resume_checkpoint(True, tmp_path)
    assert path.name == "round_0002" and ckpt.round == 2
    out = capsys.readouterr().out
    assert str(newest) in out and "falling back to" in out


def test_no_valid_checkpoint_is_a_clear_error(tmp_path):
    folder = tmp_path / "checkpoints"
    write_rounds(folder, rounds=(1,))
    (folder / "round_0001" / "server_state.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no valid checkpoint.*server_state.safetensors"):
        resume_checkpoint(True, tmp_path)


def test_checksums_are_recorded(tmp_path):
    write_rounds(tmp_path / "checkpoints", rounds=(1,))
    state = json.loads((tmp_path / "checkpoints" / "round_0001" / "state.json").read_text())
    assert set(state["sha256"]) == {"arrays.safetensors", "server_state.safetensors"}
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
