"""Fused flash attention from `jax.nn.dot_product_attention`: cuDNN's kernel on a GPU.

cuDNN hides keys only by a prefix length per batch row (`key_value_seq_lengths`); its other
masks are token-causal or a token window, none of them frame-causal. Two paths bring the
project's masks to that form; neither keeps [Tq, Tk] logits, forward or backward.

  full_attention     `Full` masks: a sampler's chunk over its KV cache (the streaming hot path),
                     and bidirectional attention. A KV cache's empty slots lie between the cached
                     frames and the chunk's own; under a `Full` mask the order of the keys does
                     not change the softmax, so each row's valid frames are moved to the front
                     (a stable sort) and the rest hidden by length.
  planned_attention  every other mask (`BlockCausal`, the 2N `TeacherForcing` layout,
                     `SlidingWindow`: training) where blocked.plan's query groups are single
                     frames (always at frames of more than half a query tile: Wan's 1,560
                     tokens): a frame's key frames, gathered in order, are all allowed but for
                     the bucket's padding at the end, which a length hides. One cuDNN call per query
                     frame, in blocked.py's few buckets of `lax.map`.

Under a mesh both run inside `shard_map` over the batch and the heads (sharded.py): cuDNN's
custom call takes no sharded sequence.

Routing (a per-token choice of key frames) has no fused path; nor have masks with a traced
`kv_frame_valid` other than `Full`, nor plans whose query groups hold several frames (they
would need a mask inside a group): those run blocked.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import blocked, masks, sharded

# cuDNN's flash attention: half-precision operands, head dimensions a multiple of 8 up to 128.
DTYPES = (jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 128


def unsupported(mask: masks.MaskSpec, *, has_routing: bool, has_kv_frame_valid: bool,
                tokens_per_frame: int, dtype, head_dim: int) -> str | None:
  """Why the fused kernel cannot run this call, or None if it can."""
  if has_routing:
    return "routing picks keys per query token, which no fused kernel here takes"
  if not isinstance(mask, masks.Full):
    if has_kv_frame_valid:
      return f"mask {mask} with kv_frame_valid: only a Full mask's keys can be reordered"
    if blocked.plan(mask, tokens_per_frame).group_size != 1:
      return (f"mask {mask} at {tokens_per_frame} tokens a frame: a query tile holds several"
              " frames with different keys, which a length cannot mask")
  if jnp.dtype(dtype) not in [jnp.dtype(d) for d in DTYPES]:
    return f"dtype {jnp.dtype(dtype).name}: cuDNN takes bfloat16 or float16"
  if head_dim % 8 or head_dim > MAX_HEAD_DIM:
    return f"head_dim {head_dim}: cuDNN takes a multiple of 8 up to {MAX_HEAD_DIM}"
  return None


def attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
              kv_frame_valid: jax.Array | None = None,
              implementation: str = "cudnn") -> jax.Array:
  """q [B, Tq, H, D], k/v [B, Tk, H, D] -> [B, Tq, H, D] under `mask` for a call that
  `unsupported` accepts: full_attention for a Full mask, planned_attention otherwise, per shard
  of batch and heads under a mesh (sharded.over_batch_and_heads, whose ValueError it raises)."""

  def local(q, k, v, kv_frame_valid):
    if isinstance(mask, masks.Full):
      return full_attention(q, k, v, tokens_per_frame=tokens_per_frame,
                            kv_frame_valid=kv_frame_valid, implementation=implementation)
    return planned_attention(q, k, v, mask, tokens_per_frame=tokens_per_frame,
                             implementation=implementation)

  return sharded.over_batch_and_heads(local, q, k, v, kv_frame_valid, impl="cudnn")


def full_attention(q, k, v, *, tokens_per_frame: int, kv_frame_valid: jax.Array | None = None,
                   implementation: str = "cudnn") -> jax.Array:
  """q [B, Tq, H, D], k/v [B, Tk, H, D] -> [B, Tq, H, D]: every query attends to every key of
  the frames `kv_frame_valid` ([B, Tk/T] or [Tk/T] bool, traced; None: all) keeps, as
  reference.dense_attention under a `Full` mask. A row with no valid key frame is undefined
  (a sampler's chunk always sees itself).

  implementation: "cudnn" (GPU only: jax raises elsewhere), or "xla", the same reordering and
  lengths through XLA's attention, which the CPU tests compare with the reference.
  """
  if kv_frame_valid is None:
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  b, tk, h, d = k.shape
  frames = tk // tokens_per_frame
  valid_bf = jnp.broadcast_to(jnp.asarray(kv_frame_valid, bool), (b, frames))
  # Valid frames first, each row keeping its frames' order.
  order_bf = jnp.argsort(~valid_bf, axis=1, stable=True)

  def to_front(x):
    x_bftd = x.reshape(b, frames, tokens_per_frame * h * d)
    x_bftd = jnp.take_along_axis(x_bftd, order_bf[:, :, None], axis=1)
    return x_bftd.reshape(b, tk, h, d)

  lengths_b = (valid_bf.sum(axis=1) * tokens_per_frame).astype(jnp.int32)
  return jax.nn.dot_product_attention(q, to_front(k), to_front(v),
                                      key_value_seq_lengths=lengths_b,
                                      implementation=implementation)


def planned_attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
                      implementation: str = "cudnn") -> jax.Array:
  """q [B, Tq, H, D], k/v [B, Tk, H, D] -> [B, Tq, H, D] under a frame mask whose blocked.plan
  has single-frame query groups (always when tokens_per_frame > blocked.QUERY_TILE_TOKENS / 2), as
  reference.dense_attention: each query frame over its allowed key frames, gathered in order.

  implementation: as in full_attention. Raises ValueError if the plan's groups hold several
  frames (fused.unsupported says so first in the dispatcher)."""
  plan = blocked.plan(mask, tokens_per_frame)
  if plan.group_size != 1:
    raise ValueError(f"fused planned attention needs single-frame query groups; {mask} at"
                     f" {tokens_per_frame} tokens a frame groups {plan.group_size}")
  b, _, h, d = q.shape
  t = tokens_per_frame
  q_fbthd = jnp.moveaxis(q.reshape(b, -1, t, h, d), 1, 0)
  k_fbthd = jnp.moveaxis(k.reshape(b, -1, t, h, d), 1, 0)
  v_fbthd = jnp.moveaxis(v.reshape(b, -1, t, h, d), 1, 0)
  outs = []
  for bucket in plan.buckets:
    num_keys = bucket.keys.shape[1]
    # A single frame's allowed keys are its key list: padding only follows them.
    lengths = bucket.allowed[:, 0, :].sum(axis=1).astype(np.int32) * t

    def one_frame(xs, num_keys=num_keys):
      frame, keys, length = xs
      gather = lambda x_fbthd: jnp.moveaxis(x_fbthd[keys], 0, 1).reshape(b, num_keys * t, h, d)
      return jax.nn.dot_product_attention(
          q_fbthd[frame], gather(k_fbthd), gather(v_fbthd),
          key_value_seq_lengths=jnp.full((b,), length, jnp.int32), implementation=implementation)

    outs.append(jax.lax.map(one_frame, (bucket.groups, bucket.keys, lengths)))
  out_fbthd = jnp.concatenate(outs)[plan.group_order]
  return jnp.moveaxis(out_fbthd, 0, 1).reshape(q.shape)
