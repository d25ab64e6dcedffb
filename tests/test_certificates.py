"""The federation's certificates and the checks run before Flower starts with them.

The handshake checks talk to a real TLS server on 127.0.0.1 (Python's `ssl`), serving the
certificates made here; no Flower process is needed for them.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedspeech.federation import certificates, tls_check
from fedspeech.federation.certificates import create_federation, fingerprint, public_key_path
from fedspeech.federation.tls_check import CertificateFileError, WrongHostError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _san(path: Path) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    return create_federation(tmp_path_factory.mktemp("certs"), ["10.1.2.3", "link.example"],
                             supernodes=2)


def test_files_and_private_key_modes(fed):
    root = fed.root
    for name in ("ca.key", "superlink.key"):
        assert _mode(root / name) == 0o600, name
    for key in fed.supernode_keys:
        assert _mode(key) == 0o600 and _mode(public_key_path(key)) == 0o644
    assert _mode(root / "ca.crt") == 0o644


def test_superlink_certificate_names_the_host_and_loopback(fed, tmp_path):
    san = _san(fed.superlink_cert)
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.1.2.3"),
                                                            ipaddress.ip_address("127.0.0.1")}
    assert set(san.get_values_for_type(x509.DNSName)) == {"link.example", "localhost"}
    ca = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(fed.superlink_cert.read_bytes()).verify_directly_issued_by(ca)
    bare = create_federation(tmp_path / "bare", ["link.example"], supernodes=0, loopback=False)
    assert _san(bare.superlink_cert).get_values_for_type(x509.DNSName) == ["link.example"]
    assert _san(bare.superlink_cert).get_values_for_type(x509.IPAddress) == []


def test_flower_accepts_the_supernode_keys(fed):
    """The loaders `flwr supernode register` and `flower-supernode` use take our files."""
    from flwr.cli.supernode.register import try_load_public_key
    for key_file in fed.supernode_keys:
        private = serialization.load_ssh_private_key(key_file.read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        registered = try_load_public_key(public_key_path(key_file))
        derived = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        assert registered == derived


def test_fingerprint_is_what_ssh_keygen_prints(fed):
    pub = fed.supernode_public_keys[0]
    ours = fingerprint(pub.read_bytes())
    assert ours.startswith("SHA256:") and ours != fingerprint(fed.supernode_public_keys[1].read_bytes())
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed: compared with itself only")
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[1] == ours


def test_refuses_to_replace_a_ca_and_bad_host_names(fed, tmp_path):
    with pytest.raises(FileExistsError, match="ca.key"):
        create_federation(fed.root, ["10.1.2.3"])
    with pytest.raises(ValueError, match="neither an IP address nor a host name"):
        create_federation(tmp_path / "x", ["link.example:9091"])
    assert not (tmp_path / "x").exists()


def test_cli_writes_a_federation(tmp_path, capsys):
    assert certificates.main([str(tmp_path / "c"), "--superlink-host", "127.0.0.1",
                              "--supernodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "supernode-0" in out and fingerprint((tmp_path / "c/supernodes/supernode-0.pub").read_bytes()) in out


# ---- checks before a process starts --------------------------------------------------------
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _link_args(fed, **override) -> list[str]:
    files = {"--ssl-ca-certfile": fed.ca_cert, "--ssl-certfile": fed.superlink_cert,
             "--ssl-keyfile": fed.superlink_key}
    files.update({f"--ssl-{k.replace('_', '-')}": v for k, v in override.items()})
    return ["superlink", *(str(x) for kv in files.items() for x in kv)]


def test_superlink_check_passes_and_names_a_missing_file(fed, tmp_path, capsys):
    assert tls_check.main(_link_args(fed) + ["--superlink-host", "link.example"]) == 0
    missing = tmp_path / "nope.crt"
    assert tls_check.main(_link_args(fed, certfile=missing)) == 2
    assert _one_error_line(capsys) == f"error: {missing}: SuperLink certificate does not exist"
    assert tls_check.main(_link_args(fed, ca_certfile=tmp_path)) == 2
    assert str(tmp_path) in _one_error_line(capsys)


def test_superlink_check_names_a_wrong_file(fed, tmp_path, capsys):
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    assert tls_check.main(_link_args(fed, certfile=garbage)) == 2
    assert f"{garbage}: SuperLink certificate is not a PEM certificate" in _one_error_line(capsys)
    other = create_federation(tmp_path / "other", ["10.1.2.3"], supernodes=0)
    assert tls_check.main(_link_args(fed, keyfile=other.superlink_key)) == 2
    assert "does not belong to" in _one_error_line(capsys)
    assert tls_check.main(_link_args(fed, ca_certfile=other.ca_cert)) == 2
    assert "is not signed by the CA" in _one_error_line(capsys)
    loose = tmp_path / "loose.key"
    loose.write_bytes(fed.superlink_key.read_bytes())
    loose.chmod(0o644)
    assert tls_check.main(_link_args(fed, keyfile=loose)) == 2
    assert f"chmod 600 {loose}" in _one_error_line(capsys)


def test_certificate_for_another_host_says_so(fed, capsys):
    with pytest.raises(WrongHostError, match="not for superlink.other.example"):
        tls_check.check_superlink(fed.ca_cert, fed.superlink_cert, fed.superlink_key,
                                  host="superlink.other.example")
    assert tls_check.main(_link_args(fed) + ["--superlink-host", "10.9.9.9"]) == 2
    line = _one_error_line(capsys)
    assert "is for link.example, localhost, 10.1.2.3, 127.0.0.1, not for 10.9.9.9" in line
    assert "--superlink-host 10.9.9.9" in line


def test_supernode_check_names_its_files(fed, tmp_path, capsys):
    assert tls_check.main(["supernode", "--root-certificates", str(fed.ca_cert),
                           "--auth-supernode-private-key", str(fed.supernode_keys[0])]) == 0
    missing = tmp_path / "ca.crt"
    assert tls_check.main(["supernode", "--root-certificates", str(missing)]) == 2
    assert _one_error_line(capsys) == f"error: {missing}: CA certificate does not exist"
    # a PEM key, not the OpenSSH key Flower's SuperNode reads
    assert tls_check.main(["supernode", "--root-certificates", str(fed.ca_cert),
                           "--auth-supernode-private-key", str(fed.superlink_key)]) == 2
    assert "not an unencrypted OpenSSH private key" in _one_error_line(capsys)
    # a server certificate is no CA
    assert tls_check.main(["supernode", "--root-certificates", str(fed.superlink_cert)]) == 2
    assert "is not a CA certificate" in _one_error_line(capsys)


@contextmanager
def _tls_server(cert: Path | None, key: Path | None) -> Iterator[str]:
    """A loopback server doing TLS handshakes with `cert` (plain TCP when cert is None)."""
    listener = socket.create_server(("127.0.0.1", 0))
    context = None
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                conn.settimeout(5)
                if context is not None:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                else:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_handshake_with_the_right_certificate(tmp_path):
    fed = create_federation(tmp_path, ["127.0.0.1"], supernodes=1)
    with _tls_server(fed.superlink_cert, fed.superlink_key) as address:
        tls_check.check_supernode(fed.ca_cert, fed.supernode_keys[0], superlink=address)


def test_handshake_with_a_certificate_for_another_host(tmp_path, capsys):
    fed = create_federation(tmp_path, ["link.example"], supernodes=0, loopback=False)
    with _tls_server(fed.superlink_cert, fed.superlink_key) as address:
        assert tls_check.main(["supernode", "--root-certificates", str(fed.ca_cert),
                               "--superlink", address]) == 2
    line = _one_error_line(capsys)
    assert "presents a certificate for link.example, not for 127.0.0.1" in line
    assert "--superlink-host 127.0.0.1" in line


def test_handshake_with_another_ca_or_no_tls(tmp_path):
    fed = create_federation(tmp_path / "a", ["127.0.0.1"], supernodes=0)
    other = create_federation(tmp_path / "b", ["127.0.0.1"], supernodes=0)
    with _tls_server(fed.superlink_cert, fed.superlink_key) as address:
        with pytest.raises(CertificateFileError, match="this CA does not verify") as err:
            tls_check.probe_superlink(address, other.ca_cert)
        assert not isinstance(err.value, WrongHostError)
    with _tls_server(None, None) as address:       # an --insecure SuperLink
        with pytest.raises(ConnectionError, match="TLS handshake failed"):
            tls_check.probe_superlink(address, fed.ca_cert)
