"""Every attention implementation against the dense reference: outputs and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar.attention import blocked, fused, masks, ops, reference, routing
from videoar.attention.kernels import splash

BATCH, HEADS, HEAD_DIM = 2, 2, 8
# Cache frames partly empty, the chunk's own frames (the last two) always valid.
CACHE_VALID = np.array([[False, True, True, True, True, True],
                        [False, False, True, False, True, True]])
# A cache that hides some of the chunk's own frames (row 0) or all of them (row 1): routing then
# keeps only the picked history frames.
OWN_HIDDEN = np.array([[True, True, True, True, False, True],
                       [True, False, True, True, False, False]])

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
# BlockCausal(5, chunk=2): its last query frame owns one frame where the others own two.
ROUTED_CASES = [
    (masks.TeacherForcing(5), None, 3),
    (masks.BlockCausal(6, chunk=2), None, 32),
    (masks.BlockCausal(5, chunk=2), None, 3),
    (masks.Full(2, 6), CACHE_VALID, 3),
    (masks.Full(2, 6), OWN_HIDDEN, 3),
]


def case_id(case):
  spec, valid, tokens = case
  cache = "" if valid is None else "-own-hidden" if valid is OWN_HIDDEN else "-cache"
  return f"{spec}-T{tokens}{cache}"


def random_qkv(spec, tokens, seed=0):
  fq, fk = spec.frame_mask().shape
  kq, kk, kv, kc = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(kq, (BATCH, fq * tokens, HEADS, HEAD_DIM))
  k = jax.random.normal(kk, (BATCH, fk * tokens, HEADS, HEAD_DIM))
  v = jax.random.normal(kv, (BATCH, fk * tokens, HEADS, HEAD_DIM))
  return q, k, v, jax.random.normal(kc, q.shape)


def assert_matches_reference(fn, reference, q, k, v, cotangent, atol=2e-6):
  """Outputs and gradients with respect to q, k and v, within `atol` and a relative 1e-5; one
  compilation per implementation."""

  def output_and_grads(impl):
    def run(q, k, v):
      out, vjp = jax.vjp(impl, q, k, v)
      return (out,) + vjp(cotangent)
    return jax.jit(run)(q, k, v)

  for name, g, w in zip(["out", "dq", "dk", "dv"], output_and_grads(fn),
                        output_and_grads(reference)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol, err_msg=name)


@pytest.mark.parametrize("case", MASK_CASES, ids=case_id)
def test_blocked_equals_dense(case):
  spec, valid, tokens = case
  q, k, v, cotangent = random_qkv(spec, tokens)
  attend = lambda impl: lambda q, k, v: ops.attention(
      q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid, impl=impl)
  assert_matches_reference(attend("blocked"), attend("dense"), q, k, v, cotangent)


@pytest.mark.parametrize("spec", [masks.TeacherForcing(4), masks.BlockCausal(6),
                                  masks.TeacherForcing(4, window=2)], ids=str)
def test_blocked_equals_dense_where_logits_are_far_apart(spec):
  """Logits in the hundreds: exp of any piece's logits overflows unless the pieces are shifted
  by the row's maximum over all of them, so this fails if a merge or a plan forgets one; outputs
  and gradients equal dense attention's."""
  q, k, v, cotangent = random_qkv(spec, 4)
  q, k = 12 * q, 12 * k
  attend = lambda impl: lambda q, k, v: ops.attention(q, k, v, spec, tokens_per_frame=4,
                                                      impl=impl)
  assert float(jnp.abs(jnp.einsum("bqhd,bkhd->bhqk", q, k)).max()) / np.sqrt(q.shape[-1]) > 200
  # Logits this large are rounded at about 3e-5: outputs differed by up to 8e-6 and gradients
  # by up to 1.3e-4 (measured); an overflow is inf or NaN.
  assert_matches_reference(attend("blocked"), attend("dense"), q, k, v, cotangent, atol=1e-3)


@pytest.mark.parametrize("impl", ["auto", "dense", "blocked"])
@pytest.mark.parametrize("spec", [masks.SlidingWindow(4, 1), masks.SlidingWindow(6, 1, chunk=2)],
                         ids=str)
def test_chunks_that_see_only_themselves_equal_the_reference(spec, impl):
  """Such masks (a FineDecoder's) run as a batch of Full attentions, one per chunk: outputs and
  gradients equal the reference's, which masks the whole sequence."""
  q, k, v, cotangent = random_qkv(spec, 3)
  assert masks.diagonal_chunk(spec)
  assert_matches_reference(
      lambda q, k, v: ops.attention(q, k, v, spec, tokens_per_frame=3, impl=impl),
      lambda q, k, v: reference.dense_attention(q, k, v, spec, tokens_per_frame=3),
      q, k, v, cotangent)


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


# Splash pads frames to 128 tokens: 4 tokens hide 124 padding keys a frame; 384 tokens make three
# tiles a frame.
PALLAS_CASES = [
    (masks.TeacherForcing(3), None, 4),
    (masks.Full(2, 6), CACHE_VALID, 4),
    (masks.BlockCausal(2), None, 384),
]


@pytest.mark.parametrize("spec, valid, tokens", PALLAS_CASES,
                         ids=["tf", "cache", "tiles-within-frames"])
def test_pallas_kernel_in_interpret_mode_equals_the_reference(spec, valid, tokens):
  q, k, v, cotangent = random_qkv(spec, tokens, seed=5)
  attend = lambda impl: lambda q, k, v: ops.attention(
      q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid, impl=impl)
  assert_matches_reference(attend("pallas"), attend("dense"), q, k, v, cotangent)


# Wan2.1's latent frames: 1,560 tokens, not a multiple of any kernel tile (splash pads to 1,664).
# 10-25 s a case on this CPU (interpret mode, forward and backward); two run by default.
WAN_TOKENS = 1560
WAN_CASES = [
    pytest.param(masks.TeacherForcing(1), None, id="2n-layout"),
    pytest.param(masks.Full(1, 3), np.array([False, True, True]), id="cache"),
    pytest.param(masks.BlockCausal(3), None, id="block-causal", marks=pytest.mark.slow),
    pytest.param(masks.Full(2), None, id="full", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("spec, valid", WAN_CASES)
def test_every_path_at_wan_frames_equals_the_reference(spec, valid):
  """Tiny heads (1 of 8), batch 1, frames of 1,560 tokens: outputs and gradients."""
  fq, fk = spec.frame_mask().shape
  keys = jax.random.split(jax.random.key(8), 4)
  q = jax.random.normal(keys[0], (1, fq * WAN_TOKENS, 1, 8))
  k, v = (jax.random.normal(key, (1, fk * WAN_TOKENS, 1, 8)) for key in keys[1:3])
  cotangent = jax.random.normal(keys[3], q.shape)
  attend = lambda impl: lambda q, k, v: ops.attention(
      q, k, v, spec, tokens_per_frame=WAN_TOKENS, kv_frame_valid=valid, impl=impl)
  # On a GPU the Pallas kernel has no target (it raises: test_attention_platform.py).
  for impl in ("blocked",) if jax.default_backend() == "gpu" else ("blocked", "pallas"):
    assert_matches_reference(attend(impl), attend("dense"), q, k, v, cotangent)
  fused_xla = lambda q, k, v: fused.attention(
      q, k, v, spec, tokens_per_frame=WAN_TOKENS, kv_frame_valid=valid, implementation="xla")
  assert_matches_reference(fused_xla, attend("dense"), q, k, v, cotangent)


def test_splash_mask_is_lazy_and_equals_the_token_mask():
  spec = masks.TeacherForcing(4, chunk=2, window=1)
  mask = splash.FrameMask(spec.frame_mask(), 5)
  np.testing.assert_array_equal(mask[0:mask.shape[0], 0:mask.shape[1]], spec.to_dense(5))
  np.testing.assert_array_equal(mask[7:23, 3:11], spec.to_dense(5)[7:23, 3:11])
  assert mask == splash.FrameMask(spec.frame_mask(), 5)
  assert hash(mask) == hash(splash.FrameMask(spec.frame_mask(), 5))
  assert mask != splash.FrameMask(spec.frame_mask(), 4)
  assert mask[10:15, 5:10].strides == (0, 0)  # a tile within one frame pair: one value, viewed


def test_splash_kernel_never_builds_the_token_mask(monkeypatch):
  def refuse(*args):
    raise AssertionError("the token-level mask was built")

  monkeypatch.setattr(masks.MaskSpec, "to_dense", refuse)
  spec = masks.TeacherForcing(3, chunk=3)
  kernel = splash._kernel(spec, 1664, 2, True)  # pylint: disable=protected-access
  assert kernel.fwd_mask_info.partial_mask_blocks is None  # whole tiles only


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


F32 = dict(dtype=jnp.float32, head_dim=64)
BF16 = dict(dtype=jnp.bfloat16, head_dim=128)


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_auto_picks_dense_only_where_nothing_can_be_skipped(platform):
  assert ops.choose_impl(masks.Full(4), None, platform, 1560, **F32) == "dense"
  assert ops.choose_impl(masks.Full(1, 17), None, platform, 64, **F32) == "dense"
  assert ops.choose_impl(masks.TeacherForcing(8), None, platform, 1560, **F32) == "blocked"
  for dtypes in (F32, BF16):
    assert ops.choose_impl(masks.SlidingWindow(8, 2), None, platform, 64, **dtypes) == "blocked"
    assert ops.choose_impl(masks.Full(1, 17), routing.Routing(4), platform, 64,
                           **dtypes) == "blocked"


def test_auto_picks_cudnn_on_gpu_in_half_precision_where_a_length_can_mask():
  for spec in (masks.Full(4), masks.Full(3, 21)):
    assert ops.choose_impl(spec, None, "gpu", 1560, **BF16) == "cudnn"
    assert ops.choose_impl(spec, None, "gpu", 1560, dtype=jnp.float16, head_dim=64) == "cudnn"
    assert ops.choose_impl(spec, None, "gpu", 16, **BF16, has_kv_frame_valid=True) == "cudnn"
    assert ops.choose_impl(spec, None, "cpu", 1560, **BF16) == "dense"
    assert ops.choose_impl(spec, None, "gpu", 1560, dtype=jnp.bfloat16, head_dim=256) == "dense"
  for spec in (masks.TeacherForcing(8), masks.BlockCausal(21, chunk=3),
               masks.SlidingWindow(8, window=2, sink=1)):
    assert ops.choose_impl(spec, None, "gpu", 1560, **BF16) == "cudnn"
    # Several query frames in a tile; a traced cache mask; routing: blocked.
    assert ops.choose_impl(spec, None, "gpu", 32, **BF16) == "blocked"
    assert ops.choose_impl(spec, None, "gpu", 1560, **BF16, has_kv_frame_valid=True) == "blocked"
    assert ops.choose_impl(spec, routing.Routing(2), "gpu", 1560, **BF16) == "blocked"


def test_auto_picks_splash_on_tpu_where_frames_fill_its_tiles_and_nothing_is_routed():
  for spec in (masks.Full(4), masks.Full(1, 17), masks.TeacherForcing(8), masks.BlockCausal(3)):
    for tokens in (1560, 128, 256):
      assert ops.choose_impl(spec, None, "tpu", tokens, **F32) == "pallas"
    assert ops.choose_impl(spec, None, "tpu", 16, **F32) != "pallas"
  assert ops.choose_impl(masks.TeacherForcing(8), None, "tpu", 200, **F32) == "blocked"
  assert ops.choose_impl(masks.TeacherForcing(8), routing.Routing(4), "tpu", 1560,
                         **F32) == "blocked"


# A KV cache whose empty slots sit between cached frames and the chunk's own: the fused path
# must move the valid frames to the front in each row's own order. The training masks at frames
# of more than half a query tile (65-96 tokens here, 1,560 for Wan): one call per query frame,
# padded key lists in several buckets.
FUSED_CASES = [
    pytest.param(masks.Full(3), None, 32, id="bidirectional"),
    pytest.param(masks.Full(2, 6), CACHE_VALID, 32, id="cache"),
    pytest.param(masks.Full(2, 6), CACHE_VALID[1], 5, id="cache-shared-by-rows"),
    pytest.param(masks.TeacherForcing(4), None, 65, id="2n-layout"),
    pytest.param(masks.BlockCausal(10), None, 66, id="block-causal-padded"),
    pytest.param(masks.SlidingWindow(9, window=2, sink=1), None, 72, id="window-sink"),
]


@pytest.mark.parametrize("spec, valid, tokens", FUSED_CASES)
def test_fused_reordering_and_lengths_equal_the_reference(spec, valid, tokens):
  """The cuDNN paths' code through XLA's attention (the same jax.nn call), on this CPU."""
  q, k, v, cotangent = random_qkv(spec, tokens, seed=11)
  fused_xla = lambda q, k, v: fused.attention(q, k, v, spec, tokens_per_frame=tokens,
                                              kv_frame_valid=valid, implementation="xla")
  reference = lambda q, k, v: ops.attention(q, k, v, spec, tokens_per_frame=tokens,
                                            kv_frame_valid=valid, impl="dense")
  assert_matches_reference(fused_xla, reference, q, k, v, cotangent)


def assert_close_in_bfloat16(attend, spec, valid, tokens, seed):
  """`attend(q, k, v)` on bfloat16 operands against the float32 reference on the same operands:
  outputs and gradients within bfloat16's rounding (the whole array's relative error below
  1e-2; float32 lands far under 1e-3)."""
  q, k, v, cotangent = (x.astype(jnp.bfloat16) for x in random_qkv(spec, tokens, seed=seed))
  reference = lambda q, k, v: ops.attention(
      q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), spec,
      tokens_per_frame=tokens, kv_frame_valid=valid, impl="dense")

  def output_and_grads(fn):
    def run(q, k, v):
      out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v).astype(jnp.float32), q, k, v)
      return (out,) + vjp(cotangent.astype(jnp.float32))
    return jax.jit(run)(q, k, v)

  for name, got, want in zip(["out", "dq", "dk", "dv"], output_and_grads(attend),
                             output_and_grads(reference)):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert error < 1e-2, (name, error)


def test_the_bfloat16_comparison_passes_xla_and_catches_a_wrong_mask():
  """The GPU test's comparison, run here on the fused code through XLA."""
  spec, valid, tokens = masks.Full(2, 6), CACHE_VALID, 32
  fused_xla = lambda valid: lambda q, k, v: fused.attention(
      q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid, implementation="xla")
  assert_close_in_bfloat16(fused_xla(valid), spec, valid, tokens, seed=12)
  with pytest.raises(AssertionError):
    assert_close_in_bfloat16(fused_xla(None), spec, valid, tokens, seed=12)


on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN runs on a GPU only")


@on_gpu
@pytest.mark.parametrize("spec, valid, tokens", FUSED_CASES + [
    pytest.param(masks.Full(1, 3), np.array([False, True, True]), WAN_TOKENS, id="wan-frames"),
    pytest.param(masks.BlockCausal(3), None, WAN_TOKENS, id="wan-block-causal")])
def test_cudnn_equals_the_reference_on_a_gpu(spec, valid, tokens):
  attend = lambda q, k, v: ops.attention(q, k, v, spec, tokens_per_frame=tokens,
                                         kv_frame_valid=valid, impl="cudnn")
  q = jnp.zeros((BATCH, spec.frame_mask().shape[0] * tokens, HEADS, HEAD_DIM), jnp.bfloat16)
  k = jnp.zeros((BATCH, spec.frame_mask().shape[1] * tokens, HEADS, HEAD_DIM), jnp.bfloat16)
  assert "cudnn" in jax.jit(attend).lower(q, k, k).as_text(), "no cuDNN custom call"
  assert_close_in_bfloat16(attend, spec, valid, tokens, seed=12)


def on_platform(platform: str):
  """The abstract mesh of one device of `platform`: what a step compiled for it traces under."""
  device = jax.sharding.AbstractDevice(device_kind=platform, num_cores=None, platform=platform)
  return jax.sharding.use_abstract_mesh(
      jax.sharding.AbstractMesh((1,), ("data",), abstract_device=device))


def test_cudnn_off_a_gpu_or_on_a_frame_causal_mask_raises():
  spec = masks.Full(1, 3)
  q, k, v, _ = random_qkv(spec, 3)
  with on_platform("cpu"):
    with pytest.raises(ValueError, match="impl='cudnn' needs a GPU target; this one is 'cpu'"):
      ops.attention(q, k, v, spec, tokens_per_frame=3, impl="cudnn")
  with on_platform("gpu"):
    with pytest.raises(ValueError, match="does not serve this call: mask BlockCausal"):
      spec = masks.BlockCausal(2)
      q, k, v, _ = random_qkv(spec, 3)
      jax.make_jaxpr(lambda q, k, v: ops.attention(
          q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), spec,
          tokens_per_frame=3, impl="cudnn"))(q, k, v)
    with pytest.raises(ValueError, match="dtype float32: cuDNN takes bfloat16 or float16"):
      jax.make_jaxpr(lambda q: ops.attention(q, q, q, masks.Full(2), tokens_per_frame=3,
                                             impl="cudnn"))(jnp.zeros((1, 6, 2, 8)))


def test_routing_gathers_over_a_long_cache_and_masks_in_training():
  route = routing.Routing(4)
  assert blocked.prefers_gather(masks.Full(1, 257), route)
  assert blocked.prefers_gather(masks.Full(1, 65), route)
  assert not blocked.prefers_gather(masks.Full(1, 17), route)
  assert not blocked.prefers_gather(masks.TeacherForcing(32), route)


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


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_routing_a_bidirectional_full_mask_raises_for_every_impl(impl):
  spec = masks.Full(3)
  q, k, v, _ = random_qkv(spec, 3)
  with pytest.raises(ValueError, match="bidirectional Full mask cannot be routed"):
    ops.attention(q, k, v, spec, tokens_per_frame=3, routing=routing.Routing(1), impl=impl)


def test_pallas_with_routing_raises():
  spec = masks.Full(1, 3)
  q, k, v, _ = random_qkv(spec, 3)
  with pytest.raises(ValueError, match="impl='pallas' has no routed kernel"):
    ops.attention(q, k, v, spec, tokens_per_frame=3, routing=routing.Routing(1), impl="pallas")


def test_a_mask_with_a_blind_query_frame_raises():
  class Blind(masks.BlockCausal):

    def frame_mask(self):
      fm = super().frame_mask()
      fm[1] = False
      return fm

  with pytest.raises(ValueError, match="query frames that see no key frame"):
    blocked.plan(Blind(3), 4)
  q, k, v, _ = random_qkv(Blind(3), 4)
  # The interpret-mode kernel, wherever the suite runs (a GPU target has no Pallas kernel).
  with on_platform("cpu"), pytest.raises(ValueError, match="query frames that see no key frame"):
    ops.attention(q, k, v, Blind(3), tokens_per_frame=4, impl="pallas")
