"""Which path carries a rollout's accumulated error: the KV cache or the previous-frame input?

  python docs/rollout_paths.py --config=CONFIG --workdir=W [--config.KEY=VALUE ...] [--json=PATH]

A model with the previous-frame input (model.previous_frame_input) reads its history along two
paths: attention over the KV cache, and the frame just before each chunk, fed into every token
(and, for model.prediction="residual" or "warp", the frame its output is built from). The
evaluation's held-out clips (its clips, noise and guidance: run.evaluate's) are continued four
ways (Sampler.rollout_on_true_history): the model's own rollout, each chunk over the true
frames, and with its own frames let back in along one path only (the KV cache holding the
generated frames with the true previous frame, or the true frames in the KV cache with the last
generated frame as the previous frame). Prints each way's per-segment figures of the source's
metrics and, with --json, writes them as strict JSON (null for a figure that is not a number,
e.g. a digit accuracy with no digit to read), whole, into a new file.

CONFIG must be the config the run was trained with: a model of other values than the
workdir's run.json (e.g. --config.model.prediction=velocity on a run trained with "data") is
refused in one line before the model runs, as `videoar.main --mode=evaluate` refuses it, and
other values it samples with (the data's options, the history) are noted on stderr, as there.
A --json that is empty, exists (nothing is written over), or is in a folder that is not there or
cannot be written is refused in one line before the model runs too.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from videoar import errors, experiment, files  # noqa: E402
from videoar.eval import compare, long_horizon, run  # noqa: E402
from videoar.train import metrics_log  # noqa: E402

config_flags.DEFINE_config_file("config", None, "The trained model's config (with the flags it"
                                " was trained and is sampled with).", lock_config=True)
flags.DEFINE_string("workdir", None, "The trained run's directory.")
# Every source's per-frame metrics (the ways are scored without FVD).
METRICS = [metric for metric in long_horizon.METRIC_TITLES if metric != "fvd"]
flags.DEFINE_list("metrics", ["digit_accuracy", "ink_ratio", "lost", "color_drift",
                              "ball_position_error", "lpips"],
                  "Metrics to print, those the source has; allowed: " + ", ".join(METRICS))
# Checked when the flags are parsed: a misspelt name is reported before the model runs.
flags.register_validator("metrics", lambda metrics: metrics and set(metrics) <= set(METRICS),
                         "allowed: " + ", ".join(METRICS))
flags.DEFINE_string("json", None, "Also write {way: per-segment rows} here: a new file.")
FLAGS = flags.FLAGS

# (own KV cache, own previous frame) of each way.
WAYS = {"rollout": (True, True), "true history": (False, False),
        "own KV cache, true previous frame": (True, False),
        "true KV cache, own previous frame": (False, True)}


def main(argv):
  del argv
  c = FLAGS.config
  if not c.model.previous_frame_input:
    raise errors.UserError("config.model.previous_frame_input=False: the model reads its"
                           " history through the KV cache alone; there is no second path to"
                           " separate")
  problem = compare.new_file_problem("--json", FLAGS.json)
  if problem:
    raise errors.UserError(problem)
  experiment.check_trained_alike(FLAGS.workdir, c)
  experiment.require_checkpoint(FLAGS.workdir)
  exp = experiment.build(c)
  params = experiment.restore_params(exp, FLAGS.workdir, use_ema=c.sample.use_ema)
  sampler = experiment.make_sampler(exp)
  rng = jax.random.key(c.seed + 2)
  clips = run.held_out_clips(exp, c.eval.num_clips)
  # The metrics this source scores, said before the minutes of generation: one true clip
  # scored as its own continuation.
  one = {key: value[:1] for key, value in clips.items()}
  scored = run.score(exp, one, one["video"][:, c.sample.context_frames:], baselines=False)
  available = [m for m in METRICS if m in scored["model"][0]]
  metrics = [m for m in FLAGS.metrics if m in available]
  if not metrics:
    raise errors.UserError(f"--metrics={','.join(FLAGS.metrics)}: data.source={c.data.source!r}"
                           f" scores none of them; it scores {', '.join(available)}")
  if len(metrics) < len(FLAGS.metrics):
    print(f"not scored for data.source={c.data.source!r}:"
          f" {', '.join(m for m in FLAGS.metrics if m not in available)}")
  tables = {}
  for way, (own_cache, own_previous_frame) in WAYS.items():
    generated = run.continue_on_true_history(exp, params, clips, rng, sampler,
                                             own_cache=own_cache,
                                             own_previous_frame=own_previous_frame)
    tables[way] = run.score(exp, clips, generated, baselines=False)["model"]
  print(f"{c.eval.num_clips} held-out clips, per segment "
        + " / ".join(str(row["segment"]) for row in tables["rollout"]))
  for metric in metrics:
    print(metric)
    for way, rows in tables.items():
      print(f"  {way:36s} " + " / ".join(f"{row[metric]:.3f}" for row in rows))
  if FLAGS.json is not None:
    written = {way: [{k: row[k] for k in ("segment", *metrics)} for row in rows]
               for way, rows in tables.items()}
    with files.replaced(FLAGS.json) as f:
      json.dump(metrics_log.strict(written), f, indent=1, allow_nan=False)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  errors.run(main)
