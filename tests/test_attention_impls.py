"""Every attention implementation against the dense reference: outputs and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar.attention import blocked, kernels, masks, ops, routing
from videoar.attention.kernels import splash

BATCH, HEADS, HEAD_DIM = 2, 2, 8
# Cache frames partly empty, the chunk's own frames (the last two) always valid.
CACHE_VALID = np.array([[False, True, True, True, True, True],
                        [False, False, True, False, True, True]])

# 32 tokens a frame makes query groups of up to 4 frames in the blocked path (several groups and
# buckets); 3 tokens puts every query frame in one group.
MASK_CASES = [
    (masks.TeacherForcing(5), None, 32),
    (masks.TeacherForcing(6, chunk=2, window=1), None, 32),
    (masks.BlockCausal(6, chunk=2), None, 3),
    (masks.SlidingWindow(8, window=2, sink=1), None, 32),
    (masks.Full(3), None, 3),
    (masks.Full(2, 6), CACHE_VALID, 32),
]
ROUTED_CASES = [
    (masks.TeacherForcing(5), None, 3),
    (masks.BlockCausal(6, chunk=2), None, 32),
    (masks.Full(2, 6), CACHE_VALID, 3),
]


def case_id(case):
  spec, valid, tokens = case
  return f"{spec}-T{tokens}" + ("-cache" if valid is not None else "")


def random_qkv(spec, tokens, seed=0):
  fq, fk = spec.frame_mask().shape
  kq, kk, kv, kc = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(kq, (BATCH, fq * tokens, HEADS, HEAD_DIM))
  k = jax.random.normal(kk, (BATCH, fk * tokens, HEADS, HEAD_DIM))
  v = jax.random.normal(kv, (BATCH, fk * tokens, HEADS, HEAD_DIM))
  return q, k, v, jax.random.normal(kc, q.shape)


def assert_matches_reference(fn, reference, q, k, v, cotangent):
  """Outputs and gradients with respect to q, k and v; one compilation per implementation."""

  def output_and_grads(impl):
    def run(q, k, v):
      out, vjp = jax.vjp(impl, q, k, v)
      return (out,) + vjp(cotangent)
    return jax.jit(run)(q, k, v)

  for name, g, w in zip(["out", "dq", "dk", "dv"], output_and_grads(fn),
                        output_and_grads(reference)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("case", MASK_CASES, ids=case_id)
def test_blocked_equals_dense(case):
  spec, valid, tokens = case
  q, k, v, cotangent = random_qkv(spec, tokens)
  attend = lambda impl: lambda q, k, v: ops.attention(
      q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid, impl=impl)
  assert_matches_reference(attend("blocked"), attend("dense"), q, k, v, cotangent)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("case", ROUTED_CASES, ids=case_id)
def test_routed_paths_equal_the_reference(case, top_k):
  spec, valid, tokens = case
  q, k, v, cotangent = random_qkv(spec, tokens, seed=top_k)
  route = routing.Routing(top_k)
  kwargs = dict(tokens_per_frame=tokens, kv_frame_valid=valid)
  reference = lambda q, k, v: routing.routed_attention_reference(q, k, v, spec, route, **kwargs)
  gather = lambda q, k, v: blocked.routed_gather_attention(q, k, v, spec, route, **kwargs)
  masked = lambda q, k, v: blocked.blocked_attention(
      q, k, v, spec, selection=routing.select_frames(q, k, spec, route, **kwargs), **kwargs)
  assert_matches_reference(gather, reference, q, k, v, cotangent)
  assert_matches_reference(masked, reference, q, k, v, cotangent)


# 128 tokens a frame make two query tiles and two key blocks per frame.
PALLAS_CASES = [
    (masks.TeacherForcing(3), None, None, 4),
    (masks.Full(2, 6), CACHE_VALID, None, 4),
    (masks.Full(2, 6), CACHE_VALID, routing.Routing(2), 4),
    (masks.BlockCausal(2), None, None, 128),
]


@pytest.mark.parametrize("spec, valid, route, tokens", PALLAS_CASES,
                         ids=["tf", "cache", "cache-routed", "tiles-within-frames"])
def test_pallas_kernels_in_interpret_mode_equal_the_reference(spec, valid, route, tokens):
  q, k, v, cotangent = random_qkv(spec, tokens, seed=5)
  attend = lambda impl: lambda q, k, v: ops.attention(
      q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid, routing=route, impl=impl)
  assert_matches_reference(attend("pallas"), attend("dense"), q, k, v, cotangent)


def test_splash_attention_in_interpret_mode_equals_the_reference():
  """The TPU block-sparse path, on a cache whose empty frames become segment ids."""
  spec, valid, tokens = masks.Full(2, 4), CACHE_VALID[:, 2:], 64
  q, k, v, cotangent = random_qkv(spec, tokens, seed=6)
  kernel = lambda q, k, v: splash.attention(
      q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid, interpret=True)
  reference = lambda q, k, v: ops.dense_attention(
      q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid)
  assert_matches_reference(kernel, reference, q, k, v, cotangent)


@pytest.mark.parametrize("spec", [
    masks.TeacherForcing(6), masks.TeacherForcing(8, chunk=2, window=2), masks.BlockCausal(7),
    masks.SlidingWindow(9, window=3, sink=2), masks.Full(2, 5)], ids=str)
@pytest.mark.parametrize("tokens", [1, 16, 64])
def test_plan_covers_exactly_the_allowed_blocks(spec, tokens):
  plan = blocked.plan(spec, tokens)
  frame_mask = spec.frame_mask()
  covered = np.zeros_like(frame_mask, dtype=int)
  for bucket in plan.buckets:
    for group, keys, allowed in zip(bucket.groups, bucket.keys, bucket.allowed):
      for row, frame in enumerate(range(group * plan.group_size, (group + 1) * plan.group_size)):
        np.add.at(covered[frame], keys[allowed[row]], 1)
  np.testing.assert_array_equal(covered, frame_mask.astype(int))
  assert sorted(np.concatenate([b.groups for b in plan.buckets])[plan.group_order]) == list(
      range(frame_mask.shape[0] // plan.group_size))


def test_plan_of_the_2n_layout_computes_little_more_than_the_allowed_blocks():
  spec = masks.TeacherForcing(32)
  plan = blocked.plan(spec, 64)
  allowed = int(spec.frame_mask().sum())
  assert allowed < 0.26 * spec.frame_mask().size
  assert plan.computed_blocks() <= 1.25 * allowed, (plan.computed_blocks(), allowed)
  assert len(plan.buckets) <= blocked.MAX_BUCKETS


def test_auto_picks_dense_only_where_nothing_can_be_skipped():
  assert ops.choose_impl(masks.Full(4), None) == "dense"
  assert ops.choose_impl(masks.Full(1, 17), None) == "dense"
  assert ops.choose_impl(masks.TeacherForcing(8), None) == "blocked"
  assert ops.choose_impl(masks.SlidingWindow(8, 2), None) == "blocked"
  assert ops.choose_impl(masks.Full(1, 17), routing.Routing(4)) == "blocked"


def test_routing_gathers_over_a_long_cache_and_masks_in_training():
  route = routing.Routing(4)
  assert blocked.prefers_gather(masks.Full(1, 257), route, head_dim=64)
  assert not blocked.prefers_gather(masks.Full(1, 17), route, head_dim=64)
  assert not blocked.prefers_gather(masks.TeacherForcing(32), route, head_dim=64)


def test_auto_equals_dense_under_jit_with_static_specs():
  spec, valid, tokens = masks.Full(2, 6), CACHE_VALID, 3
  q, k, v, _ = random_qkv(spec, tokens, seed=7)
  attend = jax.jit(ops.attention, static_argnames=("mask", "tokens_per_frame", "routing", "impl"))
  for route in (None, routing.Routing(2)):
    np.testing.assert_allclose(
        attend(q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid, routing=route),
        attend(q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid, routing=route,
               impl="dense"), rtol=1e-5, atol=2e-6)


def test_unknown_impl_raises():
  spec = masks.BlockCausal(2)
  q, k, v, _ = random_qkv(spec, 3)
  with pytest.raises(ValueError, match="impl='flash' is unknown; allowed: auto, dense, blocked"):
    ops.attention(q, k, v, spec, tokens_per_frame=3, impl="flash")


@pytest.mark.parametrize("impl", ["blocked", "pallas"])
def test_routing_a_bidirectional_full_mask_raises_for_every_impl(impl):
  spec = masks.Full(3)
  q, k, v, _ = random_qkv(spec, 3)
  with pytest.raises(ValueError, match="bidirectional Full mask cannot be routed"):
    ops.attention(q, k, v, spec, tokens_per_frame=3, routing=routing.Routing(1), impl=impl)


def test_kernel_shapes_a_platform_cannot_tile_raise():
  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="tokens_per_frame=24 is not a multiple of 16"):
    kernels._check_supported(jnp.zeros((1, 24, 2, 64)), 24, "gpu")
  with pytest.raises(ValueError, match="power-of-two head_dim >= 16, not 48"):
    kernels._check_supported(jnp.zeros((1, 32, 2, 48)), 32, "gpu")
  with pytest.raises(ValueError, match="multiples of 128, not 96 and 192"):
    splash._block(96, 192)


def test_a_mask_with_a_blind_query_frame_raises():
  class Blind(masks.BlockCausal):

    def frame_mask(self):
      fm = super().frame_mask()
      fm[1] = False
      return fm

  with pytest.raises(ValueError, match="query frames that see no key frame"):
    blocked.plan(Blind(3), 4)
