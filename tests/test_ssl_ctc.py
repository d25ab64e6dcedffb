"""SSLCTC on tiny random wav2vec2/HuBERT/WavLM encoders saved to disk and loaded offline.

Real LibriSpeech utterances go through the project's own loader and training loop; nothing is
downloaded (the encoders are written with `save_pretrained` into tmp and read back by path).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from fedspeech import CONFIG_DIR
from fedspeech.data.audio import AudioCache
from fedspeech.data.batching import Batch, UtteranceLoader
from fedspeech.data.text import CharTokenizer
from fedspeech.federation.parameters import load_record, record_nbytes, to_record
from fedspeech.models.factory import build_model
from fedspeech.models.ssl_ctc import SSLCTC
from fedspeech.training import train_local
from real_librispeech import shortest_rows
from tiny_pretrained import KINDS, PRETRAINED, large_config, meta_encoder, save_tiny_encoder

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """The two shortest real LibriSpeech utterances (2.1 s and 3.3 s) as manifest rows."""
    return shortest_rows(2)


@pytest.fixture(scope="module")
def tokenizer(rows) -> CharTokenizer:
    return CharTokenizer.from_texts(rows["text"])


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {kind: save_tiny_encoder(kind, root / kind) for kind in KINDS}


def loader(rows: pd.DataFrame) -> UtteranceLoader:
    return UtteranceLoader(rows, AudioCache(64), batch_seconds=10.0, shuffle=True, seed=0)


def snapshot(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    now = dict(model.named_parameters())
    return {n for n, p in before.items() if not torch.equal(p, now[n])}


@pytest.mark.parametrize("kind", KINDS)
def test_offline_load_train_and_frozen_feature_encoder(kind, encoders, rows, tokenizer):
    model = SSLCTC(tokenizer, str(encoders[kind]), local_files_only=True, layerdrop=0.0,
                   encoder_lr=1e-3, head_lr=1e-3)
    assert model.encoder.config.model_type == kind and model.encoder.config.layerdrop == 0.0
    assert model.normalize_audio and model.use_attention_mask    # the layer-norm conventions
    names = model.trainable_names()
    assert names and not any(n.startswith("encoder.feature_extractor.") for n in names)
    assert any(n.startswith("encoder.encoder.layers.") for n in names)
    assert any(n.startswith("head.") for n in names)
    counts = model.parameter_counts()
    fe = sum(p.numel() for p in model.encoder.feature_extractor.parameters())
    assert counts.total - counts.exchanged == fe and counts.trainable == counts.exchanged
    record = to_record(model)      # float32 data plus a small .npy header per tensor
    assert counts.exchanged_bytes <= record_nbytes(record) <= counts.exchanged_bytes + 256 * len(record)

    frozen = snapshot(model, "encoder.feature_extractor.")
    trained = snapshot(model, "encoder.encoder.layers.") | snapshot(model, "head.")
    batch = next(iter(loader(rows)))
    model.train()
    loss = model.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    stats = train_local(model, loader(rows), CPU, lr=1e-3, weight_decay=0.01, epochs=3,
                        grad_clip=5.0)
    assert stats.steps == 3 and math.isfinite(stats.loss)
    assert not changed(frozen, model), "frozen feature encoder moved"
    assert changed(trained, model) == set(trained), "some trained parameters did not move"

    model.eval()
    preds = model.predict(batch)
    assert len(preds) == len(batch) and all(isinstance(p.text, str) for p in preds)
    assert set(preds[0].text) <= set(tokenizer.symbols[1:])


@pytest.mark.parametrize("kind", KINDS)
def test_padding_does_not_change_an_utterance(kind, encoders, rows, tokenizer):
    """Attention mask + normalisation over valid samples: a padded utterance decodes as alone."""
    model = SSLCTC(tokenizer, str(encoders[kind]), local_files_only=True).eval()
    both = next(iter(UtteranceLoader(rows, AudioCache(64), 10.0, shuffle=False)))
    short = int(both.audio_lens.argmin())
    n = int(both.audio_lens[short])
    alone = Batch(ids=[both.ids[short]], speakers=[both.speakers[short]],
                  texts=[both.texts[short]], audio=both.audio[short:short + 1, :n],
                  audio_lens=both.audio_lens[short:short + 1])
    assert both.audio.shape[1] > n
    with torch.no_grad():
        padded_logits, lens = model.logits(both)
        alone_logits, alone_lens = model.logits(alone)
    frames = int(alone_lens[0])
    assert int(lens[short]) == frames == alone_logits.shape[1]
    torch.testing.assert_close(padded_logits[short, :frames], alone_logits[0], atol=2e-4, rtol=1e-4)


def test_unnormalised_padding_would_differ(encoders, rows, tokenizer):
    """The check above can fail: without the mask, padding does change the short utterance."""
    model = SSLCTC(tokenizer, str(encoders["wav2vec2"]), local_files_only=True,
                   use_attention_mask=False).eval()
    both = next(iter(UtteranceLoader(rows, AudioCache(64), 10.0, shuffle=False)))
    short = int(both.audio_lens.argmin())
    n = int(both.audio_lens[short])
    alone = Batch(ids=["a"], speakers=["s"], texts=["x"], audio=both.audio[short:short + 1, :n],
                  audio_lens=both.audio_lens[short:short + 1])
    with torch.no_grad():
        padded, _ = model.logits(both)
        single, lens = model.logits(alone)
    assert not torch.allclose(padded[short, :int(lens[0])], single[0], atol=2e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_freeze_encoder_steps(kind, encoders, rows, tokenizer):
    k = 2
    model = SSLCTC(tokenizer, str(encoders[kind]), local_files_only=True, layerdrop=0.0,
                   freeze_encoder_steps=k)
    encoder_names = {f"encoder.{n}" for n, p in model.encoder.named_parameters()
                     if not n.startswith("feature_extractor.")}
    assert model.delayed_trainable() == encoder_names
    assert encoder_names <= set(model.trainable_names())        # frozen now, still exchanged
    assert not any(p.requires_grad for p in model.encoder.parameters())
    encoder_before = snapshot(model, "encoder.encoder.layers.")
    head_before = snapshot(model, "head.")

    # a round of exactly K steps: the encoder never moves, the head does
    train_local(model, loader(rows), CPU, lr=1e-3, weight_decay=0.01, epochs=10, max_steps=k)
    assert not changed(encoder_before, model)
    assert changed(head_before, model) == set(head_before)

    # the next round freezes again for K steps, then trains the encoder at step K+1
    train_local(model, loader(rows), CPU, lr=1e-3, weight_decay=0.01, epochs=10, max_steps=k + 1)
    assert changed(encoder_before, model) == set(encoder_before)

    # a new round starts frozen again
    model.param_groups(1e-3, 0.0)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in encoder_names)


def test_param_groups_and_freeze_encoder(encoders, rows, tokenizer):
    path = str(encoders["hubert"])
    model = SSLCTC(tokenizer, path, local_files_only=True, encoder_lr=1e-4, head_lr=1e-3)
    groups = {g["name"]: g for g in model.param_groups(lr=5e-2, weight_decay=0.01)}
    assert groups["encoder"]["lr"] == 1e-4 and groups["head"]["lr"] == 1e-3
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    exchanged = dict(model.named_parameters())
    assert in_groups == {id(exchanged[n]) for n in model.trainable_names()}

    default = SSLCTC(tokenizer, path, local_files_only=True)
    assert {g["name"]: g["lr"] for g in default.param_groups(5e-2, 0.0)} == \
        {"encoder": 5e-2, "head": 5e-2}

    head_only = SSLCTC(tokenizer, path, local_files_only=True, freeze_encoder=True)
    assert [g["name"] for g in head_only.param_groups(1e-3, 0.0)] == ["head"]
    assert all(n.startswith("head.") for n in head_only.trainable_names())
    counts = head_only.parameter_counts()
    assert counts.exchanged == sum(p.numel() for p in head_only.head.parameters())
    before = snapshot(head_only, "encoder.")
    train_local(head_only, loader(rows), CPU, lr=1e-2, epochs=2)
    assert not changed(before, head_only)

    # the exchanged set round-trips through a Flower record into a fresh model
    other = SSLCTC(tokenizer, path, local_files_only=True, freeze_encoder=True)
    load_record(other, to_record(head_only))
    assert not changed(snapshot(head_only, "head."), other)


def test_round_lr_scales_the_group_rates(encoders, rows, tokenizer):
    """The round's client lr moves model.encoder_lr / head_lr with it (lr_round / train.lr).

    AdamW's first step moves every weight with a gradient by its group's rate, so the largest
    change per group after one step is that group's rate.
    """
    base = 1e-4                                   # train.lr
    for round_lr in (base, base / 4):             # e.g. a schedule's first and a later round
        model = SSLCTC(tokenizer, str(encoders["hubert"]), local_files_only=True, layerdrop=0.0,
                       mask_time_prob=0.0, encoder_lr=1e-4, head_lr=1e-3)
        encoder, head = snapshot(model, "encoder.encoder.layers."), snapshot(model, "head.")
        train_local(model, loader(rows), CPU, lr=round_lr, base_lr=base, max_steps=1)
        now = dict(model.named_parameters())
        moved = {name: max(float((now[n].detach() - p).abs().max()) for n, p in part.items())
                 for name, part in (("encoder", encoder), ("head", head))}
        scale = round_lr / base
        assert moved["encoder"] == pytest.approx(1e-4 * scale, rel=1e-2)   # float32 weights
        assert moved["head"] == pytest.approx(1e-3 * scale, rel=1e-2)


def test_group_norm_encoder_conventions(tmp_path, rows, tokenizer):
    """Base-style (group-norm) encoders take neither normalised input nor an attention mask."""
    path = save_tiny_encoder("wav2vec2", tmp_path / "base", layer_norm=False)
    model = SSLCTC(tokenizer, str(path), local_files_only=True, gradient_checkpointing=True)
    assert not model.normalize_audio and not model.use_attention_mask
    assert model.encoder.encoder.gradient_checkpointing
    stats = train_local(model, loader(rows), CPU, lr=1e-3, epochs=1)
    assert stats.steps == 1 and math.isfinite(stats.loss)


def test_short_batches_and_bad_input(encoders, rows, tokenizer):
    path = str(encoders["wav2vec2"])
    model = SSLCTC(tokenizer, path, local_files_only=True, mask_time_prob=0.5,
                   mask_time_length=10).train()
    short = rows.head(1).assign(end=0.1, duration=0.1)      # 0.1 s -> 4 frames < mask length
    batch = next(iter(loader(short)))
    assert torch.isfinite(model.loss(batch))

    tiny = Batch(ids=["x"], speakers=["s"], texts=["a"], audio=torch.zeros(1, 300),
                 audio_lens=torch.tensor([300]))
    with pytest.raises(ValueError, match="receptive field"):
        model.loss(tiny)
    with pytest.raises(TypeError, match="unknown SSLCTC options"):
        SSLCTC(tokenizer, path, local_files_only=True, mask_probability=0.1)
    with pytest.raises(OSError, match="model.pretrained"):
        SSLCTC(tokenizer, str(Path(path) / "missing"), local_files_only=True)


@pytest.mark.parametrize("kind", KINDS)
def test_model_yaml_builds_through_factory(kind, encoders, tokenizer):
    """Every key of conf/model/<kind>.yaml is accepted; the default points at the large model."""
    cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{kind}.yaml")
    assert cfg.name == kind and cfg.pretrained == PRETRAINED[kind]
    cfg.pretrained = str(encoders[kind])
    cfg.local_files_only = True
    model = build_model(cfg, tokenizer)
    assert isinstance(model, SSLCTC) and model.name == kind
    assert model.head.net[-1].out_features == tokenizer.vocab_size


@pytest.mark.parametrize("kind", KINDS)
def test_large_shapes_on_meta(kind):
    """The default checkpoints' architecture, built without weights: ~315 M parameters."""
    encoder = meta_encoder(large_config(kind))
    total = sum(p.numel() for p in encoder.parameters())
    feature_encoder = sum(p.numel() for p in encoder.feature_extractor.parameters())
    assert 314e6 < total < 317e6
    assert feature_encoder == 4_210_176
    assert encoder.config.feat_extract_norm == "layer" and encoder.config.hidden_size == 1024


def test_paper_experiment_config_composes(encoders, tokenizer):
    """conf/experiment/fedwav2vec2_paper.yaml: the paper's values win over the root defaults."""
    from fedspeech.config import compose_config, validate_config

    root = OmegaConf.load(CONFIG_DIR / "config.yaml")
    slot = any("experiment" in str(entry) for entry in root.defaults)
    choice = ("" if slot else "+") + "experiment=fedwav2vec2_paper"
    cfg = compose_config([choice, "dataset.root=/corpora/TEDLIUM_release-3"])
    validate_config(cfg)
    assert (cfg.model.name, cfg.dataset.name, cfg.partitioner.name) == \
        ("wav2vec2", "tedlium3", "tedlium_paper")
    assert cfg.model.pretrained == "facebook/wav2vec2-large-lv60"
    assert (cfg.model.encoder_lr, cfg.model.head_lr) == (1e-4, 1e-3)
    assert (cfg.num_rounds, cfg.train.local_epochs, cfg.strategy.num_train_nodes) == (100, 20, 20)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.precision) == (1e-4, 0.0, "bf16")
    assert (cfg.partitioner.min_duration, cfg.partitioner.max_duration) == (0.1, 10.0)
    assert cfg.client_resources.num_gpus == 0.25
    model_cfg = cfg.model.copy()
    model_cfg.pretrained = str(encoders["wav2vec2"])
    model_cfg.local_files_only = True
    model = build_model(model_cfg, tokenizer)       # every paper key is a real SSLCTC option
    assert not model.encoder.config.mask_time_prob and model.output_norm
    assert any(n.startswith("encoder.feature_extractor.") for n in model.trainable_names())


# Federated runs through the real entry point, each with another freezing mode; HuBERT's encoder
# differs from wav2vec2's only in what the unit tests above cover, so it has no run of its own.
MAIN_CASES = {
    "wav2vec2": ["model.freeze_encoder_steps=1", "model.encoder_lr=1e-4", "model.head_lr=1e-3"],
    "wavlm": ["model.freeze_encoder=true"],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(MAIN_CASES))
def test_federated_run_through_main(kind, encoders, tiny_data, tmp_path):
    from conftest import TINY_CORPUS, read_history, run_module

    overrides = [f"model={kind}", f"model.pretrained={encoders[kind]}", "model.local_files_only=true",
                 *MAIN_CASES[kind]]
    run_dir = tmp_path / "run"
    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *overrides,
                      "num_rounds=2", "strategy.num_train_nodes=2", "client_resources.num_cpus=1",
                      "train.batch_seconds=30", "eval.batch_seconds=60", "eval.every=1",
                      f"hydra.run.dir={run_dir}")
    assert "[round 2/2]" in proc.stdout
    history = read_history(run_dir)
    assert [h["round"] for h in history] == [0, 1, 2]

    # what travelled is exactly this configuration's exchanged set, for each of the 2 clients
    tok = CharTokenizer.load(tiny_data / "synthetic" / "tokenizer.json")
    cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{kind}.yaml")
    cfg.merge_with_dotlist([o.removeprefix("model.") for o in overrides[1:]])
    local = build_model(cfg, tok)
    per_client = record_nbytes(to_record(local))
    for h in history[1:]:
        assert h["clients_replied"] == 2 and h["train_seconds"] > 0
        assert h["bytes_up"] == h["bytes_down"] == 2 * per_client
        assert math.isfinite(h["wer"]) and h["loss"] > 0
    assert (run_dir / "checkpoints").is_dir()
