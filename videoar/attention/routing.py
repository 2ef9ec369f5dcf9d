"""History routing: each query token attends to its own frames plus its top-k history frames.

The score of history frame j for a query token q is q . mean(K_j), the mean taken over frame j's
key tokens, per head. Own frames (`MaskSpec.own_frame_mask`: the query frame's chunk) are always
kept; the history frames are the other key frames the mask allows and `kv_frame_valid` keeps.
No parameters: a top_k at least the number of history frames is dense attention, so routing
costs O(top_k) frames per query frame, in training (the teacher-forcing layout) and in sampling
(over the KV cache) alike. The baseline it is compared with is masks.SlidingWindow.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import masks, reference


@dataclasses.dataclass(frozen=True)
class Routing:
  """How many history frames each query token keeps; hashable, so it can be a static argument."""

  top_k: int

  def __post_init__(self):
    if self.top_k < 1:
      raise ValueError(f"top_k={self.top_k} must be >= 1")


def select_frames(q, k, mask: masks.MaskSpec, routing: Routing, *, tokens_per_frame: int,
                  kv_frame_valid: jax.Array | None = None) -> jax.Array:
  """[B, H, Tq, Fk] bool: the key frames each query token attends to, per head.

  A query token keeps its own frames and the `routing.top_k` history frames with the highest
  scores (all of them where there are fewer).
  """
  t = tokens_per_frame
  b, _, h, d = k.shape
  allowed = mask.frame_mask()
  own = mask.own_frame_mask()
  fk = allowed.shape[1]
  # Selection is discrete: gradients reach q and k through the attention, never the scores.
  frame_keys = jax.lax.stop_gradient(k).astype(jnp.float32).reshape(b, fk, t, h, d).mean(axis=2)
  scores = jnp.einsum("bqhd,bfhd->bhqf", jax.lax.stop_gradient(q).astype(jnp.float32),
                      frame_keys)

  def per_query_token(frame_mask):
    return jnp.asarray(np.repeat(frame_mask, t, axis=0))[None, None]

  valid = jnp.ones((1, fk), bool) if kv_frame_valid is None else jnp.atleast_2d(kv_frame_valid)
  valid = valid[:, None, None, :]
  kept = per_query_token(own) & valid
  candidates = per_query_token(allowed & ~own) & valid
  # lax.top_k needs a static count no larger than the frames on offer.
  num_picks = min(routing.top_k, int((allowed & ~own).sum(axis=1).max()))
  if num_picks == 0:
    return jnp.broadcast_to(kept, scores.shape)
  _, picks = jax.lax.top_k(jnp.where(candidates, scores, -jnp.inf), num_picks)
  picked = (picks[..., None] == jnp.arange(fk)).any(axis=-2)
  # Rows with fewer candidates than picks fill up with non-candidates; those must not leak in.
  return kept | (picked & candidates)


def routed_attention_reference(q, k, v, mask: masks.MaskSpec, routing: Routing, *,
                               tokens_per_frame: int,
                               kv_frame_valid: jax.Array | None = None) -> jax.Array:
  """Dense attention over the key tokens of the frames `select_frames` picks."""
  selection = select_frames(q, k, mask, routing, tokens_per_frame=tokens_per_frame,
                            kv_frame_valid=kv_frame_valid)
  return reference.masked_attention(q, k, v, jnp.repeat(selection, tokens_per_frame, axis=-1))


def frequency_by_query_and_key(selection: jax.Array, tokens_per_frame: int) -> jax.Array:
  """[Fq, Fk] float32: the fraction of query tokens x heads (x batch) of frame i that chose frame j.

  The data of a routing-frequency plot: read along a row against each key frame's distance to the
  query frame; own frames read 1.
  """
  b, h, tq, fk = selection.shape
  per_frame = selection.reshape(b, h, tq // tokens_per_frame, tokens_per_frame, fk)
  return per_frame.astype(jnp.float32).mean(axis=(0, 1, 3))
