"""History routing inside the DiT: dense equivalence and the frequencies behind Figure 8."""

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import masks
from videoar.forcing import teacher
from videoar.models import dit

N = 5


def _params(model, video):
  params = model.init(jax.random.key(0), video, jnp.zeros(video.shape[:2]),
                      frame_pos_f=jnp.arange(N), mask=masks.BlockCausal(N), previous_bfhwc=video)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


def test_model_with_top_k_covering_the_history_equals_the_dense_model():
  video = jax.random.normal(jax.random.key(2), (2, N, 8, 8, 3))
  dense = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, previous_frame_input=True)
  routed = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, previous_frame_input=True,
                         routing_top_k=N)
  params = _params(dense, video)
  sequence = jnp.concatenate([video, video], axis=1)
  t = jnp.concatenate([jnp.zeros((2, N)), jnp.full((2, N), 0.7)], axis=1)
  kwargs = dict(frame_pos_f=jnp.tile(jnp.arange(N), 2), mask=masks.TeacherForcing(N),
                previous_bfhwc=sequence)
  np.testing.assert_allclose(routed.apply(params, sequence, t, **kwargs)[0],
                             dense.apply(params, sequence, t, **kwargs)[0], atol=1e-5)


def test_routing_frequencies_pick_exactly_top_k_history_frames():
  video = jax.random.normal(jax.random.key(3), (2, N, 8, 8, 3))
  k = 2
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, previous_frame_input=True,
                        routing_top_k=k)
  frequencies = np.asarray(teacher.routing_frequencies(model, _params(model, video), video,
                                                              chunk=1))
  assert frequencies.shape == (2, N, N)
  for i in range(N):
    # Noisy frame i has i history frames and picks min(k, i) of them; none from its future.
    np.testing.assert_allclose(frequencies[:, i, :i].sum(axis=-1), min(k, i), rtol=1e-6)
    assert (frequencies[:, i, i:] == 0).all()
