"""History routing against brute-force selection, and against dense attention at large top_k."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar.attention import masks, ops, routing

TOKENS = 3
BATCH, HEADS, HEAD_DIM = 2, 2, 4


def brute_force_own(spec) -> np.ndarray:
  """Own frames written out pair by pair: the query frame's chunk, never routed."""
  fq, fk = spec.frame_mask().shape
  out = np.zeros((fq, fk), bool)
  for i, j in itertools.product(range(fq), range(fk)):
    if isinstance(spec, (masks.BlockCausal, masks.SlidingWindow)):
      out[i, j] = i // spec.chunk == j // spec.chunk
    elif isinstance(spec, masks.TeacherForcing):
      n, c = spec.num_frames, spec.chunk
      out[i, j] = (i >= n) == (j >= n) and (i % n) // c == (j % n) // c
    elif isinstance(spec, masks.Full):
      out[i, j] = j >= fk - fq
    else:
      raise TypeError(spec)
  return out


def brute_force_selection(q, k, spec, top_k, valid) -> np.ndarray:
  """[B, H, Tq, Fk]: own frames plus the top_k history frames by q . mean(K_j), token by token."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  allowed, own = spec.frame_mask(), brute_force_own(spec)
  fk = allowed.shape[1]
  out = np.zeros((BATCH, HEADS, q.shape[1], fk), bool)
  for b, h, qi in itertools.product(range(BATCH), range(HEADS), range(q.shape[1])):
    i = qi // TOKENS
    frame_keys = [k[b, j * TOKENS:(j + 1) * TOKENS, h].mean(axis=0) for j in range(fk)]
    candidates = [j for j in range(fk) if allowed[i, j] and not own[i, j] and valid[b, j]]
    scores = [q[b, qi, h] @ frame_keys[j] for j in candidates]
    for rank in np.argsort(scores)[::-1][:top_k]:
      out[b, h, qi, candidates[rank]] = True
    for j in range(fk):
      out[b, h, qi, j] |= bool(own[i, j] and valid[b, j])
  return out


# Cache frames 0..3 partly empty, the chunk's own frames 4..5 always valid.
CACHE_VALID = np.array([[False, True, True, True, True, True],
                        [False, False, True, False, True, True]])
CASES = [
    (masks.TeacherForcing(5), None),
    (masks.BlockCausal(6, chunk=2), None),
    (masks.Full(2, 6), CACHE_VALID),
]
CASE_IDS = ["teacher_forcing", "block_causal", "cache"]


def random_qkv(spec, seed=0):
  fq, fk = spec.frame_mask().shape
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(kq, (BATCH, fq * TOKENS, HEADS, HEAD_DIM))
  k = jax.random.normal(kk, (BATCH, fk * TOKENS, HEADS, HEAD_DIM))
  v = jax.random.normal(kv, (BATCH, fk * TOKENS, HEADS, HEAD_DIM))
  return q, k, v


def valid_or_all(spec, valid):
  return np.ones((BATCH, spec.frame_mask().shape[1]), bool) if valid is None else valid


def num_candidates(spec, valid) -> np.ndarray:
  """[B, Fq]: history frames each query frame may route to."""
  history = spec.frame_mask() & ~brute_force_own(spec)
  return (history[None] & valid_or_all(spec, valid)[:, None, :]).sum(axis=-1)


@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("spec, valid", CASES, ids=CASE_IDS)
def test_selection_equals_brute_force(spec, valid, top_k):
  q, k, _ = random_qkv(spec)
  selection = routing.select_frames(q, k, spec, routing.Routing(top_k), tokens_per_frame=TOKENS,
                                    kv_frame_valid=valid)
  expected = brute_force_selection(q, k, spec, top_k, valid_or_all(spec, valid))
  np.testing.assert_array_equal(np.asarray(selection), expected)


@pytest.mark.parametrize("spec, valid", CASES, ids=CASE_IDS)
def test_large_top_k_is_dense_attention_with_gradients(spec, valid):
  q, k, v = random_qkv(spec, seed=1)
  cotangent = jax.random.normal(jax.random.key(2), q.shape)
  all_history = routing.Routing(top_k=spec.frame_mask().shape[1])

  def loss(q, k, v, route):
    out = ops.attention(q, k, v, spec, tokens_per_frame=TOKENS, kv_frame_valid=valid,
                        routing=route)
    return jnp.sum(out * cotangent)

  grad = jax.grad(loss, argnums=(0, 1, 2))
  np.testing.assert_allclose(loss(q, k, v, all_history), loss(q, k, v, None), rtol=1e-6)
  for routed, dense in zip(grad(q, k, v, all_history), grad(q, k, v, None)):
    np.testing.assert_allclose(routed, dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec, valid", CASES, ids=CASE_IDS)
def test_small_top_k_keeps_own_frames_and_exactly_k_history_frames(spec, valid):
  top_k = 2
  q, k, v = random_qkv(spec, seed=3)
  selection = np.asarray(routing.select_frames(
      q, k, spec, routing.Routing(top_k), tokens_per_frame=TOKENS, kv_frame_valid=valid))
  own = np.repeat(brute_force_own(spec), TOKENS, axis=0)[None, None]
  own = np.broadcast_to(own & valid_or_all(spec, valid)[:, None, None, :], selection.shape)
  np.testing.assert_array_equal(selection & own, own)
  history_picks = (selection & ~own).sum(axis=-1)  # [B, H, Tq]
  candidates = np.repeat(num_candidates(spec, valid), TOKENS, axis=1)[:, None]
  np.testing.assert_array_equal(history_picks, np.minimum(top_k, candidates).repeat(HEADS, 1))
  assert (candidates > top_k).any(), "the case must leave some history unrouted"

  routed = ops.attention(q, k, v, spec, tokens_per_frame=TOKENS, kv_frame_valid=valid,
                         routing=routing.Routing(top_k))
  dense = ops.attention(q, k, v, spec, tokens_per_frame=TOKENS, kv_frame_valid=valid)
  gap = np.abs(np.asarray(routed - dense)).max(axis=(2, 3))  # [B, Tq]
  dropped = candidates[:, 0] > top_k
  assert (gap[dropped] > 1e-4).all(), "queries that drop history must differ from dense"
  np.testing.assert_allclose(gap[~dropped], 0.0, atol=1e-6)


@pytest.mark.parametrize("spec", [masks.TeacherForcing(4), masks.Full(1, 5)], ids=str)
def test_own_frames_are_kept_even_with_the_lowest_score(spec):
  fq, fk = spec.frame_mask().shape
  own = brute_force_own(spec)
  # Frames that are no query's history: noisy frames in teacher forcing, the chunk in the cache.
  never_history = ~(spec.frame_mask() & ~own).any(axis=0)
  # Positive queries score frames with negative keys lowest: give those to the never-history frames.
  q = jnp.abs(jax.random.normal(jax.random.key(4), (BATCH, fq * TOKENS, HEADS, HEAD_DIM)))
  k = jnp.abs(jax.random.normal(jax.random.key(5), (BATCH, fk * TOKENS, HEADS, HEAD_DIM)))
  k = jnp.where(np.repeat(never_history, TOKENS)[None, :, None, None], -10.0 * k, k)
  selection = np.asarray(routing.select_frames(q, k, spec, routing.Routing(1),
                                               tokens_per_frame=TOKENS))
  lowest_scoring_own = own & never_history[None, :]
  assert lowest_scoring_own.sum() >= fq // 2
  assert selection[:, :, np.repeat(lowest_scoring_own, TOKENS, axis=0)].all()
  assert selection[:, :, np.repeat(own, TOKENS, axis=0)].all()


@pytest.mark.parametrize("spec", [s for s in [
    masks.BlockCausal(6), masks.BlockCausal(6, chunk=2), masks.TeacherForcing(5),
    masks.TeacherForcing(6, chunk=3), masks.Full(2, 6), masks.Full(1, 3),
    masks.SlidingWindow(8, window=3), masks.SlidingWindow(8, window=2, sink=2, chunk=2),
]], ids=str)
def test_own_frame_mask_equals_brute_force(spec):
  own = spec.own_frame_mask()
  np.testing.assert_array_equal(own, brute_force_own(spec))
  assert not (own & ~spec.frame_mask()).any(), "own frames must be allowed frames"


@pytest.mark.parametrize("spec", [masks.Full(4), masks.Full(3, 3)], ids=str)
def test_routing_a_bidirectional_full_mask_raises(spec):
  with pytest.raises(ValueError, match="Full.*num_kv_frames > num_frames"):
    spec.own_frame_mask()
  q, k, v = random_qkv(spec)
  with pytest.raises(ValueError, match="bidirectional Full mask cannot be routed"):
    ops.attention(q, k, v, spec, tokens_per_frame=TOKENS, routing=routing.Routing(1))


@pytest.mark.parametrize("top_k", [0, -2])
def test_bad_top_k_raises(top_k):
  with pytest.raises(ValueError, match=f"top_k={top_k} must be >= 1"):
    routing.Routing(top_k)


def test_routing_is_a_static_argument_under_jit():
  spec = masks.Full(2, 6)
  q, k, v = random_qkv(spec, seed=6)
  routed = jax.jit(ops.attention, static_argnames=("mask", "tokens_per_frame", "routing"))
  out = routed(q, k, v, spec, tokens_per_frame=TOKENS, kv_frame_valid=jnp.asarray(CACHE_VALID),
               routing=routing.Routing(2))
  eager = ops.attention(q, k, v, spec, tokens_per_frame=TOKENS, kv_frame_valid=CACHE_VALID,
                        routing=routing.Routing(2))
  np.testing.assert_allclose(out, eager, rtol=1e-6, atol=1e-6)
  assert hash(routing.Routing(2)) == hash(routing.Routing(2))


def test_a_mask_without_history_keeps_only_own_frames():
  spec = masks.BlockCausal(2, chunk=2)
  q, k, _ = random_qkv(spec)
  selection = routing.select_frames(q, k, spec, routing.Routing(3), tokens_per_frame=TOKENS)
  assert np.asarray(selection).all()


def test_frequency_by_query_and_key_counts_choices():
  spec = masks.TeacherForcing(5)
  q, k, _ = random_qkv(spec, seed=7)
  selection = routing.select_frames(q, k, spec, routing.Routing(2), tokens_per_frame=TOKENS)
  frequency = np.asarray(routing.frequency_by_query_and_key(selection, TOKENS))
  fq, fk = spec.frame_mask().shape
  expected = np.zeros((fq, fk))
  picks = np.asarray(selection)
  for i, j in itertools.product(range(fq), range(fk)):
    expected[i, j] = picks[:, :, i * TOKENS:(i + 1) * TOKENS, j].sum() / (BATCH * HEADS * TOKENS)
  np.testing.assert_allclose(frequency, expected, rtol=1e-6)
  np.testing.assert_array_equal(frequency[spec.own_frame_mask()], 1.0)
  assert not frequency[~spec.frame_mask()].any()
  history = spec.frame_mask() & ~spec.own_frame_mask()
  np.testing.assert_allclose((frequency * history).sum(axis=1), np.minimum(2, history.sum(1)))
