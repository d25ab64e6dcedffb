"""HuBERT pretraining pieces: unit targets at the model's frame count, federated k-means against
scikit-learn over real Flower messages, the masked-unit loss, exports, and DistilHuBERT."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from flower_federation import LocalFederation
from real_librispeech import shortest_rows
from tiny_pretrained import save_tiny_encoder

from fedspeech.data.audio import AudioCache
from fedspeech.data.batching import Batch, UtteranceLoader
from fedspeech.data.text import CharTokenizer
from fedspeech.federation.kmeans import (STATS_QUERY, answer_kmeans, federated_kmeans,
                                         fit_local_kmeans, local_summary, seed_centroids)
from fedspeech.federation.parameters import array_view
from fedspeech.models.pretraining.distil import DistilHubert, scaled_target_layers
from fedspeech.models.pretraining.hubert import HubertPretrain
from fedspeech.models.pretraining.units import PAD_UNIT, UnitLabeller
from fedspeech.seeding import torch_seeded
from fedspeech.training import train_local

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            proj_dim=16, num_clusters=8)


def tiny_model(**kw) -> HubertPretrain:
    with torch_seeded(0):
        return HubertPretrain(**{**TINY, **kw})


def blobs(n: int, seed: int, dim: int = 3) -> np.ndarray:
    """Frames from 4 well-separated Gaussian blobs."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0], [6, 0, 0], [0, 6, 0], [0, 0, 6]], dtype=float)[:, :dim]
    return centres[rng.integers(0, 4, n)] + rng.normal(size=(n, dim))


# ---- targets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("strides", [None, ([10, 4, 4, 4], [5, 4, 4, 4])])
def test_targets_have_exactly_the_model_frame_count(strides):
    kw = {} if strides is None else dict(conv_kernel=strides[0], conv_stride=strides[1],
                                        conv_dim=[16] * 4)
    model = tiny_model(**kw).eval()
    features = model.mfcc_features()
    model.set_labeller(UnitLabeller(features, np.random.default_rng(0).normal(size=(8, 39))))
    lengths = [400, 401, 719, 720, 1001, 16001, 23457]
    for n in lengths:
        with torch.no_grad():
            frames = model.encoder(torch.randn(1, n)).last_hidden_state.shape[1]
        assert features(torch.randn(1, n), torch.tensor([n]))[0].shape == (frames, 39), n
    # a padded batch: each row has its own frames, PAD past them, nothing else
    lens = torch.tensor(lengths)
    audio = torch.randn(len(lengths), max(lengths))
    total = int(model.frame_count(torch.tensor([audio.shape[1]]))[0])
    targets = model.labeller(audio, lens, total)
    for i, n in enumerate(lengths):
        own = int(model.encoder._get_feat_extract_output_lengths(torch.tensor(n)))
        assert (targets[i, :own] != PAD_UNIT).all() and (targets[i, own:] == PAD_UNIT).all()


# ---- federated k-means ------------------------------------------------------------------------
def test_federated_kmeans_equals_sklearn_lloyd_and_only_statistics_travel():
    from sklearn.cluster import KMeans

    shards = [blobs(300, 1), blobs(120, 2), blobs(50, 3)]
    pooled = np.concatenate(shards)
    init = pooled[[0, 7, 21, 40, 333]]
    seen: list[tuple[str, ...]] = []

    def handler(pid, msg):  # noqa: ANN001, ANN202
        reply = answer_kmeans(msg, shards[pid], seed=pid)
        # array_view, not Array.numpy(): it parses the header under the lock (see parameters.py)
        seen.append(tuple(f"{k}{array_view(v).shape}" for k, v in reply["stats"].items()))
        return reply

    with LocalFederation(3, handler) as fed:
        ours = federated_kmeans(fed.grid, fed.partition_of, 5, steps=4, seed=0, timeout=30,
                                init=init)
    theirs = KMeans(5, init=init, n_init=1, max_iter=4, algorithm="lloyd", tol=0.0).fit(pooled)
    np.testing.assert_allclose(ours.centroids, theirs.cluster_centers_, atol=1e-5)
    assert set(seen) == {("sums(5, 3)", "counts(5,)")} and len(seen) == 3 * 4
    # inertia of the last step is that of the last centroids before their update
    before = KMeans(5, init=init, n_init=1, max_iter=3, algorithm="lloyd", tol=0.0).fit(pooled)
    assert ours.steps[-1]["inertia"] == pytest.approx(before.inertia_, rel=1e-6)
    assert ours.steps[-1]["frames"] == len(pooled)


def test_federated_kmeans_does_not_depend_on_the_order_replies_arrive_in():
    shards = [blobs(300, 1), blobs(120, 2), blobs(50, 3)]
    results = []
    for order in (sorted, lambda pids: sorted(pids, reverse=True)):
        with LocalFederation(3, lambda pid, msg: answer_kmeans(msg, shards[pid], seed=pid),
                             reply_order=order, batch=3) as fed:
            results.append(federated_kmeans(fed.grid, fed.partition_of, 5, steps=3, seed=0, timeout=30))
    first, second = results
    assert np.array_equal(first.centroids, second.centroids)
    assert [s.get("inertia") for s in first.steps] == [s.get("inertia") for s in second.steps]


def test_kmeans_seeding_skips_a_client_without_audio(caplog):
    shards = [blobs(200, 1), np.zeros((0, 3)), blobs(150, 2)]
    with caplog.at_level(logging.WARNING), LocalFederation(3, lambda pid, msg: answer_kmeans(
            msg, shards[pid], seed=pid)) as fed:
        result = federated_kmeans(fed.grid, fed.partition_of, 4, steps=3, seed=0, timeout=30)
    assert result.skipped == {1: "no unlabelled audio"}
    assert "skipping the k-means phase: no unlabelled audio" in caplog.text
    assert result.centroids.shape == (4, 3)
    inertia = [s["inertia"] for s in result.steps[1:]]
    assert all(b <= a + 1e-9 for a, b in zip(inertia, inertia[1:]))      # Lloyd never rises
    assert result.steps[0] == {"step": 0, "clients": 2, "frames": 350}
    # the four blobs are found: every centroid within 1 of a true centre
    true = np.array([[0, 0, 0], [6, 0, 0], [0, 6, 0], [0, 0, 6]])
    assert np.sort(np.linalg.norm(result.centroids[:, None] - true[None], axis=-1).min(1)).max() < 1.0


def test_more_clusters_than_frames(caplog):
    frames = blobs(5, 0)
    with pytest.raises(ValueError, match="5 frames cannot make 8 clusters .model.num_clusters"):
        fit_local_kmeans(frames, 8, seed=0)
    with caplog.at_level(logging.WARNING):
        centres, counts = local_summary(frames, 8, seed=0)
    assert len(centres) == 5 and counts.sum() == 5 and "only 5 frames" in caplog.text
    with pytest.raises(ValueError, match="fewer than model.num_clusters=8"):
        seed_centroids([(centres, counts)], 8, seed=0)


# ---- the model ---------------------------------------------------------------------------------
def test_masked_prediction_loss_falls_over_local_steps():
    rows = shortest_rows(2)
    model = tiny_model(hidden_dropout=0.0, attention_dropout=0.0)
    cache = AudioCache(64)
    batch = next(iter(UtteranceLoader(rows, cache, 100.0, shuffle=False)))
    frames = torch.cat(model.mfcc_features()(batch.audio, batch.audio_lens)).double().numpy()
    model.set_labeller(UnitLabeller(model.mfcc_features(), fit_local_kmeans(frames, 8, seed=0)))
    model.eval()

    def held_out() -> float:
        return float(model.unit_scores(batch, seed=5).loss_sum)

    before = held_out()
    loader = UtteranceLoader(rows, cache, 100.0, shuffle=True, seed=0)
    with torch_seeded(0):
        stats = train_local(model, loader, torch.device("cpu"), lr=3e-3, epochs=8)
    assert stats.steps == 8
    assert held_out() < 0.8 * before


def test_export_loads_into_the_ctc_model_and_automodel(tmp_path):
    from transformers import AutoModel

    from fedspeech.models.ssl_ctc import SSLCTC

    model = tiny_model()
    out = model.export(tmp_path / "export", info={"task": "pretrain"})
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "fedspeech.json"):
        assert (out / name).is_file(), name
    auto = AutoModel.from_pretrained(out)
    assert type(auto).__name__ == "HubertModel" and auto.config.mask_time_prob == 0.05
    for name, tensor in model.encoder.state_dict().items():
        torch.testing.assert_close(auto.state_dict()[name], tensor)
    assert model.encoder.config.mask_time_prob == 0.8           # the live model keeps its own
    ctc = SSLCTC(CharTokenizer(list("abc '")), str(out), local_files_only=True)
    batch = Batch(ids=["a"], speakers=["s"], texts=["ab"], audio=torch.randn(1, 16000),
                  audio_lens=torch.tensor([16000]))
    assert torch.isfinite(ctc.loss(batch))


# ---- DistilHuBERT ------------------------------------------------------------------------------
def test_distil_targets_scale_to_the_teacher_depth():
    assert scaled_target_layers(12) == [4, 8, 12]
    assert scaled_target_layers(24) == [8, 16, 24]
    assert scaled_target_layers(3) == [1, 2, 3]
    assert scaled_target_layers(2) == [1, 2]


def test_distilhubert_student_trains_exports_and_rejects_a_bad_teacher(tmp_path):
    teacher = save_tiny_encoder("hubert", tmp_path / "teacher", layer_norm=False,
                                num_hidden_layers=3)
    with torch_seeded(0):
        model = DistilHubert(teacher=str(teacher), student_layers=1)
    assert model.target_layers == [1, 2, 3]
    names = model.trainable_names()
    assert names and not any(n.startswith("teacher.") for n in names)
    ratio = model.parameter_ratio()
    assert ratio["student_params"] < ratio["teacher_params"]
    # the student starts from the teacher's first layer and CNN
    torch.testing.assert_close(model.student.encoder.layers[0].state_dict(),
                               model.teacher.encoder.layers[0].state_dict())
    batch = Batch(ids=["a", "b"], speakers=["s", "s"], texts=["", ""],
                  audio=torch.randn(2, 12000), audio_lens=torch.tensor([12000, 8000]))
    model.train()
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.heads[0].weight.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())
    scores = model.distill_scores(batch)
    assert set(scores) >= {"loss", "distill_l1", "distill_cos", "cos_layer3"}
    out = model.export(tmp_path / "student")
    info = json.loads((out / "fedspeech.json").read_text())
    assert info["param_ratio"] == pytest.approx(ratio["param_ratio"])
    from transformers import AutoModel
    assert AutoModel.from_pretrained(out).config.num_hidden_layers == 1

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    for bad, why in ((tmp_path / "missing", "is not a directory"),
                     (tmp_path / "bert", "holds a 'bert' model, not a HuBERT/wav2vec2 export")):
        with pytest.raises(ValueError, match=f"^model.teacher: .*{why}"):
            DistilHubert(teacher=str(bad))


# ---- unit distillation (model.objective=units) ---------------------------------------------------
def unit_teacher(tmp_path) -> str:
    """A tiny random HuBERT pretraining export: the encoder and its unit_head.pt."""
    return str(tiny_model(hidden_dropout=0.0, attention_dropout=0.0).export(tmp_path / "teacher"))


def two_utterances() -> Batch:
    with torch_seeded(1):
        audio = torch.randn(2, 12000)
    return Batch(ids=["a", "b"], speakers=["s", "s"], texts=["", ""], audio=audio,
                 audio_lens=torch.tensor([12000, 8000]))


def test_unit_distillation_loss_falls_over_local_steps(tmp_path):
    rows = shortest_rows(2)
    with torch_seeded(0):
        model = DistilHubert(teacher=unit_teacher(tmp_path), student_layers=1, objective="units")
    names = model.trainable_names()
    assert any(n.startswith("unit_head.") for n in names) and not any(
        n.startswith(("teacher.", "teacher_head.", "heads.")) for n in names)
    # the student's unit head starts as the teacher's
    torch.testing.assert_close(model.unit_head.state_dict(), model.teacher_head.state_dict())
    cache = AudioCache(64)
    batch = next(iter(UtteranceLoader(rows, cache, 100.0, shuffle=False)))
    model.eval()

    def held_out() -> dict[str, float]:
        return model.distill_scores(batch, seed=5)

    before = held_out()
    assert set(before) == {"loss", "distill_kl", "distill_ce", "unit_acc"}
    loader = UtteranceLoader(rows, cache, 100.0, shuffle=True, seed=0)
    with torch_seeded(0):
        stats = train_local(model, loader, torch.device("cpu"), lr=3e-3, epochs=8)
    assert stats.steps == 8
    after = held_out()
    assert 0 < after["loss"] < 0.8 * before["loss"]
    # both parts fall, not only their sum (each is measured on its own)
    assert after["distill_kl"] < 0.8 * before["distill_kl"] and after["distill_ce"] < before["distill_ce"]
    assert all(p.grad is None for p in model.teacher_head.parameters())


def test_unit_kl_alone_is_t2_times_the_kl_and_zero_for_the_teacher_itself(tmp_path, monkeypatch):
    import fedspeech.models.pretraining.distil as distil

    teacher, batch = unit_teacher(tmp_path), two_utterances()
    with torch_seeded(0):
        model = DistilHubert(teacher=teacher, student_layers=2, objective="units",
                             unit_kl_weight=1.0, kl_temperature=2.0).eval()
    scores = model.distill_scores(batch, seed=3)
    assert scores["loss"] == 4.0 * scores["distill_kl"]          # α=1: T²·KL, nothing else
    assert scores["loss"] > 1e-4                 # masked frames: the student sees other input
    model.unit_kl_weight = 0.0
    assert model.distill_scores(batch, seed=3)["loss"] == scores["distill_ce"]
    # without a mask, a full-depth student started from the teacher is the teacher: KL = 0
    monkeypatch.setattr(distil, "span_mask", lambda valid, *args, **kw: torch.zeros_like(valid))
    model.unit_kl_weight = 1.0
    unmasked = model.distill_scores(batch)
    assert unmasked["distill_kl"] == pytest.approx(0.0, abs=1e-6)
    assert unmasked["loss"] == pytest.approx(0.0, abs=1e-6)


def test_unit_student_exports_a_teacher_and_needs_a_unit_head(tmp_path):
    from transformers import AutoModel

    from fedspeech.models.ssl_ctc import SSLCTC

    with torch_seeded(0):
        model = DistilHubert(teacher=unit_teacher(tmp_path), student_layers=1, objective="units")
    out = model.export(tmp_path / "student")
    assert json.loads((out / "fedspeech.json").read_text())["objective"] == "units"
    assert AutoModel.from_pretrained(out).config.num_hidden_layers == 1
    ctc = SSLCTC(CharTokenizer(list("abc '")), str(out), local_files_only=True)
    assert torch.isfinite(ctc.loss(Batch(ids=["a"], speakers=["s"], texts=["ab"],
                                         audio=torch.randn(1, 16000), audio_lens=torch.tensor([16000]))))
    again = DistilHubert(teacher=str(out), student_layers=1, objective="units")   # a teacher in turn
    torch.testing.assert_close(again.teacher_head.state_dict(), model.unit_head.state_dict())

    plain = save_tiny_encoder("hubert", tmp_path / "plain", layer_norm=False)   # no unit_head.pt
    DistilHubert(teacher=str(plain))                                           # layers: fine
    with pytest.raises(ValueError) as err:
        DistilHubert(teacher=str(plain), objective="units")
    assert str(err.value) == (f"model.teacher: {plain / 'unit_head.pt'} is missing: model.objective="
                              "units needs the unit head that task=pretrain writes beside its export")
    with pytest.raises(ValueError, match=r"^model.unit_kl_weight: must be in \[0, 1\], got 1.5$"):
        DistilHubert(teacher=str(plain), objective="units", unit_kl_weight=1.5)


def test_config_names_a_bad_teacher_and_a_mismatched_model(tmp_path):
    from fedspeech.config import ConfigError, compose_config, validate_config

    with pytest.raises(ConfigError, match="^model.teacher: .* is not a directory$"):
        validate_config(compose_config(["task=distill", f"model.teacher={tmp_path / 'none'}"]))
    with pytest.raises(ConfigError, match="task=pretrain trains model=hubert_pretrain"):
        validate_config(compose_config(["task=pretrain", "model=tiny"]))
    with pytest.raises(ConfigError, match="model=hubert_pretrain is trained by task=pretrain"):
        validate_config(compose_config(["model=hubert_pretrain"]))
    with pytest.raises(ConfigError, match="^federated: false runs the centralised ASR baseline"):
        validate_config(compose_config(["task=pretrain", "federated=false"]))
    cfg = compose_config(["task=pretrain"])
    validate_config(cfg)
    assert (cfg.model.name, cfg.strategy.name, cfg.task.targets) == \
        ("hubert_pretrain", "fedadam", "federated_kmeans")


def test_iteration_two_clusters_hidden_states_of_an_export(tmp_path):
    from fedspeech.tasks.pretrain import PretrainTask

    previous = tiny_model().export(tmp_path / "iteration1")
    with pytest.raises(ValueError, match="task.features_from"):
        PretrainTask(iteration=2)
    model = tiny_model().eval()
    features = PretrainTask(iteration=2, features_from=str(previous)).spec.build(model)
    assert features.layer == 1 and features.dim == 32            # half of 2 layers
    for n in (400, 1001, 16001):
        with torch.no_grad():
            frames = model.encoder(torch.randn(1, n)).last_hidden_state.shape[1]
        assert features(torch.randn(1, n), torch.tensor([n]))[0].shape == (frames, 32)
    with pytest.raises(ValueError, match="task.feature_layer=5 is outside 1..2"):
        PretrainTask(iteration=2, features_from=str(previous), feature_layer=5).spec.build(model)
