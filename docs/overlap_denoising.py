"""What the model predicts for an overlap frame from its true history, at each noise level.

  python docs/overlap_denoising.py --config=configs/bouncing_tiny.py --workdir=runs/bouncing_tiny \
      [--out=docs/overlap_denoising.png]

Generates the evaluation's held-out continuations on the true history
(run.continue_on_true_history: each frame over the true frames before it, the evaluation's clips
and noise) and picks the first --cases frames in which the two true objects overlap and the
model, from the true history, loses one of them (objects.compare_objects' sense). For each it
draws a row: the true frame before, the true frame, then the model's clean-frame (x0) prediction
from that true history and the true frame noised to t = --times (the same noise for every t),
with the sampler's guidance. Prints each pick and the mean squared error of the x0 prediction at
every t over the picks, and, over all overlap frames, the fraction of objects that the
continuation on the true history loses (against the truth's, where one object hides the other).
The figure goes to --out, by default WORKDIR/overlap_denoising.png. Where no overlap frame loses
an object, it says so in one line (exit status 2) and draws nothing.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from videoar import errors, experiment, media  # noqa: E402
from videoar.diffusion import flow  # noqa: E402
from videoar.eval import objects, routing_figure, run  # noqa: E402

config_flags.DEFINE_config_file("config", None, "The bouncing-world model's config.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The trained run's directory.")
flags.DEFINE_integer("cases", 8, "Overlap frames to draw.", lower_bound=1)
flags.DEFINE_list("times", ["0.9", "0.7", "0.5", "0.3", "0.15", "0.05"], "Noise levels t.")
flags.DEFINE_string("out", None, "Where to write the figure (default:"
                    " WORKDIR/overlap_denoising.png).")
FLAGS = flags.FLAGS


def _noise_level(text: str) -> bool:
  try:
    return 0.0 < float(text) <= 1.0
  except ValueError:
    return False


# Checked when the flags are parsed: a bad level was a traceback after the whole evaluation.
flags.register_validator("times", lambda times: bool(times) and all(map(_noise_level, times)),
                         "must be one or more noise levels t, each a number in (0, 1]")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore's steps at INFO
  c = FLAGS.config
  out = FLAGS.out or os.path.join(FLAGS.workdir, "overlap_denoising.png")
  # Both before the minutes of building and continuing the clips; the checkpoint first, as the
  # default --out's folder is the workdir, which check_out would make.
  experiment.require_checkpoint(FLAGS.workdir)
  routing_figure.check_out(out)
  exp = experiment.build(c)
  params = experiment.restore_params(exp, FLAGS.workdir, use_ema=c.sample.use_ema)
  sampler = experiment.make_sampler(exp)
  rng = jax.random.key(c.seed + 2)
  clips = run.held_out_clips(exp, c.eval.num_clips)
  on_truth = run.continue_on_true_history(exp, params, clips, rng, sampler)
  num_context = c.sample.context_frames
  video, palette = clips["video"], exp.source.palette_array()
  overlapping = objects.overlapping(clips["positions"][:, num_context:], exp.source.radius)
  if not overlapping.any():
    raise errors.UserError(f"no overlap found in {len(video)} clips (eval.num_clips): no object"
                           " overlaps another in their continuations; nothing to draw")
  ids = np.broadcast_to(clips["color_ids"][:, None, :], overlapping.shape)
  lost = {name: ~np.take_along_axis(objects.detect_objects(frames, palette)["present"], ids, -1)
          for name, frames in (("model", on_truth), ("truth", video[:, num_context:]))}
  print(f"objects overlapping another: {overlapping.mean():.3f} of object-frames; lost by the"
        f" model on the true history {lost['model'][overlapping].mean():.3f} of them (truth"
        f" {lost['truth'][overlapping].mean():.3f}), {lost['model'][~overlapping].mean():.4f} of"
        f" the others")
  picks = np.argwhere((lost["model"] & overlapping).any(-1))[:FLAGS.cases]
  if not len(picks):
    raise errors.UserError(f"no overlap frame in which the model loses an object found in"
                           f" {len(video)} clips (eval.num_clips): nothing to draw; raise"
                           " --config.eval.num_clips")
  times = [float(t) for t in FLAGS.times]
  rows, squared_errors = [], np.zeros(len(times))
  for clip, frame in picks:
    at = num_context + frame
    print(f"clip {clip}, continuation frame {frame}")
    cache = sampler.prefill(params, sampler.init_cache(1), jnp.asarray(video[clip:clip + 1, :at]))
    x0 = jnp.asarray(video[clip:clip + 1, at:at + 1])
    noise = jax.random.normal(jax.random.fold_in(rng, at), x0.shape)
    cells = [video[clip, at - 1], video[clip, at]]
    for i, t in enumerate(times):
      t_bf = jnp.full((1, 1), t)
      prediction = sampler.data_prediction(params, cache, flow.interpolate(x0, noise, t_bf), t_bf)
      squared_errors[i] += float(jnp.mean(jnp.square(prediction - x0))) / len(picks)
      cells.append(np.clip(np.asarray(prediction)[0, 0], -1, 1))
    rows.append(np.stack(cells))
  print("x0 prediction's mean squared error by t: "
        + ", ".join(f"{t}: {e:.4f}" for t, e in zip(times, squared_errors)))
  media.write_png(out, media.frame_strip(np.stack(rows), every=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  errors.run(main)
