"""FedAvg (McMahan et al., 2017) weighted by audio seconds; FedProx is its client-side variant."""

from __future__ import annotations

from fedspeech.federation.aggregation import NDArrays
from fedspeech.federation.strategies.base import SpeechStrategy


class SpeechFedAvg(SpeechStrategy):
    """The round's weighted mean is the new global model.

    With `proximal_mu > 0` this is FedProx (Li et al., 2020): its server side is FedAvg, and the
    clients add `mu/2 * ||w - w_global||^2` to their loss (`proximal-mu` in the train config).
    """

    def apply_mean(self, server_round: int, mean: NDArrays) -> NDArrays:
        current = self.require_current_arrays()
        return {k: mean[k].astype(current[k].dtype) for k in current}
