"""`task=pretrain` (federated k-means phase + 2 rounds) and `task=distill` (1 round, the units
objective: it needs the pretraining export's unit head) through `python -m fedspeech.main` on the
Ray backend, then the exports in the CTC fine-tuning model. The layers objective's loss, scores
and export are covered in-process by test_pretraining.py."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_CORPUS, TINY_HUBERT, read_history, run_module

pytestmark = pytest.mark.slow


def test_pretrain_then_distill_through_main(tiny_data, tmp_path):
    from transformers import AutoModel

    from fedspeech.data.text import CharTokenizer
    from fedspeech.models.ssl_ctc import SSLCTC

    run = tmp_path / "pretrain"
    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_HUBERT,
                      "task=pretrain", "num_rounds=2", "strategy.num_train_nodes=2",
                      "task.kmeans.steps=3", "eval.every=1", f"hydra.run.dir={run}")
    assert "federated k-means: 16 clusters, 3 steps" in proc.stdout
    history = read_history(run)
    assert [h["round"] for h in history] == [0, 1, 2]
    steps = history[0]["kmeans"]
    assert [s["step"] for s in steps] == [0, 1, 2, 3] and steps[0]["clients"] == 3
    inertia = [s["inertia"] for s in steps[1:]]
    assert inertia == sorted(inertia, reverse=True)            # Lloyd steps never raise it
    for h in history:
        assert 0 <= h["unit_acc"] <= 1 and h["loss"] > 0 and h["masked_frames"] > 0
        assert 1 <= h["pred_perplexity"] <= 16 and 1 <= h["target_perplexity"] <= 16
    assert history[1]["clients_replied"] == 2 and history[2]["train_seconds"] > 0
    assert (run / "kmeans" / "centroids.npy").is_file()
    export = run / "export"
    assert json.loads((export / "fedspeech.json").read_text())["targets"] == "federated_kmeans"
    assert type(AutoModel.from_pretrained(export)).__name__ == "HubertModel"
    tokenizer = CharTokenizer.load(tiny_data / "synthetic" / "tokenizer.json")
    assert SSLCTC(tokenizer, str(export), local_files_only=True).encoder.config.num_hidden_layers == 2

    student = tmp_path / "distill"
    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS,
                      "task=distill", f"model.teacher={export}", "model.student_layers=1",
                      "model.objective=units", "num_rounds=1", "strategy.num_train_nodes=2",
                      "train.batch_seconds=30", f"hydra.run.dir={student}")
    assert "[round 1/1] 2/2 clients replied" in proc.stdout
    history = read_history(student)
    assert [h["round"] for h in history] == [0, 1]
    assert history[1]["student_params"] < history[1]["teacher_params"]
    for h in history:
        assert 0 <= h["unit_acc"] <= 1 and h["distill_kl"] >= 0 and h["distill_ce"] > 0
        assert h["loss"] == pytest.approx(0.5 * h["distill_kl"] + 0.5 * h["distill_ce"], rel=1e-4)
    assert (student / "export" / "unit_head.pt").is_file()
    assert AutoModel.from_pretrained(student / "export").config.num_hidden_layers == 1
    assert SSLCTC(tokenizer, str(student / "export"),
                  local_files_only=True).encoder.config.num_hidden_layers == 1
