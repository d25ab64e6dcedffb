"""Pure server update rules for federated optimisation (Reddi et al., 2021; Hsu et al., 2019).

Every rule has the same shape, so one strategy class (`FedOpt`) drives them all:

    rule(params, delta, slots, *, eta, step, **hyper) -> (new_params, new_slots)

`delta = average - params` is the round's model delta (adding it moves towards the clients; it
is minus Flower's "pseudo-gradient"), `slots` the optimiser state from the previous step
(`None` before the first), `eta` the server learning rate of this round and `step` the number of
server updates applied so far, counting this one (1, 2, ...), as optimisers count steps. No rule
keeps state of its own, so each can be checked against its paper's formulas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

NDArrays = dict[str, np.ndarray]
Slots = dict[str, NDArrays]
UpdateRule = Callable[..., tuple[NDArrays, Slots]]


def _zeros_like(arrays: NDArrays) -> NDArrays:
    return {k: np.zeros_like(v) for k, v in arrays.items()}


def _first_moment(m: NDArrays | None, delta: NDArrays, beta_1: float) -> NDArrays:
    m = _zeros_like(delta) if m is None else m
    return {k: beta_1 * x + (1 - beta_1) * delta[k] for k, x in m.items()}


def momentum_step(params: NDArrays, delta: NDArrays, slots: Slots | None, *, eta: float,
                  step: int, server_momentum: float = 0.0) -> tuple[NDArrays, Slots]:
    """FedAvgM: SGD with heavy-ball momentum on the round delta, as Flower's FedAvgM.

    `v <- momentum * v + delta` (`v = delta` on the first step), `w <- w + eta * v`; with
    momentum 0 and eta 1 this is FedAvg.
    """
    if server_momentum > 0:
        v = delta if slots is None else {k: server_momentum * x + delta[k]
                                          for k, x in slots["v"].items()}
        direction, slots = v, {"v": v}
    else:
        direction, slots = delta, {}
    return {k: x + eta * direction[k] for k, x in params.items()}, slots


def adam_step(params: NDArrays, delta: NDArrays, slots: Slots | None, *, eta: float, step: int,
              beta_1: float, beta_2: float, tau: float) -> tuple[NDArrays, Slots]:
    """FedAdam: Adam on the round delta, bias-corrected by the step count; `tau` is epsilon."""
    slots = slots or {}
    m = _first_moment(slots.get("m"), delta, beta_1)
    v = slots.get("v") or _zeros_like(delta)
    v = {k: beta_2 * x + (1 - beta_2) * np.square(delta[k]) for k, x in v.items()}
    eta_t = eta * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    new = {k: x + eta_t * m[k] / (np.sqrt(v[k]) + tau) for k, x in params.items()}
    return new, {"m": m, "v": v}


def yogi_step(params: NDArrays, delta: NDArrays, slots: Slots | None, *, eta: float, step: int,
              beta_1: float, beta_2: float, tau: float) -> tuple[NDArrays, Slots]:
    """FedYogi: the second moment moves additively, so one large round cannot blow it up."""
    slots = slots or {}
    m = _first_moment(slots.get("m"), delta, beta_1)
    v = slots.get("v") or _zeros_like(delta)
    v = {k: x - (1 - beta_2) * np.square(delta[k]) * np.sign(x - np.square(delta[k]))
         for k, x in v.items()}
    new = {k: x + eta * m[k] / (np.sqrt(v[k]) + tau) for k, x in params.items()}
    return new, {"m": m, "v": v}


def adagrad_step(params: NDArrays, delta: NDArrays, slots: Slots | None, *, eta: float, step: int,
                 tau: float) -> tuple[NDArrays, Slots]:
    """FedAdagrad: accumulated squared deltas, no momentum."""
    v = (slots or {}).get("v") or _zeros_like(delta)
    v = {k: x + np.square(delta[k]) for k, x in v.items()}
    new = {k: x + eta * delta[k] / (np.sqrt(v[k]) + tau) for k, x in params.items()}
    return new, {"v": v}


def _l2(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(x, dtype=np.float64))))


def lamb_step(params: NDArrays, delta: NDArrays, slots: Slots | None, *, eta: float, step: int,
              beta_1: float, beta_2: float, tau: float,
              weight_decay: float = 0.0) -> tuple[NDArrays, Slots]:
    """Server LAMB: the bias-corrected Adam direction rescaled per tensor by a trust ratio.

    For each tensor `r = m_hat / (sqrt(v_hat) + tau) - weight_decay * w` and
    `w <- w + eta * (||w|| / ||r||) * r` (ratio 1 when either norm is 0: a zero-initialised
    adapter, or no movement). The per-tensor rescaling evens out the very different update sizes
    of a deep speech encoder's layers, which is why private FL for ASR uses it on the server.
    """
    slots = slots or {}
    m = _first_moment(slots.get("m"), delta, beta_1)
    v = slots.get("v") or _zeros_like(delta)
    v = {k: beta_2 * x + (1 - beta_2) * np.square(delta[k]) for k, x in v.items()}
    c1, c2 = 1 - beta_1**step, 1 - beta_2**step
    new: NDArrays = {}
    for k, w in params.items():
        r = (m[k] / c1) / (np.sqrt(v[k] / c2) + tau)
        if weight_decay:
            r = r - weight_decay * w
        w_norm, r_norm = _l2(w), _l2(r)
        ratio = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
        new[k] = w + eta * ratio * r
    return new, {"m": m, "v": v}


def apply_rule(rule: UpdateRule, params: NDArrays, delta: NDArrays, slots: Slots | None, *,
               eta: float, step: int, hyper: dict[str, Any]) -> tuple[NDArrays, Slots]:
    """Run `rule` and keep every tensor in the model's dtype (NumPy would promote to float64)."""
    new, slots = rule(params, delta, slots, eta=eta, step=step, **hyper)
    return {k: np.asarray(x, dtype=params[k].dtype) for k, x in new.items()}, slots
