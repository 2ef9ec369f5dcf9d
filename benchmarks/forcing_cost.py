"""Train-step time of every forcing arm relative to Teacher Forcing, at the default config.

  python benchmarks/forcing_cost.py [--repeats=3] [--json=PATH]

Arms: Teacher Forcing (configs/bouncing_rf.py:teacher_forcing) and Resampling Forcing
(configs/bouncing_rf.py) with noise augmentation, parallel and autoregressive resampling,
autoregressive with history routing (k = 25 %) and with a sliding window of the same k; and a
Self Forcing iteration (configs/bouncing_sf.py: one generator update with its 5 critic updates).
Every arm runs at the base config's batch. The resampling arms run past their warm-up, so the
self-resampling is in every timed step. All arms take turns in each round (one step each), so
load from other processes slows them alike; the best round counts. The batch is random: a
step's cost depends on shapes only.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import benchmarks  # noqa: E402
from configs import bouncing_rf, bouncing_sf  # noqa: E402
from benchmarks import runners  # noqa: E402
from videoar import base_config, errors  # noqa: E402

benchmarks.define_json_flag()
flags.DEFINE_integer("repeats", 3, "Timed rounds (one step of every arm each).", lower_bound=1)
FLAGS = flags.FLAGS

ARMS = {
    "teacher_forcing": lambda: bouncing_rf.get_config("teacher_forcing"),
    "noise_augmentation": lambda: bouncing_rf.get_config("noise_augmentation"),
    "parallel": lambda: bouncing_rf.get_config("parallel"),
    "autoregressive": lambda: bouncing_rf.get_config(),
    "autoregressive_routed": lambda: bouncing_rf.get_config("routed"),
    "autoregressive_window": lambda: bouncing_rf.get_config("window"),
    # One iteration: a generator update and forcing.critic_updates (5) critic updates, each on
    # its own 4-step rollout (random weights: the cost depends on shapes only).
    "self_forcing": lambda: bouncing_sf.get_config(),
}


def step_runner(config):
  """The train step of this config at the base config's batch, past the resampling warm-up."""
  config.data.batch_size = base_config.get_config().data.batch_size
  config.forcing.warmup_steps = 0
  return runners.TrainStepRunner(config)


def main(argv):
  del argv
  runners = {name: step_runner(make()) for name, make in ARMS.items()}
  seconds = benchmarks.time_interleaved(runners, FLAGS.repeats)
  base = seconds["teacher_forcing"]
  rows = [[name, 1000 * s, s / base] for name, s in seconds.items()]
  config = base_config.get_config()
  benchmarks.print_table(f"train step per forcing arm (default config, batch"
                         f" {config.data.batch_size}, {config.data.num_frames} frames)",
                         ["arm", "step ms", "x teacher forcing"], rows)
  benchmarks.write_json(FLAGS.json, step_seconds=seconds,
                        relative_to_teacher_forcing={k: v / base for k, v in seconds.items()})


if __name__ == "__main__":
  errors.run(main)
