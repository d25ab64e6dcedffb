"""Experiment tracking: what a round loop logs is what TensorBoard / W&B files hold."""

from __future__ import annotations

import math

import pytest

from fedspeech.config import compose_config
from fedspeech.tracking import RunLogger, TensorBoardLogger, make_logger, scalars

# history records as the round loop writes them: numbers, lists, flags, NaN
RECORDS = [
    {"round": 0, "wer": 1.0, "cer": 0.9, "loss": 3.5, "participants": []},
    {"round": 1, "wer": 0.8, "cer": 0.5, "loss": 2.0, "epsilon": 1.25, "bytes_up": 4096,
     "participants": [0, 2], "failures": {"1": "timeout"}, "resumed": False},
    {"round": 2, "wer": 0.6, "cer": 0.3, "loss": float("nan"), "epsilon": 1.75, "bytes_up": 8192,
     "strategy": "fedavg"},
]


def test_scalars_keeps_finite_numbers_only():
    assert scalars(RECORDS[1]) == {"wer": 0.8, "cer": 0.5, "loss": 2.0, "epsilon": 1.25,
                                   "bytes_up": 4096.0}
    assert "loss" not in scalars(RECORDS[2]) and "strategy" not in scalars(RECORDS[2])


def test_tensorboard_event_files_hold_each_rounds_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with make_logger(compose_config(["logger=tensorboard"]), tmp_path) as logger:
        assert isinstance(logger, TensorBoardLogger)
        for record in RECORDS:
            logger.log_round(record["round"], record)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["bytes_up", "cer", "epsilon", "loss", "wer"]
    for key in ("wer", "cer", "loss", "epsilon", "bytes_up"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        expected = [(r["round"], r[key]) for r in RECORDS
                    if key in r and math.isfinite(r[key])]
        assert [s for s, _ in logged] == [s for s, _ in expected], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected]), key


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(["logger=wandb", "logger.project=fedspeech-test", "num_rounds=7"])
    with make_logger(cfg, tmp_path) as logger:
        for record in RECORDS:
            logger.log_round(record["round"], {**record, "probe_metric": 0.5})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"probe_metric" in data and b"fedspeech-test" in data and b"num_rounds" in data
    assert b"participants" not in data and b"resumed" not in data


def test_no_logger_logs_nothing(tmp_path):
    logger = make_logger(compose_config([]), tmp_path)
    assert type(logger) is RunLogger
    logger.log_round(1, RECORDS[1])
    logger.close()
    assert list(tmp_path.iterdir()) == []
