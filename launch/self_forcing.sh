#!/usr/bin/env bash
# Self Forcing on the bouncing world, every stage of configs/bouncing_sf.py in order, each reading
# the one before from its workdir under runs/bouncing_sf/ (VARIANT=test: tiny shapes, a smoke
# run, under runs/bouncing_sf_test/):
#   1. the bidirectional teacher;
#   2. ODE pairs from the teacher's 16-step Euler solutions at the student's 4 warped times;
#   3. ODE regression of the causal few-step student onto them, then its 4-step samples and
#      evaluation on the world;
#   4. Self Forcing (DMD against the teacher, an online critic), then its 4-step samples and
#      evaluation.
# A stage whose workdir holds a finished run is not trained again. SEED=S (default 0) runs every
# stage with config.seed S under runs/bouncing_sf_seedS/ (the teacher, its pairs and both
# students of that seed: a seed of the whole pipeline). VARIANT=occluded or moving_mnist runs
# every stage on that world, under runs/bouncing_sf_occluded/ or runs/bouncing_sf_moving_mnist/
# (a VARIANT's commas become underscores in the directory's name).
#
#   bash launch/self_forcing.sh   # 43 min on 2 loaded cores, 20 min idle (docs/results.md)
#   VARIANT=test PAIRS=8 bash launch/self_forcing.sh   # the smoke run (about 2 min)
# Its ODE stage is evaluated on the world (configs/bouncing_sf.py:ode,world), not on the pairs it
# trained on, so that evaluation prints a note naming the data keys that differ.
set -euo pipefail
VARIANT=${VARIANT:-}
SEED=${SEED:-0}
PYTHON=${PYTHON:-python}
SUFFIX=${VARIANT:+,$VARIANT}
RUNS=runs/bouncing_sf${VARIANT:+_${VARIANT//,/_}}
[ "$SEED" = 0 ] || RUNS=${RUNS}_seed$SEED
# Every stage gets the seed, and the workdirs of the stages before it are passed from $RUNS:
# configs/bouncing_sf.py names only seed 0's.
SEEDED=(--config.seed="$SEED")
PAIRS=${PAIRS:-2048}
config() { echo "configs/bouncing_sf.py:$1$SUFFIX"; }
config_main() { if [ -n "$VARIANT" ]; then echo "configs/bouncing_sf.py:$VARIANT"; else echo "configs/bouncing_sf.py"; fi; }
finished() { [ -f "$1/eval.json" ] || [ -f "$1/.trained" ]; }

if ! finished "$RUNS/teacher"; then
  $PYTHON -m videoar.main --config="$(config teacher)" "${SEEDED[@]}" --workdir="$RUNS/teacher" \
    --mode=train
  touch "$RUNS/teacher/.trained"
fi
if [ ! -f "$RUNS/ode_pairs/ode_pairs.json" ]; then
  $PYTHON -m videoar.ode_pairs --config="$(config teacher)" "${SEEDED[@]}" \
    --teacher_workdir="$RUNS/teacher" \
    --output="$RUNS/ode_pairs" --num_sequences="$PAIRS" --solver_steps=16
fi
if ! finished "$RUNS/ode"; then
  $PYTHON -m videoar.main --config="$(config ode)" "${SEEDED[@]}" \
    --config.data.path="$RUNS/ode_pairs" --workdir="$RUNS/ode" --mode=train
  $PYTHON -m videoar.main --config="$(config ode,world)" "${SEEDED[@]}" --workdir="$RUNS/ode" \
    --mode=evaluate
fi
if ! finished "$RUNS/self_forcing"; then
  $PYTHON -m videoar.main --config="$(config_main)" "${SEEDED[@]}" \
    --config.forcing.teacher_workdir="$RUNS/teacher" \
    --config.forcing.generator_workdir="$RUNS/ode" --workdir="$RUNS/self_forcing"
fi
