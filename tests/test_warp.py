"""The motion-compensated prediction (models/warp.py, CausalDiT(prediction="warp"))."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from videoar.models import dit
from videoar.models import warp


def _brute_force_warp(image_hw, displacement_hw2):
  """Cubic convolution at each pixel by the definition: the sum over every source pixel (edge
  pixels repeated out to 4 beyond the border) of the kernel's weight at its offset."""
  h, w = image_hw.shape
  pad = 4
  padded = np.pad(image_hw, pad, mode="edge")
  out = np.zeros_like(image_hw)
  for y in range(h):
    for x in range(w):
      sy, sx = y + displacement_hw2[y, x, 0], x + displacement_hw2[y, x, 1]
      total = 0.0
      for py in range(-pad, h + pad):
        wy = float(warp.cubic_kernel(sy - py))
        if wy == 0.0:
          continue
        for px in range(-pad, w + pad):
          total += wy * float(warp.cubic_kernel(sx - px)) * padded[py + pad, px + pad]
      out[y, x] = total
  return out


def test_kernel_is_keys_cubic_convolution_at_minus_three_quarters():
  """Keys (1981), eq. 15 with a = -0.75: 1 at 0, 0 at 1 and 2, (a + 2) / 8 - (a + 3) / 4 + 1 at
  1/2 and a / 8 at 3/2; the four taps around any point sum to 1 (a constant stays constant)."""
  s = jnp.asarray([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5])
  a = -0.75
  half = (a + 2) / 8 - (a + 3) / 4 + 1
  expected = [1.0, half, 0.0, a / 8, 0.0, 0.0, half]
  np.testing.assert_allclose(np.asarray(warp.cubic_kernel(s)), expected, atol=1e-7)
  frac = jnp.linspace(0.0, 0.99, 23)
  taps = sum(warp.cubic_kernel(frac - k) for k in (-1, 0, 1, 2))
  np.testing.assert_allclose(np.asarray(taps), 1.0, atol=1e-6)


def test_warp_equals_cubic_convolution_by_definition():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(7, 6)).astype(np.float32)
  displacement = rng.uniform(-2.5, 2.5, size=(7, 6, 2)).astype(np.float32)
  got = warp.warp(jnp.asarray(image)[None, None, ..., None], jnp.asarray(displacement)[None, None])
  np.testing.assert_allclose(np.asarray(got)[0, 0, ..., 0], _brute_force_warp(image, displacement),
                             atol=1e-5)


@pytest.mark.parametrize("shift", [(0, 0), (1, 0), (0, -2), (-1, 1)])
def test_integer_displacement_moves_the_image_exactly(shift):
  """Keys' kernel interpolates: at whole pixels it reads the source pixel itself."""
  image = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 3))
  displacement = jnp.broadcast_to(jnp.asarray(shift, jnp.float32), (2, 3, 8, 8, 2))
  got = np.asarray(warp.warp(image, displacement))
  dy, dx = shift
  rows = np.clip(np.arange(8) + dy, 0, 7)
  cols = np.clip(np.arange(8) + dx, 0, 7)
  np.testing.assert_allclose(got, np.asarray(image)[:, :, rows][:, :, :, cols], atol=1e-6)


def test_untrained_warp_model_copies_the_previous_frame_and_learns_a_displacement():
  """At init (AdaLN-zero, zero output layer) the clean-frame prediction is the previous frame; the
  displacement channels get a gradient from the first step."""
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2, prediction="warp",
                        previous_frame_input=True, fine_patch=2, fine_width=32)
  x_t = jax.random.normal(jax.random.key(0), (1, 2, 8, 8, 3))
  previous = jax.random.normal(jax.random.key(1), (1, 2, 8, 8, 3))
  t = jnp.full((1, 2), 0.5)
  kwargs = dict(frame_pos_f=jnp.arange(2), mask=dit.masks.BlockCausal(2, 1),
                previous_bfhwc=previous)
  params = nn.meta.unbox(model.init(jax.random.key(2), x_t, t, **kwargs))
  velocity, _ = model.apply(params, x_t, t, **kwargs)
  np.testing.assert_allclose(np.asarray(x_t - 0.5 * velocity), np.asarray(previous), atol=1e-5)

  target = jnp.roll(previous, 1, axis=3)
  grads = jax.grad(lambda p: jnp.mean((model.apply(p, x_t, t, **kwargs)[0] - target) ** 2))(params)
  kernel = grads["params"]["fine_decoder"]["unpatch"]["kernel"]  # [width, fine_patch^2 * (3 + 2)]
  per_channel = np.abs(np.asarray(kernel)).reshape(32, 2 * 2, 5).sum(axis=(0, 1))
  assert per_channel[3:].min() > 0.0  # both displacement channels


@pytest.mark.parametrize("sigma", [0.7, 1.5, 3.0])
def test_smooth_is_a_gaussian_filter_with_edges_repeated(sigma):
  """Against scipy's separable Gaussian (truncated at 3 sigma, 'nearest' = the edge repeated)
  over rows and columns only, each frame and displacement component on its own."""
  field = np.random.default_rng(0).normal(size=(2, 3, 12, 10, 2)).astype(np.float32)
  expected = ndimage.gaussian_filter(field, sigma=(0, 0, sigma, sigma, 0), mode="nearest",
                                     truncate=3.0)
  got = np.asarray(warp.smooth(jnp.asarray(field), sigma))
  np.testing.assert_allclose(got, expected, atol=1e-5)
  with pytest.raises(ValueError, match="sigma=0"):
    warp.smooth(jnp.asarray(field), 0.0)


def test_warp_without_residual_only_moves_the_previous_frame():
  """With warp_residual=False the clean-frame prediction is a warp of the previous frame, so a
  uniform previous frame stays that colour whatever the weights and however the displacement is
  smoothed (a residual would add the network's output); a checkerboard keeps its values within
  the cubic kernel's overshoot of [0, 1]."""
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2, prediction="warp",
                        previous_frame_input=True, warp_sigma=1.5, warp_residual=False)
  x_t = jax.random.normal(jax.random.key(0), (1, 2, 8, 8, 3))
  t = jnp.full((1, 2), 0.5)
  kwargs = dict(frame_pos_f=jnp.arange(2), mask=dit.masks.BlockCausal(2, 1))
  colour = jnp.asarray([0.2, -0.4, 0.7])
  uniform = jnp.broadcast_to(colour, (1, 2, 8, 8, 3))
  params = nn.meta.unbox(model.init(jax.random.key(2), x_t, t, previous_bfhwc=uniform, **kwargs))
  # Random weights everywhere, the zero-initialised output layer included, so the displacement
  # is far from zero.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, l.shape) for k, l in
                                     zip(keys, leaves)])
  velocity, _ = model.apply(params, x_t, t, previous_bfhwc=uniform, **kwargs)
  clean = x_t - 0.5 * velocity
  np.testing.assert_allclose(np.asarray(clean), np.broadcast_to(colour, clean.shape), atol=1e-5)

  checker = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)
  board = jnp.broadcast_to(jnp.asarray(checker)[None, None, :, :, None], (1, 2, 8, 8, 3))
  velocity, _ = model.apply(params, x_t, t, previous_bfhwc=board, **kwargs)
  clean = np.asarray(x_t - 0.5 * velocity)
  assert np.abs(clean - np.asarray(board)).max() > 0.05  # it moved
  assert clean.min() > -0.3 and clean.max() < 1.3
