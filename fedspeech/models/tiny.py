"""A small from-scratch CTC recogniser that trains on a CPU.

log-mel (80) -> per-utterance normalisation -> 2 strided convs (time x4) -> BiGRU -> characters.
A BiGRU learns far faster per CPU-second than a transformer of the same size at this scale, which
is what makes a federated run on 2 cores finish in minutes.
"""

from __future__ import annotations

import torch
import torchaudio.transforms as T
from torch import nn

from fedspeech.data.audio import SAMPLE_RATE
from fedspeech.data.batching import Batch
from fedspeech.data.text import CharTokenizer
from fedspeech.models.ctc import CTCModel

HOP = 160


class LogMel(nn.Module):
    """80-dim log-mel at 100 frames/s, normalised per utterance over its valid frames."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.mel = T.MelSpectrogram(SAMPLE_RATE, n_fft=400, hop_length=HOP, n_mels=n_mels)

    def forward(self, audio: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.log(self.mel(audio) + 1e-6).transpose(1, 2)        # (B, T, F)
        frames = lens // HOP + 1
        mask = (torch.arange(feats.shape[1], device=feats.device)[None] < frames[:, None]).unsqueeze(-1)
        n = frames.clamp(min=1)[:, None, None]
        mean = (feats * mask).sum(1, keepdim=True) / n
        var = (((feats - mean) * mask) ** 2).sum(1, keepdim=True) / n
        return ((feats - mean) / (var.sqrt() + 1e-5)) * mask, frames


class SpecAugment(nn.Module):
    """Frequency and time masking during training only."""

    def __init__(self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2,
                 time_width: int = 40) -> None:
        super().__init__()
        self.masks = nn.ModuleList(
            [T.FrequencyMasking(freq_width) for _ in range(freq_masks)]
            + [T.TimeMasking(time_width) for _ in range(time_masks)])

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return feats
        x = feats.transpose(1, 2)                                        # (B, F, T)
        for m in self.masks:
            x = m(x)
        return x.transpose(1, 2)


class TinyCTC(CTCModel):
    """Conv x4 subsampling + bidirectional GRU + linear CTC head over characters."""

    def __init__(self, tokenizer: CharTokenizer, name: str = "tiny", n_mels: int = 80,
                 hidden_size: int = 192, num_layers: int = 3, conv_channels: int = 32,
                 dropout: float = 0.1, spec_augment: dict | None = None) -> None:
        super().__init__()
        self.name = name
        self.tokenizer = tokenizer
        self.features = LogMel(n_mels)
        self.augment = SpecAugment(**(spec_augment or {}))
        self.conv = nn.Sequential(
            nn.Conv2d(1, conv_channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(conv_channels, conv_channels, 3, stride=2), nn.ReLU())
        freq = ((n_mels - 3) // 2 + 1 - 3) // 2 + 1
        self.proj = nn.Linear(conv_channels * freq, hidden_size)
        self.rnn = nn.GRU(hidden_size, hidden_size, num_layers=num_layers, batch_first=True,
                          bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden_size, tokenizer.vocab_size)

    @staticmethod
    def _subsampled(frames: torch.Tensor) -> torch.Tensor:
        return ((frames - 3) // 2 + 1 - 3) // 2 + 1

    def logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        feats, frames = self.features(batch.audio, batch.audio_lens)
        feats = self.augment(feats)
        x = self.conv(feats.unsqueeze(1))                                 # (B, C, T', F')
        x = self.proj(x.permute(0, 2, 1, 3).flatten(2))
        lens = self._subsampled(frames).clamp(min=1, max=x.shape[1])
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(x), lens.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(self.dropout(out)), lens
