"""Seconds from launching an experiment command to its first finished round.

    python benchmarks/time_to_first_round.py [--repeat N] -- python -m fedspeech.main <overrides>

Runs the command N times in turn and prints, per run and as the median, the wall time until its
output first shows `[round 1/` (the line the run recorder prints when round 1 is recorded) and
until the command exits. Used to compare the two simulation runtimes
(`simulation.runtime=in_process` and `simulation.runtime=flwr_run`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def time_command(cmd: list[str], pattern: str, timeout_s: float) -> tuple[float | None, float, int]:
    """(seconds to the first line containing `pattern` or None, seconds to exit, exit code)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    first = None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if first is None and pattern in line:
            first = time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            break
    code = proc.wait()
    return first, time.monotonic() - t0, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pattern", default="[round 1/")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("give the command after --")
    firsts = []
    for i in range(args.repeat):
        first, total, code = time_command(cmd, args.pattern, args.timeout)
        shown = f"{first:.1f} s" if first is not None else "never"
        print(f"run {i + 1}: first round after {shown}, exit {code} after {total:.1f} s", flush=True)
        if code != 0 or first is None:
            return 1
        firsts.append(first)
    print(f"median time to first round: {statistics.median(firsts):.1f} s over {len(firsts)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
