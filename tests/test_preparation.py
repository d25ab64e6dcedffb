"""`python -m fedspeech.dataset_preparation` on the real recordings in their original layouts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import SHARED_DATA, run_module

REAL = SHARED_DATA / "real"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real sample recordings not found at {REAL}")


def _prepared(data, name):
    manifest = pd.read_csv(data / name / "manifest.csv", dtype={"id": str, "speaker": str})
    rejected = pd.read_csv(data / name / "rejected.csv")
    return manifest, rejected


@pytest.mark.parametrize("dataset, root, extra, n_utts, n_train", [
    ("tedlium3", "TEDLIUM_release-3", [], 10, 5),
    ("commonvoice", "cv-corpus-13.0-2023-03-09", ["partitioner.key=client_id"], 9, 6),
    ("commonvoice", "cv-corpus-13.0-2023-03-09/en", ["partitioner.key=client_id"], 9, 6),
    ("mls", ".", ["dataset.reader.languages=[french,german]"], 20, 12),
])
def test_prepare_real_corpus_with_speaker_partition(tmp_path, dataset, root, extra, n_utts, n_train):
    proc = run_module("fedspeech.dataset_preparation", f"dataset={dataset}", f"dataset.root={REAL / root}",
                      f"paths.data={tmp_path}", *extra)
    manifest, rejected = _prepared(tmp_path, dataset)
    assert len(manifest) == n_utts and len(rejected) == 0
    assert (manifest["duration"] > 0).all() and manifest["text"].str.len().gt(0).all()
    clients = pd.read_csv(tmp_path / dataset / "partitions" / "speaker" / "clients.csv", dtype={"id": str})
    train = manifest[manifest["split"] == "train"]
    assert len(train) == n_train and sorted(clients["id"]) == sorted(train["id"])
    summary = json.loads((tmp_path / dataset / "partitions" / "speaker" / "summary.json").read_text())
    key = "client_id" if dataset == "commonvoice" else "speaker"
    assert summary["num_clients"] == train[key].nunique()
    assert (tmp_path / dataset / "tokenizer.json").is_file()
    assert "manifest:" in proc.stdout


def test_librispeech_manifest_only_and_rerun_is_a_no_op(tmp_path):
    args = ["dataset=librispeech", f"dataset.root={REAL / 'LibriSpeech'}",
            "dataset.reader.subsets=[dev-clean,test-clean]", f"paths.data={tmp_path}",
            "prepare_stages=[manifest]"]
    run_module("fedspeech.dataset_preparation", *args)
    manifest, _ = _prepared(tmp_path, "librispeech")
    assert len(manifest) == 7 and manifest["speaker"].nunique() == 4
    assert set(manifest["split"]) == {"dev", "test"}
    stamp = (tmp_path / "librispeech" / "manifest.csv").stat().st_mtime_ns
    proc = run_module("fedspeech.dataset_preparation", *args)
    assert (tmp_path / "librispeech" / "manifest.csv").stat().st_mtime_ns == stamp
    assert "reading librispeech" not in proc.stdout


def test_corrupt_audio_is_listed_in_rejected_csv(tmp_path):
    import shutil
    root = tmp_path / "LibriSpeech"
    shutil.copytree(REAL / "LibriSpeech", root)
    victim = next(root.rglob("*.flac"))
    victim.write_bytes(victim.read_bytes()[:200])          # a truncated file
    run_module("fedspeech.dataset_preparation", "dataset=librispeech", f"dataset.root={root}",
               "dataset.reader.subsets=[dev-clean,test-clean]", f"paths.data={tmp_path / 'data'}",
               "prepare_stages=[manifest]")
    manifest, rejected = _prepared(tmp_path / "data", "librispeech")
    assert len(manifest) == 6 and len(rejected) == 1
    assert rejected["id"].iloc[0] == victim.stem and rejected["reason"].iloc[0]


def test_missing_root_fails_clearly(tmp_path):
    proc = run_module("fedspeech.dataset_preparation", "dataset=librispeech",
                      f"dataset.root={tmp_path / 'nowhere'}", f"paths.data={tmp_path}", check=False)
    assert proc.returncode != 0 and "nowhere" in proc.stderr
