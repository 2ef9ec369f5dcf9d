#!/usr/bin/env bash
# The Resampling Forcing experiment of docs/results.md, on the bouncing world.
#
#   STEPS=600 SEEDS="0 1" bash launch/bouncing_rf_experiment.sh
#
# Every arm trains for the same STEPS with the same seeds (data order, initialisation and held-out
# clips follow the seed), then continues 2 context frames of held-out clips for 3x the training
# length. Arms: Teacher Forcing; Resampling Forcing with noise augmentation, parallel and
# autoregressive resampling; autoregressive resampling with history routing (k = 25 % of the
# frames) and with a sliding window of the same k. The last command puts the tables side by side.
set -euo pipefail
STEPS=${STEPS:-600}
SEEDS=${SEEDS:-0}
OUT=${OUT:-runs/rf_experiment}
ARMS=${ARMS:-"teacher_forcing noise_augmentation parallel autoregressive routed window"}
PYTHON=${PYTHON:-python}

for seed in $SEEDS; do
  for arm in $ARMS; do
    case $arm in
      autoregressive) config=configs/bouncing_rf.py ;;
      *) config=configs/bouncing_rf.py:$arm ;;
    esac
    workdir=$OUT/$arm/seed$seed
    if [ -f "$workdir/eval.json" ]; then continue; fi
    $PYTHON -m videoar.main --config="$config" --workdir="$workdir" \
      --config.train.num_steps="$STEPS" --config.seed="$seed"
  done
done

runs=()
for arm in $ARMS; do
  dirs=$(for seed in $SEEDS; do printf '%s,' "$OUT/$arm/seed$seed"; done)
  runs+=("$arm=${dirs%,}")
done
$PYTHON -m videoar.eval.compare "${runs[@]}" --json "$OUT/compare.json"
