"""Where a pretraining client's unit targets come from: its frames, and the k-means codebook.

Frames are computed from a client's own audio in the process that serves it and kept for the
life of that process (a Ray worker answers many k-means steps and rounds); the choice of frames
is seeded, so any worker computes the same ones for the same client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fedspeech.data.audio import AudioError
from fedspeech.data.batching import UtteranceLoader
from fedspeech.experiment_data import ExperimentData
from fedspeech.federation.kmeans import fit_local_kmeans
from fedspeech.models.pretraining.features import HiddenStateFeatures, MFCCFeatures, stack_frames
from fedspeech.models.pretraining.hubert import HubertPretrain

logger = logging.getLogger(__name__)

TARGETS = ("federated_kmeans", "local_kmeans")

_FRAMES: dict[tuple, np.ndarray] = {}
_LOCAL_CODEBOOKS: dict[tuple, np.ndarray] = {}
_FEATURES: dict[tuple, MFCCFeatures | HiddenStateFeatures] = {}


@dataclass(frozen=True)
class FeatureSpec:
    """Which frame features k-means clusters (HuBERT iteration 1: MFCC; 2: hidden states)."""

    iteration: int = 1
    features_from: str | None = None     # the export whose hidden states iteration 2 clusters
    feature_layer: int | None = None     # its layer (None = half its depth, the paper's 6 of 12)

    def build(self, model: HubertPretrain) -> MFCCFeatures | HiddenStateFeatures:
        key = (self, tuple(model.encoder.config.conv_kernel), tuple(model.encoder.config.conv_stride))
        if key not in _FEATURES:
            if self.iteration == 1:
                _FEATURES[key] = model.mfcc_features()
            else:
                from transformers import AutoConfig
                depth = int(AutoConfig.from_pretrained(self.features_from).num_hidden_layers)
                layer = self.feature_layer if self.feature_layer is not None else max(1, depth // 2)
                _FEATURES[key] = model.hidden_features(self.features_from, layer)
        return _FEATURES[key]


def utterance_frames(features: MFCCFeatures | HiddenStateFeatures, rows: pd.DataFrame,
                     data: ExperimentData, batch_seconds: float) -> list[torch.Tensor]:
    """Feature frames of every decodable utterance of `rows` (none for no rows)."""
    if rows.empty:
        return []
    loader = UtteranceLoader(rows, data.audio_cache, batch_seconds, shuffle=False)
    out: list[torch.Tensor] = []
    try:
        for batch in loader:
            out.extend(features(batch.audio, batch.audio_lens))
    except AudioError as err:
        logger.warning("no decodable audio: %s", err)
        return []
    return out


def client_frames(spec: FeatureSpec, model: HubertPretrain, rows: pd.DataFrame, data: ExperimentData,
                  *, client: int, max_frames: int | None, seed: int, batch_seconds: float) -> np.ndarray:
    """A client's (subsampled) feature frames, computed once per process."""
    key = (spec, client, len(rows), max_frames, seed, model.hop)
    if key not in _FRAMES:
        feats = utterance_frames(spec.build(model), rows, data, batch_seconds)
        _FRAMES[key] = stack_frames(feats, max_frames, seed + client)
    return _FRAMES[key]


def local_codebook(frames: np.ndarray, k: int, *, key: tuple, seed: int) -> np.ndarray:
    """`local_kmeans`: this frame set's own MiniBatchKMeans, fitted once per process."""
    if key not in _LOCAL_CODEBOOKS:
        _LOCAL_CODEBOOKS[key] = fit_local_kmeans(frames, k, seed)
    return _LOCAL_CODEBOOKS[key]
