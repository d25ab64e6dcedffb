"""Frame features that k-means turns into HuBERT's unit targets, at the model's own frame rate.

Iteration 1 clusters 39-dim MFCCs (13 coefficients + deltas + delta-deltas), as the HuBERT
paper and fairseq's `simple_kmeans` recipe do; iteration 2 clusters the hidden states of one
layer of a previous export. Either way a feature sequence has exactly as many frames as the
model's convolutional front-end gives for the same audio (`frame_count`), so every frame has a
target and no target points at padding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedspeech.data.audio import SAMPLE_RATE

#: samples -> frames of a waveform encoder (transformers' `_get_feat_extract_output_lengths`)
FrameCount = Callable[[torch.Tensor], torch.Tensor]

MFCC_DIM = 39


def conv_frame_count(kernels: tuple[int, ...], strides: tuple[int, ...]) -> FrameCount:
    """Frames a conv stack without padding gives for each length, as transformers computes it."""
    def count(lengths: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(lengths, dtype=torch.long)
        for k, s in zip(kernels, strides):
            out = torch.div(out - k, s, rounding_mode="floor") + 1
        return out.clamp(min=0)
    return count


def fit_frames(features: torch.Tensor, frames: int) -> torch.Tensor:
    """(T, D) -> (frames, D): cut the tail, or repeat the last frame (at most a frame or two
    differ between an STFT and a conv stack with the same hop)."""
    if features.shape[0] >= frames:
        return features[:frames]
    if features.shape[0] == 0:
        raise ValueError("no feature frames to stretch")
    pad = features[-1:].expand(frames - features.shape[0], -1)
    return torch.cat([features, pad])


class MFCCFeatures:
    """13 MFCCs + Δ + ΔΔ (39 dims) with the model's hop, one sequence per utterance."""

    dim = MFCC_DIM

    def __init__(self, frame_count: FrameCount, hop: int, win: int = 400, n_mels: int = 23) -> None:
        import torchaudio

        self.frame_count = frame_count
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=13, log_mels=True,
            melkwargs={"n_fft": win, "win_length": win, "hop_length": hop, "n_mels": n_mels,
                       "center": False})
        self.win = win

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, lens: torch.Tensor) -> list[torch.Tensor]:
        """(B, T) padded audio -> one (frames_i, 39) float32 tensor per utterance."""
        from torchaudio.functional import compute_deltas

        out = []
        frames = self.frame_count(lens.cpu())
        for i, n in enumerate(lens.cpu().tolist()):
            wave = audio[i, :n].detach().float().cpu()
            if int(frames[i]) < 1 or n < self.win:
                raise ValueError(f"an utterance of {n} samples is shorter than one frame "
                                 f"({self.win} samples)")
            coeffs = self.mfcc(wave)                          # (13, T)
            delta = compute_deltas(coeffs)
            feats = torch.cat([coeffs, delta, compute_deltas(delta)]).T.contiguous()
            out.append(fit_frames(feats, int(frames[i])))
        return out


class HiddenStateFeatures:
    """Hidden states of layer `layer` of a saved encoder (HuBERT iteration 2 targets)."""

    def __init__(self, export: str | Path, layer: int, frame_count: FrameCount) -> None:
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(str(export), dtype=torch.float32).eval()
        depth = int(self.encoder.config.num_hidden_layers)
        if not 1 <= layer <= depth:
            raise ValueError(f"task.feature_layer={layer} is outside 1..{depth}, the layers of {export}")
        self.layer = layer
        self.dim = int(self.encoder.config.hidden_size)
        self.frame_count = frame_count

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, lens: torch.Tensor) -> list[torch.Tensor]:
        out = self.encoder(audio.float().cpu(), output_hidden_states=True)
        hidden = out.hidden_states[self.layer]
        frames = self.frame_count(lens.cpu())
        return [fit_frames(hidden[i], int(frames[i])).contiguous() for i in range(len(lens))]


def stack_frames(features: list[torch.Tensor], max_frames: int | None, seed: int) -> np.ndarray:
    """All frames of some utterances as one float64 array, subsampled to `max_frames` rows
    (a seeded choice, so every process picks the same frames)."""
    frames = torch.cat(features).double().numpy() if features else np.zeros((0, 0))
    if max_frames is not None and len(frames) > max_frames:
        keep = np.sort(np.random.default_rng(seed).choice(len(frames), max_frames, replace=False))
        frames = frames[keep]
    return frames
