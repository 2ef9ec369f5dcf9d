"""The one attention entry point: every model call goes through `attention`.

q: [B, Tq, H, D], k and v: [B, Tk, H, D], tokens grouped in frames of `tokens_per_frame`.
`mask` is a frame-level spec (masks.py) whose frame mask is [Tq/T, Tk/T]; `kv_frame_valid`
([B, Tk/T] or [Tk/T] bool, traced) further hides key frames that exist only as padding, such as
the empty slots of a KV cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import masks

IMPLS = ("auto", "dense")


def _check_shapes(q, k, v, mask: masks.MaskSpec, tokens_per_frame: int) -> None:
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not agree")
  fq, fk = mask.frame_mask().shape
  if (q.shape[1], k.shape[1]) != (fq * tokens_per_frame, fk * tokens_per_frame):
    raise ValueError(
        f"attention: mask {mask} covers {fq}x{fk} frames of {tokens_per_frame} tokens, but q has"
        f" {q.shape[1]} and k {k.shape[1]} tokens")


def dense_attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
                    kv_frame_valid: jax.Array | None = None) -> jax.Array:
  """The reference: full logits, masked, softmax in float32."""
  scale = 1.0 / np.sqrt(q.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  allowed = jnp.asarray(mask.to_dense(tokens_per_frame))[None, None]
  if kv_frame_valid is not None:
    valid_tokens = jnp.repeat(jnp.atleast_2d(kv_frame_valid), tokens_per_frame, axis=-1)
    allowed = allowed & valid_tokens[:, None, None, :]
  logits = jnp.where(allowed, logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
              kv_frame_valid: jax.Array | None = None, impl: str = "auto") -> jax.Array:
  if impl not in IMPLS:
    raise ValueError(f"attention impl={impl!r} is unknown; allowed: {', '.join(IMPLS)}")
  _check_shapes(q, k, v, mask, tokens_per_frame)
  return dense_attention(q, k, v, mask, tokens_per_frame=tokens_per_frame,
                         kv_frame_valid=kv_frame_valid)
