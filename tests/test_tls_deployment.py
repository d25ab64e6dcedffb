"""A TLS federation with SuperNode authentication on 127.0.0.1: who gets in, who does not.

One SuperLink (TLS + `--enable-supernode-auth`) serves every case, to keep start-up paid once:
two SuperNodes whose keys were registered with `flwr supernode register` run a 2-round `flwr run`,
while four others try to join at the same time and must fail — one with a key nobody registered,
one with no key (which, without authentication, would register itself), one without the CA
certificate, one in `--insecure` mode. Every process is started here and ended
here; each wait is bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization

from conftest import REPO, TINY_RUN, read_history, run_module
from deployment_processes import Deployment, entry_point, free_ports, missing_entry_points, wait_http
from fedspeech.federation.certificates import create_federation, fingerprint, public_key_path
from fedspeech.federation.tls_check import check_superlink, check_supernode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_entry_points()),
                       reason=f"Flower CLI entry points missing: {missing_entry_points()}"),
    pytest.mark.skipif(not Path("/proc/self/environ").is_file(),
                       reason="stopping every started process relies on /proc (Linux)"),
]

# two training voices: one partition per registered SuperNode
TWO_SPEAKERS = ["dataset.reader.num_train_speakers=2", "dataset.reader.num_unseen_speakers=1",
                "dataset.reader.train_sentences=4", "dataset.reader.dev_sentences=1",
                "dataset.reader.test_sentences=1", "dataset.reader.unseen_sentences=2"]
RUN_TIMEOUT_S = 300
REFUSED_EXIT_S = 60
CONNECTION = "tls-federation"
# bounded reconnection for the SuperNodes that must fail (they would otherwise retry forever)
GIVE_UP = ("--max-retries", "3", "--max-wait-time", "30")


@dataclass
class FederationResult:
    root: Path
    run_dir: Path
    run_rc: int | None
    logs: dict[str, str]
    all_logs: str
    exit_codes: dict[str, int | None]
    registry: dict
    fingerprints: list[str]
    listed_nodes: list[dict] = field(default_factory=list)
    leftover: list[int] = field(default_factory=list)
    pyproject_unchanged: bool = True


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> FederationResult:
    root = tmp_path_factory.mktemp("tls")
    data = root / "data"
    run_module("fedspeech.dataset_preparation", f"paths.data={data}", *TWO_SPEAKERS)
    composed = run_module("fedspeech.main", "--cfg", "job", "--resolve", f"paths.data={data}",
                          *TWO_SPEAKERS, *TINY_RUN, "num_rounds=2", "strategy.num_train_nodes=2",
                          "strategy.node_wait_timeout_s=120")
    cfg_file = root / "experiment.yaml"
    cfg_file.write_text(composed.stdout)
    certs = create_federation(root / "certs", ["127.0.0.1"], supernodes=3)
    ca = certs.ca_cert
    registered, unregistered = certs.supernode_keys[:2], certs.supernode_keys[2]
    # the checks a user runs before starting anything (tls_check); they raise on bad files
    check_superlink(ca, certs.superlink_cert, certs.superlink_key, host="127.0.0.1")
    port, *node_ports = free_ports(7)
    address = f"127.0.0.1:{port}"
    dep = Deployment(root)
    dep.write_connection(CONNECTION, address, ca)
    registry_file = root / "registry.json"
    run_dir = root / "run"
    run_rc = None
    pyproject_before = (REPO / "pyproject.toml").read_bytes()
    listed: list[dict] = []
    exit_codes: dict[str, int | None] = {}
    t0 = time.monotonic()
    try:
        link = dep.start("superlink", "flower-superlink", "--ssl-ca-certfile", str(ca),
                         "--ssl-certfile", str(certs.superlink_cert),
                         "--ssl-keyfile", str(certs.superlink_key), "--enable-supernode-auth",
                         "--host", "127.0.0.1", "--port", str(port),
                         "--disable-runtime-dependency-installation")
        wait_http(f"https://{address}/health", link, timeout_s=60, cafile=ca)
        reg = dep.run("register", [sys.executable, "-m", "fedspeech.federation.supernode_registry",
                                   CONNECTION, *(str(public_key_path(k)) for k in registered),
                                   "--out", str(registry_file)], cwd=REPO, timeout=120)
        assert reg.returncode == 0, dep.all_logs()
        check_supernode(ca, registered[0], superlink=address)     # a real handshake
        common = ("flower-supernode", "--superlink", address, "--host", "127.0.0.1")
        for i, key in enumerate(registered):
            dep.start(f"supernode{i}", *common, "--port", str(node_ports[i]),
                      "--root-certificates", str(ca), "--auth-supernode-private-key", str(key),
                      "--node-config", f"partition-id={i} num-partitions=2")
        dep.start("unregistered", *common, "--port", str(node_ports[2]), *GIVE_UP,
                  "--root-certificates", str(ca), "--auth-supernode-private-key", str(unregistered),
                  "--node-config", "partition-id=0 num-partitions=2")
        dep.start("keyless", *common, "--port", str(node_ports[5]), *GIVE_UP,
                  "--root-certificates", str(ca), "--node-config", "partition-id=1 num-partitions=2")
        # a registered key, so TLS verification is the only thing in its way
        dep.start("no-ca", *common, "--port", str(node_ports[3]), *GIVE_UP,
                  "--auth-supernode-private-key", str(registered[0]),
                  "--node-config", "partition-id=0 num-partitions=2")
        dep.start("insecure", *common, "--port", str(node_ports[4]), *GIVE_UP, "--insecure",
                  "--node-config", "partition-id=1 num-partitions=2")
        run_config = (f'fedspeech-config="{cfg_file}" run-dir="{run_dir}" '
                      f'supernode-registry="{registry_file}"')
        try:
            run_rc = dep.run("flwr-run", [entry_point("flwr"), "run", str(REPO), CONNECTION,
                                          "--run-config", run_config, "--stream"],
                             cwd=REPO, timeout=RUN_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            run_rc = None
        exit_codes = {name: dep.wait_exit(name, REFUSED_EXIT_S)
                      for name in ("unregistered", "keyless", "no-ca", "insecure")}
        exit_codes.update({f"supernode{i}": dep.procs[f"supernode{i}"].poll() for i in range(2)})
        listing = dep.run("list", [entry_point("flwr"), "supernode", "list", CONNECTION,
                                   "--format", "json"], cwd=root, timeout=60)
        if listing.returncode == 0:
            text = dep.log("list")
            listed = json.loads(text[text.index("{"):])["nodes"]
    finally:
        dep.stop_all()
        print(f"TLS federation took {time.monotonic() - t0:.1f} s")
    return FederationResult(
        root=root, run_dir=run_dir, run_rc=run_rc,
        logs={name: dep.log(name) for name in dep.logs}, all_logs=dep.all_logs(),
        exit_codes=exit_codes,
        registry=json.loads(registry_file.read_text()) if registry_file.is_file() else {},
        fingerprints=[fingerprint(public_key_path(k).read_bytes()) for k in certs.supernode_keys],
        listed_nodes=listed, leftover=dep.leftover_pids(),
        pyproject_unchanged=(REPO / "pyproject.toml").read_bytes() == pyproject_before)


def test_registered_supernodes_complete_a_two_round_run(federation):
    assert federation.run_rc == 0, federation.all_logs
    assert "Successfully started run" in federation.logs["flwr-run"], federation.all_logs
    # the two registered SuperNodes stayed up to the end
    assert federation.exit_codes["supernode0"] is None and federation.exit_codes["supernode1"] is None
    history = read_history(federation.run_dir)
    assert [h["round"] for h in history] == [0, 1, 2]
    for h in history[1:]:
        assert h["clients_replied"] == 2 and sorted(h["participants"]) == [0, 1], h


def test_run_dir_of_a_deployment_run(federation):
    """What `flwr run` leaves on the server: the same run dir as a simulation, from the SuperNodes."""
    assert federation.run_rc == 0, federation.all_logs
    assert "[round 2/2]" in federation.logs["flwr-run"]
    assert federation.pyproject_unchanged, "flwr run rewrote pyproject.toml"
    history = read_history(federation.run_dir)
    for h in history[1:]:
        assert h["clients_sampled"] == 2
        assert h["train_seconds"] > 0 and h["bytes_up"] > 0 and h["bytes_up"] == h["bytes_down"]
    for name in ("config.yaml", "speakers.csv", "plots/wer.png", "plots/speakers.png"):
        assert (federation.run_dir / name).is_file(), name
    speakers = pd.read_csv(federation.run_dir / "speakers.csv", dtype={"speaker": str})
    # one speaker per SuperNode, both trained in both rounds; the unseen voice never
    assert speakers["rounds_participated"].sum() == 4
    assert speakers.loc[~speakers["seen_in_training"], "rounds_participated"].eq(0).all()


def test_run_dir_names_the_supernode_keys_of_each_round(federation):
    """supernodes.csv: every round, each SuperNode by node id, partition id and key fingerprint."""
    registry = {int(n["node_id"]): n["fingerprint"] for n in federation.registry["nodes"]}
    assert sorted(registry.values()) == sorted(federation.fingerprints[:2])
    table = pd.read_csv(federation.run_dir / "supernodes.csv")
    assert list(table["round"]) == [1, 1, 2, 2], table
    assert set(table["outcome"]) == {"accepted"}
    for _, row in table.iterrows():
        assert registry[int(row["node_id"])] == row["public_key_fingerprint"], row
    assert set(table["public_key_fingerprint"]) == set(federation.fingerprints[:2])
    assert federation.fingerprints[2] not in set(table["public_key_fingerprint"])
    by_key = table.groupby("public_key_fingerprint")["partition_id"].agg(set)
    assert sorted(len(p) for p in by_key) == [1, 1] and set().union(*by_key) == {0, 1}


def test_unregistered_key_is_refused_by_the_superlink(federation):
    code = federation.exit_codes["unregistered"]
    assert code not in (None, 0), federation.logs["unregistered"]
    assert "SuperNode ID" not in federation.logs["unregistered"]
    key_file = federation.root / "certs" / "supernodes" / "supernode-2.pub"
    pem = serialization.load_ssh_public_key(key_file.read_bytes()).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    first_line = pem.splitlines()[1]            # the key's own bytes, as the SuperLink logs them
    refusals = [line for line in federation.logs["superlink"].splitlines()
                if "activate-node" in line and "No SuperNode found with the given public key" in line]
    assert any(first_line in line for line in refusals), federation.logs["superlink"][-4000:]
    assert "SuperNode authentication is disabled" not in federation.logs["superlink"]
    # and the federation holds the two registered SuperNodes only
    assert len(federation.listed_nodes) == 2, federation.listed_nodes
    ids = {int(n["node_id"]) for n in federation.registry["nodes"]}
    assert {int(n["node-id"]) for n in federation.listed_nodes} == ids


def test_supernode_without_a_key_cannot_register_itself(federation):
    """Without authentication a keyless SuperNode registers itself; with it, the SuperLink refuses."""
    log = federation.logs["keyless"]
    assert federation.exit_codes["keyless"] not in (None, 0), log
    assert "SuperNode ID" not in log
    assert any("register-node" in line and "ApiError" in line and "/v1/fleet/" in line
               for line in federation.logs["superlink"].splitlines()), federation.logs["superlink"][-4000:]


def test_supernode_without_the_ca_fails_tls_verification(federation):
    log = federation.logs["no-ca"]
    assert federation.exit_codes["no-ca"] not in (None, 0), log
    assert "CERTIFICATE_VERIFY_FAILED" in log, log
    assert "SuperNode ID" not in log


def test_insecure_supernode_cannot_join(federation):
    log = federation.logs["insecure"]
    assert federation.exit_codes["insecure"] not in (None, 0), log
    assert "Failed to initialize the connection to the SuperLink" in log, log
    assert "SuperNode ID" not in log


def test_every_process_ended(federation):
    assert federation.leftover == [], "processes of the federation outlived the test"
