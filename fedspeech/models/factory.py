"""Build the configured model, once per process, and reuse it.

A Ray worker trains many clients over many rounds; building a 317M-parameter model per client call
would dominate the round time. `cached_model` keeps one instance per (model config, tokenizer) and
the caller loads each client's received weights into it.
"""

from __future__ import annotations

import contextlib
import json

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedspeech.data.text import CharTokenizer
from fedspeech.models.base import SpeechModel
from fedspeech.seeding import torch_seeded

_CACHE: dict[str, SpeechModel] = {}
BUILDS = {"count": 0}   # how many models this process built (benchmarks and tests read it)


def build_model(model_cfg: DictConfig, tokenizer: CharTokenizer, seed: int | None = None) -> SpeechModel:
    """The configured model; with `seed`, initialised from that seed without touching the
    caller's random state (`torch_seeded`)."""
    with torch_seeded(seed) if seed is not None else contextlib.nullcontext():
        model = instantiate(model_cfg, tokenizer=tokenizer, _convert_="all")
    if not isinstance(model, SpeechModel):
        raise TypeError(f"{model_cfg._target_} built {type(model).__name__}, not a SpeechModel")
    BUILDS["count"] += 1
    return model


def cached_model(model_cfg: DictConfig, tokenizer: CharTokenizer, seed: int) -> SpeechModel:
    key = json.dumps([OmegaConf.to_container(model_cfg, resolve=True), tokenizer.symbols, seed],
                     sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE.clear()      # one model per worker: a new configuration replaces the old one
        _CACHE[key] = build_model(model_cfg, tokenizer, seed=seed)
    return _CACHE[key]
