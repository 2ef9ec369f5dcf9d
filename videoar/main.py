"""videoar's entry point.

  python -m videoar.main --config=configs/bouncing_tiny.py --workdir=runs/tiny [--mode=all]

Modes: `train` (resumes from WORKDIR/checkpoints), `sample` (writes WORKDIR/samples/*.mp4 and a
PNG strip), `evaluate` (per-segment long-horizon table to stdout and WORKDIR/eval.json), `all`
(train, then sample, then evaluate). Any config value can be overridden on the command line, e.g.
`--config.train.num_steps=20 --config.seed=1`.

With --distributed, the process joins a multi-process run (launch/*.sh) through
jax.distributed.initialize, which reads the coordinator's address, the number of processes and
this process's index from the environment: from Cloud TPU, Slurm, Open MPI or Kubernetes, or
from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Such a run trains only;
sample and evaluate from its checkpoints in one process.
"""

from __future__ import annotations

import os
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from videoar import validate
from videoar.eval import run
from videoar.train import loop

MODES = ("all", "train", "sample", "evaluate")

config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/NAME.py[:VARIANT]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and eval.")
flags.DEFINE_enum("mode", "all", MODES, "What to run.")
flags.DEFINE_bool("verbose", False, "Show INFO logs (orbax logs every checkpoint step at INFO).")
flags.DEFINE_bool("distributed", False,
                  "Join a multi-process run that the environment describes (see above).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _join_processes() -> None:
  env = lambda name: int(os.environ[name]) if name in os.environ else None
  # Unset values are left to JAX's detection of the cluster it runs on.
  jax.distributed.initialize(num_processes=env("JAX_NUM_PROCESSES"),
                             process_id=env("JAX_PROCESS_ID"))


def main(argv):
  del argv
  if not FLAGS.verbose:
    logging.set_verbosity(logging.WARNING)
  config, workdir = FLAGS.config, FLAGS.workdir
  start = time.perf_counter()
  if FLAGS.distributed:
    _join_processes()
    if jax.process_count() > 1 and FLAGS.mode != "train":
      sys.exit(f"error: --mode={FLAGS.mode} samples and evaluates in one process; with"
               f" {jax.process_count()} processes run --mode=train")
  try:
    exp = loop.build(config)
  except validate.ConfigError as e:
    sys.exit(f"error: {e}")
  is_main = jax.process_index() == 0
  if FLAGS.mode in ("all", "train"):
    try:
      state = loop.train(config, workdir)
    except validate.ConfigError as e:  # a mesh that does not fit the devices, before compiling
      sys.exit(f"error: {e}")
    if int(state.step) < config.train.num_steps:
      if is_main:
        print(f"preempted: saved step {int(state.step)}; the same command resumes from it")
      return
  if FLAGS.mode in ("all", "sample", "evaluate"):
    params = loop.restore_params(exp, workdir, use_ema=config.sample.use_ema)
    if FLAGS.mode in ("all", "sample"):
      print(f"samples: {run.sample(exp, params, workdir)}")
    if FLAGS.mode in ("all", "evaluate"):
      run.evaluate(exp, params, workdir)
  if is_main:
    print(f"videoar {FLAGS.mode} finished in {time.perf_counter() - start:.0f} s; outputs in"
          f" {workdir}")


if __name__ == "__main__":
  app.run(main)
