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


def test_layered_warp_moves_each_region_by_its_layers_mean_vote():
  """Two layers, each owning half the output (mask logits +-30): the left half is the image
  shifted by layer 0's displacement, the right half by layer 1's, each by cubic convolution's
  definition. A layer's shift is its mask-weighted mean vote, so votes where its mask is ~0
  (layer 0's on the right, set wild here) do not move it."""
  rng = np.random.default_rng(0)
  h, w = 7, 8
  image = rng.normal(size=(h, w)).astype(np.float32)
  shifts = np.asarray([[0.6, -1.3], [-1.7, 0.4]], np.float32)
  left = np.arange(w) < w // 2
  owner = np.broadcast_to(np.where(left, 0, 1), (h, w))
  logits = np.where(owner[..., None] == np.arange(2), 30.0, -30.0).astype(np.float32)
  votes = np.broadcast_to(shifts, (h, w, 2, 2)).copy()
  votes[:, ~left, 0] = rng.uniform(-20, 20, size=(h, int((~left).sum()), 2))
  got = warp.layered_warp(jnp.asarray(image)[None, None, ..., None],
                          jnp.asarray(logits)[None, None], jnp.asarray(votes)[None, None])
  expected = _brute_force_warp(image, shifts[owner])
  np.testing.assert_allclose(np.asarray(got)[0, 0, ..., 0], expected, atol=1e-4)
  _, layer_shifts = warp.layer_shifts(jnp.asarray(logits)[None, None],
                                      jnp.asarray(votes)[None, None])
  np.testing.assert_allclose(np.asarray(layer_shifts)[0, 0], shifts, atol=1e-4)


def test_layered_warp_with_zero_votes_returns_the_image_whatever_the_masks():
  image = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 3))
  logits = 3.0 * jax.random.normal(jax.random.key(1), (2, 3, 8, 8, 4))
  got = warp.layered_warp(image, logits, jnp.zeros((2, 3, 8, 8, 4, 2)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(image), atol=1e-6)


@pytest.mark.parametrize("fine_patch", [0, 2])
def test_untrained_layered_warp_copies_the_previous_frame_and_its_layers_part(fine_patch):
  """At init the clean-frame prediction is the previous frame, while the mask logits already
  differ across pixels: otherwise every layer would be the same image with the same gradient
  and the layers would never part. The first gradient differs between the layers' votes."""
  k = 2
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2, prediction="warp",
                        previous_frame_input=True, fine_patch=fine_patch, fine_width=32,
                        warp_layers=k)
  x_t = jax.random.normal(jax.random.key(0), (1, 2, 8, 8, 3))
  previous = jax.random.normal(jax.random.key(1), (1, 2, 8, 8, 3))
  t = jnp.full((1, 2), 0.5)
  kwargs = dict(frame_pos_f=jnp.arange(2), mask=dit.masks.BlockCausal(2, 1),
                previous_bfhwc=previous)
  params = nn.meta.unbox(model.init(jax.random.key(2), x_t, t, **kwargs))
  velocity, _ = model.apply(params, x_t, t, **kwargs)
  np.testing.assert_allclose(np.asarray(x_t - 0.5 * velocity), np.asarray(previous), atol=1e-5)

  decoder = params["params"]["fine_decoder"] if fine_patch else params["params"]
  kernel = np.asarray(decoder["unpatch"]["kernel"])
  pixels = (fine_patch or 4) ** 2
  channels = 3 + 3 * k  # residual, mask logits, votes
  per_channel = np.abs(kernel.reshape(-1, pixels, channels)).sum(axis=(0, 1))
  assert per_channel[3:3 + k].min() > 0.0 and per_channel[:3].max() == 0.0
  assert per_channel[3 + k:].max() == 0.0

  target = jnp.roll(previous, 1, axis=3)
  grads = jax.grad(lambda p: jnp.mean((model.apply(p, x_t, t, **kwargs)[0] - target) ** 2))(params)
  grad_decoder = grads["params"]["fine_decoder"] if fine_patch else grads["params"]
  votes = np.asarray(grad_decoder["unpatch"]["kernel"]).reshape(-1, pixels, channels)[..., 3 + k:]
  per_layer = votes.reshape(-1, pixels, k, 2)
  assert np.abs(per_layer).sum(axis=(0, 1, 3)).min() > 0.0  # every layer's votes
  assert np.abs(per_layer[..., 0, :] - per_layer[..., 1, :]).max() > 1e-4 * np.abs(per_layer).max()
