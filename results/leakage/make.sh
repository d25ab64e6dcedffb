#!/usr/bin/env bash
# What the exchanged updates reveal about speakers, layer by layer, with and without user-level DP
# (the README's "Privacy: what the updates reveal"). Embedded corpus, tiny model, 3 rounds with
# all 18 clients sampled and recorded; FedAvg, then the strategy/dp=gaussian preset
# (z = 1, C = 1 per-layer clipping: epsilon 9.25 at delta 1e-6 after 3 rounds).
# Run from anywhere; set PY to another interpreter if .venv is not the environment.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-outputs/leakage}
PY=${PY:-.venv/bin/python}
export RAY_USAGE_STATS_ENABLED=0 FLWR_TELEMETRY_ENABLED=0
common=(num_rounds=3 strategy.fraction_train=1.0 record_updates=true)
nice -n 15 $PY -m fedspeech.main "${common[@]}" hydra.run.dir=$RUNS/fedavg
nice -n 15 $PY -m fedspeech.main "${common[@]}" strategy/dp=gaussian hydra.run.dir=$RUNS/dp
nice -n 15 $PY -m fedspeech.analysis.leakage $RUNS/dp --threads 1 | tee results/leakage/dp.txt
nice -n 15 $PY -m fedspeech.analysis.leakage $RUNS/fedavg --baseline $RUNS/dp --threads 1 \
    | tee results/leakage/fedavg.txt
for name in fedavg dp; do
  mkdir -p results/leakage/$name
  cp $RUNS/$name/leakage.csv $RUNS/$name/leakage_indicator.csv $RUNS/$name/history.json \
     $RUNS/$name/updates/index.csv $RUNS/$name/.hydra/overrides.yaml results/leakage/$name/
done
cp $RUNS/fedavg/plots/leakage.png results/leakage/leakage.png
