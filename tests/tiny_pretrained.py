"""Test fixture: small random SSL encoders saved like hub checkpoints, and the shapes of the
real large ones.

No weights are downloaded in tests: `save_tiny_encoder` writes a randomly initialised encoder of
the same architecture (config.json + weights + preprocessor_config.json) that `SSLCTC` loads
through the very same `from_pretrained` path as a hub checkpoint. `large_config` gives the
published large shapes so their parameter counts can be checked on the `meta` device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from fedspeech.seeding import torch_seeded

Kind = Literal["wav2vec2", "hubert", "wavlm"]
KINDS: tuple[Kind, ...] = ("wav2vec2", "hubert", "wavlm")

# Defaults of the model configs (conf/model/<kind>.yaml).
PRETRAINED: dict[str, str] = {"wav2vec2": "facebook/wav2vec2-large-lv60",
                              "hubert": "facebook/hubert-large-ll60k",
                              "wavlm": "microsoft/wavlm-large"}

# A 320x-downsampling conv stack like the real one (50 frames/s), but 4 narrow layers.
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             conv_dim=(16, 16, 16, 16), conv_kernel=(10, 4, 4, 4), conv_stride=(5, 4, 4, 4),
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=4)

# Large shapes shared by wav2vec2-large-lv60, hubert-large-ll60k and wavlm-large.
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
              intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
              conv_bias=True, feat_proj_dropout=0.1, mask_time_prob=0.05)


def _classes(kind: str) -> tuple[type, type]:
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model,
                              WavLMConfig, WavLMModel)
    table = {"wav2vec2": (Wav2Vec2Config, Wav2Vec2Model), "hubert": (HubertConfig, HubertModel),
             "wavlm": (WavLMConfig, WavLMModel)}
    if kind not in table:
        raise ValueError(f"unknown encoder kind {kind!r}; expected one of {KINDS}")
    return table[kind]


def tiny_config(kind: Kind, layer_norm: bool = True, **overrides: object):
    """A ~60 k-parameter config; `layer_norm=True` mirrors the large checkpoints' conventions."""
    config_cls, _ = _classes(kind)
    norm = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True) \
        if layer_norm else dict(feat_extract_norm="group", do_stable_layer_norm=False)
    return config_cls(**{**_TINY, **norm, **overrides})


def large_config(kind: Kind):
    """The architecture of the default pretrained checkpoint of `kind` (no weights)."""
    config_cls, _ = _classes(kind)
    return config_cls(**_LARGE)


def save_tiny_encoder(kind: Kind, out_dir: str | Path, *, layer_norm: bool = True,
                      seed: int = 0, **overrides: object) -> Path:
    """Save a random tiny encoder of `kind` to `out_dir` with `save_pretrained`; returns the dir.

    The feature-extractor file follows the large checkpoints: layer-norm encoders normalise
    inputs and take an attention mask, group-norm (base-style) encoders do neither.
    """
    from transformers import Wav2Vec2FeatureExtractor

    _, model_cls = _classes(kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch_seeded(seed):
        model = model_cls(tiny_config(kind, layer_norm, **overrides))
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                             do_normalize=layer_norm,
                             return_attention_mask=layer_norm).save_pretrained(out)
    return out


def meta_encoder(config) -> torch.nn.Module:
    """Build the encoder of `config` on the meta device: shapes and counts, no memory."""
    from transformers import AutoModel
    with torch.device("meta"):
        return AutoModel.from_config(config)
