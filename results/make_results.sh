#!/usr/bin/env bash
# Reproduces the figures and tables in results/ (the README's "Expected results") on a CPU.
# Each run is the embedded default (30 rounds); together they take about 30-40 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-outputs/results}
export RAY_USAGE_STATS_ENABLED=0 FLWR_TELEMETRY_ENABLED=0
py=.venv/bin/python
$py -m fedspeech.main --multirun num_rounds=30 strategy=fedavg,fedadam hydra.sweep.dir=$RUNS/fl hydra.sweep.subdir='${strategy.name}'
$py -m fedspeech.main num_rounds=30 federated=false hydra.run.dir=$RUNS/central
$py -m fedspeech.analysis.sweep $RUNS/fl
$py -m fedspeech.analysis $RUNS/fl/fedavg --baseline $RUNS/central | tee results/summary_fedavg.txt
$py -m fedspeech.analysis $RUNS/fl/fedadam --baseline $RUNS/central | tee results/summary_fedadam.txt
$py -m fedspeech.analysis $RUNS/central | tee results/summary_central.txt
for name in fl/fedavg fl/fedadam central; do
  dest=results/$(basename $name); mkdir -p $dest
  cp $RUNS/$name/history.json $RUNS/$name/speakers.csv $dest/
  cp $RUNS/$name/plots/*.png $dest/
  cp $RUNS/$name/.hydra/overrides.yaml $dest/
done
cp $RUNS/fl/summary.md $RUNS/fl/summary.csv $RUNS/fl/comparison.png results/
cp data/synthetic/partitions/speaker/summary.json results/partition_summary.json
