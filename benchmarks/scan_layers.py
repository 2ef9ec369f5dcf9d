"""The default train step with its blocks unrolled, scanned, and scanned and rematerialised.

  python benchmarks/scan_layers.py [--depth=4] [--steps=5] [--json=PATH]

The default config (configs/bouncing_tiny.py) at --depth blocks, model.scan_layers off and on
(models/dit.py), and on with model.remat_policy=nothing_saveable: each step's compile time on
this host (trace, lower and compile) and its best time over --steps interleaved rounds
(benchmarks.time_interleaved: load from other processes slows all alike). docs/scaling.md has
the figures.
"""

from __future__ import annotations

import os
import sys
import time

import jax
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import benchmarks  # noqa: E402
from benchmarks import runners  # noqa: E402
from configs import bouncing_tiny  # noqa: E402
from videoar import errors  # noqa: E402

flags.DEFINE_integer("depth", 4, "Blocks of the model (the default config has 4).",
                     lower_bound=1)
flags.DEFINE_integer("steps", 5, "Timed rounds; the best counts.", lower_bound=1)
benchmarks.define_json_flag()
FLAGS = flags.FLAGS

ARMS = {"unrolled": (False, "none"), "scanned": (True, "none"),
        "scanned+remat": (True, "nothing_saveable")}


def main(argv):
  del argv
  fns, compile_s = {}, {}
  for name, (scan, remat) in ARMS.items():
    config = bouncing_tiny.get_config()
    config.model.depth = FLAGS.depth
    config.model.scan_layers = scan
    config.model.remat_policy = remat
    runner = runners.TrainStepRunner(config)
    start = time.perf_counter()
    runner.train_step.step.lower(runner.state, runner.batch, runner.rng).compile()
    compile_s[name] = time.perf_counter() - start
    fns[name] = runner
  best = benchmarks.time_interleaved(fns, FLAGS.steps)
  rows = [[name, compile_s[name], 1e3 * best[name], best[name] / best["unrolled"]]
          for name in ARMS]
  benchmarks.print_table(f"default config, depth {FLAGS.depth}, {jax.default_backend()}",
                         ["blocks", "compile s", "step ms (best)", "vs unrolled"], rows)
  benchmarks.write_json(FLAGS.json, depth=FLAGS.depth, compile_s=compile_s, step_s=best)

if __name__ == "__main__":
  errors.run(main)
