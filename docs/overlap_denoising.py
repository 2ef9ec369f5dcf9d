"""What the model predicts for an overlap frame from its true history, at each noise level.

  python docs/overlap_denoising.py --config=configs/bouncing_tiny.py --workdir=runs/bouncing_tiny

Generates the evaluation's held-out continuations on the true history
(run.continue_on_true_history: each frame over the true frames before it, the evaluation's clips
and noise) and picks the first --cases frames in which the two true objects overlap and the
model, from the true history, loses one of them (objects.compare_objects' sense). For each it
draws a row: the true frame before, the true frame, then the model's clean-frame (x0) prediction
from that true history and the true frame noised to t = --times (the same noise for every t),
with the sampler's guidance. Prints each pick and the mean squared error of the x0 prediction at
every t over the picks, and, over all overlap frames, the fraction of objects that the
continuation on the true history loses (against the truth's, where one object hides the other).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from videoar import experiment, media  # noqa: E402
from videoar.diffusion import flow  # noqa: E402
from videoar.eval import objects, run  # noqa: E402

config_flags.DEFINE_config_file("config", None, "The bouncing-world model's config.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The trained run's directory.")
flags.DEFINE_integer("cases", 8, "Overlap frames to draw.")
flags.DEFINE_list("times", ["0.9", "0.7", "0.5", "0.3", "0.15", "0.05"], "Noise levels t.")
flags.DEFINE_string("out", "docs/overlap_denoising.png", "Where to write the figure.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  c = FLAGS.config
  exp = experiment.build(c)
  params = experiment.restore_params(exp, FLAGS.workdir, use_ema=c.sample.use_ema)
  sampler = experiment.make_sampler(exp)
  rng = jax.random.key(c.seed + 2)
  clips = run.held_out_clips(exp, c.eval.num_clips)
  on_truth = run.continue_on_true_history(exp, params, clips, rng, sampler)
  num_context = c.sample.context_frames
  video, palette = clips["video"], exp.source.palette_array()
  overlapping = objects.overlapping(clips["positions"][:, num_context:], exp.source.radius)
  ids = np.broadcast_to(clips["color_ids"][:, None, :], overlapping.shape)
  lost = {name: ~np.take_along_axis(objects.detect_objects(frames, palette)["present"], ids, -1)
          for name, frames in (("model", on_truth), ("truth", video[:, num_context:]))}
  print(f"objects overlapping another: {overlapping.mean():.3f} of object-frames; lost by the"
        f" model on the true history {lost['model'][overlapping].mean():.3f} of them (truth"
        f" {lost['truth'][overlapping].mean():.3f}), {lost['model'][~overlapping].mean():.4f} of"
        f" the others")
  picks = np.argwhere((lost["model"] & overlapping).any(-1))[:FLAGS.cases]
  times = [float(t) for t in FLAGS.times]
  rows, errors = [], np.zeros(len(times))
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
      errors[i] += float(jnp.mean(jnp.square(prediction - x0))) / len(picks)
      cells.append(np.clip(np.asarray(prediction)[0, 0], -1, 1))
    rows.append(np.stack(cells))
  print("x0 prediction's mean squared error by t: "
        + ", ".join(f"{t}: {e:.4f}" for t, e in zip(times, errors)))
  media.write_png(FLAGS.out, media.frame_strip(np.stack(rows), every=1))
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
