"""DistilHuBERT (Chang et al., ICASSP 2022) as `model=distilhubert` (task=distill).

The student is the teacher's architecture cut to `student_layers` transformer layers (the CNN
front-end included), initialised from the teacher's first layers; one linear prediction head
per target layer regresses the frozen teacher's hidden states of layers 4/8/12, scaled to the
teacher's depth. Loss per head: L1 + λ·(−log σ(cos)), averaged over the valid frames. Only the
student and its heads are trainable, so only they travel; the teacher runs on each client's own
audio, loaded in every worker from `model.teacher`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedspeech.data.batching import Batch
from fedspeech.data.text import CharTokenizer
from fedspeech.models.base import Prediction, SpeechModel
from fedspeech.models.pretraining.export import export_problem, save_export
from fedspeech.models.pretraining.hubert import normalise_audio

PAPER_TARGETS = (4, 8, 12)      # of a 12-layer teacher


def scaled_target_layers(depth: int) -> list[int]:
    """Layers 4/8/12 of a 12-layer teacher, scaled to `depth` layers (distinct, >= 1)."""
    return sorted({max(1, round(depth * t / 12)) for t in PAPER_TARGETS})


def load_teacher(path: str) -> nn.Module:
    """The frozen teacher encoder; a path that is not a HuBERT/wav2vec2 export is a one-line
    error naming `model.teacher`."""
    from transformers import AutoModel

    problem = export_problem(path)
    if problem is not None:
        raise ValueError(f"model.teacher: {problem}")
    teacher = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    teacher.requires_grad_(False)
    return teacher


class DistilHubert(SpeechModel):
    """Student encoder + prediction heads, distilled from a frozen teacher."""

    def __init__(self, tokenizer: CharTokenizer | None = None, name: str = "distilhubert",
                 teacher: str = "", student_layers: int = 2, target_layers: list[int] | None = None,
                 cos_weight: float = 1.0, init_from_teacher: bool = True,
                 freeze_feature_encoder: bool = False, normalize_audio: bool | None = None) -> None:
        super().__init__()
        from transformers import AutoFeatureExtractor

        self.name = name
        self.teacher_path = str(teacher)
        self.teacher = load_teacher(self.teacher_path)
        depth = int(self.teacher.config.num_hidden_layers)
        self.target_layers = list(target_layers) if target_layers else scaled_target_layers(depth)
        bad = [t for t in self.target_layers if not 1 <= t <= depth]
        if bad:
            raise ValueError(f"model.target_layers {bad} are outside the teacher's 1..{depth}")
        if not 1 <= student_layers <= depth:
            raise ValueError(f"model.student_layers must be in 1..{depth} (the teacher's depth)")
        config = copy.deepcopy(self.teacher.config)
        config.num_hidden_layers = int(student_layers)
        config.layerdrop = 0.0
        config.mask_time_prob = max(config.mask_time_prob, 0.05)   # keeps `masked_spec_embed`
        self.student = type(self.teacher)(config)
        if init_from_teacher:
            self.student.load_state_dict(self.teacher.state_dict(), strict=False)
        config.mask_time_prob = 0.0                                # no masking while distilling
        config.mask_feature_prob = 0.0
        if freeze_feature_encoder:
            self.student.feature_extractor.requires_grad_(False)
        width = int(self.teacher.config.hidden_size)
        self.heads = nn.ModuleList(nn.Linear(config.hidden_size, width) for _ in self.target_layers)
        self.cos_weight = float(cos_weight)
        if normalize_audio is None:
            try:
                normalize_audio = bool(AutoFeatureExtractor.from_pretrained(teacher).do_normalize)
            except (OSError, ValueError):
                normalize_audio = False
        self.normalize_audio = bool(normalize_audio)

    def train(self, mode: bool = True) -> "DistilHubert":
        super().train(mode)
        self.teacher.eval()          # frozen: no dropout, whatever the student does
        return self

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lens = batch.audio_lens.to(batch.audio.device)
        audio = batch.audio.float()
        if self.normalize_audio:
            audio = normalise_audio(audio, lens)
        samples = (torch.arange(audio.shape[1], device=audio.device)[None] < lens[:, None]).long()
        frames_of = self.student._get_feat_extract_output_lengths(lens).long()
        if int(frames_of.min()) < 1:
            raise ValueError(f"utterance {batch.ids[int(frames_of.argmin())]} is shorter than one frame")
        return audio, samples, frames_of

    def _terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per head: L1 and cosine similarity, averaged over valid frames; and the loss."""
        audio, samples, frames_of = self._inputs(batch)
        with torch.no_grad():
            taught = self.teacher(audio, attention_mask=samples, output_hidden_states=True).hidden_states
        hidden = self.student(audio, attention_mask=samples).last_hidden_state
        valid = (torch.arange(hidden.shape[1], device=hidden.device)[None] < frames_of[:, None]).float()
        n = valid.sum().clamp(min=1)
        l1s, coss, logsigs = [], [], []
        for head, layer in zip(self.heads, self.target_layers):
            pred, target = head(hidden), taught[layer]
            cos = F.cosine_similarity(pred, target, dim=-1)
            l1s.append(((pred - target).abs().mean(-1) * valid).sum() / n)
            coss.append((cos * valid).sum() / n)
            logsigs.append((-F.logsigmoid(cos) * valid).sum() / n)     # −log σ(cos) per frame
        l1, cos = torch.stack(l1s), torch.stack(coss)
        return l1, cos, (l1 + self.cos_weight * torch.stack(logsigs)).sum()

    def loss(self, batch: Batch) -> torch.Tensor:
        return self._terms(batch)[2]

    @torch.no_grad()
    def distill_scores(self, batch: Batch) -> dict[str, float]:
        l1, cos, loss = self._terms(batch)
        out = {"loss": float(loss), "distill_l1": float(l1.mean()), "distill_cos": float(cos.mean())}
        for layer, c in zip(self.target_layers, cos.tolist()):
            out[f"cos_layer{layer}"] = c
        return out

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        raise NotImplementedError("distilhubert regresses teacher layers, not transcripts: fine-tune "
                                  "its export with model=hubert model.pretrained=<run>/export")

    def parameter_ratio(self) -> dict[str, Any]:
        student = sum(p.numel() for p in self.student.parameters())
        teacher = sum(p.numel() for p in self.teacher.parameters())
        return {"student_params": student, "teacher_params": teacher,
                "param_ratio": student / max(teacher, 1)}

    def export(self, out: str | Path, info: dict[str, Any] | None = None) -> Path:
        """The student encoder (the prediction heads are not part of it)."""
        return save_export(self.student, out, normalize_audio=self.normalize_audio,
                           info={**(info or {}), "teacher": self.teacher_path, **self.parameter_ratio()})
