#!/usr/bin/env bash
# Regenerates every figure and table in results/ (the README's "Expected results") on a CPU:
#   1. FedAvg, FedAvgM and FedAdam (the default embedded run, each strategy's conf/ settings) and
#      the centralised baseline at the same audio budget, each over SEEDS (default 0 1 2);
#   2. the user-level DP trade-off: FedAvg with clipping C=10 and noise multipliers 0, 0.5, 1, 2,
#      noised and accounted as a deployment of 1000 clients a round out of 100000 (10 rounds, one
#      client at a time: 2 cores per client);
#   3. the summaries: results/summary.csv (+ .md), per-sweep tables and curves, dp_tradeoff.*.
# One default run takes about 8-10 min on an otherwise idle 2-core machine: the whole script
# (12 runs of 35 rounds, 4 DP runs of 10) about 2-2.5 hours. SEEDS="0" does one seed per row
# (about 50 min). Runs already finished under $RUNS are not repeated (delete them to redo).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-outputs/results}
SEEDS=${SEEDS:-0 1 2}
py=${PYTHON:-.venv/bin/python}
export RAY_USAGE_STATS_ENABLED=0 FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1
seeds=$(echo $SEEDS | tr ' ' ',')
started=$(date +%s)

# run NAME overrides...: a multirun into $RUNS/table/NAME unless it finished before
run() {
  local name=$1; shift
  if [ -f "$RUNS/table/$name/done" ]; then echo "kept $RUNS/table/$name"; return; fi
  local t0; t0=$(date +%s)
  $py -m fedspeech.main --multirun "$@" hydra.sweep.dir="$RUNS/table/$name" hydra.sweep.subdir='seed${seed}'
  echo "$name: $(( $(date +%s) - t0 )) s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$RUNS/table/$name/done"
}

run fedavg strategy=fedavg seed="$seeds"
run fedavgm strategy=fedavgm seed="$seeds"
run fedadam strategy=fedadam seed="$seeds"
run central federated=false seed="$seeds"
if [ ! -f "$RUNS/dp/done" ]; then
  $py -m fedspeech.main --multirun num_rounds=10 eval.every=5 client_resources.num_cpus=2 strategy/dp=gaussian \
    strategy.dp.clipping=global strategy.dp.clip_norm=10 strategy.dp.virtual_cohort=1000 \
    strategy.dp.virtual_population=100000 strategy.dp.noise_multiplier=0,0.5,1,2 \
    hydra.sweep.dir="$RUNS/dp" hydra.sweep.subdir='z${strategy.dp.noise_multiplier}'
  touch "$RUNS/dp/done"
fi

T=$RUNS/table
$py -m fedspeech.analysis.results_table FedAvg="$T/fedavg" FedAvgM="$T/fedavgm" \
  FedAdam="$T/fedadam" centralised="$T/central" --out results/summary.csv
$py -m fedspeech.analysis.sweep "$T" > /dev/null       # every row's WER per round: comparison.png
cp "$T/comparison.png" results/comparison.png
$py -m fedspeech.analysis.dp_tradeoff "$RUNS/dp" --out results
for name in fedavg fedavgm fedadam central; do
  $py -m fedspeech.analysis.sweep "$T/$name" > /dev/null
  dest=results/$name; mkdir -p "$dest"
  cp "$T/$name/summary.md" "$T/$name/summary.csv" "$T/$name/comparison.png" "$dest/"
  first=$(ls -d "$T/$name"/seed* | head -1)
  cp "$first/history.json" "$first/speakers.csv" "$first/.hydra/overrides.yaml" "$dest/"
  cp "$first"/plots/*.png "$dest/"
done
for name in fedavg fedavgm fedadam; do
  $py -m fedspeech.analysis "$T/$name/seed0" --baseline "$T/central/seed0" > "results/summary_$name.txt"
done
cp data/synthetic/partitions/speaker/summary.json results/partition_summary.json
echo "make_results: $(( ($(date +%s) - started) / 60 )) min"
