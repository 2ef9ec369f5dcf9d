"""Sanity checks of LPIPS and FVD on a config's held-out clips; no model or checkpoint is read.

  python -m videoar.eval.fvd_check --config=configs/bouncing_tiny.py [--num_clips=16]

Takes 2 x num_clips held-out clips of eval.segment_len frames (what FVD sees per segment) and
prints FVD of the first num_clips true clips against themselves (0), against the next num_clips
(the floor that sampling alone gives at this clip count) and of uniform noise in [-1, 1] against
them (far above that floor); LPIPS of the true frames against themselves (0), against themselves
with Gaussian noise added (growing with its standard deviation) and against other true clips'
frames; and I3D's throughput in clips/s.
"""

from __future__ import annotations

import time

import ml_collections
import numpy as np

from videoar import errors, validate
from videoar.data import pipeline
from videoar.eval import perceptual

NOISE_STDS = (0.05, 0.1, 0.3)


def sanity_figures(source: pipeline.ClipSource, *, num_clips: int, num_frames: int,
                   seed: int) -> dict[str, float]:
  """The figures the module docstring lists, from 2 x num_clips held-out clips of num_frames
  frames of `source`: fvd_true_vs_itself, fvd_true_vs_true, fvd_noise_vs_true, lpips_true_vs_itself,
  lpips_noise_STD (mean over frames, for each of NOISE_STDS), lpips_true_vs_other_true,
  i3d_clips_per_s (3 x num_clips clips through I3D, including its compilation).

  Raises ValueError for num_clips < 2 (a covariance needs 2 clips) or a source that holds out
  fewer than 2 x num_clips clips.
  """
  if num_clips < 2:
    raise ValueError(f"num_clips={num_clips} must be at least 2: FVD fits a covariance")
  video = pipeline.eval_clips(source, num_clips=2 * num_clips, num_frames=num_frames,
                              seed=seed)["video"]
  true_a, true_b = video[:num_clips], video[num_clips:]
  rng = np.random.default_rng(seed)
  noise = rng.uniform(-1.0, 1.0, true_a.shape).astype(np.float32)
  started = time.perf_counter()
  features = perceptual.i3d_features(np.concatenate([true_a, true_b, noise]))
  clips_per_s = len(features) / (time.perf_counter() - started)
  features_a, features_b, features_noise = np.split(features, 3)
  figures = dict(fvd_true_vs_itself=perceptual.fvd(features_a, features_a),
                 fvd_true_vs_true=perceptual.fvd(features_a, features_b),
                 fvd_noise_vs_true=perceptual.fvd(features_noise, features_a),
                 lpips_true_vs_itself=float(perceptual.lpips(true_a, true_a).mean()))
  for std in NOISE_STDS:
    noisy = true_a + std * rng.standard_normal(true_a.shape).astype(np.float32)
    figures[f"lpips_noise_{std:g}"] = float(perceptual.lpips(noisy, true_a).mean())
  figures["lpips_true_vs_other_true"] = float(perceptual.lpips(true_b, true_a).mean())
  figures["i3d_clips_per_s"] = clips_per_s
  return figures


def check_held_out(source: pipeline.ClipSource, *, num_clips: int, num_frames: int) -> None:
  """Raises ConfigError, naming --num_clips, unless `source` holds out the 2 x num_clips clips of
  num_frames frames that sanity_figures takes: pipeline.check_eval_clips' line names the keys of
  a training run's evaluation instead (eval.num_clips, sample.*), which this command does not
  read."""
  if not isinstance(source, pipeline.RecordedClips):
    return  # a procedural source makes any number
  available = source.num_clips(num_frames, held_out=True)
  if available >= 2 * num_clips:
    return
  fewer = f"lower --num_clips to {available // 2} or fewer, or " if available >= 4 else ""
  raise errors.ConfigError(
      f"--num_clips={num_clips} takes 2 x {num_clips} held-out clips of {num_frames} frames"
      f" (eval.segment_len), and {source.recording} holds out {available} at stride"
      f" {source.stride}: {fewer}raise data.options.eval_fraction")


def run(config: ml_collections.ConfigDict, num_clips: int) -> dict[str, float]:
  """sanity_figures of the held-out clips of config's data source (eval.segment_len frames,
  config.seed), printed one a line. Raises ConfigError (errors.py) for a config that cannot run,
  before I3D or LPIPS is loaded: a source that cannot open, of frames that are not pixels, or
  holding out fewer than 2 x num_clips clips."""
  validate.validate(config)
  try:
    source = pipeline.make_source(config.data.source, path=config.data.path,
                                  **validate.source_options(config))
    channels = pipeline.frame_shape(source)[-1]
  except (ValueError, FileNotFoundError) as e:
    raise errors.ConfigError(f"config.data: {e}") from e
  if not perceptual.is_pixels(np.empty((0, channels))):
    raise errors.ConfigError(
        f"FVD and LPIPS need pixel frames (1 or 3 channels); data.source={config.data.source!r}"
        f" gives {channels}-channel frames (latents): run it on a config of pixel frames")
  check_held_out(source, num_clips=num_clips, num_frames=config.eval.segment_len)
  figures = sanity_figures(source, num_clips=num_clips, num_frames=config.eval.segment_len,
                           seed=config.seed)
  print(f"{config.data.source}: {num_clips} clips a set, {config.eval.segment_len} frames")
  for name, value in figures.items():
    print(f"  {name:26} {value:.4g}")
  return figures


def main(argv):
  del argv
  from absl import flags, logging

  logging.set_verbosity(logging.WARNING)  # JAX's INFO lines about absent backends are noise here
  run(flags.FLAGS.config, flags.FLAGS.num_clips)


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.DEFINE_integer("num_clips", 16, "Clips in each set (2 x num_clips held-out clips; at least"
                       " 2: FVD fits a covariance).", lower_bound=2)
  flags.mark_flags_as_required(["config"])
  errors.run(main)
