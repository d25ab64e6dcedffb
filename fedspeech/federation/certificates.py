"""The key material of a TLS federation with SuperNode authentication, made with `cryptography`.

    python -m fedspeech.federation.certificates <dir> --superlink-host <name or IP> [--supernodes N]

writes into `<dir>`:

    ca.crt, ca.key                 the federation's certificate authority (keep ca.key offline)
    superlink.crt, superlink.key   the SuperLink's TLS certificate, for that host name or address
    supernodes/supernode-<i>       each SuperNode's private key (OpenSSH format, ECDSA P-384)
    supernodes/supernode-<i>.pub   its public key, which `flwr supernode register` takes

Private keys are written with mode 0600. The SuperLink certificate names the given host and also
127.0.0.1 and localhost: the SuperLink starts its own ServerApp executor, which reaches it over
loopback through the same TLS port, so a certificate without them breaks every run.

Flower reads the SuperNode keys with `load_ssh_private_key` / `load_ssh_public_key` and accepts
only NIST curves; P-384 is what Flower's own documentation uses.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SUPERLINK_CERT = "superlink.crt"
SUPERLINK_KEY = "superlink.key"
SUPERNODE_DIR = "supernodes"
#: names the SuperLink certificate always carries (its own executor connects over loopback)
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
CURVE = ec.SECP384R1


@dataclass(frozen=True)
class FederationFiles:
    """Where `create_federation` put each file."""

    root: Path
    supernode_keys: list[Path]

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def superlink_cert(self) -> Path:
        return self.root / SUPERLINK_CERT

    @property
    def superlink_key(self) -> Path:
        return self.root / SUPERLINK_KEY

    @property
    def supernode_public_keys(self) -> list[Path]:
        return [public_key_path(k) for k in self.supernode_keys]


def public_key_path(private_key: Path) -> Path:
    return private_key.with_name(private_key.name + ".pub")


def host_entry(host: str) -> x509.GeneralName:
    """A subject-alternative-name entry: an IP address if `host` parses as one, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c.isspace() for c in host) or "/" in host or ":" in host:
            raise ValueError(f"--superlink-host {host!r} is neither an IP address nor a host name") \
                from None
        return x509.DNSName(host)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (a private key is never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)        # O_CREAT's mode is masked by the umask, and ignored for old files


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedspeech federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(now: datetime.datetime, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(CURVE())
    name = _name("fedspeech federation CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    return key, cert


def _server_cert(hosts: list[str], ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                 now: datetime.datetime, days: int,
                 loopback: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(CURVE())
    names: list[x509.GeneralName] = []
    for host in [*hosts, *(LOOPBACK_NAMES if loopback else ())]:
        entry = host_entry(host)
        if entry not in names:
            names.append(entry)
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    return key, cert


def supernode_keypair(path: Path, comment: str) -> Path:
    """An ECDSA P-384 key pair in OpenSSH format: `path` (0600) and `path.pub`."""
    key = ec.generate_private_key(CURVE())
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), PRIVATE_MODE)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    _write(public_key_path(path), public + f" {comment}\n".encode(), PUBLIC_MODE)
    return path


def fingerprint(public_key_line: bytes | str) -> str:
    """`SHA256:<base64>` of an OpenSSH public key, the form `ssh-keygen -lf` prints."""
    text = public_key_line.decode() if isinstance(public_key_line, bytes) else public_key_line
    parts = text.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line ('<type> <base64> [comment]')")
    blob = base64.b64decode(parts[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def create_federation(root: Path, superlink_hosts: list[str], *, supernodes: int = 2,
                      days: int = 365, overwrite: bool = False,
                      loopback: bool = True) -> FederationFiles:
    """Write a CA, a SuperLink certificate for `superlink_hosts` and `supernodes` key pairs.

    `loopback=False` leaves 127.0.0.1/localhost out: only for a SuperLink started with `--host`
    set to one of `superlink_hosts`, whose executor then connects to that address instead.
    """
    if not superlink_hosts:
        raise ValueError("give the SuperLink's host name or IP address (--superlink-host)")
    if supernodes < 0:
        raise ValueError(f"--supernodes must be >= 0, got {supernodes}")
    for host in superlink_hosts:
        host_entry(host)                         # a bad name fails before anything is written
    root = Path(root)
    if not overwrite and (root / CA_KEY).exists():
        raise FileExistsError(f"{root / CA_KEY} exists: a second CA would not verify the "
                              "certificates made with the first (pass --overwrite to replace it)")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ca_cert = _ca(now, days)
    link_key, link_cert = _server_cert(list(superlink_hosts), ca_key, ca_cert, now, days, loopback)
    _write(root / CA_KEY, _pem_key(ca_key), PRIVATE_MODE)
    _write(root / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    _write(root / SUPERLINK_KEY, _pem_key(link_key), PRIVATE_MODE)
    _write(root / SUPERLINK_CERT, link_cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    keys = [supernode_keypair(root / SUPERNODE_DIR / f"supernode-{i}", f"fedspeech-supernode-{i}")
            for i in range(supernodes)]
    return FederationFiles(root, keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedspeech.federation.certificates",
        description="Create the CA, the SuperLink TLS certificate and SuperNode key pairs of a "
                    "federation.")
    parser.add_argument("dir", type=Path, help="folder to write the files into")
    parser.add_argument("--superlink-host", action="append", required=True, metavar="HOST",
                        help="host name or IP address SuperNodes and `flwr` use to reach the "
                             "SuperLink (repeat for several)")
    parser.add_argument("--supernodes", type=int, default=2, help="SuperNode key pairs to make")
    parser.add_argument("--days", type=int, default=365, help="validity of the certificates")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing CA")
    parser.add_argument("--no-loopback", action="store_true",
                        help="leave 127.0.0.1 and localhost out of the SuperLink certificate (only "
                             "when flower-superlink --host is one of the --superlink-host values)")
    args = parser.parse_args(argv)
    try:
        files = create_federation(args.dir, args.superlink_host, supernodes=args.supernodes,
                                  days=args.days, overwrite=args.overwrite,
                                  loopback=not args.no_loopback)
    except (ValueError, FileExistsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"CA:                {files.ca_cert}  (private key {files.root / CA_KEY}, keep it offline)")
    print(f"SuperLink:         {files.superlink_cert}, {files.superlink_key}  "
          f"for {', '.join(args.superlink_host)}"
          + ("" if args.no_loopback else f" (+ {', '.join(LOOPBACK_NAMES)})"))
    for key in files.supernode_keys:
        pub = public_key_path(key)
        print(f"SuperNode key:     {key}  public {pub}  {fingerprint(pub.read_bytes())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
