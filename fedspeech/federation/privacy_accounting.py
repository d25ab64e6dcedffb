"""Privacy accounting of user-level DP rounds with `dp-accounting`.

Each round that releases an update is a Poisson-subsampled Gaussian mechanism (add/remove-one
adjacency) with sampling rate `q` and noise multiplier `z`; epsilon is that event composed over
the released rounds, by PLD (tight) or RDP.
"""

from __future__ import annotations

import dp_accounting
from dp_accounting import pld, rdp

ACCOUNTANTS = ("pld", "rdp")


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
