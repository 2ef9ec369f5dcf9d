"""What Moving-MNIST asks of a model that moves the previous frame: an oracle, no training.

  python docs/mnist_advection.py [--json=docs/mnist_advection.json]

The evaluation's 32 held-out clips of configs/mnist_small.py's world (seed 0, 2 context frames,
24 frames after them). The truth renders every frame afresh from the digit's image at its
sub-pixel centre. The oracles start from each digit's own layer at the last context frame and
move it, frame after frame, by the digit's true displacement: they resample the layer they made
the frame before, as a model that draws frame t + 1 from its own frame t does. Then they
max-composite the layers, as the world does. One oracle interpolates bilinearly, one with a
cubic spline, two by Keys' cubic convolution (videoar/models/warp.py's kernel, at a = -0.5 and at
a = -0.75, the value model.prediction="warp" uses). Each is read by the evaluation's digit
classifier (videoar/eval/digits.py: clear digits at their true positions) and its ink is
compared with the truth's (digits.ink_ratio).
Prints, per oracle, the share read right per 8-frame segment and at generated frames 0, 1, 3,
5, 7 and 23, and the ink per segment.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
import jax
import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from videoar.data import moving_mnist, pipeline  # noqa: E402
from videoar.eval import digits as digits_lib  # noqa: E402
from videoar.models import warp  # noqa: E402

flags.DEFINE_string("json", None, "Also write the figures here as JSON.")
FLAGS = flags.FLAGS

CONTEXT, GENERATED, CLIPS, SEGMENT = 2, 24, 32, 8
# scipy's spline orders (1 is bilinear, 3 a cubic spline), or Keys' cubic convolution at its a.
ORDERS = {"bilinear": 1, "cubic spline": 3, "Keys cubic convolution, a = -0.5": ("keys", -0.5),
          "Keys cubic convolution, a = -0.75": ("keys", -0.75)}


def _shift(layer, displacement, order):
  """`layer` [H, W] moved by `displacement` (rows, columns; ndimage.shift's sense): scipy's spline
  (zero outside), or videoar.models.warp's cubic convolution at its a (the edge value outside)."""
  if not isinstance(order, tuple):
    return ndimage.shift(layer, displacement, order=order, mode="constant")
  backward = np.broadcast_to(-np.asarray(displacement, np.float32), layer.shape + (2,))
  moved = _warp(layer[None, None, ..., None], backward[None, None], order[1])
  return np.asarray(moved)[0, 0, ..., 0]


_warp = jax.jit(warp.warp, static_argnames="a")


def continuations(world: moving_mnist.MovingMnist, order: int):
  """(truth, oracle, positions, labels) over the held-out clips: truth and oracle [B, F, H, W, 1]
  in [-1, 1] for the GENERATED frames after the context, positions [B, F, K, 2], labels [B, K]."""
  images, all_labels = moving_mnist.mnist_digits(world.digit_size)
  truth, oracle, positions, labels = [], [], [], []
  for i in range(CLIPS):
    index = pipeline.EVAL_INDEX_OFFSET + i
    clip = world.clip(0, index, CONTEXT + GENERATED)
    # The digits clip() chose: its first draw from the same generator.
    chosen = np.random.default_rng([0, index]).choice(len(images), size=world.num_digits,
                                                      replace=False)
    assert (all_labels[chosen] == clip["labels"]).all()
    centres = clip["positions"].astype(np.float64)  # [F, K, 2]
    layers = [(world.render(centres[CONTEXT - 1:CONTEXT, k:k + 1],
                            images[chosen[k]][None])[0, ..., 0] + 1.0) / 2.0
              for k in range(world.num_digits)]
    frames = []
    for f in range(CONTEXT, CONTEXT + GENERATED):
      layers = [np.clip(_shift(layer, centres[f, k] - centres[f - 1, k], order), 0.0, 1.0)
                for k, layer in enumerate(layers)]
      frames.append(2.0 * np.max(layers, axis=0) - 1.0)
    truth.append(clip["video"][CONTEXT:])
    oracle.append(np.stack(frames)[..., None])
    positions.append(centres[CONTEXT:])
    labels.append(clip["labels"])
  return np.stack(truth), np.stack(oracle), np.stack(positions), np.stack(labels)


def main(argv):
  del argv
  world = moving_mnist.MovingMnist(size=32, num_digits=2)
  classifier = digits_lib.digit_classifier(world.digit_size)
  results = {}
  for name, order in ORDERS.items():
    truth, oracle, positions, labels = continuations(world, order)
    videos = {"truth": truth, f"oracle, {name}": oracle}
    for label, video in videos.items():
      if label in results:
        continue
      read = digits_lib.digit_accuracy(video, positions, labels, classifier)  # [B, F]
      ink = np.asarray(digits_lib.ink_ratio(video, truth))
      per_frame = np.nanmean(read, axis=0)
      segments = [(s, s + SEGMENT) for s in range(0, GENERATED, SEGMENT)]
      results[label] = dict(
          read_per_segment=[float(np.nanmean(read[:, a:b])) for a, b in segments],
          read_per_frame=[float(x) for x in per_frame],
          ink_per_segment=[float(np.nanmean(ink[..., a:b])) for a, b in segments])
      shown = ", ".join(f"{per_frame[f]:.2f}" for f in (0, 1, 3, 5, 7, 23))
      print(f"{label}: read right per segment"
            f" {' / '.join(f'{x:.2f}' for x in results[label]['read_per_segment'])};"
            f" at frames 0, 1, 3, 5, 7, 23: {shown}; ink"
            f" {' / '.join(f'{x:.2f}' for x in results[label]['ink_per_segment'])}")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
