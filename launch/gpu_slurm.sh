#!/usr/bin/env bash
# Trains on every GPU of a Slurm allocation, one process per GPU.
#
#   sbatch --nodes=2 launch/gpu_slurm.sh --config=configs/bouncing_tiny.py \
#     --workdir=/shared/runs/name --config.mesh.fsdp=16 --config.data.batch_size=16
#
# jax.distributed.initialize reads the coordinator (the first node), the number of processes and
# each one's index and GPU from Slurm's environment. WORKDIR must be on a filesystem every node
# sees: each process writes its shards of every checkpoint there. Slurm sends SIGTERM two minutes
# before the time limit, and before preempting the job: the processes agree on a step, save it
# and exit 0, and the requeued job (or the same command again) resumes from it.
#
#SBATCH --job-name=videoar
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=videoar-%j.out
set -euo pipefail
PYTHON=${PYTHON:-python}
srun --kill-on-bad-exit=1 "$PYTHON" -m videoar.main --distributed --mode=train "$@"
