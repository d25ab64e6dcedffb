"""The Deployment Engine path: `flwr run` of this project against a local SuperLink and three
SuperNodes (one per speaker partition), all on 127.0.0.1, and the FAB that `flwr run` ships."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from conftest import REPO, TINY_CORPUS, TINY_RUN, read_history, run_module

BIN = Path(sys.executable).parent
ENTRY_POINTS = ("flwr", "flower-superlink", "flower-supernode", "flower-superexec",
                "flwr-serverapp", "flwr-clientapp")
NUM_NODES = 3
RUN_TIMEOUT_S = 420
# every process started here, and every process those start, carries this variable: stopping
# them all needs no process names and reaches processes Flower starts in their own sessions
TAG_VAR = "FEDSPEECH_DEPLOYMENT_TEST"


def _entry_point(name: str) -> str | None:
    return shutil.which(name, path=str(BIN)) or shutil.which(name)


def _missing_entry_points() -> list[str]:
    return [name for name in ENTRY_POINTS if _entry_point(name) is None]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tagged_pids(tag: str) -> list[int]:
    needle = f"{TAG_VAR}={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop_all(procs: list[subprocess.Popen], tag: str, grace_s: float = 15.0) -> None:
    """SIGTERM everything carrying the tag (SuperExecs, ServerApp, ClientApps too), then SIGKILL."""
    _signal([p.pid for p in procs if p.poll() is None] + _tagged_pids(tag), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (_tagged_pids(tag) or any(p.poll() is None for p in procs)):
        time.sleep(0.2)
    _signal([p.pid for p in procs if p.poll() is None] + _tagged_pids(tag), signal.SIGKILL)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f} s")


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else "(no log)"


def test_fab_holds_only_the_package_and_configs():
    """`flwr run` ships what `build_fab_from_disk` builds: no data, outputs, tests or venv."""
    build = pytest.importorskip("flwr.cli.build")
    fab = zipfile.ZipFile(io.BytesIO(build.build_fab_from_disk(REPO)))
    names = fab.namelist()
    payload = [n for n in names if n not in ("pyproject.toml", ".info/CONTENT")]
    assert "fedspeech/federation/deployment.py" in payload
    assert "conf/config.yaml" in payload
    outside = [n for n in payload if not (n.startswith("fedspeech/") or n.startswith("conf/"))]
    assert outside == [], outside
    for prefix in (".venv/", "data/", "outputs/", "multirun/", "tests/", "results/"):
        assert not any(n.startswith(prefix) for n in names), prefix
    shipped = tomllib.loads(fab.read("pyproject.toml").decode())
    assert shipped["tool"]["flwr"]["app"]["components"]["serverapp"] == \
        "fedspeech.federation.deployment:server_app"
    assert "federations" not in shipped["tool"]["flwr"]


def _context(run_config: dict) -> Context:
    return Context(run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_run_config_paths_are_checked(tmp_path):
    from fedspeech.federation.deployment import load_config, run_dir_from_context
    with pytest.raises(ValueError, match="empty"):
        load_config("")
    with pytest.raises(ValueError, match="absolute"):
        load_config("experiment.yaml")
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))
    unresolved = tmp_path / "unresolved.yaml"
    unresolved.write_text("paths:\n  project: ${project_root:}\n")
    with pytest.raises(ValueError, match="--resolve"):
        load_config(str(unresolved))
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(f"paths:\n  project: {tmp_path}\nnum_rounds: 2\n")
    cfg = load_config(str(resolved))
    assert cfg.num_rounds == 2
    assert run_dir_from_context(cfg, _context({"run-dir": "/abs/run"})) == Path("/abs/run")
    assert run_dir_from_context(cfg, _context({"run-dir": "runs/a"})) == tmp_path / "runs" / "a"
    assert run_dir_from_context(cfg, _context({"run-dir": ""})) == \
        tmp_path / "outputs" / "deployment" / "run-7"


@pytest.mark.skipif(bool(_missing_entry_points()),
                    reason=f"Flower CLI entry points missing: {_missing_entry_points()}")
@pytest.mark.skipif(not Path("/proc/self/environ").is_file(),
                    reason="stopping every started process relies on /proc (Linux)")
def test_flwr_run_against_superlink_and_supernodes(tiny_data, tmp_path):
    cfg_file = tmp_path / "experiment.yaml"
    composed = run_module("fedspeech.main", "--cfg", "job", "--resolve", f"paths.data={tiny_data}",
                          *TINY_CORPUS, *TINY_RUN, "num_rounds=2", "strategy.num_train_nodes=2")
    cfg_file.write_text(composed.stdout)
    run_dir = tmp_path / "run"
    flwr_home = tmp_path / "flwr-home-cli"       # the Flower configuration of `flwr run`
    flwr_home.mkdir()
    link_port, *node_ports = _free_ports(1 + NUM_NODES)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local-deployment"\n\n'
        f'[superlink.local-deployment]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG_VAR: tag, "FLWR_HOME": str(flwr_home),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    pyproject_before = (REPO / "pyproject.toml").read_bytes()
    procs: list[subprocess.Popen] = []
    logs: dict[str, Path] = {}

    def start(name: str, *args: str) -> subprocess.Popen:
        # each SuperLink/SuperNode gets its own FLWR_HOME, as on separate machines: Flower
        # installs the FAB there, and concurrent installs into one directory can race
        home = tmp_path / f"flwr-home-{name}"
        home.mkdir()
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("w") as out:
            proc = subprocess.Popen([_entry_point(args[0]), *args[1:]], cwd=tmp_path,
                                    env={**env, "FLWR_HOME": str(home)},
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    def all_logs() -> str:
        return "\n".join(f"--- {name} ---\n{_tail(path)}" for name, path in logs.items())

    t0 = time.monotonic()
    try:
        link = start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
                     "--port", str(link_port), "--disable-runtime-dependency-installation")
        _wait_http(f"http://127.0.0.1:{link_port}/health", link, timeout_s=60)
        for i, port in enumerate(node_ports):
            start(f"supernode{i}", "flower-supernode", "--insecure",
                  "--superlink", f"127.0.0.1:{link_port}", "--host", "127.0.0.1", "--port", str(port),
                  "--node-config", f"partition-id={i} num-partitions={NUM_NODES}")
        logs["flwr-run"] = tmp_path / "flwr-run.log"
        run_config = f'fedspeech-config="{cfg_file}" run-dir="{run_dir}"'
        with logs["flwr-run"].open("w") as out:
            run = subprocess.run([_entry_point("flwr"), "run", str(REPO), "local-deployment",
                                  "--run-config", run_config, "--stream"],
                                 cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 timeout=RUN_TIMEOUT_S)
        stream = logs["flwr-run"].read_text(errors="replace")
        assert run.returncode == 0, all_logs()
        assert "Successfully started run" in stream, all_logs()
        assert all(p.poll() is None for p in procs), all_logs()
        assert (run_dir / "history.json").is_file(), all_logs()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`flwr run` did not finish within {RUN_TIMEOUT_S} s\n{all_logs()}") from None
    finally:
        _stop_all(procs, tag)
        print(f"deployment run took {time.monotonic() - t0:.1f} s")
    assert _tagged_pids(tag) == [], "processes of the deployment outlived the test"
    assert (REPO / "pyproject.toml").read_bytes() == pyproject_before, "flwr run rewrote pyproject.toml"

    history = read_history(run_dir)
    assert [h["round"] for h in history] == [0, 1, 2]
    for h in history[1:]:
        assert h["clients_sampled"] == 2 and h["clients_replied"] == 2, h
        assert h["train_seconds"] > 0 and h["bytes_up"] > 0 and h["bytes_up"] == h["bytes_down"]
        # partition ids come from each SuperNode's --node-config, via the QUERY round
        assert len(set(h["participants"])) == 2 and set(h["participants"]) <= set(range(NUM_NODES))
    for name in ("config.yaml", "speakers.csv", "plots/wer.png", "plots/speakers.png"):
        assert (run_dir / name).is_file(), name
    speakers = pd.read_csv(run_dir / "speakers.csv", dtype={"speaker": str})
    # one speaker per SuperNode: two trained per round for two rounds; the unseen voice never
    assert speakers["rounds_participated"].sum() == 4
    assert speakers.loc[~speakers["seen_in_training"], "rounds_participated"].eq(0).all()
    assert "[round 2/2]" in stream
