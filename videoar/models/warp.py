"""Motion-compensated prediction: the previous frame resampled along a predicted displacement.

A model that draws frame t + 1 by moving what it drew at frame t resamples its own output every
frame, so the interpolator's blur compounds over a rollout. Measured on Moving-MNIST with each
digit moved by its exact displacement, frame after frame (docs/mnist_advection.py): bilinear
resampling leaves 0.68 / 0.47 / 0.17 of the digits readable over three 8-frame segments, Keys'
cubic convolution at a = -0.5 0.93 / 0.77 / 0.64, at a = -0.75 0.98 / 0.97 / 0.94. Hence the
sharper kernel here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Keys' free parameter: -0.75 (OpenCV's bicubic) keeps detail over many resamplings, where the
# interpolating optimum -0.5 blurs (see the module docstring).
CUBIC_A = -0.75
# The kernel's taps around the sample point's floor, along each axis.
_TAPS = (-1, 0, 1, 2)


def cubic_kernel(s, a: float = CUBIC_A):
  """Keys (1981) cubic convolution kernel at offsets `s` (any shape): 1 at 0, 0 at the other
  integers, zero beyond |s| = 2. `a` other than CUBIC_A only for docs/mnist_advection.py's
  comparison of kernels."""
  s = jnp.abs(s)
  inner = ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0
  outer = ((a * s - 5.0 * a) * s + 8.0 * a) * s - 4.0 * a
  return jnp.where(s <= 1.0, inner, jnp.where(s < 2.0, outer, 0.0))


def smooth(displacement_bfhw2, sigma: float):
  """The displacement field [B, F, H, W, 2] (pixels) convolved with a Gaussian of standard
  deviation `sigma` pixels along rows and columns (separable, truncated at 3 sigma rounded to a
  whole pixel as scipy.ndimage does, the edge value repeated beyond the border so that a uniform
  field stays uniform). float32, same shape.

  Why: the DiT decodes each 8x8 patch's displacement separately, and where neighbouring patches
  disagree the warp tears the frame along the patch edge; each frame resamples the last, so the
  tears compound over a rollout (Pong, docs/results.md). A smooth field cannot tear. Raises
  ValueError if sigma <= 0.
  """
  if sigma <= 0:
    raise ValueError(f"sigma={sigma} must be > 0 (pixels)")
  radius = int(3 * sigma + 0.5)
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps = (taps / taps.sum()).astype(np.float32)
  out = displacement_bfhw2.astype(jnp.float32)
  for axis in (2, 3):
    size = out.shape[axis]
    pad = [(0, 0)] * out.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(out, pad, mode="edge")
    out = sum(float(w) * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
              for k, w in enumerate(taps))
  return out


def warp(image_bfhwc, displacement_bfhw2, a: float = CUBIC_A):
  """The image sampled at every pixel plus its displacement (a backward warp), by cubic convolution.

  image_bfhwc [B, F, H, W, C]; displacement_bfhw2 [B, F, H, W, 2] in pixels, (rows, columns):
  output pixel (y, x) reads the image at (y + dy, x + dx), the edge pixel's value beyond the
  border. Returns float32 [B, F, H, W, C]. Differentiable in the displacement (and the image).
  A zero displacement returns the image exactly. `a`: as in cubic_kernel.
  """
  b, f, h, w, c = image_bfhwc.shape
  image = image_bfhwc.astype(jnp.float32).reshape(b, f, h * w, c)
  displacement = displacement_bfhw2.astype(jnp.float32)
  rows = np.arange(h, dtype=np.float32)[:, None] + displacement[..., 0]
  cols = np.arange(w, dtype=np.float32)[None, :] + displacement[..., 1]
  row0, col0 = jnp.floor(rows), jnp.floor(cols)
  row_weights = [cubic_kernel(rows - (row0 + k), a) for k in _TAPS]
  col_weights = [cubic_kernel(cols - (col0 + k), a) for k in _TAPS]
  row_index = [jnp.clip(row0.astype(jnp.int32) + k, 0, h - 1) for k in _TAPS]
  col_index = [jnp.clip(col0.astype(jnp.int32) + k, 0, w - 1) for k in _TAPS]
  out = jnp.zeros((b, f, h * w, c), jnp.float32)
  for i in range(len(_TAPS)):
    for j in range(len(_TAPS)):
      flat = (row_index[i] * w + col_index[j]).reshape(b, f, h * w, 1)
      tap = jnp.take_along_axis(image, flat, axis=2)
      out = out + (row_weights[i] * col_weights[j]).reshape(b, f, h * w, 1) * tap
  return out.reshape(b, f, h, w, c)
