"""videoar's entry point.

  python -m videoar.main --config=configs/bouncing_tiny.py --workdir=runs/tiny [--mode=all]

Modes: `train` (resumes from WORKDIR/checkpoints), `sample` (writes WORKDIR/samples/*.mp4 and a
PNG strip), `evaluate` (per-segment long-horizon table to stdout and WORKDIR/eval.json), `all`
(train, then sample, then evaluate). Any config value can be overridden on the command line, e.g.
`--config.train.num_steps=20 --config.seed=1`.
"""

from __future__ import annotations

import sys
import time

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
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.verbose:
    logging.set_verbosity(logging.WARNING)
  config, workdir = FLAGS.config, FLAGS.workdir
  start = time.perf_counter()
  try:
    exp = loop.build(config)
  except validate.ConfigError as e:
    sys.exit(f"error: {e}")
  if FLAGS.mode in ("all", "train"):
    loop.train(config, workdir)
  if FLAGS.mode in ("all", "sample", "evaluate"):
    params = loop.restore_params(exp, workdir, use_ema=config.sample.use_ema)
    if FLAGS.mode in ("all", "sample"):
      print(f"samples: {run.sample(exp, params, workdir)}")
    if FLAGS.mode in ("all", "evaluate"):
      run.evaluate(exp, params, workdir)
  print(f"videoar {FLAGS.mode} finished in {time.perf_counter() - start:.0f} s; outputs in {workdir}")


if __name__ == "__main__":
  app.run(main)
