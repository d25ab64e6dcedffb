"""User-level differential privacy on the server (central DP, trusted server).

`UserLevelDP` is what a fedspeech strategy applies to a round's aggregation when
`strategy/dp=gaussian` is chosen: the counterpart of Flower's
`DifferentialPrivacyServerSideFixedClipping`, with what DP speech FL papers need: per-layer
clipping, a noise level that can stand for a larger (virtual) cohort, and an accountant that
reports epsilon after every round. The privacy unit is a *client* (one partition): it is
user-level DP for speakers when each client holds one speaker's data.

A round is four small pure steps, applied as replies stream in and then once per round, with
cohort size `n` (the number of sampled clients) and clip norm `C`:

1. **clip** (`clip_delta`, per reply): `delta_i = reply_i - global`; `global` clipping scales
   `delta_i` to L2 norm <= C; `per_layer_uniform` clips each of the L tensors to `C / sqrt(L)`;
   `per_layer_size` clips tensor `l` of size `d_l` to `C * sqrt(d_l / d)`. In every mode
   `||clipped delta_i|| <= C`, so adding or removing one client changes the sum by at most C;
2. **sum** (per reply): the clipped delta is folded into an exact, order-independent running sum
   (`aggregation.ExactSum`) and dropped;
3. **noise** (`add_gaussian_noise`): `S + N(0, sigma^2 I)` with `sigma = z * C * n / V`, where `V`
   is the virtual cohort (`V = n` by default, so `sigma = z * C`);
4. **average** (`S / n`): an *unweighted* mean with a fixed denominator. DP forces uniform
   weights: a weight such as seconds of audio is a function of the user's own data, so with it
   one user's influence on the average is no longer bounded by `C / n`, and the weight itself
   (how much someone spoke) would be released. Failed, rejected or missing clients contribute
   zero to the sum but `n` stays the sampled cohort size.

Then optional normalisation (`normalize_delta`), and the strategy's own update (FedAvg,
FedAdam, FedLAMB, ...) applies the result as the round's model delta. Everything after step 3 is
post-processing and costs no privacy.

Virtual cohort (as in the pfl/pfl4asr simulations): the noise on the average has std `z * C / V`,
the level a deployment training with cohort `V` would have, while the simulation trains only
`n` clients per round. The reported epsilon is the one of that deployment: it uses
`q = V / virtual_population`. It is a statement about the deployment being simulated, not about
the simulation itself.

Accounting (`privacy_accounting.UserLevelAccountant`): `dp-accounting`'s Poisson-subsampled
Gaussian under add/remove-one adjacency, composed over the rounds that released an update.
Caveat: fedspeech samples a *fixed-size* cohort without replacement, while the analysis assumes
each client joins independently with probability `q = cohort / population`; this is the
approximation used throughout DP-FL practice, not a formal guarantee for fixed-size sampling.
Training metrics sent back by the clients (loss, counts) are not privatised. Noise comes from
NumPy's PCG64 (seeded and checkpointed for reproducible research), which is not a
cryptographically secure source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.supercore import log

from fedspeech.federation.aggregation import ExactSum, NDArrays
from fedspeech.federation.privacy_accounting import ACCOUNTANTS, UserLevelAccountant
from fedspeech.federation.sampling import make_rng, rng_state_from_array, rng_state_to_array

CLIPPING_MODES = ("global", "per_layer_uniform", "per_layer_size")
NORMALIZE_MODES = (None, "global", "per_layer")
#: seed stream of the noise generator (the sampler uses stream 1)
NOISE_STREAM = 2


# ----------------------------------------------------------------- pure steps
def l2_norm(arrays: Iterable[np.ndarray]) -> float:
    """L2 norm of a list of tensors seen as one flat vector (accumulated in float64)."""
    return float(np.sqrt(sum(float(np.dot(a.ravel().astype(np.float64, copy=False),
                                          a.ravel().astype(np.float64, copy=False)))
                             for a in arrays)))


def layer_budgets(shapes: Mapping[str, tuple[int, ...]], clip_norm: float, mode: str) -> dict[str, float]:
    """Per-tensor clip norms whose squares sum to `clip_norm**2` (`global`: C for each).

    `per_layer_uniform`: `C / sqrt(L)` each. `per_layer_size`: `C * sqrt(d_l / d)`, i.e. the
    squared budget is proportional to the tensor's number of entries.
    """
    if mode == "global":
        return {k: float(clip_norm) for k in shapes}
    if mode == "per_layer_uniform":
        each = clip_norm / np.sqrt(len(shapes))
        return {k: float(each) for k in shapes}
    if mode == "per_layer_size":
        sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
        total = sum(sizes.values())
        return {k: float(clip_norm * np.sqrt(n / total)) for k, n in sizes.items()}
    raise ValueError(f"clipping must be one of {CLIPPING_MODES}, got {mode!r}")


def clip_delta(delta: NDArrays, clip_norm: float, mode: str = "global"
               ) -> tuple[NDArrays, float, float, bool]:
    """Clip one client's delta. Returns `(clipped, norm_before, norm_after, was_clipped)`."""
    if mode not in CLIPPING_MODES:
        raise ValueError(f"clipping must be one of {CLIPPING_MODES}, got {mode!r}")
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    before = l2_norm(delta.values())
    if mode == "global":
        scale = min(1.0, clip_norm / before) if before > 0 else 1.0
        out = {k: (d * scale).astype(d.dtype, copy=False) for k, d in delta.items()}
        was_clipped = scale < 1.0
    else:
        budgets = layer_budgets({k: d.shape for k, d in delta.items()}, clip_norm, mode)
        out, was_clipped = {}, False
        for k, d in delta.items():
            n = l2_norm([d])
            scale = min(1.0, budgets[k] / n) if n > 0 else 1.0
            was_clipped |= scale < 1.0
            out[k] = (d * scale).astype(d.dtype, copy=False)
    return out, before, l2_norm(out.values()), was_clipped


def noise_std_on_sum(noise_multiplier: float, clip_norm: float, cohort: int,
                     virtual_cohort: int | None) -> float:
    """Per-coordinate std of the noise on the sum: `z * C`, or `z * C * n / V` (virtual cohort)."""
    sigma = noise_multiplier * clip_norm
    if virtual_cohort is not None:
        sigma *= cohort / virtual_cohort
    return float(sigma)


def add_gaussian_noise(total: NDArrays, sigma: float, rng: np.random.Generator) -> tuple[NDArrays, float]:
    """`total + N(0, sigma^2 I)` (float64) and the L2 norm of the noise that was added."""
    if sigma <= 0:
        return total, 0.0
    out, noise_sq = {}, 0.0
    for k in sorted(total):           # a fixed order: the generator's draws are reproducible
        noise = rng.standard_normal(total[k].shape) * sigma
        noise_sq += float(np.sum(np.square(noise)))
        out[k] = total[k] + noise
    return out, float(np.sqrt(noise_sq))


def normalize_delta(delta: NDArrays, mode: str | None) -> NDArrays:
    """Optional normalisation of the averaged delta (post-processing, DP-free)."""
    if mode is None:
        return delta
    if mode == "global":
        n = l2_norm(delta.values())
        return {k: d / n for k, d in delta.items()} if n > 0 else delta
    if mode == "per_layer":
        out = {}
        for k, d in delta.items():
            n = l2_norm([d])
            out[k] = d / n if n > 0 else d
        return out
    raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")


# ----------------------------------------------------------------- one round
@dataclass
class ClippedSum:
    """Running state of one DP round: the exact sum of clipped deltas and clipping statistics."""

    current: NDArrays
    cohort: int
    total: ExactSum
    norms_before: list[float] = field(default_factory=list)
    norms_after: list[float] = field(default_factory=list)
    clipped: int = 0

    def close(self) -> None:
        self.total.close()


# ----------------------------------------------------------------- the component
class UserLevelDP:
    """Clipping, noise and accounting of central user-level DP (see the module docstring).

    Parameters
    ----------
    population
        Number of clients; with the cohort size it gives the sampling rate `q`.
    cohort
        Clients sampled per round (the fixed denominator of the average).
    seed
        Seed of the noise generator (independent of the sampling stream).
    clip_norm, clipping
        `C` and one of `global`, `per_layer_uniform`, `per_layer_size`.
    noise_multiplier
        `z`; `sigma = z * C` on the sum. `0` clips without noise (no guarantee, no epsilon).
    delta
        Target delta of the reported (epsilon, delta).
    accountant
        `pld` or `rdp`.
    virtual_cohort, virtual_population
        Noise and report as if `virtual_cohort` clients out of `virtual_population` (default: the
        real population) took part in each round.
    normalize
        None, `global` or `per_layer` normalisation of the noised average.
    """

    def __init__(self, *, population: int, cohort: int, seed: int, clip_norm: float,
                 noise_multiplier: float, clipping: str = "global", delta: float = 1e-6,
                 accountant: str = "pld", virtual_cohort: int | None = None,
                 virtual_population: int | None = None, normalize: str | None = None) -> None:
        if clipping not in CLIPPING_MODES:
            raise ValueError(f"clipping must be one of {CLIPPING_MODES}, got {clipping!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if int(population) < 1:
            raise ValueError(f"population must be >= 1, got {population}")
        if not 1 <= int(cohort) <= int(population):
            raise ValueError(f"cohort {cohort} must be between 1 and the population {population}")
        self.population = int(population)
        self.cohort = int(cohort)
        self.clip_norm = float(clip_norm)
        self.clipping = clipping
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.normalize = normalize
        self.virtual_cohort = None if virtual_cohort is None else int(virtual_cohort)
        if self.virtual_cohort is not None and self.virtual_cohort < 1:
            raise ValueError(f"virtual_cohort must be >= 1, got {virtual_cohort}")
        self.accounting_population = int(virtual_population or self.population)
        q = (self.virtual_cohort or self.cohort) / self.accounting_population
        self.accountant = (UserLevelAccountant(self.noise_multiplier, q, self.delta, accountant)
                           if self.noise_multiplier > 0 else None)
        if self.accountant is None:
            log(WARNING, "user-level DP with noise_multiplier=0: clipping only, no DP guarantee")
        self.rounds_released = 0
        self.rng = make_rng(seed, NOISE_STREAM)

    def check_cohort(self, sampled: int) -> None:
        """The accounting assumes `cohort` clients per round: refuse any other number."""
        if sampled != self.cohort:
            raise ValueError(f"sampled {sampled} clients but DP is accounted for a cohort of "
                             f"{self.cohort} out of {self.population}")

    def new_aggregate(self, current: NDArrays, cohort: int) -> ClippedSum:
        """The empty sum of one round (its grid: every clipped entry is within its budget)."""
        shapes = {k: v.shape for k, v in current.items()}
        budgets = layer_budgets(shapes, self.clip_norm, self.clipping)
        bounds = {k: 2.0 * b for k, b in budgets.items()}     # 2x: float32 rounding of the scale
        return ClippedSum(current, cohort, ExactSum(shapes, bounds, weight_bound=float(cohort)))

    def fold(self, aggregate: ClippedSum, arrays: Mapping[str, np.ndarray]) -> None:
        """Clip one reply's delta and add it to the round's sum (uniform weight 1)."""
        delta = {k: np.subtract(arrays[k], x) for k, x in aggregate.current.items()}
        clipped, before, after, was = clip_delta(delta, self.clip_norm, self.clipping)
        aggregate.total.add(clipped, 1.0)
        aggregate.norms_before.append(before)
        aggregate.norms_after.append(after)
        aggregate.clipped += int(was)

    def release(self, aggregate: ClippedSum) -> tuple[NDArrays, dict[str, float]]:
        """Noise the sum, average over the sampled cohort, normalise; account the release."""
        n = aggregate.cohort
        sigma = noise_std_on_sum(self.noise_multiplier, self.clip_norm, n, self.virtual_cohort)
        noised, noise_norm = add_gaussian_noise(aggregate.total.total(), sigma, self.rng)
        average = normalize_delta({k: x / n for k, x in noised.items()}, self.normalize)
        self.rounds_released += 1
        count = max(len(aggregate.norms_before), 1)
        stats = {
            "dp-clipped-fraction": aggregate.clipped / count,
            "dp-norm-mean": float(np.mean(aggregate.norms_before or [0.0])),
            "dp-norm-max": float(np.max(aggregate.norms_before or [0.0])),
            "dp-clipped-norm-mean": float(np.mean(aggregate.norms_after or [0.0])),
            "dp-clipped-norm-max": float(np.max(aggregate.norms_after or [0.0])),
            "dp-noise-std": sigma / n,
            "dp-noise-norm": noise_norm / n,
            "dp-update-norm": l2_norm(average.values()),
            "dp-rounds": self.rounds_released,
        }
        if self.accountant is not None:
            stats["epsilon"] = self.epsilon()
            log(INFO, "epsilon=%.4f at delta=%g after %d releases", stats["epsilon"], self.delta,
                self.rounds_released)
        return average, stats

    def epsilon(self, rounds: int | None = None) -> float:
        """Epsilon after `rounds` releases (default: those released so far)."""
        if self.accountant is None:
            return float("inf")
        return self.accountant.epsilon(self.rounds_released if rounds is None else rounds)

    def state_dict(self) -> dict[str, Any]:
        """`dp/rounds` (what the accountant composes) and `dp/rng` (the noise stream)."""
        return {"dp/rounds": int(self.rounds_released), "dp/rng": rng_state_to_array(self.rng)}

    def load_state_dict(self, rest: dict[str, Any]) -> None:
        """Pop and restore this component's keys from `rest`."""
        if "dp/rounds" not in rest or "dp/rng" not in rest:
            raise KeyError("DP state needs 'dp/rounds' and 'dp/rng'")
        self.rounds_released = int(np.asarray(rest.pop("dp/rounds")))
        rng_state_from_array(self.rng, rest.pop("dp/rng"))

    def summary(self) -> None:
        """Log the DP settings."""
        log(INFO, "\t│\tuser-level DP: clip %g (%s), noise multiplier %g, cohort %d (virtual %s) of "
            "%d (accounted population %d)%s", self.clip_norm, self.clipping, self.noise_multiplier,
            self.cohort, self.virtual_cohort, self.population, self.accounting_population,
            f", q={self.accountant.q:.4g}, delta={self.delta:g}, {self.accountant.method}"
            if self.accountant else "")
