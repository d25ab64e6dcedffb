"""The Deployment Engine path: the FAB that `flwr run` ships and the run-config checks of the
deployment apps. A whole `flwr run` against a SuperLink and SuperNodes on 127.0.0.1 (with TLS and
SuperNode authentication, the way a deployment should run) is in `test_tls_deployment.py`."""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from conftest import REPO


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
