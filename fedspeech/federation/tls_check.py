"""Check a TLS federation's files before a SuperLink or SuperNode is started with them.

Flower finds a missing certificate only when the process starts, and a certificate made for
another host name only when a SuperNode's handshake fails, in words about gRPC channels or
HTTP connection errors. These checks take the same paths as the Flower command they precede and
say in one line which file is wrong and why:

    python -m fedspeech.federation.tls_check superlink --ssl-ca-certfile certs/ca.crt \
        --ssl-certfile certs/superlink.crt --ssl-keyfile certs/superlink.key --superlink-host HOST
    python -m fedspeech.federation.tls_check supernode --root-certificates certs/ca.crt \
        --auth-supernode-private-key certs/supernodes/supernode-0 --superlink HOST:9091

The SuperNode check also opens a TLS connection to a running SuperLink (`--superlink`) and
verifies its certificate against the CA and the host name, as the SuperNode will.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import socket
import ssl
import stat
import sys
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class CertificateFileError(ValueError):
    """A certificate or key file that cannot be used, with the file's path first."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {reason}")


class WrongHostError(CertificateFileError):
    """A certificate that does not name the host SuperNodes and `flwr` use to reach it."""


def read_bytes(path: Path | str, what: str) -> bytes:
    """The file's bytes, or one error naming it: missing, not a file, unreadable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CertificateFileError(path, f"{what} does not exist")
    if not path.is_file():
        raise CertificateFileError(path, f"{what} is not a file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise CertificateFileError(path, f"{what} cannot be read ({err.strerror})") from None


def load_certificate(path: Path | str, what: str) -> x509.Certificate:
    data = read_bytes(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateFileError(path, f"{what} is not a PEM certificate") from None


def check_private_mode(path: Path | str, what: str) -> None:
    """A private key readable by the group or others is a leak waiting to happen: refuse it."""
    mode = stat.S_IMODE(Path(path).expanduser().stat().st_mode)
    if mode & 0o077:
        raise CertificateFileError(path, f"{what} is readable by others (mode {mode:04o}): "
                                         f"chmod 600 {path}")


def load_pem_private_key(path: Path | str, what: str) -> ec.EllipticCurvePrivateKey:
    data = read_bytes(path, what)
    check_private_mode(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateFileError(path, f"{what} is not an unencrypted PEM private key") from None
    return key  # type: ignore[return-value]


def load_supernode_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """The key `flower-supernode --auth-supernode-private-key` takes: OpenSSH, elliptic curve."""
    what = "SuperNode private key"
    data = read_bytes(path, what)
    check_private_mode(path, what)
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateFileError(path, f"{what} is not an unencrypted OpenSSH private key "
                                         "(make one with python -m fedspeech.federation.certificates)") \
            from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateFileError(path, f"{what} is not an elliptic-curve (ECDSA) key, which "
                                         "Flower's SuperNode authentication needs")
    return key


def certificate_hosts(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate's subject-alternative-name extension holds."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def names_host(cert: x509.Certificate, host: str) -> bool:
    """Whether TLS host-name verification of `host` against `cert` succeeds (SAN only)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    host = host.lower().rstrip(".")
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def require_host(cert: x509.Certificate, path: Path | str, host: str) -> None:
    if not names_host(cert, host):
        names = ", ".join(certificate_hosts(cert)) or "no host names"
        raise WrongHostError(path, f"certificate is for {names}, not for {host}: SuperNodes "
                                   f"reaching {host} will refuse it (re-create it with "
                                   f"python -m fedspeech.federation.certificates <dir> "
                                   f"--superlink-host {host})")


def _require_valid_now(cert: x509.Certificate, path: Path | str, what: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    if now < cert.not_valid_before_utc:
        raise CertificateFileError(path, f"{what} is not valid before {cert.not_valid_before_utc}")
    if now > cert.not_valid_after_utc:
        raise CertificateFileError(path, f"{what} expired on {cert.not_valid_after_utc}")


def check_ca(ca_certfile: Path | str) -> x509.Certificate:
    ca = load_certificate(ca_certfile, "CA certificate")
    _require_valid_now(ca, ca_certfile, "CA certificate")
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateFileError(ca_certfile, "is not a CA certificate (no CA basic constraint)")
    return ca


def check_superlink(ca_certfile: Path | str, certfile: Path | str, keyfile: Path | str,
                    host: str | None = None) -> None:
    """The three files `flower-superlink --ssl-*` takes: readable, matching, signed, for `host`."""
    ca = check_ca(ca_certfile)
    cert = load_certificate(certfile, "SuperLink certificate")
    key = load_pem_private_key(keyfile, "SuperLink private key")
    _require_valid_now(cert, certfile, "SuperLink certificate")
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertificateFileError(keyfile, f"private key does not belong to {certfile}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateFileError(certfile, f"certificate is not signed by the CA {ca_certfile}") \
            from None
    if host is not None:
        require_host(cert, certfile, host)


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--superlink {address!r} is not host:port")
    return host.strip("[]"), int(port)


def probe_superlink(address: str, ca_certfile: Path | str, timeout_s: float = 5.0) -> None:
    """Handshake with the SuperLink at `address` as a SuperNode would: CA and host name checked."""
    host, port = split_address(address)
    context = ssl.create_default_context(cafile=str(Path(ca_certfile).expanduser()))
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return
    except ssl.SSLCertVerificationError as err:
        presented = _presented_certificate(host, port, timeout_s)
        if err.verify_code == 62 or "mismatch" in str(err.verify_message).lower():
            names = ", ".join(certificate_hosts(presented)) if presented else "other names"
            raise WrongHostError(address, f"the SuperLink presents a certificate for {names}, not "
                                          f"for {host}: re-create it with python -m "
                                          f"fedspeech.federation.certificates <dir> "
                                          f"--superlink-host {host}") from None
        raise CertificateFileError(ca_certfile, f"the SuperLink at {address} presents a "
                                                f"certificate this CA does not verify "
                                                f"({err.verify_message})") from None
    except ssl.SSLError as err:
        raise ConnectionError(f"{address}: TLS handshake failed ({err.reason}); is it a TLS "
                              "SuperLink (started without --insecure)?") from None
    except OSError as err:
        raise ConnectionError(f"{address}: cannot connect ({err.strerror or err})") from None


def _presented_certificate(host: str, port: int, timeout_s: float) -> x509.Certificate | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock, \
                context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der) if der else None


def check_supernode(root_certificates: Path | str, private_key: Path | str | None = None,
                    superlink: str | None = None) -> None:
    """What `flower-supernode --root-certificates ... --auth-supernode-private-key ...` needs."""
    check_ca(root_certificates)
    if private_key is not None:
        load_supernode_key(private_key)
    if superlink is not None:
        probe_superlink(superlink, root_certificates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedspeech.federation.tls_check",
                                     description="Check TLS files before starting Flower with them.")
    roles = parser.add_subparsers(dest="role", required=True)
    link = roles.add_parser("superlink", help="the files of flower-superlink --ssl-*")
    link.add_argument("--ssl-ca-certfile", required=True)
    link.add_argument("--ssl-certfile", required=True)
    link.add_argument("--ssl-keyfile", required=True)
    link.add_argument("--superlink-host", help="the name SuperNodes use to reach the SuperLink")
    node = roles.add_parser("supernode", help="the files of flower-supernode")
    node.add_argument("--root-certificates", required=True)
    node.add_argument("--auth-supernode-private-key")
    node.add_argument("--superlink", help="host:port of a running SuperLink to handshake with")
    args = parser.parse_args(argv)
    try:
        if args.role == "superlink":
            check_superlink(args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile,
                            args.superlink_host)
        else:
            check_supernode(args.root_certificates, args.auth_supernode_private_key, args.superlink)
    except (CertificateFileError, ConnectionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"ok: {args.role} TLS files" + (" and handshake" if getattr(args, "superlink", None) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
