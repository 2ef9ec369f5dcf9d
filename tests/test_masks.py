"""Mask specs against brute-force builds, and causality of the model under each mask."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar.attention import masks
from videoar.models import dit


def brute_force(spec) -> np.ndarray:
  """Token-free frame masks written out pair by pair from the definitions."""
  if isinstance(spec, masks.BlockCausal):
    n, c = spec.num_frames, spec.chunk
    return np.array([[j // c <= i // c for j in range(n)] for i in range(n)])
  if isinstance(spec, masks.TeacherForcing):
    n, c = spec.num_frames, spec.chunk
    out = np.zeros((2 * n, 2 * n), bool)
    for i, j in itertools.product(range(2 * n), repeat=2):
      qi, kj = i % n, j % n
      q_noisy, k_noisy = i >= n, j >= n
      if not q_noisy and not k_noisy:
        out[i, j] = kj // c <= qi // c
      elif q_noisy and not k_noisy:
        out[i, j] = kj // c < qi // c
      if not k_noisy and spec.window and qi // c - kj // c > spec.window:
        out[i, j] = False
      elif q_noisy and k_noisy:
        out[i, j] = kj // c == qi // c
    return out
  if isinstance(spec, masks.Full):
    return np.ones((spec.num_frames, spec.num_kv_frames or spec.num_frames), bool)
  if isinstance(spec, masks.SlidingWindow):
    n, c = spec.num_frames, spec.chunk
    out = np.zeros((n, n), bool)
    for i, j in itertools.product(range(n), repeat=2):
      out[i, j] = j // c <= i // c and (i // c - j // c < spec.window or j < spec.sink)
    return out
  raise TypeError(spec)


SPECS = [
    masks.BlockCausal(6), masks.BlockCausal(6, chunk=2), masks.TeacherForcing(5),
    masks.TeacherForcing(6, chunk=3), masks.TeacherForcing(7, window=2),
    masks.TeacherForcing(8, chunk=2, window=1), masks.Full(4), masks.Full(2, 6),
    masks.SlidingWindow(8, window=3), masks.SlidingWindow(8, window=2, sink=1),
    masks.SlidingWindow(8, window=2, sink=2, chunk=2),
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_mask_equals_brute_force(spec):
  np.testing.assert_array_equal(spec.frame_mask(), brute_force(spec))
  dense = spec.to_dense(3)
  fq, fk = spec.frame_mask().shape
  assert dense.shape == (3 * fq, 3 * fk)
  for i, j in itertools.product(range(3 * fq), range(3 * fk)):
    assert dense[i, j] == spec.frame_mask()[i // 3, j // 3]


@pytest.mark.parametrize("spec", SPECS + [masks.SlidingWindow(4, 1),
                                  masks.SlidingWindow(6, 1, chunk=2), masks.SlidingWindow(1, 1)],
                         ids=str)
def test_diagonal_chunk_finds_exactly_the_masks_whose_chunks_see_only_themselves(spec):
  """By brute force: the chunk c for which the frame mask is c x c blocks on the diagonal."""
  allowed = spec.frame_mask()
  n = allowed.shape[0]
  expected = 0
  if allowed.shape == (n, n):
    for c in range(1, n + 1):
      blocks = np.kron(np.eye(n // c, dtype=bool), np.ones((c, c), bool))
      if n % c == 0 and np.array_equal(allowed, blocks):
        expected = c
  assert masks.diagonal_chunk(spec) == expected
  assert expected or not isinstance(spec, masks.SlidingWindow) or spec.window > 1


def test_specs_are_hashable_values():
  assert masks.TeacherForcing(4) == masks.TeacherForcing(4)
  assert hash(masks.SlidingWindow(8, 2, 1)) == hash(masks.SlidingWindow(8, 2, 1))
  assert masks.BlockCausal(4) != masks.BlockCausal(4, chunk=2)


def test_teacher_forcing_noisy_frames_never_see_other_noisy_frames():
  n = 6
  m = masks.TeacherForcing(n).frame_mask()
  noisy_block = m[n:, n:]
  np.testing.assert_array_equal(noisy_block, np.eye(n, dtype=bool))
  assert not m[:n, n:].any(), "history must never see noisy frames"


def test_block_sparsity_of_teacher_forcing_layout():
  # The RF/TF 2N layout leaves about 3/4 of the blocks empty.
  empty = 1.0 - masks.TeacherForcing(16).frame_mask().mean()
  assert empty == pytest.approx(0.75 - 1 / (4 * 16), abs=1e-9)


@pytest.mark.parametrize("bad", [dict(num_frames=0), dict(num_frames=4, chunk=0)])
def test_bad_spec_arguments_raise(bad):
  with pytest.raises(ValueError, match="must be >= 1"):
    masks.BlockCausal(**bad)


CAUSAL_SPECS = [masks.BlockCausal(4), masks.BlockCausal(4, chunk=2), masks.TeacherForcing(4),
                masks.TeacherForcing(4, window=1),
                masks.SlidingWindow(4, window=2, sink=1)]


@pytest.mark.parametrize("spec,fine_patch",
                         [(spec, 0) for spec in CAUSAL_SPECS] + [(CAUSAL_SPECS[1], 2),
                                                                 (CAUSAL_SPECS[3], 2)], ids=str)
def test_model_is_causal_under_mask(spec, fine_patch):
  """Perturbing frame j changes no output of a frame that the mask says cannot see j; also
  through the FineDecoder, which must work within each frame."""
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, fine_patch=fine_patch,
                        fine_width=32)
  fmask = spec.frame_mask()
  f = fmask.shape[0]
  x = jax.random.normal(jax.random.key(0), (1, f, 8, 8, 3))
  t = jax.random.uniform(jax.random.key(1), (1, f))
  frame_pos = jnp.arange(f) % (f // 2 if isinstance(spec, masks.TeacherForcing) else f)
  params = model.init(jax.random.key(2), x, t, frame_pos_f=frame_pos, mask=spec)
  # AdaLN-zero starts as the identity; random modulation makes every path live.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)
  apply = jax.jit(lambda x: model.apply(params, x, t, frame_pos_f=frame_pos, mask=spec)[0])
  base = apply(x)
  # Transitive reach: frame i depends on j if a chain of allowed edges leads from i to j.
  reach = fmask.copy()
  for _ in range(f):
    reach = reach | ((reach.astype(int) @ reach.astype(int)) > 0)
  for j in range(f):
    changed = apply(x.at[:, j].add(1.0))
    delta = np.abs(np.asarray(changed - base)).max(axis=(0, 2, 3, 4))
    for i in range(f):
      if not reach[i, j]:
        assert delta[i] == 0.0, f"{spec}: frame {i} changed when frame {j} was perturbed"
      elif i == j:
        assert delta[i] > 0.0
