"""Fused flash attention from `jax.nn.dot_product_attention`: cuDNN's kernel on a GPU.

It serves `Full` masks without routing: a sampler's chunk over its KV cache (the streaming hot
path) and bidirectional attention. cuDNN hides keys only by a prefix length per batch row
(`key_value_seq_lengths`), while a KV cache's empty slots lie between the cached frames and the
chunk's own. Under a `Full` mask the order of the keys does not change the softmax, so each
row's valid frames are moved to the front (a stable sort, so ties keep their order) and the
rest hidden by length. No [Tq, Tk] logits are kept, forward or backward.

The frame masks of training (`BlockCausal`, `TeacherForcing`, `SlidingWindow`) have no cuDNN
form: its masks are token-causal, a left window of tokens, or padding, and a frame-causal mask
would need a materialised [Tq, Tk] bias. Those stay on the blocked XLA path (docs/performance.md,
"On a GPU").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from videoar.attention import masks

# cuDNN's flash attention: half-precision operands, head dimensions a multiple of 8 up to 128.
DTYPES = (jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 128


def unsupported(mask: masks.MaskSpec, has_routing: bool, dtype, head_dim: int) -> str | None:
  """Why the fused kernel cannot run this call, or None if it can."""
  if has_routing:
    return "routing picks keys per query token, which no fused kernel here takes"
  if not isinstance(mask, masks.Full):
    return (f"mask {mask} is frame-causal or windowed; cuDNN's masks are token-causal, a token"
            " window or padding")
  if jnp.dtype(dtype) not in [jnp.dtype(d) for d in DTYPES]:
    return f"dtype {jnp.dtype(dtype).name}: cuDNN takes bfloat16 or float16"
  if head_dim % 8 or head_dim > MAX_HEAD_DIM:
    return f"head_dim {head_dim}: cuDNN takes a multiple of 8 up to {MAX_HEAD_DIM}"
  return None


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
