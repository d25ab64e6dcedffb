"""Which public key each registered SuperNode id belongs to, so a run can name who took part.

With `--enable-supernode-auth` the SuperLink creates a node id when a public key is registered
(`flwr supernode register <key.pub> <superlink>`) and from then on accepts Fleet requests for that
id only when they are signed by that key. The ServerApp sees node ids only, so the mapping is kept
where it is made: this command registers the keys through the Flower CLI and writes the ids it
returns, with each key's SHA256 fingerprint, to a registry file

    python -m fedspeech.federation.supernode_registry <superlink-connection> \
        certs/supernodes/*.pub --out certs/registry.json

that the deployment ServerApp reads (run config `supernode-registry`) to write `supernodes.csv`
into the run dir: round, node id, partition id, key fingerprint, outcome.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from fedspeech.federation.certificates import fingerprint
from fedspeech.federation.flower_cli import flower_command
from fedspeech.files import atomic_write_text


@dataclass(frozen=True)
class RegisteredNode:
    node_id: int
    fingerprint: str
    public_key: str        # the file it was registered from


def register_key(public_key: Path, superlink: str) -> RegisteredNode:
    """`flwr supernode register <public_key> <superlink> --format json`; the node id it created."""
    line = public_key.read_bytes()
    print_ = fingerprint(line)
    proc = subprocess.run([flower_command("flwr"), "supernode", "register", str(public_key), superlink,
                           "--format", "json"], capture_output=True, text=True, timeout=120)
    try:
        answer = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        answer = {}
    if not answer.get("success") or "node-id" not in answer:
        why = answer.get("error-message") or proc.stderr or proc.stdout
        raise RuntimeError(f"{public_key}: `flwr supernode register` failed: {' '.join(why.split())}")
    return RegisteredNode(int(answer["node-id"]), print_, str(public_key.resolve()))


def write_registry(path: Path, nodes: list[RegisteredNode]) -> None:
    """Add `nodes` to the registry at `path` (a key registered again replaces its old entry)."""
    known = {n.fingerprint: n for n in load_registry(path).values()} if path.is_file() else {}
    known.update({n.fingerprint: n for n in nodes})
    rows = sorted((asdict(n) for n in known.values()), key=lambda r: r["public_key"])
    atomic_write_text(path, json.dumps({"nodes": rows}, indent=1) + "\n")


def load_registry(path: Path | str) -> dict[int, RegisteredNode]:
    """node id -> registered node, from a file `write_registry` wrote."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SuperNode registry {path} does not exist (write it with "
                                "python -m fedspeech.federation.supernode_registry)")
    try:
        rows = json.loads(path.read_text())["nodes"]
        nodes = [RegisteredNode(int(r["node_id"]), str(r["fingerprint"]), str(r["public_key"]))
                 for r in rows]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"SuperNode registry {path} is not a registry file ({err})") from None
    return {n.node_id: n for n in nodes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedspeech.federation.supernode_registry",
        description="Register SuperNode public keys with a SuperLink (flwr supernode register) "
                    "and record the node id of each.")
    parser.add_argument("superlink", help="name of the SuperLink connection in the Flower config")
    parser.add_argument("public_keys", nargs="+", type=Path, help="OpenSSH public key files")
    parser.add_argument("--out", type=Path, required=True, help="registry file to write or extend")
    args = parser.parse_args(argv)
    registered = []
    try:
        for key in args.public_keys:
            if not key.is_file():
                raise FileNotFoundError(f"{key}: public key does not exist")
            node = register_key(key, args.superlink)
            print(f"registered {key} as node {node.node_id} ({node.fingerprint})", flush=True)
            registered.append(node)
    except (OSError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if registered:
            write_registry(args.out, registered)
    print(f"registry: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
