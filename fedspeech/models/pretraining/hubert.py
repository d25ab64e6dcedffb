"""HuBERT masked-unit prediction (`model=hubert_pretrain`) on transformers' `HubertModel`.

Frames of the CNN front-end are replaced by the model's `masked_spec_embed` in spans
(`masking.span_mask`, transformers' mask-index helper, passed as `mask_time_indices`); the
transformer output goes through a projection and is scored against one embedding per unit by
cosine similarity / temperature; cross-entropy on the masked frames (plus, optionally, a
weighted term on the unmasked ones) is the loss, as in the HuBERT paper and fairseq. Targets
come from a `UnitLabeller` the task sets (k-means over MFCCs or hidden states), computed from
each batch's own audio, so they have exactly the model's frame count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedspeech.data.batching import Batch
from fedspeech.data.text import CharTokenizer
from fedspeech.models.base import Prediction, SpeechModel
from fedspeech.models.pretraining.export import save_export
from fedspeech.models.pretraining.features import (FrameCount, HiddenStateFeatures, MFCCFeatures,
                                                   conv_frame_count)
from fedspeech.models.pretraining.masking import span_mask
from fedspeech.models.pretraining.unit_head import save_unit_head, unit_logits
from fedspeech.models.pretraining.units import PAD_UNIT, UnitLabeller

#: HubertConfig keys a model config may set directly (the rest through `config_overrides`)
ENCODER_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "conv_dim", "conv_kernel", "conv_stride", "num_conv_pos_embeddings",
                "num_conv_pos_embedding_groups", "hidden_dropout", "attention_dropout",
                "activation_dropout", "feat_proj_dropout", "layerdrop")


@dataclass
class UnitScores:
    """Sums over a batch's frames, for central evaluation (sums add across batches)."""

    loss_sum: float
    masked: int
    correct: int
    predicted: torch.Tensor     # (K,) histogram of the predicted units on masked frames
    targets: torch.Tensor       # (K,) histogram of the target units on all valid frames


def normalise_audio(audio: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over each utterance's own samples; padding stays 0."""
    valid = torch.arange(audio.shape[1], device=audio.device)[None] < lens[:, None]
    n = lens.clamp(min=1)[:, None].to(audio.dtype)
    mean = (audio * valid).sum(1, keepdim=True) / n
    var = (((audio - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return ((audio - mean) / torch.sqrt(var + 1e-7)) * valid


class HubertPretrain(SpeechModel):
    """A HubertModel encoder + projection + unit embeddings, trained to predict masked units."""

    def __init__(self, tokenizer: CharTokenizer | None = None, name: str = "hubert_pretrain",
                 init_from: str | None = None, num_clusters: int = 100, proj_dim: int = 256,
                 logit_temperature: float = 0.1, mask_prob: float = 0.8, mask_length: int = 10,
                 unmasked_weight: float = 0.0, normalize_audio: bool = False,
                 feat_extract_norm: str = "group", config_overrides: dict[str, Any] | None = None,
                 **encoder: Any) -> None:
        super().__init__()
        from transformers import AutoConfig, HubertConfig, HubertModel

        unknown = set(encoder) - set(ENCODER_KEYS)
        if unknown:
            raise TypeError(f"unknown hubert_pretrain options: {sorted(unknown)}")
        if not 0 < mask_prob <= 1:
            raise ValueError(f"model.mask_prob must be in (0, 1], got {mask_prob}")
        self.name = name
        self.temperature = float(logit_temperature)
        self.mask_prob, self.mask_length = float(mask_prob), int(mask_length)
        self.unmasked_weight = float(unmasked_weight)
        self.normalize_audio = bool(normalize_audio)
        settings = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                    for k, v in encoder.items() if v is not None}
        settings.update(config_overrides or {})
        # mask_time_prob > 0 makes HubertModel create `masked_spec_embed`; the spans themselves
        # are ours (`mask_time_indices`), feature masking is off
        settings.update(mask_time_prob=self.mask_prob, mask_time_length=self.mask_length,
                        mask_feature_prob=0.0)
        if init_from:
            config = AutoConfig.from_pretrained(init_from)
            for key, value in settings.items():
                setattr(config, key, value)
            self.encoder = HubertModel.from_pretrained(init_from, config=config, dtype=torch.float32)
        else:
            config = HubertConfig(feat_extract_norm=feat_extract_norm,
                                  do_stable_layer_norm=feat_extract_norm == "layer",
                                  conv_bias=feat_extract_norm == "layer", **settings)
            self.encoder = HubertModel(config)
        self.final_proj = nn.Linear(config.hidden_size, proj_dim)
        self.label_embeddings = nn.Parameter(torch.empty(num_clusters, proj_dim).uniform_())
        self.num_clusters = int(num_clusters)
        self.labeller: UnitLabeller | None = None

    # ---- frames and targets --------------------------------------------------------------
    @property
    def frame_count(self) -> FrameCount:
        c = self.encoder.config
        return conv_frame_count(tuple(c.conv_kernel), tuple(c.conv_stride))

    @property
    def hop(self) -> int:
        return math.prod(self.encoder.config.conv_stride)

    def mfcc_features(self) -> MFCCFeatures:
        """The iteration-1 features at this model's frame rate."""
        return MFCCFeatures(self.frame_count, hop=self.hop)

    def hidden_features(self, export: str | Path, layer: int) -> HiddenStateFeatures:
        return HiddenStateFeatures(export, layer, self.frame_count)

    def set_labeller(self, labeller: UnitLabeller) -> None:
        if labeller.num_units != self.num_clusters:
            raise ValueError(f"{labeller.num_units} k-means clusters but model.num_clusters="
                             f"{self.num_clusters}")
        self.labeller = labeller

    # ---- forward -------------------------------------------------------------------------
    def _scores(self, batch: Batch, seed: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit logits (B, F, K), targets (B, F), mask (B, F) and valid frames (B, F)."""
        if self.labeller is None:
            raise RuntimeError("no unit targets: the pretrain task sets a labeller (k-means) first")
        lens = batch.audio_lens.to(batch.audio.device)
        frames_of = self.frame_count(lens.cpu()).to(lens.device)
        if int(frames_of.min()) < 1:
            short = batch.ids[int(frames_of.argmin())]
            raise ValueError(f"utterance {short} is shorter than one encoder frame")
        audio = batch.audio.float()
        if self.normalize_audio:
            audio = normalise_audio(audio, lens)
        frames = int(self.frame_count(torch.tensor([audio.shape[1]]))[0])
        valid = torch.arange(frames, device=audio.device)[None] < frames_of[:, None]
        targets = self.labeller(batch.audio, lens, frames)
        mask = span_mask(valid, self.mask_prob, self.mask_length, seed=seed)
        sample_mask = (torch.arange(audio.shape[1], device=audio.device)[None] < lens[:, None]).long()
        hidden = self.encoder(audio, attention_mask=sample_mask,
                              mask_time_indices=mask).last_hidden_state
        logits = unit_logits(hidden, self.final_proj, self.label_embeddings, self.temperature)
        return logits, targets, mask, valid

    def loss(self, batch: Batch) -> torch.Tensor:
        logits, targets, mask, valid = self._scores(batch)
        masked = mask & (targets != PAD_UNIT)
        loss = F.cross_entropy(logits[masked], targets[masked]) if masked.any() \
            else logits.sum() * 0.0
        unmasked = valid & ~mask & (targets != PAD_UNIT)
        if self.unmasked_weight > 0 and unmasked.any():
            loss = loss + self.unmasked_weight * F.cross_entropy(logits[unmasked], targets[unmasked])
        return loss

    @torch.no_grad()
    def unit_scores(self, batch: Batch, seed: int) -> UnitScores:
        """Masked-unit loss/accuracy sums with a fixed mask (`seed`), and unit histograms."""
        logits, targets, mask, valid = self._scores(batch, seed=seed)
        masked = mask & (targets != PAD_UNIT)
        k = self.num_clusters
        if not masked.any():
            zero = torch.zeros(k)
            return UnitScores(0.0, 0, 0, zero, torch.bincount(targets[valid].cpu(), minlength=k).float())
        pred = logits[masked].argmax(-1)
        return UnitScores(
            loss_sum=float(F.cross_entropy(logits[masked], targets[masked], reduction="sum")),
            masked=int(masked.sum()), correct=int((pred == targets[masked]).sum()),
            predicted=torch.bincount(pred.cpu(), minlength=k).float(),
            targets=torch.bincount(targets[valid & (targets != PAD_UNIT)].cpu(), minlength=k).float())

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        raise NotImplementedError("hubert_pretrain predicts units, not transcripts: fine-tune its "
                                  "export with model=hubert model.pretrained=<run>/export")

    # ---- export --------------------------------------------------------------------------
    def export(self, out: str | Path, info: dict[str, Any] | None = None) -> Path:
        """The encoder for CTC fine-tuning / AutoModel; the unit head goes beside it
        (`unit_head.pt`), for unit distillation with this export as the teacher."""
        out = save_export(self.encoder, out, normalize_audio=self.normalize_audio, info=info)
        save_unit_head(out, self.final_proj, self.label_embeddings, self.temperature)
        return out
