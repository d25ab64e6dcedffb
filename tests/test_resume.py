"""Kill a federated run mid-way (a real process kill), damage its newest checkpoint, and resume
it: the damaged checkpoint is named, the previous one is used, and the history equals an
unbroken run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_CORPUS, TINY_RUN, read_history, run_module

# what differs between two runs of the same config: timings, memory, and the random node ids
TIMING = {"wall_s", "elapsed_s", "train_wall_s", "client_compute_s", "client_total_s", "eval_s",
          "server_peak_rss_mb", "participant_nodes"}
RUN = [*TINY_CORPUS, *TINY_RUN, "num_rounds=3", "strategy.num_train_nodes=2", "seed=3",
       "strategy=fedadam"]


def _comparable(history: list[dict]) -> list[dict]:
    out = []
    for h in history:
        h = {k: v for k, v in h.items() if k not in TIMING}
        if "clients" in h:
            h["clients"] = {pid: {k: v for k, v in m.items()
                                 if k not in ("client-compute-s", "client-total-s")}
                            for pid, m in h["clients"].items()}
        out.append(h)
    return out


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_history(tiny_data, tmp_path):
    reference = tmp_path / "reference"
    run_module("fedspeech.main", f"paths.data={tiny_data}", *RUN, f"hydra.run.dir={reference}")

    broken = tmp_path / "broken"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "fedspeech.main", f"paths.data={tiny_data}", *RUN,
                             f"hydra.run.dir={broken}"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not (broken / "checkpoints" / "round_0002").is_dir():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "no round-2 checkpoint in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)       # the driver, Ray and its workers, at once
    proc.wait()
    assert len(read_history(broken)) < 4      # round 3 never finished
    newest = sorted((broken / "checkpoints").glob("round_*"))[-1]
    tensors = newest / "arrays.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])          # a truncated write

    proc = run_module("fedspeech.main", f"paths.data={tiny_data}", *RUN, f"hydra.run.dir={broken}",
                      "resume=true")
    assert f"{tensors}: checksum mismatch" in proc.stdout
    assert "falling back to" in proc.stdout and "resuming from" in proc.stdout
    assert _comparable(read_history(broken)) == _comparable(read_history(reference))
