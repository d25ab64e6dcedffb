"""Server optimisers (Reddi et al., 2021; Hsu et al., 2019): a step along the round's mean delta.

One class drives every rule of `server_updates` (they share one signature); the subclasses only
name their rule and hyper-parameters, as Flower's FedAdam/FedYogi/FedAdagrad/FedAvgM do. The
optimiser slots (moments) and the step count are checkpointed as `opt/<slot>/<tensor>` and
`opt/step`; a round that releases no update (too few usable replies) does not step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedspeech.federation.aggregation import NDArrays
from fedspeech.federation.schedules import Schedule, as_schedule
from fedspeech.federation.server_updates import (Slots, UpdateRule, adagrad_step, adam_step,
                                                 apply_rule, momentum_step, yogi_step)
from fedspeech.federation.strategies.base import (SpeechStrategy, StateDict, moments_from_state,
                                                  moments_state)


class FedOpt(SpeechStrategy):
    """A server optimiser on the round delta `mean - current`, with a server-lr schedule `eta`."""

    rule: UpdateRule

    def __init__(self, *, eta: float | Schedule = 1e-2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eta = as_schedule(eta)
        self.slots: Slots | None = None
        self.steps = 0

    def hyper(self) -> dict[str, Any]:
        """Keyword arguments of `rule` besides eta and step."""
        return {}

    def apply_delta(self, server_round: int, delta: NDArrays) -> NDArrays:
        current = self.require_current_arrays()
        self.steps += 1
        new, self.slots = apply_rule(type(self).rule, current, delta, self.slots,
                                     eta=float(self.eta(server_round)), step=self.steps,
                                     hyper=self.hyper())
        return new

    def state_dict(self) -> StateDict:
        state = super().state_dict()
        state["opt/step"] = int(self.steps)
        state.update(moments_state("opt", self.slots or {}))
        return state

    def _load_own_state(self, rest: dict[str, Any]) -> None:
        if "opt/step" not in rest:
            raise KeyError("optimiser state lacks 'opt/step'")
        self.steps = int(np.asarray(rest.pop("opt/step")))
        self.slots = moments_from_state("opt", rest) or None


class SpeechFedAvgM(FedOpt):
    """FedAvgM: server SGD with momentum (Hsu et al., 2019), as Flower's FedAvgM."""

    rule = staticmethod(momentum_step)

    def __init__(self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.0,
                 **kwargs: Any) -> None:
        if not 0.0 <= server_momentum < 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum}")
        super().__init__(eta=server_learning_rate, **kwargs)
        self.server_momentum = float(server_momentum)

    def hyper(self) -> dict[str, Any]:
        return {"server_momentum": self.server_momentum}


class _AdaptiveOpt(FedOpt):
    """FedAdam/FedYogi share their hyper-parameters; only the second-moment rule differs."""

    def __init__(self, *, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.beta_1, self.beta_2, self.tau = float(beta_1), float(beta_2), float(tau)

    def hyper(self) -> dict[str, Any]:
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau}


class SpeechFedAdam(_AdaptiveOpt):
    """FedAdam: Adam on the round delta (`server_updates.adam_step`)."""

    rule = staticmethod(adam_step)


class SpeechFedYogi(_AdaptiveOpt):
    """FedYogi (`server_updates.yogi_step`)."""

    rule = staticmethod(yogi_step)


class SpeechFedAdagrad(FedOpt):
    """FedAdagrad (`server_updates.adagrad_step`)."""

    rule = staticmethod(adagrad_step)

    def __init__(self, *, tau: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tau = float(tau)

    def hyper(self) -> dict[str, Any]:
        return {"tau": self.tau}
