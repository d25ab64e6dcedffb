"""Every strategy, and user-level DP, for 2 rounds through `python -m fedspeech.main` (one multirun)."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_CORPUS, TINY_RUN, read_history, run_module

STRATEGIES = ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedlamb"]


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


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_runs_two_rounds(sweep, name):
    history = read_history(sweep / name)
    assert [h["round"] for h in history] == [0, 1, 2]
    assert all(h["clients_replied"] == 2 for h in history[1:])
    assert history[2]["bytes_up"] > 0
    config = (sweep / name / ".hydra" / "config.yaml").read_text()
    assert f"name: {name}" in config
    if name == "fedprox":
        assert "proximal_mu: 0.01" in config


def test_dp_run_reports_epsilon_and_clipping(sweep):
    history = read_history(sweep / "fedadam_dp")
    eps = [h["epsilon"] for h in history[1:]]
    assert 0 < eps[0] < eps[1]                       # privacy loss composes over rounds
    for h in history[1:]:
        assert 0.0 <= h["dp_clipped_fraction"] <= 1.0
        assert h["dp_clipped_norm_max"] <= 1.0 + 1e-5   # clip_norm of the gaussian preset
        assert h["dp_noise_norm"] > 0
    assert (sweep / "fedadam_dp" / "plots" / "epsilon.png").is_file()
    assert json.loads((sweep / "fedadam_dp" / "history.json").read_text())
