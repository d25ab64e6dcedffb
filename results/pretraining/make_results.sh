#!/usr/bin/env bash
# Reproduces results/pretraining/ (the README's pretraining evidence) on a CPU: federated HuBERT
# pretraining with federated vs local k-means targets on an unlabelled pool of other voices,
# DistilHuBERT of the federated export, then CTC fine-tuning of each export and of a random
# initialisation of the same architecture at the same fine-tuning budget.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-outputs/pretraining}
DATA=${DATA:-data/pretraining}
export RAY_USAGE_STATS_ENABLED=0 FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1
py=${PY:-.venv/bin/python}
# unlabelled pool: 18 other voices (corpus seed 1) x 40 sentences, 0.65 h; transcripts unused
POOL="paths.data=$DATA/pool dataset.reader.seed=1 dataset.reader.train_sentences=40 dataset.reader.num_unseen_speakers=0 dataset.reader.test_sentences=3"
# labelled fine-tuning corpus: the default voices (seed 0) x 20 sentences, 0.32 h
FT="paths.data=$DATA/ft dataset.reader.train_sentences=20"
FINETUNE="model=hubert model.local_files_only=true model.freeze_feature_encoder=false num_rounds=10 strategy.num_train_nodes=6 eval.max_utterances=100 train.batch_seconds=8"
$py -m fedspeech.main $POOL task=pretrain num_rounds=10 strategy.num_train_nodes=6 hydra.run.dir=$RUNS/pretrain_fed
$py -m fedspeech.main $POOL task=pretrain task.targets=local_kmeans num_rounds=10 strategy.num_train_nodes=6 hydra.run.dir=$RUNS/pretrain_local
$py -m fedspeech.main $POOL task=distill model.teacher=$RUNS/pretrain_fed/export model.student_layers=2 num_rounds=5 strategy.num_train_nodes=6 hydra.run.dir=$RUNS/distill
$py benchmarks/random_init_export.py $RUNS/random_export
for name in random:random_export fed:pretrain_fed/export local:pretrain_local/export distill:distill/export; do
  $py -m fedspeech.main $FT $FINETUNE model.pretrained=$RUNS/${name#*:} hydra.run.dir=$RUNS/ft_${name%%:*}
done
$py results/pretraining/summarise.py $RUNS results/pretraining
