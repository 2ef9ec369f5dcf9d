"""The built-in default: Teacher Forcing on the bouncing world, 32x32, on a laptop CPU.

Two coloured objects (square or disc, 7 px across) bounce in a 32x32 box at 1-2 px per frame.
Clips of 8 frames, 8x8 patches (16 tokens a frame), a causal DiT of width 128, depth 4.
Sampling: frame-wise (chunk 1), 20 Euler steps, a rolling KV cache of 7 frames, so generation
runs on past the 8 training frames; evaluation continues 2 held-out context frames for 3x the
training length (24 frames) against the true continuation.

Measured on 2 CPU cores (see docs/results.md for the table): the whole job (600 steps, then samples,
then evaluation) took 4 min 14 s wall on 2026-12-01 (4 min 49 s before); in the first segment after
the context the model beats copying the last frame on object position error (4.68 against 6.34
px) and loses to it later, as objects blur and fade (docs/results.md has the table; the objects
keep their colour and move, but shapes soften and about 0.6 of 2 objects a frame are lost in the
first segment, 1.6 by the third).

Variants (`--config=configs/bouncing_tiny.py:VARIANT`):
  test   a few steps of a tiny model, for the test suite and smoke runs.
"""

from videoar import base_config


def get_config(variant: str = ""):
  config = base_config.get_config()  # the base config is this run
  if base_config.variants(variant, ("test",)):
    base_config.tiny(config)
  return config
