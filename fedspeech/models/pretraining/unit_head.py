"""HuBERT's unit head: a projection and one embedding per unit, scored by cosine / temperature.

Masked-unit pretraining trains it and writes it beside its export as `unit_head.pt`; unit
distillation (`model=distilhubert model.objective=units`) reads it back to score the teacher's
units and to start the student's own head. One function computes the logits for both, so a
teacher is scored exactly as it was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

UNIT_HEAD_FILE = "unit_head.pt"

#: HubertPretrain's default, for exports written before the temperature was saved with the head
DEFAULT_LOGIT_TEMPERATURE = 0.1


def unit_logits(hidden: torch.Tensor, final_proj: nn.Linear, label_embeddings: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """(…, K) cosine similarity of the projected frames to each unit embedding, / temperature."""
    proj = F.normalize(final_proj(hidden), dim=-1)
    return proj @ F.normalize(label_embeddings, dim=-1).T / temperature


def save_unit_head(out: str | Path, final_proj: nn.Linear, label_embeddings: torch.Tensor,
                   temperature: float) -> Path:
    """`<out>/unit_head.pt`, with the temperature, so a reader scores units as the writer did."""
    path = Path(out) / UNIT_HEAD_FILE
    torch.save({"final_proj": final_proj.state_dict(),
                "label_embeddings": label_embeddings.detach().cpu(),
                "logit_temperature": float(temperature)}, path)
    return path


def unit_head_problem(export: str | Path) -> str | None:
    """Why `export` has no unit head to read (None when it has one)."""
    path = Path(export) / UNIT_HEAD_FILE
    if not path.is_file():
        return (f"{path} is missing: model.objective=units needs the unit head that task=pretrain "
                "writes beside its export")
    return None


class UnitHead(nn.Module):
    """A unit head as a module: `final_proj` + `label_embeddings`, the layout of `unit_head.pt`."""

    def __init__(self, hidden_size: int, proj_dim: int, num_units: int,
                 temperature: float = DEFAULT_LOGIT_TEMPERATURE) -> None:
        super().__init__()
        self.final_proj = nn.Linear(hidden_size, proj_dim)
        self.label_embeddings = nn.Parameter(torch.empty(num_units, proj_dim).uniform_())
        self.temperature = float(temperature)

    @classmethod
    def load(cls, export: str | Path) -> "UnitHead":
        """The head saved beside `export` (ValueError naming `model.teacher` when there is none)."""
        problem = unit_head_problem(export)
        if problem is not None:
            raise ValueError(f"model.teacher: {problem}")
        saved = torch.load(Path(export) / UNIT_HEAD_FILE, map_location="cpu", weights_only=True)
        weight = saved["final_proj"]["weight"]
        head = cls(int(weight.shape[1]), int(weight.shape[0]), int(saved["label_embeddings"].shape[0]),
                   float(saved.get("logit_temperature", DEFAULT_LOGIT_TEMPERATURE)))
        head.final_proj.load_state_dict(saved["final_proj"])
        with torch.no_grad():
            head.label_embeddings.copy_(saved["label_embeddings"])
        return head

    @property
    def num_units(self) -> int:
        return int(self.label_embeddings.shape[0])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return unit_logits(hidden, self.final_proj, self.label_embeddings, self.temperature)

    def save(self, out: str | Path) -> Path:
        return save_unit_head(out, self.final_proj, self.label_embeddings, self.temperature)
