"""The FineDecoder's layout: each trunk token's sub-tokens sit under that token's own patch.

The model-level tests (causality, cached == recomputed) compare the decoder with itself, so a
split laid out on the wrong fine-grid cells would pass them.
"""

import jax
import jax.numpy as jnp
import numpy as np

from videoar.models import dit


def test_each_trunk_token_decodes_into_the_pixels_of_its_own_patch():
  """Without blocks (depth 0) the decoder works per sub-patch: perturbing trunk token j changes
  every output pixel of patch j and no other, on a grid of 2 x 3 patches (not square, so a
  transposed layout shows too)."""
  patch, h, w = 4, 8, 12
  decoder = dit.FineDecoder(patch=patch, fine_patch=2, width=16, depth=0, head_dim=8,
                            mlp_ratio=2.0, attention_impl="dense", dtype=jnp.float32,
                            out_channels=3)
  keys = jax.random.split(jax.random.key(0), 5)
  grid_w = w // patch
  x_bftd = jax.random.normal(keys[0], (1, 2, (h // patch) * grid_w, 32))
  cond_bfd = jax.random.normal(keys[1], (1, 2, 32))
  x_t = jax.random.normal(keys[2], (1, 2, h, w, 3))
  params = decoder.init(keys[3], x_bftd, cond_bfd, x_t)
  # The final layer and its modulation start at zero; random weights make every path live.
  leaves, tree = jax.tree.flatten(params)
  params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in
                                     zip(leaves, jax.random.split(keys[4], len(leaves)))])
  apply = jax.jit(lambda x: decoder.apply(params, x, cond_bfd, x_t))
  base = apply(x_bftd)
  for j in range(x_bftd.shape[2]):
    changed = np.abs(np.asarray(apply(x_bftd.at[:, :, j].add(1.0)) - base)).max(axis=(0, 1, 4))
    row, col = divmod(j, grid_w)
    inside = np.zeros((h, w), bool)
    inside[row * patch:(row + 1) * patch, col * patch:(col + 1) * patch] = True
    assert changed[~inside].max() == 0.0, f"token {j} changed pixels outside its patch"
    assert changed[inside].min() > 0.0, f"token {j} left pixels of its patch unchanged"
