"""Sampling and the long-horizon evaluation of a trained model, as the CLI runs them.

Both continue held-out clips: the first `sample.context_frames` true frames are written into
the KV cache, then `sample.length_multiple` x the training length is generated and compared,
segment by segment of `eval.segment_len` frames, with the true continuation.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from videoar import experiment, media
from videoar.data import pipeline
from videoar.eval import long_horizon
from videoar.train import metrics_log


def continue_clips(exp: experiment.Experiment, params, num_clips: int, rng: jax.Array):
  """Held-out clips (context + true continuation) and the model's continuation."""
  c = exp.config
  num_context = c.sample.context_frames
  num_generated = c.sample.length_multiple * c.data.num_frames
  clips = pipeline.eval_clips(exp.source, num_clips=num_clips,
                              num_frames=num_context + num_generated, seed=c.seed)
  sampler = experiment.make_sampler(exp)
  cond = {key: jnp.asarray(value) for key, value in exp.model.conditioning(clips).items()}
  context = jnp.asarray(clips["video"][:, :num_context]) if num_context else None
  generated = sampler.generate(params, rng, num_generated, c.sample.num_steps,
                               c.sample.time_shift, context, cond)
  return clips, np.asarray(generated)


def sample(exp: experiment.Experiment, params, workdir: str) -> str:
  """Writes WORKDIR/samples/sample_*.mp4 (context, then generated) and a PNG strip whose rows
  alternate truth and model; returns the strip's path."""
  c = exp.config
  out = os.path.join(workdir, "samples")
  os.makedirs(out, exist_ok=True)
  clips, generated = continue_clips(exp, params, c.sample.num_videos, jax.random.key(c.seed + 1))
  num_context = c.sample.context_frames
  model_videos = np.concatenate([clips["video"][:, :num_context], generated], axis=1)
  for i, video in enumerate(model_videos):
    media.write_mp4(os.path.join(out, f"sample_{i}.mp4"), video)
  rows = np.stack([clips["video"], model_videos], axis=1).reshape((-1,) + model_videos.shape[1:])
  strip_path = os.path.join(out, "strip.png")
  media.write_png(strip_path, media.frame_strip(rows, every=2))
  return strip_path


def evaluate(exp: experiment.Experiment, params, workdir: str) -> dict:
  """The per-segment table of the model against copy-the-last-frame and all-background,
  printed and written to WORKDIR/eval.json (strict JSON: a figure that is not finite, such as
  the PSNR of identical frames, is null)."""
  c = exp.config
  clips, generated = continue_clips(exp, params, c.eval.num_clips, jax.random.key(c.seed + 2))
  num_context = c.sample.context_frames
  truth = clips["video"][:, num_context:]
  object_truth = {}
  if "color_ids" in clips:
    object_truth = dict(positions=clips["positions"][:, num_context:],
                        color_ids=clips["color_ids"], palette=exp.source.palette_array())
  methods = {"model": generated}
  if num_context:
    methods.update(long_horizon.baselines(clips["video"][:, :num_context], truth.shape[1]))
  else:
    methods["background"] = np.full_like(truth, -1.0)
  methods["truth"] = truth
  tables = {name: long_horizon.segment_table(video, truth, segment_len=c.eval.segment_len,
                                             **object_truth)
            for name, video in methods.items()}
  text = long_horizon.format_table(tables)
  print(text)
  result = dict(context_frames=num_context, generated_frames=int(truth.shape[1]),
                training_frames=c.data.num_frames, num_clips=c.eval.num_clips, tables=tables)
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(metrics_log.strict(result), f, indent=1, allow_nan=False)
  with open(os.path.join(workdir, "eval.txt"), "w") as f:
    f.write(text + "\n")
  return result
