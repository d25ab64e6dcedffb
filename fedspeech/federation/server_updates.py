"""Pure server update rules for federated optimisation (Reddi et al., 2021).

Each rule maps ``(params, pseudo-gradient delta, moments)`` to new params and moments
with no strategy state, so it can be unit-tested against the paper's formulas and reused
by any strategy (see :class:`fedspeech.federation.strategies.ServerOptimizerMixin`).
The pseudo-gradient is ``delta = average - params``: adding it moves towards the clients.
"""

from __future__ import annotations

import numpy as np

NDArrays = dict[str, np.ndarray]


def _zeros_like(arrays: NDArrays) -> NDArrays:
    return {k: np.zeros_like(v) for k, v in arrays.items()}


def adam_step(
    params: NDArrays,
    delta: NDArrays,
    m: NDArrays | None,
    v: NDArrays | None,
    *,
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
    t: float,
) -> tuple[NDArrays, NDArrays, NDArrays]:
    """Server Adam (FedAdam) on the pseudo-gradient ``delta = average - params``.

    Returns ``(new_params, m, v)``. Bias correction uses ``t``; Flower's FedAdam passes
    ``server_round + 1`` and :class:`SpeechFedAdam` keeps that convention so both agree.
    """
    m = _zeros_like(delta) if m is None else m
    v = _zeros_like(delta) if v is None else v
    m = {k: beta_1 * x + (1 - beta_1) * delta[k] for k, x in m.items()}
    v = {k: beta_2 * x + (1 - beta_2) * (delta[k] ** 2) for k, x in v.items()}
    eta_norm = eta * np.sqrt(1 - np.power(beta_2, t)) / (1 - np.power(beta_1, t))
    new = {k: x + eta_norm * m[k] / (np.sqrt(v[k]) + tau) for k, x in params.items()}
    return new, m, v


def yogi_step(
    params: NDArrays,
    delta: NDArrays,
    m: NDArrays | None,
    v: NDArrays | None,
    *,
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> tuple[NDArrays, NDArrays, NDArrays]:
    """Server Yogi: additive second-moment update that cannot blow up on one round."""
    m = _zeros_like(delta) if m is None else m
    v = _zeros_like(delta) if v is None else v
    m = {k: beta_1 * x + (1 - beta_1) * delta[k] for k, x in m.items()}
    v = {k: x - (1.0 - beta_2) * (delta[k] ** 2) * np.sign(x - delta[k] ** 2) for k, x in v.items()}
    new = {k: x + eta * m[k] / (np.sqrt(v[k]) + tau) for k, x in params.items()}
    return new, m, v


def adagrad_step(
    params: NDArrays,
    delta: NDArrays,
    v: NDArrays | None,
    *,
    eta: float,
    tau: float,
) -> tuple[NDArrays, NDArrays]:
    """Server Adagrad: accumulated squared pseudo-gradients, no momentum."""
    v = _zeros_like(delta) if v is None else v
    v = {k: x + delta[k] ** 2 for k, x in v.items()}
    new = {k: x + eta * delta[k] / (np.sqrt(v[k]) + tau) for k, x in params.items()}
    return new, v


def _l2(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(x, dtype=np.float64))))


def lamb_step(
    params: NDArrays,
    delta: NDArrays,
    m: NDArrays | None,
    v: NDArrays | None,
    *,
    eta: float,
    beta_1: float,
    beta_2: float,
    eps: float,
    step: int,
    weight_decay: float = 0.0,
) -> tuple[NDArrays, NDArrays, NDArrays, dict[str, float]]:
    """Server LAMB: bias-corrected Adam direction rescaled per tensor by a trust ratio.

    For each tensor: ``r = m_hat / (sqrt(v_hat) + eps) - weight_decay * w`` and
    ``w <- w + eta * (||w|| / ||r||) * r``. The ratio is 1 when either norm is 0 (a
    zero-initialised adapter, or no movement). The per-tensor rescaling evens out the
    very different update magnitudes of the layers of a deep speech encoder, which is
    why private FL for ASR uses it as the server optimiser. ``step`` counts server
    updates from 1. Returns ``(new_params, m, v, trust_ratios)``.
    """
    if step < 1:
        raise ValueError(f"step starts at 1, got {step}")
    m = _zeros_like(delta) if m is None else m
    v = _zeros_like(delta) if v is None else v
    m = {k: beta_1 * x + (1 - beta_1) * delta[k] for k, x in m.items()}
    v = {k: beta_2 * x + (1 - beta_2) * (delta[k] ** 2) for k, x in v.items()}
    c1 = 1 - beta_1**step
    c2 = 1 - beta_2**step
    new: NDArrays = {}
    ratios: dict[str, float] = {}
    for k, w in params.items():
        r = (m[k] / c1) / (np.sqrt(v[k] / c2) + eps)
        if weight_decay:
            r = r - weight_decay * w
        w_norm, r_norm = _l2(w), _l2(r)
        ratio = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
        ratios[k] = ratio
        new[k] = (w + eta * ratio * r).astype(w.dtype, copy=False)
    return new, m, v, ratios
