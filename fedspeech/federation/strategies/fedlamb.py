"""FedLAMB: server LAMB (Adam moments + per-tensor trust ratio), the pfl4asr server optimiser."""

from __future__ import annotations

from typing import Any

from fedspeech.federation.server_updates import lamb_step
from fedspeech.federation.strategies.fedopt import FedOpt


class FedLAMB(FedOpt):
    """Server LAMB (`server_updates.lamb_step`); `tau` is LAMB's epsilon."""

    rule = staticmethod(lamb_step)

    def __init__(self, *, beta_1: float = 0.9, beta_2: float = 0.999, tau: float = 1e-6,
                 weight_decay: float = 0.0, **kwargs: Any) -> None:
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(**kwargs)
        self.beta_1, self.beta_2, self.tau = float(beta_1), float(beta_2), float(tau)
        self.weight_decay = float(weight_decay)

    def hyper(self) -> dict[str, Any]:
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau,
                "weight_decay": self.weight_decay}
