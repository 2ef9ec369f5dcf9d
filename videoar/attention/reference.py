"""The dense attention that every other implementation is measured against.

q: [B, Tq, H, D], k and v: [B, Tk, H, D], tokens grouped in frames of `tokens_per_frame`; the
softmax is taken in float32. ops.py dispatches to it (impl="dense"), routing.py builds its
reference on `masked_attention`, and the tests compare every kernel with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import masks


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
