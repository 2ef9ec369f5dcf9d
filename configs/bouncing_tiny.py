"""The built-in default: Teacher Forcing on the bouncing world, 32x32, on a laptop CPU.

Two coloured objects (square or disc, 7 px across) bounce in a 32x32 box at 1-2 px per frame.
Clips of 8 frames, 8x8 patches (16 tokens a frame), a causal DiT of width 128, depth 4.
Sampling: frame-wise (chunk 1), 20 Euler steps, a rolling KV cache of 7 frames, so generation
runs on past the 8 training frames; evaluation continues 2 held-out context frames for 3x the
training length (24 frames) against the true continuation.

Training: 1200 steps at learning rate 2e-3, evaluating 8 held-out clips every 300 steps into
metrics.jsonl and tensorboard (`python -m videoar.eval.learning_curve --workdir=...` prints the
curve).

Measured on 2 idle CPU cores (docs/results.md has the tables, 3 seeds): the whole job took
7 min 54 s on 2026-12-01. Position error is below copying the last frame in every segment
(seed 0: 3.14 / 8.66 / 12.88 px against 6.34 / 13.02 / 14.98), and no objects are invented.
Objects are still lost (0.36 / 0.66 / 0.82 a frame), mostly those hidden behind the other in
the context frames, and colours drift (0.10-0.12 against the truth's 0.035).

Variants (`--config=configs/bouncing_tiny.py:VARIANT`):
  test   a few steps of a tiny model, for the test suite and smoke runs.
"""

from videoar import base_config


def get_config(variant: str = ""):
  config = base_config.get_config()  # the base config is this run
  if base_config.variants(variant, ("test",)):
    base_config.tiny(config)
  return config
