"""Unit targets of a batch: frame features -> id of the nearest k-means centroid."""

from __future__ import annotations

import numpy as np
import torch

from fedspeech.models.pretraining.features import HiddenStateFeatures, MFCCFeatures

#: target id of frames that are padding (cross-entropy's ignore_index)
PAD_UNIT = -100


class UnitLabeller:
    """Turns a batch's audio into (B, frames) unit ids with a fixed codebook."""

    def __init__(self, features: MFCCFeatures | HiddenStateFeatures, centroids: np.ndarray) -> None:
        if centroids.ndim != 2 or centroids.shape[1] != features.dim:
            raise ValueError(f"centroids of shape {centroids.shape} do not match {features.dim}-dim "
                             "frame features")
        self.features = features
        self.centroids = torch.as_tensor(np.asarray(centroids, dtype=np.float32))

    @property
    def num_units(self) -> int:
        return int(self.centroids.shape[0])

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, lens: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, frames) ids, PAD_UNIT past each utterance's own frames."""
        out = torch.full((len(lens), frames), PAD_UNIT, dtype=torch.long)
        c = self.centroids
        for i, feats in enumerate(self.features(audio, lens)):
            d2 = (feats * feats).sum(1, keepdim=True) - 2 * feats @ c.T + (c * c).sum(1)[None]
            ids = d2.argmin(1)
            out[i, : len(ids)] = ids[:frames]
        return out.to(audio.device)
