"""The registry of SuperNode ids and key fingerprints that a deployment's run dir is made from."""

from __future__ import annotations

import json

import pytest
from flwr.app import Context, RecordDict

from deployment_processes import free_ports
from fedspeech.federation.certificates import create_federation, public_key_path
from fedspeech.federation.deployment import node_keys_from_context
from fedspeech.federation.supernode_registry import RegisteredNode, load_registry, main, write_registry


def _context(run_config: dict) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_registry_round_trip_and_re_registration(tmp_path):
    path = tmp_path / "registry.json"
    write_registry(path, [RegisteredNode(11, "SHA256:a", "/k/a.pub"), RegisteredNode(12, "SHA256:b", "/k/b.pub")])
    # key b registered again (e.g. after the SuperLink lost its state): its new id replaces the old
    write_registry(path, [RegisteredNode(13, "SHA256:b", "/k/b.pub")])
    assert {n: r.fingerprint for n, r in load_registry(path).items()} == {11: "SHA256:a", 13: "SHA256:b"}
    assert node_keys_from_context(_context({"supernode-registry": str(path)})) == \
        {11: "SHA256:a", 13: "SHA256:b"}
    assert node_keys_from_context(_context({})) is None


def test_registry_errors_name_the_file(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_registry(missing)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [{"node_id": "x"}]}))
    with pytest.raises(ValueError, match=f"{bad} is not a registry file"):
        load_registry(bad)
    with pytest.raises(ValueError, match="absolute"):
        node_keys_from_context(_context({"supernode-registry": "registry.json"}))


def test_a_failed_registration_says_why(tmp_path, monkeypatch, capsys):
    """`flwr supernode register` against a SuperLink that is not there: its reason, no registry."""
    fed = create_federation(tmp_path / "certs", ["127.0.0.1"], supernodes=1)
    home = tmp_path / "flwr-home"
    home.mkdir()
    (port,) = free_ports(1)
    (home / "config.toml").write_text(f'[superlink.nowhere]\naddress = "127.0.0.1:{port}"\n'
                                      f'root-certificates = "{fed.ca_cert}"\n')
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    key = public_key_path(fed.supernode_keys[0])
    out = tmp_path / "registry.json"
    assert main(["nowhere", str(key), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {key}: `flwr supernode register` failed: ")
    assert "Connection to the SuperLink is unavailable" in err
    assert not out.exists()
