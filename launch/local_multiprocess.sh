#!/usr/bin/env bash
# NUM_PROCESSES CPU processes on this machine joined by jax.distributed: a multi-host run in
# miniature, for testing. Every process runs `python -m videoar.main --distributed --mode=train`
# with the arguments given here; process i is told its index through JAX_PROCESS_ID.
#
#   NUM_PROCESSES=2 bash launch/local_multiprocess.sh --config=configs/bouncing_tiny.py:test \
#     --workdir=runs/multiprocess
#
# SIGTERM or Ctrl-C is passed on to every process: they save a checkpoint at a step they agree
# on and exit 0. The script exits with the first non-zero status of a process, else 0.
set -euo pipefail
NUM_PROCESSES=${NUM_PROCESSES:-2}
PYTHON=${PYTHON:-python}
free_port='import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])'
PORT=${PORT:-$("$PYTHON" -c "$free_port")}

pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS="localhost:$PORT" JAX_NUM_PROCESSES="$NUM_PROCESSES" \
    JAX_PROCESS_ID="$i" "$PYTHON" -m videoar.main --distributed --mode=train "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT

status=0
for pid in "${pids[@]}"; do
  code=0
  wait "$pid" || code=$?
  # A trapped signal ends the wait (status > 128) while the process may still be saving.
  while [ "$code" -gt 128 ] && kill -0 "$pid" 2>/dev/null; do
    code=0
    wait "$pid" || code=$?
  done
  if [ "$status" -eq 0 ]; then status=$code; fi
done
exit "$status"
