"""A whole federated run through `python -m fedspeech.main`, on the Ray backend, tiny sizes."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conftest import TINY_CORPUS, TINY_RUN, read_history, run_module

pytestmark = pytest.mark.slow     # each test is a whole run of `python -m fedspeech.main`


def test_federated_run_writes_run_dir(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_RUN,
                      "num_rounds=2", "strategy.num_train_nodes=2", "client_resources.num_cpus=1",
                      "train.speed_perturb=[0.9,1.0,1.1]", "logger=tensorboard",
                      f"hydra.run.dir={run_dir}", own_ray=True)    # Ray started by the run
    assert "[round 2/2]" in proc.stdout
    # main.log keeps what the console showed: fedspeech's progress, Flower's log, without colours
    log = (run_dir / "main.log").read_text()
    assert "[round 2/2]" in log and "configure_train: round 2" in log and "\x1b[" not in log
    # the run's own TensorBoard events hold every round's WER, as history.json does
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("wer")}
    assert logged == pytest.approx({h["round"]: h["wer"] for h in read_history(run_dir)})
    # the default runtime reaches Flower's engine without its deprecated entry point
    assert "DEPRECATED" not in proc.stdout + proc.stderr
    for name in (".hydra/config.yaml", "history.json", "speakers.csv", "plots/wer.png",
                 "plots/speakers.png"):
        assert (run_dir / name).is_file(), name
    history = read_history(run_dir)
    assert [h["round"] for h in history] == [0, 1, 2]
    for h in history[1:]:
        assert h["clients_sampled"] == 2 and h["clients_replied"] == 2
        assert h["train_seconds"] > 0 and h["bytes_up"] > 0 and h["bytes_down"] > 0
        assert 0.0 <= h["cer"] and 0.0 <= h["wer"] and not math.isnan(h["wer"])
        assert h["wall_s"] > 0 and h["loss"] > 0
    # bytes: each sampled client receives and returns every trainable tensor once (float32)
    assert history[1]["bytes_up"] == history[1]["bytes_down"]
    speakers = pd.read_csv(run_dir / "speakers.csv", dtype={"speaker": str})
    assert set(speakers.columns) >= {"speaker", "n_utts", "seconds", "rounds_participated",
                                     "seen_in_training", "wer", "cer"}
    assert (~speakers["seen_in_training"]).sum() == 1      # the one unseen voice
    assert speakers.loc[~speakers["seen_in_training"], "rounds_participated"].eq(0).all()
    assert speakers["rounds_participated"].sum() > 0
    assert (run_dir / "checkpoints").is_dir()


def test_centralised_baseline_writes_the_same_files(tiny_data, tmp_path):
    """federated=false trains the same model on pooled data at a federated round's audio budget."""
    run_dir = tmp_path / "central"
    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_RUN,
                      "num_rounds=2", "strategy.num_train_nodes=2", "federated=false",
                      f"hydra.run.dir={run_dir}")
    assert "centralised run: 18 pooled utterances, 12 per round" in proc.stdout   # 2 of 3 clients
    for name in ("history.json", "speakers.csv", "plots/wer.png", "checkpoints"):
        assert (run_dir / name).exists(), name
    history = read_history(run_dir)
    assert [h["round"] for h in history] == [0, 1, 2]
    assert all(h["train_seconds"] > 0 and h["bytes_up"] == 0 for h in history[1:])
    speakers = pd.read_csv(run_dir / "speakers.csv", dtype={"speaker": str})
    seen = speakers["seen_in_training"]
    assert speakers.loc[seen, "rounds_participated"].gt(0).all()
    assert speakers.loc[~seen, "rounds_participated"].eq(0).all()


def test_main_honours_prepare_stages_and_force_prepare(tiny_data, tmp_path):
    empty = tmp_path / "empty"
    proc = run_module("fedspeech.main", f"paths.data={empty}", *TINY_CORPUS, "prepare_stages=[]",
                      f"hydra.run.dir={tmp_path / 'none'}", check=False)
    assert proc.returncode != 0 and "missing manifest file" in proc.stderr
    assert not (empty / "synthetic").exists()          # main prepared nothing

    manifest = tiny_data / "synthetic" / "manifest.csv"
    clients = tiny_data / "synthetic" / "partitions" / "speaker" / "clients.csv"
    before = manifest.stat().st_mtime_ns, clients.stat().st_mtime_ns
    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_RUN,
                      "force_prepare=true", "prepare_stages=[partition]", "federated=false",
                      "num_rounds=1", "strategy.num_train_nodes=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert "partition speaker" in proc.stdout and "reading synthetic" not in proc.stdout
    assert manifest.stat().st_mtime_ns == before[0]     # not a chosen stage
    assert clients.stat().st_mtime_ns != before[1]      # rebuilt although up to date
    assert [h["round"] for h in read_history(tmp_path / "run")] == [0, 1]
