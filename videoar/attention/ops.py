"""The one attention entry point: every model call goes through `attention`.

q: [B, Tq, H, D], k and v: [B, Tk, H, D], tokens grouped in frames of `tokens_per_frame`.
`mask` is a frame-level spec (masks.py) whose frame mask is [Tq/T, Tk/T]; `kv_frame_valid`
([B, Tk/T] or [Tk/T] bool, traced) further hides key frames that exist only as padding, such as
the empty slots of a KV cache. `routing` (routing.py) narrows each query token's history to
its top-k key frames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import masks
# routing.py builds on `masked_attention` below; the cycle is safe because neither module uses
# the other at import time.
from videoar.attention import routing as routing_lib

IMPLS = ("auto", "dense")


def _check_shapes(q, k, v, mask: masks.MaskSpec, tokens_per_frame: int) -> None:
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not agree")
  fq, fk = mask.frame_mask().shape
  if (q.shape[1], k.shape[1]) != (fq * tokens_per_frame, fk * tokens_per_frame):
    raise ValueError(
        f"attention: mask {mask} covers {fq}x{fk} frames of {tokens_per_frame} tokens, but q has"
        f" {q.shape[1]} and k {k.shape[1]} tokens")


def frame_valid_tokens(kv_frame_valid: jax.Array, tokens_per_frame: int) -> jax.Array:
  """[B or 1, Tk] bool: the key tokens of valid frames."""
  return jnp.repeat(jnp.atleast_2d(kv_frame_valid), tokens_per_frame, axis=-1)


def masked_attention(q, k, v, allowed: jax.Array) -> jax.Array:
  """Full logits, softmax in float32 over the keys `allowed` [B or 1, H or 1, Tq, Tk] keeps."""
  scale = 1.0 / np.sqrt(q.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(allowed, logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def dense_attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
                    kv_frame_valid: jax.Array | None = None) -> jax.Array:
  """The reference: every key the mask and `kv_frame_valid` allow."""
  allowed = jnp.asarray(mask.to_dense(tokens_per_frame))[None, None]
  if kv_frame_valid is not None:
    allowed = allowed & frame_valid_tokens(kv_frame_valid, tokens_per_frame)[:, None, None, :]
  return masked_attention(q, k, v, allowed)


def attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
              kv_frame_valid: jax.Array | None = None,
              routing: routing_lib.Routing | None = None, impl: str = "auto") -> jax.Array:
  if impl not in IMPLS:
    raise ValueError(f"attention impl={impl!r} is unknown; allowed: {', '.join(IMPLS)}")
  _check_shapes(q, k, v, mask, tokens_per_frame)
  if routing is not None:
    return routing_lib.routed_attention_reference(
        q, k, v, mask, routing, tokens_per_frame=tokens_per_frame, kv_frame_valid=kv_frame_valid)
  return dense_attention(q, k, v, mask, tokens_per_frame=tokens_per_frame,
                         kv_frame_valid=kv_frame_valid)
