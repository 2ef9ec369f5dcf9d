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
# A stage whose workdir holds a finished run is not trained again, nor evaluated again once
# evaluated at its last step. A stage that stops before its last step (a SIGTERM: videoar.main
# saves and exits 0, a planned stop) is not passed on: the script says so in one line and exits
# 0, and running it again resumes that stage from its newest checkpoint. ODE pairs made from
# another step of the teacher than its newest stop the script in one line, status 2.
# SEED=S (default 0) runs every stage with config.seed S under runs/bouncing_sf_seedS/ (the
# teacher, its pairs and both students of that seed: a seed of the whole pipeline).
# VARIANT=occluded or moving_mnist runs every stage on that world, under
# runs/bouncing_sf_occluded/ or runs/bouncing_sf_moving_mnist/ (a VARIANT's commas become
# underscores in the directory's name).
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
# videoar.sweep's checks of a stage's workdir, from its checkpoints, run.json and eval.json (not
# from marker files: an older script's .trained was touched after a preempted stage too):
# "trained", its newest finished checkpoint reached its run.json's train.num_steps; "evaluated",
# its eval.json is of that step. Exit status 1 for no; a run.json or eval.json that cannot be
# read stops the script with its one line (status 2).
check() {
  local status=0
  $PYTHON -c '
import sys
from videoar import errors, sweep
from videoar.train import workdir as workdir_lib
check, workdir = sys.argv[1:]
try:
  if check == "trained":
    record = workdir_lib.RunRecord.load(workdir)
    done = bool(record) and sweep.trained(workdir, record.config["train"]["num_steps"])
  else:
    done = sweep.unfinished(workdir) is None
except errors.UserError as e:
  errors.exit_with_error(str(e))
sys.exit(0 if done else 1)' "$1" "$2" || status=$?
  [ "$status" -le 1 ] || exit "$status"
  return "$status"
}
# After a stage's training command: a stage stopped before its last step ends the script (exit
# status 0, as videoar.main's after a planned stop), so that nothing reads a half-trained stage.
stop_unless_trained() {
  if ! check trained "$1"; then
    echo "launch/self_forcing.sh: the $2 stage stopped before its last step (train.num_steps)" \
      "in $1; run the script again to resume it" >&2
    exit 0
  fi
}

if ! check trained "$RUNS/teacher"; then
  $PYTHON -m videoar.main --config="$(config teacher)" "${SEEDED[@]}" --workdir="$RUNS/teacher" \
    --mode=train
  stop_unless_trained "$RUNS/teacher" teacher
fi
if [ ! -f "$RUNS/ode_pairs/ode_pairs.json" ]; then
  $PYTHON -m videoar.ode_pairs --config="$(config teacher)" "${SEEDED[@]}" \
    --teacher_workdir="$RUNS/teacher" \
    --output="$RUNS/ode_pairs" --num_sequences="$PAIRS" --solver_steps=16
fi
# Pairs of another teacher step than the teacher's newest (videoar.ode_pairs.stale_problem) stop
# the script in one line, status 2: the stages after them were trained from them too, so nothing
# is moved or made again here.
$PYTHON -c '
import sys
from videoar import errors, ode_pairs
pairs, teacher, ode, self_forcing = sys.argv[1:]
try:
  problem = ode_pairs.stale_problem(pairs, teacher)
except errors.UserError as e:
  errors.exit_with_error(str(e))
if problem:
  errors.exit_with_error(f"launch/self_forcing.sh: {problem}; move {pairs} aside, and {ode} and"
                         f" {self_forcing} if they were trained from it, then run the script again")
' "$RUNS/ode_pairs" "$RUNS/teacher" "$RUNS/ode" "$RUNS/self_forcing"
if ! check trained "$RUNS/ode"; then
  $PYTHON -m videoar.main --config="$(config ode)" "${SEEDED[@]}" \
    --config.data.path="$RUNS/ode_pairs" --workdir="$RUNS/ode" --mode=train
  stop_unless_trained "$RUNS/ode" ODE
fi
if ! check evaluated "$RUNS/ode"; then
  $PYTHON -m videoar.main --config="$(config ode,world)" "${SEEDED[@]}" --workdir="$RUNS/ode" \
    --mode=evaluate
fi
SELF_FORCING=(--config="$(config_main)" "${SEEDED[@]}"
              --config.forcing.teacher_workdir="$RUNS/teacher"
              --config.forcing.generator_workdir="$RUNS/ode" --workdir="$RUNS/self_forcing")
# --mode=all refuses a workdir trained to its last step ("already reached step N"): a stage
# trained, but stopped while sampling or evaluating, is sampled and evaluated on its own.
if ! check trained "$RUNS/self_forcing"; then
  $PYTHON -m videoar.main "${SELF_FORCING[@]}" --mode=all  # train, then sample and evaluate
  stop_unless_trained "$RUNS/self_forcing" "Self Forcing"
elif ! check evaluated "$RUNS/self_forcing"; then
  $PYTHON -m videoar.main "${SELF_FORCING[@]}" --mode=sample
  $PYTHON -m videoar.main "${SELF_FORCING[@]}" --mode=evaluate
fi
