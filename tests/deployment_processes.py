"""Start and end the processes of a loopback Flower deployment (SuperLink, SuperNodes, `flwr`).

Every process started here, and every process those start, carries one environment variable:
ending them all needs no process names and reaches the processes Flower starts in sessions of
their own (SuperExecs, ServerApp, ClientApps).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent
ENTRY_POINTS = ("flwr", "flower-superlink", "flower-supernode", "flower-superexec",
                "flwr-serverapp", "flwr-clientapp")
TAG_VAR = "FEDSPEECH_DEPLOYMENT_TEST"


def entry_point(name: str) -> str | None:
    return shutil.which(name, path=str(BIN)) or shutil.which(name)


def missing_entry_points() -> list[str]:
    return [name for name in ENTRY_POINTS if entry_point(name) is None]


def free_ports(n: int) -> list[int]:
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


def tagged_pids(tag: str) -> list[int]:
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


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else "(no log)"


class Deployment:
    """The processes of one loopback federation, each with its own FLWR_HOME and log file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tag = uuid.uuid4().hex
        self.cli_home = self.root / "flwr-home-cli"      # the Flower configuration of `flwr`
        self.cli_home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, TAG_VAR: self.tag, "FLWR_HOME": str(self.cli_home),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def write_connection(self, name: str, address: str, root_certificates: Path | None) -> None:
        """The `flwr` CLI's connection `name` (its default): TLS with that CA, or insecure."""
        tls = (f'root-certificates = "{root_certificates}"\n' if root_certificates is not None
               else "insecure = true\n")
        (self.cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{tls}')

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start a Flower process; each gets its own FLWR_HOME, as on separate machines (Flower
        installs the FAB there, and concurrent installs into one directory can race)."""
        home = self.root / f"flwr-home-{name}"
        home.mkdir()
        self.logs[name] = self.root / f"{name}.log"
        with self.logs[name].open("w") as out:
            proc = subprocess.Popen([entry_point(args[0]) or args[0], *args[1:]], cwd=self.root,
                                    env={**self.env, "FLWR_HOME": str(home)},
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, name: str, args: list[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        """Run a command to its end (`flwr run`, `python -m ...`), its output in the log `name`."""
        self.logs[name] = self.root / f"{name}.log"
        with self.logs[name].open("w") as out:
            return subprocess.run(args, cwd=cwd, env=self.env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout)

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""

    def all_logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{tail(path)}" for name, path in self.logs.items())

    def wait_exit(self, name: str, timeout_s: float) -> int | None:
        """The exit code of process `name`, or None if it still runs after `timeout_s`."""
        try:
            return self.procs[name].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop_all(self, grace_s: float = 15.0) -> None:
        """SIGTERM everything carrying the tag, then SIGKILL what is left."""
        procs = list(self.procs.values())
        _signal([p.pid for p in procs if p.poll() is None] + tagged_pids(self.tag), signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (tagged_pids(self.tag)
                                               or any(p.poll() is None for p in procs)):
            time.sleep(0.2)
        _signal([p.pid for p in procs if p.poll() is None] + tagged_pids(self.tag), signal.SIGKILL)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def leftover_pids(self) -> list[int]:
        return tagged_pids(self.tag)


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float, cafile: Path | None = None) -> None:
    """Until `url` answers 200 (https verified against `cafile`), the process dies, or timeout."""
    context = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f} s")
