"""`simulation.runtime=flwr_run`: the simulation as Flower 1.42 supports it, behind `flwr run`.

`fedspeech.main` composes and resolves the Hydra config as always, writes it to
`<run_dir>/experiment.yaml`, starts a private SuperLink in simulation mode on a free loopback port
(its own FLWR_HOME in a temporary folder, so nothing touches `~/.flwr`), and runs

    flwr run <project> <private connection> --stream \
        --run-config 'fedspeech-config="<run_dir>/experiment.yaml" run-dir="<run_dir>"' \
        --federation-config 'num_supernodes=<clients> client_resources_num_cpus=... ...'

so Flower's Simulation Runtime runs the deployment apps (`federation/deployment.py`) on the Ray
backend with one virtual SuperNode per client; the Hydra config stays the single source of the
experiment (the run config only names the file). The SuperLink ends with the command.

Flower's simulation config carries client resources and Ray's cpu/gpu counts only;
`ray_init_args.address` reaches Ray as RAY_ADDRESS, the other ray.init arguments cannot, and
`validate_config` refuses them with this runtime.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedspeech.federation.flower_cli import flower_command

CONNECTION = "fedspeech-local-simulation"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def federation_config(cfg: DictConfig, num_clients: int) -> str:
    """`flwr run --federation-config` from the experiment config: the Simulation Runtime's settings."""
    values = {"num_supernodes": int(num_clients),
              "client_resources_num_cpus": int(cfg.client_resources.num_cpus),
              "client_resources_num_gpus": float(cfg.client_resources.num_gpus)}
    for key in ("num_cpus", "num_gpus"):
        if cfg.ray_init_args.get(key) is not None:
            values[f"init_args_{key}"] = int(cfg.ray_init_args[key])
    return " ".join(f"{k}={v}" for k, v in values.items())


def _wait_ready(port: int, link: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if link.poll() is not None:
            raise RuntimeError(f"the local SuperLink exited ({link.returncode}) before it was "
                               f"ready:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the local SuperLink did not answer within {timeout_s:.0f} s "
                       "(simulation.superlink_start_timeout_s)")


def _stop(link: subprocess.Popen, grace_s: float = 15.0) -> None:
    if link.poll() is None:
        os.killpg(link.pid, signal.SIGTERM)
        try:
            link.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(link.pid, signal.SIGKILL)
            link.wait(timeout=10)


def _run_status(env: dict, cwd: Path) -> str:
    """The status `flwr ls` reports for the one run of the private SuperLink."""
    out = subprocess.run([flower_command("flwr"), "ls", CONNECTION, "--format", "json"], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=120).stdout
    try:
        runs = json.loads(out[out.index("{"):])["runs"]
    except (ValueError, KeyError):
        return f"unknown (flwr ls said: {out.strip()[-500:]})"
    return str(runs[-1]["status"]) if runs else "no run"


def run_with_flwr_run(cfg: DictConfig, run_dir: Path, num_clients: int) -> None:
    """Run the resolved experiment `cfg` through a private simulation SuperLink and `flwr run`."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    experiment = run_dir / "experiment.yaml"
    experiment.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    project = Path(str(cfg.paths.project)).resolve()
    with tempfile.TemporaryDirectory(prefix="fedspeech-flwr-") as tmp:
        home = Path(tmp)
        port = _free_port()
        env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        if cfg.ray_init_args.get("address") is not None:
            env["RAY_ADDRESS"] = str(cfg.ray_init_args.address)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        log = home / "superlink.log"
        with log.open("w") as out:
            link = subprocess.Popen(
                [flower_command("flower-superlink"), "--simulation", "--insecure",
                 "--host", "127.0.0.1", "--port", str(port),
                 "--disable-runtime-dependency-installation"],
                cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_ready(port, link, float(cfg.simulation.superlink_start_timeout_s), log)
            run_config = f'fedspeech-config="{experiment}" run-dir="{run_dir}"'
            subprocess.run([flower_command("flwr"), "run", str(project), CONNECTION, "--stream",
                            "--run-config", run_config,
                            "--federation-config", federation_config(cfg, num_clients)],
                           cwd=project, env=env, check=False)
            status = _run_status(env, project)
        finally:
            _stop(link)
    # `flwr run --stream` exits 0 whatever became of the run: its status says
    if status != "finished:completed":
        raise RuntimeError(f"the flwr run simulation ended as {status}; its log is above")
