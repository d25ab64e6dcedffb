#!/usr/bin/env bash
# Regenerates every figure and table in results/ (the README's "Expected results") on a CPU:
#   1. the default run (FedAvg, 60 rounds) and the centralised baseline at the same audio budget
#      and learning-rate schedule, each over SEEDS (default 0 1 2);
#   2. the server-optimiser sweep (20 rounds, seed 0): FedAvg; FedAvg with server lr 2 and with
#      server momentum 0.9; FedAdam over tau x server lr (and beta_1 = 0 once); FedYogi; FedLAMB;
#      then the best adaptive setting over the full 60 rounds;
#   3. the user-level DP trade-off: FedAvg, 20 rounds, clipping C=10, noise multipliers 0, 0.5,
#      2, 8, noised and accounted as a deployment of 1000 clients a round out of 100000;
#   4. the summaries: results/summary.csv (+ .md), per-sweep tables and curves, dp_tradeoff.*.
# Measured on an idle 2-core machine: a default run takes 8.5-9 min, a centralised one about
# 11 min, a 20-round run about 3 min; the whole script about 1.5 hours (SEEDS="0": about 45 min).
# Runs already finished under $RUNS are not repeated (delete them to redo).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-outputs/results}
SEEDS=${SEEDS:-0 1 2}
py=${PYTHON:-.venv/bin/python}
export RAY_USAGE_STATS_ENABLED=0 FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1
seeds=$(echo $SEEDS | tr ' ' ',')
started=$(date +%s)

# sweep DIR SUBDIR overrides...: a multirun into $RUNS/DIR unless it finished before
sweep() {
  local dir=$RUNS/$1 subdir=$2; shift 2
  if [ -f "$dir/done" ]; then echo "kept $dir"; return; fi
  local t0; t0=$(date +%s)
  $py -m fedspeech.main --multirun "$@" hydra.sweep.dir="$dir" hydra.sweep.subdir="$subdir"
  echo "$dir: $(( $(date +%s) - t0 )) s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$dir/done"
}

sweep table/fedavg 'seed${seed}' seed="$seeds"
sweep table/central 'seed${seed}' federated=false seed="$seeds"
S=server20            # one tree, so that one summary and one figure cover every job
sweep $S/fedavg fedavg num_rounds=20 strategy=fedavg
sweep $S/fedavg_server_lr 'slr${strategy.builder.server_learning_rate}_m${strategy.builder.server_momentum}' \
  num_rounds=20 strategy=fedavgm strategy.builder.server_momentum=0 strategy.builder.server_learning_rate=2.0
sweep $S/fedavgm 'slr${strategy.builder.server_learning_rate}_m${strategy.builder.server_momentum}' \
  num_rounds=20 strategy=fedavgm strategy.builder.server_momentum=0.9 strategy.builder.server_learning_rate=0.1
opt='${strategy.name}_tau${strategy.builder.tau}_eta${strategy.builder.eta.value}'
sweep $S/fedadam_tau1e-3 "$opt" num_rounds=20 strategy=fedadam strategy.builder.eta.value=3e-3,1e-2,3e-2,1e-1
sweep $S/fedadam_tau1e-2 "$opt" num_rounds=20 strategy=fedadam strategy.builder.tau=0.01 \
  strategy.builder.eta.value=0.03,0.1
sweep $S/fedadam_tau1e-1 "$opt" num_rounds=20 strategy=fedadam strategy.builder.tau=0.1 \
  strategy.builder.eta.value=0.1,0.3,0.6,1.0
sweep $S/fedadam_beta1_0 "${opt}_b1\${strategy.builder.beta_1}" num_rounds=20 strategy=fedadam \
  strategy.builder.tau=0.1 strategy.builder.eta.value=1.0 strategy.builder.beta_1=0.0
sweep $S/fedyogi "$opt" num_rounds=20 strategy=fedyogi strategy.builder.tau=0.01 strategy.builder.eta.value=0.03
sweep $S/fedlamb '${strategy.name}_eta${strategy.builder.eta.value}' num_rounds=20 strategy=fedlamb \
  strategy.builder.eta.value=0.02,0.05
# the best adaptive setting of the sweep at the default's full 60 rounds
sweep fedadam60 'tau${strategy.builder.tau}_eta${strategy.builder.eta.value}' strategy=fedadam \
  strategy.builder.tau=0.1 strategy.builder.eta.value=1.0
sweep dp 'z${strategy.dp.noise_multiplier}' num_rounds=20 strategy/dp=gaussian \
  strategy.dp.clipping=global strategy.dp.clip_norm=10 strategy.dp.virtual_cohort=1000 \
  strategy.dp.virtual_population=100000 strategy.dp.noise_multiplier=0,0.5,2,8

T=$RUNS/table
$py -m fedspeech.analysis.results_table FedAvg="$T/fedavg" centralised="$T/central" --out results/summary.csv
$py -m fedspeech.analysis.sweep "$T" > /dev/null       # every row's WER per round: comparison.png
cp "$T/comparison.png" results/comparison.png
$py -m fedspeech.analysis.sweep "$RUNS/$S" > /dev/null
rm -rf results/server20; mkdir -p results/server20
cp "$RUNS/$S/summary.md" "$RUNS/$S/summary.csv" "$RUNS/$S/comparison.png" results/server20/
cp "$RUNS/fedadam60/tau0.1_eta1.0/history.json" results/server20/fedadam60_history.json
$py -m fedspeech.analysis.dp_tradeoff "$RUNS/dp" --baseline "$T/fedavg/seed0" --round 20 --out results
for name in fedavg central; do
  $py -m fedspeech.analysis.sweep "$T/$name" > /dev/null
  dest=results/$name; rm -rf "$dest"; mkdir -p "$dest"
  cp "$T/$name/summary.md" "$T/$name/summary.csv" "$T/$name/comparison.png" "$dest/"
  cp "$T/$name/seed0/history.json" "$T/$name/seed0/speakers.csv" "$T/$name/seed0/.hydra/overrides.yaml" "$dest/"
  cp "$T/$name"/seed0/plots/*.png "$dest/"
done
$py -m fedspeech.analysis "$T/fedavg/seed0" --baseline "$T/central/seed0" > results/summary_fedavg.txt
cp data/synthetic/partitions/speaker/summary.json results/partition_summary.json
echo "make_results: $(( ($(date +%s) - started) / 60 )) min"
