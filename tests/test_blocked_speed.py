"""The blocked path's unit-causal path (blocked._causal_attention) against the dense reference,
at unit counts that are and are not powers of two, outputs and gradients, and the blocks it
computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar.attention import blocked, masks, ops

CAUSAL_CASES = [
    (masks.TeacherForcing(1), 4),
    (masks.TeacherForcing(7), 4),
    (masks.TeacherForcing(8), 2),
    (masks.TeacherForcing(6, chunk=3), 2),
    (masks.BlockCausal(1), 4),
    (masks.BlockCausal(5), 4),
    (masks.BlockCausal(8, chunk=2), 3),
]


def assert_blocked_equals_dense(spec, tokens, seed):
  """impl="blocked" against the dense reference, output and gradients of q, k and v, at batch
  2 and 3 heads of 8."""
  fq = spec.frame_mask().shape[0]
  keys = jax.random.split(jax.random.key(seed), 4)
  # Large logits: the pieces' shifts differ, so merging them must rescale correctly.
  q, k, v, cotangent = (3 * jax.random.normal(key, (2, fq * tokens, 3, 8)) for key in keys)

  def output_and_grads(impl):
    attend = lambda q, k, v: ops.attention(q, k, v, spec, tokens_per_frame=tokens, impl=impl)
    out, vjp = jax.vjp(attend, q, k, v)
    return (out,) + vjp(cotangent)

  got, want = jax.jit(lambda: output_and_grads("blocked"))(), jax.jit(
      lambda: output_and_grads("dense"))()
  for name, g, w in zip(["out", "dq", "dk", "dv"], got, want):
    # Peaked softmaxes: float32 rounding is relative to the largest gradient, not each entry.
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.abs(w).max()), err_msg=name)


@pytest.mark.parametrize("spec,tokens", CAUSAL_CASES, ids=str)
def test_causal_fast_path_equals_dense(spec, tokens):
  assert blocked._causal_units(spec) is not None  # pylint: disable=protected-access
  assert_blocked_equals_dense(spec, tokens, seed=3)


def test_causal_fast_path_in_bfloat16_stays_near_float32():
  spec, tokens = masks.TeacherForcing(4), 4
  keys = jax.random.split(jax.random.key(4), 4)
  q, k, v, cotangent = (jax.random.normal(key, (1, 8 * tokens, 2, 16)) for key in keys)
  attend = lambda q, k, v: ops.attention(q, k, v, spec, tokens_per_frame=tokens, impl="blocked")
  low_out, low_vjp = jax.vjp(attend, *(x.astype(jnp.bfloat16) for x in (q, k, v)))
  out, vjp = jax.vjp(attend, q, k, v)
  assert low_out.dtype == jnp.bfloat16
  np.testing.assert_allclose(low_out.astype(jnp.float32), out, atol=0.05)
  for low, full in zip(low_vjp(cotangent.astype(jnp.bfloat16)), vjp(cotangent)):
    np.testing.assert_allclose(low.astype(jnp.float32), full, atol=0.1)


@pytest.mark.parametrize("n", [16, 32])
def test_the_2n_layout_computes_only_its_allowed_blocks_plus_one_padded_chunk(n):
  spec = masks.TeacherForcing(n)
  assert blocked.computed_blocks(spec, 64) == int(spec.frame_mask().sum()) + n


def test_windowed_and_subclassed_masks_take_the_general_path():
  class Shifted(masks.BlockCausal):
    pass

  for spec in (masks.TeacherForcing(6, window=2), masks.BlockCausal(6, window=1, sink=1),
               Shifted(4), masks.SlidingWindow(6, 2)):
    assert blocked._causal_units(spec) is None  # pylint: disable=protected-access
    assert blocked.computed_blocks(spec, 4) == blocked.plan(spec, 4).computed_blocks()


@pytest.mark.parametrize("budget,groups", [(40_000, ((1, 1), (1, 3))), (20_000, ((1, 3), (2, 3)))])
def test_causal_path_in_groups_equals_dense(monkeypatch, budget, groups):
  """Groups of (batch, head) pairs, and the backward that recomputes each group's forward,
  against the dense reference: outputs and gradients."""
  spec, tokens = masks.TeacherForcing(5), 4
  pair_logits = blocked.computed_blocks(spec, tokens) * tokens**2
  monkeypatch.setattr(blocked, "CPU_TEMP_BYTES", budget)
  pair_groups = blocked._pair_groups  # pylint: disable=protected-access
  forward = pair_groups(2, 3, pair_logits, blocked.FORWARD_BYTES_PER_LOGIT)
  backward = pair_groups(2, 3, pair_logits, blocked.BACKWARD_BYTES_PER_LOGIT)
  assert (forward, backward) == groups, pair_logits
  assert_blocked_equals_dense(spec, tokens, seed=5)


def test_causal_path_in_query_slices_equals_dense(monkeypatch):
  """With MAX_LOGITS small, every level of the unit-causal path computes its logits in slices
  of two query rows (blocked._capped_partial_softmax): guards against slices put back in the
  wrong order (rows interleaved across slices), against the dense reference, outputs and
  gradients."""
  # BlockCausal(8), 4 tokens a frame, batch 2, 3 heads: levels of 4 x 4, 2 x 8 and 1 x 16 rows
  # over as many keys, 384, 768 and 1536 logits: 2, 4 and 8 slices of 2 rows each.
  monkeypatch.setattr(blocked, "MAX_LOGITS", 200)
  partial_softmax = blocked._partial_softmax  # pylint: disable=protected-access
  sliced = []

  def recording(q, k, v):
    sliced.append(q.shape[-2] < k.shape[-2])  # a slice of the rows over all of their keys
    return partial_softmax(q, k, v)

  monkeypatch.setattr(blocked, "_partial_softmax", recording)
  assert_blocked_equals_dense(masks.BlockCausal(8), 4, seed=6)
  assert sum(sliced) == 3, sliced  # one slice traced per level (lax.map)


def test_pair_groups_split_heads_then_the_batch():
  group = lambda batch, heads, most_pairs: blocked._pair_groups(  # pylint: disable=protected-access
      batch, heads, 1000, blocked.CPU_TEMP_BYTES / (1000 * most_pairs))
  assert group(8, 4, 32) == (1, 1)
  assert group(8, 4, 16) == (1, 2)
  assert group(8, 4, 8) == (1, 4)
  assert group(8, 4, 4) == (2, 4)
  assert group(8, 4, 1) == (8, 4)
  assert group(8, 4, 0.5) == (8, 4)  # one pair a group even where one pair is over the budget
  assert group(1, 6, 4) == (1, 2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the groups are a CPU target's")
@pytest.mark.parametrize("n,backward", [(16, True), (32, False)])
def test_the_2n_layout_on_cpu_keeps_its_temporaries_under_the_mmap_threshold(n, backward):
  """The benchmark's shapes (benchmarks/attention.py): past glibc's 32 MB mmap threshold every
  call faults its temporaries in again (blocked.CPU_TEMP_BYTES). N = 32's forward+backward
  does not fit even one head a group, and is not held to it."""
  spec, shape = masks.TeacherForcing(n), (1, 2 * n * 64, 4, 64)
  q = jax.ShapeDtypeStruct(shape, jnp.float32)
  attend = lambda q, k, v: ops.attention(q, k, v, spec, tokens_per_frame=64, impl="auto")
  if backward:
    fn, args = (lambda q, k, v, ct: jax.vjp(attend, q, k, v)[1](ct)), (q, q, q, q)
  else:
    fn, args = attend, (q, q, q)
  temp = jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes
  assert temp <= 32 << 20, temp / 2**20


def test_only_a_cpu_target_runs_the_causal_path_in_groups():
  spec, shape = masks.TeacherForcing(32), (1, 64 * 64, 4, 64)
  q = jax.ShapeDtypeStruct(shape, jnp.float32)
  for platform, grouped in (("cpu", True), ("tpu", False), (None, False)):
    jaxpr = jax.make_jaxpr(lambda q, k, v: blocked.blocked_attention(
        q, k, v, spec, tokens_per_frame=64, platform=platform))(q, q, q)
    assert ("custom_vjp_call" in str(jaxpr)) == grouped, platform
