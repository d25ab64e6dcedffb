"""Shared fixtures: a tiny synthetic corpus prepared once per session, and a `main` runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_cluster import SharedRayCluster

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A corpus small enough to synthesise in seconds: 3 training voices, 1 unseen voice.
TINY_CORPUS = [
    "dataset.reader.num_train_speakers=3", "dataset.reader.num_unseen_speakers=1",
    "dataset.reader.train_sentences=6", "dataset.reader.dev_sentences=1",
    "dataset.reader.test_sentences=2", "dataset.reader.unseen_sentences=3",
]
# A model and round small enough for a CI machine, evaluated after every round (the default
# evaluates every 5th).
TINY_RUN = ["model.hidden_size=32", "model.num_layers=1", "model.conv_channels=8",
            "train.batch_seconds=30", "eval.batch_seconds=60", "eval.every=1", "verbose=true"]
# A HuBERT pretraining model small enough for a CI machine (task=pretrain runs)
TINY_HUBERT = ["model.num_clusters=16", "model.hidden_size=32", "model.num_hidden_layers=2",
               "model.num_attention_heads=2", "model.intermediate_size=64",
               "model.conv_dim=[16,16,16,16,16,16,16]", "model.num_conv_pos_embeddings=16",
               "model.num_conv_pos_embedding_groups=4", "model.proj_dim=16",
               "train.batch_seconds=30", "eval.batch_seconds=60", "client_resources.num_cpus=1"]


def _test_env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0",
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


SHARED_RAY = SharedRayCluster(_test_env())


def pytest_sessionfinish(session, exitstatus):
    SHARED_RAY.stop()


def _joins_shared_ray(module: str, overrides: tuple[str, ...]) -> bool:
    """Federated in-process runs that leave Ray's settings alone join the suite's cluster."""
    if module != "fedspeech.main":
        return False
    return not any(o.startswith(("ray_init_args.", "+ray_init_args.")) or o in (
        "simulation.runtime=flwr_run", "federated=false", "--help") for o in overrides)


def run_module(module: str, *overrides: str, timeout: int = 600, check: bool = True,
               env: dict | None = None, own_ray: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m <module> <overrides>` from the repo root, as a user would.

    A federated run joins the suite's Ray cluster (`tests/ray_cluster.py`) unless it sets
    `ray_init_args` itself or asks for `own_ray` (Ray started and stopped by the run).
    """
    full_env = {**_test_env(), **(env or {})}
    if not own_ray and _joins_shared_ray(module, overrides):
        overrides = (*overrides, f"ray_init_args.address='{SHARED_RAY.start()}'")
    proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """paths.data holding the tiny synthetic corpus, its manifest and its speaker partition."""
    data = tmp_path_factory.mktemp("data")
    run_module("fedspeech.dataset_preparation", f"paths.data={data}", *TINY_CORPUS)
    return data


def read_history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())
