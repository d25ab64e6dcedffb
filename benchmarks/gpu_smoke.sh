#!/usr/bin/env bash
# The GPU path in one go (<= 8 min): see benchmarks/gpu_smoke.py. Run on a CUDA machine from the
# repository root after `make setup`, or with PYTHON=<an interpreter that has the locked packages>.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1
exec timeout 480 "${PYTHON:-.venv/bin/python}" benchmarks/gpu_smoke.py "$@"
