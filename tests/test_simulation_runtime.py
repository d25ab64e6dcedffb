"""How main starts a simulation: Flower's engine in process, or `flwr run` on a private SuperLink."""

from __future__ import annotations

import inspect
import json
import time
import uuid

import pytest

from conftest import TINY_CORPUS, TINY_RUN, read_history, run_module
from deployment_processes import TAG_VAR, missing_entry_points, tagged_pids
from fedspeech.config import ConfigError, compose_config, validate_config
from fedspeech.federation.flwr_run_simulation import federation_config
from fedspeech.federation.simulation import ENGINE_PARAMETERS, backend_config


def test_flower_engine_entry_takes_what_the_adapter_passes():
    """The in-process runtime calls Flower's `_run_simulation`: a Flower upgrade that renames
    its parameters must fail here, not in a user's run."""
    from flwr.simulation.run_simulation import _run_simulation
    assert set(ENGINE_PARAMETERS) <= set(inspect.signature(_run_simulation).parameters)


def test_flower_engine_builds_the_backend_the_adapter_installs():
    """`ray_backend.staged_backend` replaces the class Flower's engine imports when it starts, and
    puts Flower's back afterwards, even when the simulation raises."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from fedspeech.federation.ray_backend import StagedRayBackend, staged_backend
    assert "from .backend.raybackend import RayBackend" in inspect.getsource(vce_api.start_vce)
    flower = raybackend.RayBackend
    with pytest.raises(RuntimeError, match="engine failed"), staged_backend():
        assert raybackend.RayBackend is StagedRayBackend and issubclass(StagedRayBackend, flower)
        raise RuntimeError("engine failed")
    assert raybackend.RayBackend is flower


def test_both_runtimes_take_resources_from_the_hydra_config():
    cfg = compose_config(["client_resources.num_cpus=2", "client_resources.num_gpus=0.5",
                          "ray_init_args.num_cpus=6"])
    assert backend_config(cfg) == {"client_resources": {"num_cpus": 2.0, "num_gpus": 0.5},
                                   "init_args": {"num_cpus": 6, "include_dashboard": False}}
    assert federation_config(cfg, 12) == ("num_supernodes=12 client_resources_num_cpus=2 "
                                          "client_resources_num_gpus=0.5 init_args_num_cpus=6")


@pytest.mark.parametrize("overrides, key", [
    (["simulation.runtime=ray"], "simulation.runtime"),
    (["simulation.runtime=flwr_run", "client_resources.num_cpus=0.5"], "client_resources.num_cpus"),
    (["simulation.runtime=flwr_run", "ray_init_args.object_store_memory=1000000"],
     "ray_init_args.object_store_memory"),
    (["simulation.runtime=flwr_run", "ray_init_args.include_dashboard=true"],
     "ray_init_args.include_dashboard"),
])
def test_what_a_runtime_cannot_honour_is_refused(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        validate_config(compose_config(overrides))


@pytest.mark.slow
@pytest.mark.skipif(bool(missing_entry_points()),
                    reason=f"Flower CLI entry points missing: {missing_entry_points()}")
def test_flwr_run_runtime_runs_the_experiment(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    tag = uuid.uuid4().hex
    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_RUN,
                      "num_rounds=1", "strategy.num_train_nodes=2", "simulation.runtime=flwr_run",
                      f"hydra.run.dir={run_dir}", env={TAG_VAR: tag})
    out = proc.stdout + proc.stderr
    assert "Successfully started run" in out and "[round 1/1]" in out, out[-3000:]
    assert "DEPRECATED" not in out
    history = read_history(run_dir)
    assert [h["round"] for h in history] == [0, 1]
    assert history[1]["clients_replied"] == 2
    # the experiment went over as the composed config, not re-composed elsewhere
    shipped = (run_dir / "experiment.yaml").read_text()
    assert f"data: {tiny_data}" in shipped and "runtime: flwr_run" in shipped
    assert json.loads((run_dir / "history.json").read_text())[1]["participants"]
    # Ray's actor processes end a few seconds after their raylet; nothing may stay longer
    deadline = time.monotonic() + 30
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(1)
    assert tagged_pids(tag) == [], "the private SuperLink (or a process it started) outlived main"


@pytest.mark.slow
@pytest.mark.skipif(bool(missing_entry_points()),
                    reason=f"Flower CLI entry points missing: {missing_entry_points()}")
def test_a_failed_flwr_run_fails_main(tiny_data, tmp_path):
    """`flwr run --stream` exits 0 whatever became of the run: main reads the run's status."""
    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_RUN,
                      "num_rounds=1", "strategy.num_train_nodes=5", "simulation.runtime=flwr_run",
                      f"hydra.run.dir={tmp_path / 'run'}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "num_train_nodes=5 exceeds the population of 3" in out       # the ServerApp's error
    assert "the flwr run simulation ended as finished:failed" in out
