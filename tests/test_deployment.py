"""The Deployment Engine path: `flwr run` of this project against a local SuperLink and three
SuperNodes (one per speaker partition), all on 127.0.0.1, and the FAB that `flwr run` ships."""

from __future__ import annotations

import io
import subprocess
import time
import tomllib
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from conftest import REPO, TINY_CORPUS, TINY_RUN, read_history, run_module
from deployment_processes import Deployment, entry_point, free_ports, missing_entry_points, wait_http

NUM_NODES = 3
RUN_TIMEOUT_S = 420


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


@pytest.mark.slow
@pytest.mark.skipif(bool(missing_entry_points()),
                    reason=f"Flower CLI entry points missing: {missing_entry_points()}")
@pytest.mark.skipif(not Path("/proc/self/environ").is_file(),
                    reason="stopping every started process relies on /proc (Linux)")
def test_flwr_run_against_superlink_and_supernodes(tiny_data, tmp_path):
    cfg_file = tmp_path / "experiment.yaml"
    composed = run_module("fedspeech.main", "--cfg", "job", "--resolve", f"paths.data={tiny_data}",
                          *TINY_CORPUS, *TINY_RUN, "num_rounds=2", "strategy.num_train_nodes=2")
    cfg_file.write_text(composed.stdout)
    run_dir = tmp_path / "run"
    link_port, *node_ports = free_ports(1 + NUM_NODES)
    dep = Deployment(tmp_path)
    dep.write_connection("local-deployment", f"127.0.0.1:{link_port}", None)
    pyproject_before = (REPO / "pyproject.toml").read_bytes()
    t0 = time.monotonic()
    try:
        link = dep.start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
                         "--port", str(link_port), "--disable-runtime-dependency-installation")
        wait_http(f"http://127.0.0.1:{link_port}/health", link, timeout_s=60)
        for i, port in enumerate(node_ports):
            dep.start(f"supernode{i}", "flower-supernode", "--insecure",
                      "--superlink", f"127.0.0.1:{link_port}", "--host", "127.0.0.1",
                      "--port", str(port),
                      "--node-config", f"partition-id={i} num-partitions={NUM_NODES}")
        run_config = f'fedspeech-config="{cfg_file}" run-dir="{run_dir}"'
        run = dep.run("flwr-run", [entry_point("flwr"), "run", str(REPO), "local-deployment",
                                   "--run-config", run_config, "--stream"],
                      cwd=REPO, timeout=RUN_TIMEOUT_S)
        stream = dep.log("flwr-run")
        assert run.returncode == 0, dep.all_logs()
        assert "Successfully started run" in stream, dep.all_logs()
        assert all(p.poll() is None for p in dep.procs.values()), dep.all_logs()
        assert (run_dir / "history.json").is_file(), dep.all_logs()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`flwr run` did not finish within {RUN_TIMEOUT_S} s\n"
                             f"{dep.all_logs()}") from None
    finally:
        dep.stop_all()
        print(f"deployment run took {time.monotonic() - t0:.1f} s")
    assert dep.leftover_pids() == [], "processes of the deployment outlived the test"
    assert (REPO / "pyproject.toml").read_bytes() == pyproject_before, "flwr run rewrote pyproject.toml"
    assert not (run_dir / "supernodes.csv").exists(), "no registry was given: no key fingerprints"

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
