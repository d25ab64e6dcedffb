"""User-level differential privacy on the server (central DP, trusted server).

:class:`UserLevelDP` wraps a fedspeech strategy the way Flower's
``DifferentialPrivacyServerSideFixedClipping`` wraps FedAvg, with what DP speech FL
papers need: per-layer clipping, a noise level that can stand for a larger (virtual)
cohort, and an accountant that reports epsilon after every round. The privacy unit is
a *client* (one partition): it is user-level DP for speakers when each client holds one
speaker's data.

Per round, with cohort size ``n`` (the number of sampled clients) and clip norm ``C``:

1. ``delta_i = reply_i - global`` for every client that replied;
2. clip: ``global`` scales ``delta_i`` to L2 norm <= C; ``per_layer_uniform`` clips each
   of the L tensors to ``C / sqrt(L)``; ``per_layer_size`` clips tensor ``l`` of size
   ``d_l`` to ``C * sqrt(d_l / d)``. In every mode ``||clipped delta_i|| <= C``, so
   adding or removing one client changes the sum by at most C;
3. ``S = sum_i clipped delta_i + N(0, sigma^2 I)`` with ``sigma = z * C * n / V`` where
   ``V`` is the virtual cohort (``V = n`` by default, so ``sigma = z * C``);
4. ``avg = S / n`` -- an *unweighted* mean with a fixed denominator. DP forces uniform
   weights: a weight such as seconds of audio is a function of the user's own data, so
   with it one user's influence on the average is no longer bounded by ``C / n`` and
   the weight itself (how much someone spoke) would be released. Failed or missing
   clients contribute zero to the sum but ``n`` stays the sampled cohort size;
5. optional normalisation of ``avg`` (``global``: divide by its L2 norm; ``per_layer``:
   divide each tensor by its own norm), then the inner strategy's server optimiser
   (FedAvg, FedAdam, FedLAMB, ...) applies ``avg`` as the round's model delta.
   Everything after step 3 is post-processing and costs no privacy.

Virtual cohort (as in the pfl/pfl4asr simulations): the noise on the average has std
``z * C / V``, the level a deployment training with cohort ``V`` would have, while the
simulation trains only ``n`` clients per round. The reported epsilon is the one of that
deployment: it uses ``q = V / virtual_population``. It is a statement about the
deployment being simulated, not about the simulation itself.

Accounting: ``dp-accounting`` with the Poisson-subsampled Gaussian mechanism under
add/remove-one adjacency, composed over the rounds that released an update, by PLD
(tight) or RDP. Caveat: fedspeech samples a *fixed-size* cohort without replacement,
while the analysis assumes each client joins independently with probability
``q = cohort / population``. This is the approximation used throughout DP-FL practice;
it is not a formal guarantee for fixed-size sampling. Training metrics sent back by the
clients (loss, counts) are not privatised. Noise comes from NumPy's PCG64 (seeded and
checkpointed for reproducible research), which is not a cryptographically secure source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from .sampling import make_rng, rng_state_from_array, rng_state_to_array
from .server_updates import NDArrays
from .strategies import SpeechStrategyMixin, StateDict

CLIPPING_MODES = ("global", "per_layer_uniform", "per_layer_size")
NORMALIZE_MODES = (None, "global", "per_layer")
ACCOUNTANTS = ("pld", "rdp")


# ----------------------------------------------------------------- clipping
def l2_norm(arrays: Iterable[np.ndarray]) -> float:
    """L2 norm of a list of tensors seen as one flat vector (accumulated in float64)."""
    return float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))


def layer_budgets(
    shapes: Mapping[str, tuple[int, ...]], clip_norm: float, mode: str
) -> dict[str, float]:
    """Per-tensor clip norms whose squares sum to ``clip_norm**2``.

    ``per_layer_uniform``: ``C / sqrt(L)`` each. ``per_layer_size``: ``C * sqrt(d_l / d)``,
    i.e. the squared budget is proportional to the tensor's number of entries.
    """
    if mode == "per_layer_uniform":
        each = clip_norm / np.sqrt(len(shapes))
        return {k: float(each) for k in shapes}
    if mode == "per_layer_size":
        sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
        total = sum(sizes.values())
        return {k: float(clip_norm * np.sqrt(n / total)) for k, n in sizes.items()}
    raise ValueError(f"no per-layer budgets for clipping mode {mode!r}")


def clip_delta(
    delta: NDArrays, clip_norm: float, mode: str = "global"
) -> tuple[NDArrays, float, float, bool]:
    """Clip one client's delta. Returns ``(clipped, norm_before, norm_after, clipped?)``.

    ``clipped?`` is true when any tensor was scaled down.
    """
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


def normalize_delta(delta: NDArrays, mode: str | None) -> NDArrays:
    """Optional normalisation of the aggregated delta (post-processing, DP-free)."""
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


def noise_std_on_sum(
    noise_multiplier: float, clip_norm: float, cohort: int, virtual_cohort: int | None
) -> float:
    """Per-coordinate std of the noise added to the sum of clipped deltas.

    ``z * C`` for the real cohort; ``z * C * n / V`` for a virtual cohort ``V`` so that
    the noise on the average (sum / n) has std ``z * C / V``.
    """
    sigma = noise_multiplier * clip_norm
    if virtual_cohort is not None:
        sigma *= cohort / virtual_cohort
    return float(sigma)


# --------------------------------------------------------------- accounting
class UserLevelAccountant:
    """Epsilon of ``rounds`` Poisson-subsampled Gaussian releases (add/remove-one).

    Its only state is the number of composed rounds: epsilon is recomputed from scratch
    for any round count (PLD self-composition is logarithmic in rounds), which makes a
    resumed run report exactly what an uninterrupted one would.
    """

    def __init__(
        self,
        noise_multiplier: float,
        sampling_probability: float,
        delta: float,
        method: str = "pld",
    ) -> None:
        if method not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {method!r}")
        if not 0.0 < sampling_probability <= 1.0:
            raise ValueError(
                f"sampling probability q must be in (0, 1], got {sampling_probability}; "
                "a virtual cohort larger than the population needs virtual_population"
            )
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if not noise_multiplier > 0:
            raise ValueError("an accountant needs noise_multiplier > 0")
        self.noise_multiplier = float(noise_multiplier)
        self.q = float(sampling_probability)
        self.delta = float(delta)
        self.method = method
        self._cache: dict[int, float] = {}

    def _event(self, rounds: int) -> dp_accounting.DpEvent:
        one = dp_accounting.PoissonSampledDpEvent(
            self.q, dp_accounting.GaussianDpEvent(self.noise_multiplier)
        )
        return dp_accounting.SelfComposedDpEvent(one, rounds)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``self.delta`` after ``rounds`` releases."""
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        if rounds == 0:
            return 0.0
        if rounds not in self._cache:
            neighbors = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
            acc: dp_accounting.PrivacyAccountant = (
                pld.PLDAccountant(neighbors)
                if self.method == "pld"
                else rdp.RdpAccountant(neighboring_relation=neighbors)
            )
            acc.compose(self._event(rounds))
            self._cache = {rounds: float(acc.get_epsilon(self.delta))}
        return self._cache[rounds]


# ------------------------------------------------------------------ wrapper
class UserLevelDP(Strategy):
    """Central user-level DP around a fedspeech strategy (see the module docstring).

    Parameters
    ----------
    strategy
        Inner strategy (any :class:`SpeechStrategyMixin`); it samples the cohort, sends
        the round config and applies the noised average delta with its optimiser.
    population
        Number of clients; with the cohort size it gives the sampling rate ``q``.
    seed
        Seed of the noise generator (independent of the sampling stream).
    clip_norm, clipping
        ``C`` and one of ``global``, ``per_layer_uniform``, ``per_layer_size``.
    noise_multiplier
        ``z``; ``sigma = z * C`` on the sum. ``0`` clips without noise (no guarantee,
        no epsilon reported).
    delta
        Target delta of the reported (epsilon, delta).
    accountant
        ``pld`` or ``rdp``.
    virtual_cohort, virtual_population
        Report and noise as if ``virtual_cohort`` clients out of ``virtual_population``
        (default: the real population) took part in each round.
    normalize
        ``None``, ``global`` or ``per_layer`` normalisation of the noised average.
    """

    def __init__(
        self,
        strategy: SpeechStrategyMixin,
        *,
        population: int,
        seed: int,
        clip_norm: float,
        noise_multiplier: float,
        clipping: str = "global",
        delta: float = 1e-6,
        accountant: str = "pld",
        virtual_cohort: int | None = None,
        virtual_population: int | None = None,
        normalize: str | None = None,
    ) -> None:
        if not isinstance(strategy, SpeechStrategyMixin):
            raise TypeError("UserLevelDP wraps fedspeech strategies (SpeechStrategyMixin)")
        if clipping not in CLIPPING_MODES:
            raise ValueError(f"clipping must be one of {CLIPPING_MODES}, got {clipping!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if int(population) < 1:
            raise ValueError(f"population must be >= 1, got {population}")
        self.strategy = strategy
        self.population = int(population)
        self.clip_norm = float(clip_norm)
        self.clipping = clipping
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.normalize = normalize
        self.cohort = strategy.sampler.cohort_size(self.population)
        if self.cohort > self.population:
            raise ValueError(f"cohort {self.cohort} exceeds the population {self.population}")
        self.virtual_cohort = None if virtual_cohort is None else int(virtual_cohort)
        if self.virtual_cohort is not None and self.virtual_cohort < 1:
            raise ValueError(f"virtual_cohort must be >= 1, got {virtual_cohort}")
        self.accounting_population = int(virtual_population or self.population)
        q = (self.virtual_cohort or self.cohort) / self.accounting_population
        self.accountant = (
            UserLevelAccountant(self.noise_multiplier, q, self.delta, accountant)
            if self.noise_multiplier > 0
            else None
        )
        if self.accountant is None:
            log(WARNING, "UserLevelDP with noise_multiplier=0: clipping only, no DP guarantee")
        self.rounds_released = 0
        self.rng = make_rng(seed, 2)
        self._cohort_of_round: dict[int, int] = {}

    # -- Strategy API -------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let the inner strategy sample; check the cohort matches the accounting."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if messages and len(messages) != self.cohort:
            raise AggregationError(
                reason=f"sampled {len(messages)} clients but DP is accounted for a cohort "
                f"of {self.cohort} out of {self.population}; the population passed to "
                "build_strategy must equal the number of connected nodes"
            )
        self._cohort_of_round[server_round] = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, sum, noise, average uniformly; the inner optimiser applies the result."""
        inner = self.strategy
        cohort = self._cohort_of_round.pop(server_round, self.cohort)
        valid = inner.screen_replies(server_round, replies)
        metrics = inner.aggregate_metrics(server_round, valid)
        if not valid:
            return None, metrics
        current = inner.require_current_arrays()
        total: NDArrays = {k: np.zeros_like(x) for k, x in current.items()}
        before, after, clipped = [], [], 0
        for msg in valid:
            record = msg.content[inner.arrayrecord_key]
            delta = {k: record[k].numpy() - current[k] for k in current}
            cdelta, nb, na, was = clip_delta(delta, self.clip_norm, self.clipping)
            before.append(nb)
            after.append(na)
            clipped += int(was)
            for k, d in cdelta.items():
                total[k] += d
        sigma = noise_std_on_sum(self.noise_multiplier, self.clip_norm, cohort, self.virtual_cohort)
        noise_sq = 0.0
        if sigma > 0:
            for k, x in total.items():
                noise = self.rng.standard_normal(x.shape, dtype=np.float64) * sigma
                noise_sq += float(np.sum(np.square(noise)))
                total[k] = (x + noise).astype(x.dtype)
        avg = {k: x / cohort for k, x in total.items()}
        avg = normalize_delta(avg, self.normalize)
        new_arrays = inner.apply_delta(server_round, avg)
        self.rounds_released += 1

        metrics["dp-clipped-fraction"] = clipped / len(valid)
        metrics["dp-norm-mean"] = float(np.mean(before))
        metrics["dp-norm-max"] = float(np.max(before))
        metrics["dp-clipped-norm-mean"] = float(np.mean(after))
        metrics["dp-clipped-norm-max"] = float(np.max(after))
        metrics["dp-noise-std"] = sigma / cohort
        metrics["dp-noise-norm"] = float(np.sqrt(noise_sq)) / cohort
        metrics["dp-update-norm"] = l2_norm(avg.values())
        metrics["dp-rounds"] = self.rounds_released
        if self.accountant is not None:
            metrics["epsilon"] = self.epsilon()
            log(
                INFO,
                "round %d: epsilon=%.4f at delta=%g after %d releases",
                server_round,
                metrics["epsilon"],
                self.delta,
                self.rounds_released,
            )
        return new_arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate (client-side evaluation is off in fedspeech)."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Log the DP settings, then the inner strategy's."""
        log(INFO, "\t├──> User-level DP:")
        log(
            INFO,
            "\t│\t├── clip norm %g (%s), noise multiplier %g",
            self.clip_norm,
            self.clipping,
            self.noise_multiplier,
        )
        log(
            INFO,
            "\t│\t├── cohort %d (virtual %s) of %d (accounted population %d)",
            self.cohort,
            self.virtual_cohort,
            self.population,
            self.accounting_population,
        )
        if self.accountant is not None:
            log(
                INFO,
                "\t│\t└── q=%.4g, delta=%g, %s accountant",
                self.accountant.q,
                self.delta,
                self.accountant.method,
            )
        self.strategy.summary()

    # -- privacy and state --------------------------------------------------------
    def epsilon(self, rounds: int | None = None) -> float:
        """Epsilon after ``rounds`` releases (default: those released so far)."""
        if self.accountant is None:
            return float("inf")
        return self.accountant.epsilon(self.rounds_released if rounds is None else rounds)

    def set_node_partitions(self, mapping: Mapping[int, int]) -> None:
        """Forwarded to the inner strategy's sampler."""
        self.strategy.set_node_partitions(mapping)

    @property
    def last_round(self) -> Any:
        """The inner strategy's report of the last round."""
        return self.strategy.last_round

    def state_dict(self) -> StateDict:
        """Inner state plus ``dp/rounds`` (accountant) and ``dp/rng`` (noise stream)."""
        state = self.strategy.state_dict()
        state["dp/rounds"] = int(self.rounds_released)
        state["dp/rng"] = rng_state_to_array(self.rng)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore; epsilon is recomputed from the number of rounds."""
        rest = dict(state)
        if "dp/rounds" not in rest or "dp/rng" not in rest:
            raise KeyError("DP strategy state needs 'dp/rounds' and 'dp/rng'")
        self.rounds_released = int(np.asarray(rest.pop("dp/rounds")))
        rng_state_from_array(self.rng, rest.pop("dp/rng"))
        self.strategy.load_state_dict(rest)
