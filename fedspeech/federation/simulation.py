"""The one place fedspeech starts a Flower simulation (`simulation.runtime` picks how).

`in_process` (default) runs Flower's Simulation Engine with the Ray backend inside this process,
on the ServerApp/ClientApp built in memory from the Hydra config. Flower 1.42 reaches that engine
through `flwr.simulation.run_simulation`, which is deprecated in favour of `flwr run`; its body is
a deprecation banner, a telemetry event and a call of `_run_simulation`, the function Flower's own
`flwr-simulation` runtime process calls. We call `_run_simulation` here, and nowhere else, so a
default run prints no deprecation warning; `tests/test_simulation_runtime.py` pins the parameters
used, so a Flower upgrade that changes them fails there first (Flower is pinned to 1.42.0). The
engine runs on `ray_backend.StagedRayBackend`, Flower's Ray backend with each hand-over between
two clients off the actors' clock.

`flwr_run` is Flower's supported path (`federation/flwr_run_simulation.py`): a private local
SuperLink in simulation mode and `flwr run` of this project's app bundle. README ("Simulation
runtimes") has the measured time to the first round of both and why `in_process` stays the
default.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: what `_run_simulation` is called with; checked against Flower's signature by the tests
ENGINE_PARAMETERS = ("num_supernodes", "exit_event", "client_app", "server_app", "backend_name",
                     "backend_config")


def backend_config(cfg: DictConfig) -> dict:
    """Ray backend settings for Flower: per-client resources and ray.init arguments."""
    init_args = {k: v for k, v in OmegaConf.to_container(cfg.ray_init_args, resolve=True).items()
                 if v is not None}
    return {"client_resources": {"num_cpus": float(cfg.client_resources.num_cpus),
                                 "num_gpus": float(cfg.client_resources.num_gpus)},
            "init_args": init_args}


def carrier_nodes(cfg: DictConfig, num_clients: int) -> int | None:
    """`simulation.nodes` SuperNodes carrying every client (at most one per client), or None:
    one SuperNode per client, each holding its own partition."""
    nodes = cfg.simulation.get("nodes")
    return None if nodes is None else min(int(nodes), num_clients)


def run_in_process(cfg: DictConfig, run_dir: Path, num_clients: int) -> None:
    """Flower's Simulation Engine (Ray backend) in this process, on apps built from `cfg`."""
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from fedspeech.federation.client_app import make_client_app
    from fedspeech.federation.ray_backend import staged_backend
    from fedspeech.federation.server_app import make_server_app

    carriers = carrier_nodes(cfg, num_clients)
    with staged_backend():
        _run_simulation(num_supernodes=num_clients if carriers is None else carriers,
                        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                        client_app=make_client_app(cfg, carried=carriers is not None),
                        server_app=make_server_app(cfg, run_dir, carriers=carriers),
                        backend_name="ray", backend_config=backend_config(cfg))


def run_simulation(cfg: DictConfig, run_dir: Path) -> None:
    """Run the federated experiment `cfg` as a simulation, writing `run_dir`."""
    from fedspeech.experiment_data import load_experiment_data

    num_clients = load_experiment_data(cfg).num_clients
    runtime = str(cfg.simulation.runtime)
    carriers = carrier_nodes(cfg, num_clients)
    on = "" if carriers is None else f" on {carriers} simulated SuperNodes"
    print(f"federated run: {num_clients} clients{on}, {cfg.num_rounds} rounds, strategy {cfg.strategy.name}, "
          f"model {cfg.model.name}, client resources {dict(cfg.client_resources)}, "
          f"runtime {runtime} -> {run_dir}", flush=True)
    if runtime == "flwr_run":
        from fedspeech.federation.flwr_run_simulation import run_with_flwr_run
        run_with_flwr_run(cfg, run_dir, num_clients)
    else:
        run_in_process(cfg, run_dir, num_clients)
