"""Every kind of strategy, and user-level DP, for 2 rounds through `python -m fedspeech.main`.

Checks that each ran *its own* rule: with the same seed, every strategy samples the same clients,
which train from the same initial model on the same data in round 1, so their replies are
identical; a server optimiser that silently ran FedAvg would leave FedAvg's arrays after round 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import TINY_CORPUS, TINY_RUN, read_history, run_module

pytestmark = pytest.mark.slow
# FedProx is FedAvg on the server; that its mu reaches the clients is checked in test_strategies
STRATEGIES = ["fedavg", "fedadam", "fedavgm", "fedlamb", "fedmedian"]


@pytest.fixture(scope="module")
def sweep(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("strategies")
    run_module("fedspeech.main", "--multirun", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_RUN,
               "num_rounds=2", "strategy.num_train_nodes=2", f"strategy={','.join(STRATEGIES)}",
               f"hydra.sweep.dir={out}", "hydra.sweep.subdir=${strategy.name}", timeout=1200)
    run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_RUN,
               "num_rounds=2", "strategy.num_train_nodes=3", "strategy=fedadam", "strategy/dp=gaussian",
               "strategy.dp.noise_multiplier=0.8", f"hydra.run.dir={out / 'fedadam_dp'}")
    return out


def round_arrays(run_dir, server_round: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    return load_file(str(run_dir / "checkpoints" / f"round_{server_round:04d}" / "arrays.safetensors"))


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_runs_two_rounds_with_its_own_rule(sweep, name):
    history = read_history(sweep / name)
    assert [h["round"] for h in history] == [0, 1, 2]
    assert all(h["clients_replied"] == 2 and h["skipped"] is None for h in history[1:])
    assert history[1]["participants"] == read_history(sweep / "fedavg")[1]["participants"]
    if name == "fedavg":
        return
    ours, fedavg = round_arrays(sweep / name, 1), round_arrays(sweep / "fedavg", 1)
    if name == "fedavgm":
        # momentum starts at zero and the server lr is 1: round 1 *is* FedAvg's step; round 2
        # trains from that same model, so the replies are again identical and only the momentum
        # carried over from round 1 can make the arrays differ
        assert all(np.array_equal(ours[k], fedavg[k]) for k in fedavg)
        ours, fedavg = round_arrays(sweep / name, 2), round_arrays(sweep / "fedavg", 2)
    # fedmedian: the median of two replies is their unweighted mean, not the seconds-weighted one
    assert not all(np.array_equal(ours[k], fedavg[k]) for k in fedavg), \
        f"{name} left FedAvg's arrays"


def test_dp_run_reports_epsilon_and_clipping(sweep):
    history = read_history(sweep / "fedadam_dp")
    eps = [h["epsilon"] for h in history[1:]]
    assert 0 < eps[0] < eps[1]                       # privacy loss composes over rounds
    for h in history[1:]:
        assert 0.0 <= h["dp_clipped_fraction"] <= 1.0
        assert h["dp_clipped_norm_max"] <= 1.0 + 1e-5   # clip_norm of the gaussian preset
        assert h["dp_noise_norm"] > 0
    assert (sweep / "fedadam_dp" / "plots" / "epsilon.png").is_file()
