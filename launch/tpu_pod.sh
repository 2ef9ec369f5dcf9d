#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU pod slice, e.g. a v5p-64 (8 workers of 4 chips).
#
#   TPU=my-v5p-64 ZONE=us-east5-a bash launch/tpu_pod.sh --config=configs/bouncing_tiny.py \
#     --workdir=/mnt/shared/runs/name --config.mesh.fsdp=32 --config.data.batch_size=32
#
# The same command runs on every worker (JAX needs all of them): jax.distributed.initialize reads
# the coordinator and each worker's index from the TPU metadata. Each worker needs the repository
# at REPO with its environment installed (pip install -e . 'jax[tpu]'), and WORKDIR on a
# filesystem all workers see (NFS, Filestore or a gcsfuse mount): each worker writes its shards of
# every checkpoint there. A maintenance event sends SIGTERM: the workers agree on a step, save it
# and exit 0, and the same command resumes from it.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
REPO=${REPO:-videoar}
PYTHON=${PYTHON:-python3}
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all \
  --command="cd $REPO && $PYTHON -m videoar.main --distributed --mode=train$args"
