"""Real / padded audio frames of training batches: duration bucketing vs random batching.

Usage: python benchmarks/padding.py [paths.data=...] [dataset overrides...] (after preparation)
Prints the ratio per client and overall for the configured batch budget.
"""

from __future__ import annotations

import sys

import numpy as np

from fedspeech.config import compose_config
from fedspeech.data.batching import duration_batches, real_fraction
from fedspeech.experiment_data import load_experiment_data


def random_batches(durations: np.ndarray, budget: float, seed: int) -> list[list[int]]:
    """Same padded budget, utterances in random order (no sorting)."""
    order = np.random.default_rng(seed).permutation(len(durations))
    batches, cur, longest = [], [], 0.0
    for i in order:
        if cur and max(longest, durations[i]) * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, longest = [], 0.0
        cur.append(int(i))
        longest = max(longest, durations[i])
    return batches + ([cur] if cur else [])


def main() -> None:
    cfg = compose_config(sys.argv[1:])
    data = load_experiment_data(cfg)
    budget = float(cfg.train.batch_seconds)
    bucketed, rand = [], []
    for client in range(data.num_clients):
        d = data.client_rows(client)["duration"].to_numpy()
        bucketed.append(real_fraction(d, duration_batches(d, budget, shuffle=True, seed=client)))
        rand.append(real_fraction(d, random_batches(d, budget, seed=client)))
    print(f"{data.num_clients} clients, batch budget {budget:.0f} padded seconds")
    print(f"real/padded frames, duration-bucketed: mean {np.mean(bucketed):.3f} (min {np.min(bucketed):.3f})")
    print(f"real/padded frames, random batches:    mean {np.mean(rand):.3f} (min {np.min(rand):.3f})")


if __name__ == "__main__":
    main()
