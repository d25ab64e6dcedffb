"""One Ray cluster for the suite's federated runs, started on first use and stopped at the end.

A run that starts its own Ray spends about 10 s of a 2-core machine on it (GCS, raylet, dashboard,
agents, log monitor, then the shutdown); a run that joins a running cluster through
`ray_init_args.address` spends under one. Joining is also how a multi-node deployment runs, so
the suite covers that path; a few tests still start their own Ray, as a user's first run does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deployment_processes import free_ports


class SharedRayCluster:
    """`ray start --head --block` in its own process group, on this machine's cores."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.address: str | None = None
        self._proc: subprocess.Popen | None = None
        self._temp_dir: Path | None = None

    def start(self, timeout_s: float = 120.0) -> str:
        """The running cluster's `host:port`, starting it first if needed."""
        if self.address is not None:
            return self.address
        # Ray's socket paths live under the temp dir and must stay short (AF_UNIX limit)
        self._temp_dir = Path(tempfile.mkdtemp(prefix="fsray-"))
        port, = free_ports(1)
        ray = Path(sys.executable).with_name("ray")
        # the workers inherit this process's environment (not the joining driver's)
        with (self._temp_dir / "ray_start.log").open("w") as log:
            self._proc = subprocess.Popen(
                [str(ray), "start", "--head", "--block", f"--port={port}",
                 "--node-ip-address=127.0.0.1", f"--num-cpus={os.cpu_count()}", "--num-gpus=0",
                 "--include-dashboard=false", "--disable-usage-stats",
                 f"--temp-dir={self._temp_dir}"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        ready = self._temp_dir / "ray_current_cluster"      # written once the head is up
        deadline = time.monotonic() + timeout_s
        while not ready.is_file():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                output = (self._temp_dir / "ray_start.log").read_text()[-3000:]
                self.stop()
                raise RuntimeError(f"the suite's Ray cluster did not start:\n{output}")
            time.sleep(0.2)
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        """SIGTERM to the head's process group (raylet, GCS, agents, workers), then SIGKILL."""
        if self._proc is not None:
            for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self._proc.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + grace_s
                while time.monotonic() < deadline:
                    self._proc.poll()          # reap the head, or it counts as alive
                    if not _group_alive(self._proc.pid):
                        break
                    time.sleep(0.2)
            self._proc.wait()
            self._proc = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        self.address = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
