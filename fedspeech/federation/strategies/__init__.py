"""Server strategies: one module per idea, all plain `flwr.serverapp.strategy.Strategy` subclasses.

* `base.SpeechStrategy` — sampling, round config, screening, exact streaming aggregation, state,
  and `start` (the round loop);
* `fedavg.SpeechFedAvg` — FedAvg / FedProx;
* `fedopt` — server optimisers: `SpeechFedAvgM`, `SpeechFedAdam`, `SpeechFedYogi`,
  `SpeechFedAdagrad`; `fedlamb.FedLAMB`;
* `flower_adapter.FlowerStrategy` — Flower's own strategies (FedMedian, Krum, ...) in our loop;
* `factory.build_strategy` — the Hydra `strategy` node -> a strategy.

User-level DP is a component of any of them (`fedspeech.federation.privacy.UserLevelDP`).
"""

from fedspeech.federation.strategies.base import ClientFailuresError, SpeechStrategy
from fedspeech.federation.strategies.factory import build_strategy
from fedspeech.federation.strategies.fedavg import SpeechFedAvg
from fedspeech.federation.strategies.fedlamb import FedLAMB
from fedspeech.federation.strategies.fedopt import (FedOpt, SpeechFedAdagrad, SpeechFedAdam,
                                                    SpeechFedAvgM, SpeechFedYogi)
from fedspeech.federation.strategies.flower_adapter import FlowerStrategy

__all__ = ["ClientFailuresError", "SpeechStrategy", "build_strategy", "SpeechFedAvg", "FedLAMB",
           "FedOpt", "SpeechFedAdagrad", "SpeechFedAdam", "SpeechFedAvgM", "SpeechFedYogi",
           "FlowerStrategy"]
