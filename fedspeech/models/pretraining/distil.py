"""DistilHuBERT (Chang et al., ICASSP 2022) as `model=distilhubert` (task=distill).

The student is the teacher's architecture cut to `student_layers` transformer layers (the CNN
front-end included), initialised from the teacher's first layers. Two objectives:

* `layers` (the paper): one linear prediction head per target layer regresses the frozen
  teacher's hidden states of layers 4/8/12, scaled to the teacher's depth. Loss per head:
  L1 + λ·(−log σ(cos)), averaged over the valid frames.
* `units` (the federated_librispeech seed's variant): the student has a unit head of its own,
  started from the teacher's (`unit_head.pt` beside a pretraining export); the teacher scores
  its units on the unmasked audio, the student sees span-masked audio, and the loss is
  α·T²·KL on all valid frames + (1−α)·cross-entropy on the masked frames against the teacher's
  own most likely units (`unit_kd`): the hard targets are the teacher's pseudo-labels, so no
  k-means codebook is needed at distillation time.

Only the student and its heads are trainable, so only they travel; the teacher (and its unit
head) runs on each client's own audio, loaded in every worker from `model.teacher`.
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
from fedspeech.models.pretraining.masking import span_mask
from fedspeech.models.pretraining.unit_head import UnitHead
from fedspeech.models.pretraining.unit_kd import UnitKDTerms, unit_kd_terms

PAPER_TARGETS = (4, 8, 12)      # of a 12-layer teacher
OBJECTIVES = ("layers", "units")


def check_objective(objective: str, unit_kl_weight: float, kl_temperature: float, mask_prob: float,
                    mask_length: int) -> None:
    """The objective settings' ranges, checked by the model and by `validate_config` alike
    (ValueError "model.<key>: ...")."""
    checks = ((objective in OBJECTIVES, "objective",
               f"must be one of {', '.join(OBJECTIVES)}; got {objective!r}"),
              (0.0 <= unit_kl_weight <= 1.0, "unit_kl_weight", f"must be in [0, 1], got {unit_kl_weight}"),
              (kl_temperature > 0, "kl_temperature", f"must be > 0, got {kl_temperature}"),
              (0 < mask_prob <= 1, "mask_prob", f"must be in (0, 1], got {mask_prob}"),
              (mask_length >= 1, "mask_length", f"must be >= 1, got {mask_length}"))
    for ok, key, message in checks:
        if not ok:
            raise ValueError(f"model.{key}: {message}")


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
                 cos_weight: float = 1.0, objective: str = "layers", unit_kl_weight: float = 0.5,
                 kl_temperature: float = 1.0, mask_prob: float = 0.8, mask_length: int = 10,
                 init_from_teacher: bool = True, freeze_feature_encoder: bool = False,
                 normalize_audio: bool | None = None) -> None:
        super().__init__()
        from transformers import AutoFeatureExtractor

        check_objective(objective, unit_kl_weight, kl_temperature, mask_prob, mask_length)
        self.name = name
        self.objective = objective
        self.unit_kl_weight, self.kl_temperature = float(unit_kl_weight), float(kl_temperature)
        self.mask_prob, self.mask_length = float(mask_prob), int(mask_length)
        self.teacher_path = str(teacher)
        self.teacher = load_teacher(self.teacher_path)
        # the teacher's unit head, frozen (units only; a missing unit_head.pt names model.teacher)
        self.teacher_head = UnitHead.load(self.teacher_path).requires_grad_(False) \
            if objective == "units" else None
        width = int(self.teacher.config.hidden_size)
        if self.teacher_head is not None and self.teacher_head.final_proj.in_features != width:
            raise ValueError(f"model.teacher: its unit head projects "
                             f"{self.teacher_head.final_proj.in_features}-dim frames, its encoder "
                             f"gives {width}-dim ones")
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
        config.mask_time_prob = 0.0          # no masks of transformers' own; units pass theirs
        config.mask_feature_prob = 0.0
        if freeze_feature_encoder:
            self.student.feature_extractor.requires_grad_(False)
        self.heads = nn.ModuleList(nn.Linear(config.hidden_size, width) for _ in self.target_layers) \
            if objective == "layers" else nn.ModuleList()
        self.cos_weight = float(cos_weight)
        self.unit_head: UnitHead | None = None
        if self.teacher_head is not None:
            t = self.teacher_head
            self.unit_head = UnitHead(int(config.hidden_size), int(t.final_proj.out_features),
                                      t.num_units, t.temperature)
            if init_from_teacher:
                self.unit_head.load_state_dict(t.state_dict())
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

    def _unit_terms(self, batch: Batch, seed: int | None = None) -> UnitKDTerms:
        """Teacher units on the unmasked audio, the student's on span-masked audio (`seed` fixes
        the mask, for evaluation)."""
        if self.teacher_head is None or self.unit_head is None:
            raise RuntimeError(f"no unit heads: model.objective={self.objective}, not units")
        audio, samples, frames_of = self._inputs(batch)
        with torch.no_grad():
            taught = self.teacher_head(self.teacher(audio, attention_mask=samples).last_hidden_state)
        frames = taught.shape[1]
        valid = torch.arange(frames, device=audio.device)[None] < frames_of[:, None]
        mask = span_mask(valid, self.mask_prob, self.mask_length, seed=seed)
        hidden = self.student(audio, attention_mask=samples, mask_time_indices=mask).last_hidden_state
        return unit_kd_terms(self.unit_head(hidden), taught, mask, valid,
                             self.unit_kl_weight, self.kl_temperature)

    def loss(self, batch: Batch) -> torch.Tensor:
        if self.objective == "units":
            return self._unit_terms(batch).loss
        return self._terms(batch)[2]

    @torch.no_grad()
    def distill_scores(self, batch: Batch, seed: int | None = None) -> dict[str, float]:
        """Per-batch means for central evaluation; `seed` fixes the units objective's mask."""
        if self.objective == "units":
            terms = self._unit_terms(batch, seed=seed)
            return {"loss": float(terms.loss), "distill_kl": float(terms.kl),
                    "distill_ce": float(terms.ce), "unit_acc": terms.correct / max(terms.masked, 1)}
        l1, cos, loss = self._terms(batch)
        out = {"loss": float(loss), "distill_l1": float(l1.mean()), "distill_cos": float(cos.mean())}
        for layer, c in zip(self.target_layers, cos.tolist()):
            out[f"cos_layer{layer}"] = c
        return out

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        raise NotImplementedError("distilhubert distils a teacher, it does not transcribe: fine-tune "
                                  "its export with model=hubert model.pretrained=<run>/export")

    def parameter_ratio(self) -> dict[str, Any]:
        student = sum(p.numel() for p in self.student.parameters())
        teacher = sum(p.numel() for p in self.teacher.parameters())
        return {"student_params": student, "teacher_params": teacher,
                "param_ratio": student / max(teacher, 1)}

    def export(self, out: str | Path, info: dict[str, Any] | None = None) -> Path:
        """The student encoder (the prediction heads are not part of it); with the units
        objective its unit head goes beside it, so the student can be a teacher in turn."""
        out = save_export(self.student, out, normalize_audio=self.normalize_audio,
                          info={**(info or {}), "teacher": self.teacher_path,
                                "objective": self.objective, **self.parameter_ratio()})
        if self.unit_head is not None:
            self.unit_head.save(out)
        return out
