#!/usr/bin/env bash
# The Resampling Forcing experiment of docs/results.md, on the bouncing world.
#
#   STEPS=600 SEEDS="0 1" bash launch/bouncing_rf_experiment.sh
#
# Every arm trains for the same STEPS with the same seeds (data order, initialisation and held-out
# clips follow the seed), then continues 2 context frames of held-out clips for 3x the training
# length. Arms: Teacher Forcing; Resampling Forcing with noise augmentation, parallel and
# autoregressive resampling; autoregressive resampling with history routing (k = 25 % of the
# frames) and with a sliding window of the same k. It is one `videoar.sweep`, which runs each
# arm x seed in OUT/ARM/seedS, skips only those finished with these STEPS (a workdir that holds a
# result of other values stops it in one line), and puts the tables side by side in OUT/sweep.md
# and OUT/sweep.json (mean and spread over the seeds).
set -euo pipefail
STEPS=${STEPS:-600}
SEEDS=${SEEDS:-0}
OUT=${OUT:-runs/rf_experiment}
ARMS=${ARMS:-"teacher_forcing noise_augmentation parallel autoregressive routed window"}
PYTHON=${PYTHON:-python}

# Word splitting joins the lists with commas, as the sweep takes them.
arms=$(echo $ARMS | tr ' ' ',')
seeds=$(echo $SEEDS | tr ' ' ',')
exec $PYTHON -m videoar.sweep --config=configs/bouncing_rf.py --arms="$arms" --seeds="$seeds" \
  --root="$OUT" --set=train.num_steps="$STEPS"
