"""What the training loop, the clients and the server need from any speech model.

Every model (tiny CTC, wav2vec2/HuBERT/WavLM CTC, SpeechLLM) is an `nn.Module` implementing
`SpeechModel`; its trainable parameters (``requires_grad``) are exactly what travels in a round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fedspeech.data.batching import Batch


@dataclass
class Prediction:
    """One decoded utterance: the transcript, and attributes for models that predict them."""

    text: str
    attributes: dict[str, str] = field(default_factory=dict)
    parsed: bool = True      # False when a structured answer could not be parsed


class SpeechModel(nn.Module):
    """Base class: subclasses implement `loss` and `predict`; the rest has sensible defaults."""

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean training loss of a batch (audio already on the model's device)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        """Decode a batch."""
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimiser parameter groups; override for separate encoder/head learning rates."""
        return [{"params": [p for p in self.parameters() if p.requires_grad],
                 "lr": lr, "weight_decay": weight_decay}]

    def on_step(self, step: int) -> None:
        """Called before each optimiser step (e.g. unfreeze an encoder after K steps)."""

    def trainable_names(self) -> list[str]:
        """Names of tensors exchanged with the server: parameters that can be trained.

        Parameters frozen only for the first K steps still count: they become trainable later.
        """
        return [n for n, p in self.named_parameters() if p.requires_grad or n in self.delayed_trainable()]

    def delayed_trainable(self) -> set[str]:
        """Parameters frozen now but trained later in a round (override with freeze schedules)."""
        return set()
