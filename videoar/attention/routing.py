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


def _per_token(frame_mask: np.ndarray, tokens_per_frame: int,
               kv_frame_valid: jax.Array | None) -> jax.Array | np.ndarray:
  """[B or 1, 1, Tq, Fk] bool: `frame_mask` [Fq, Fk] for every query token, narrowed to the key
  frames `kv_frame_valid` keeps; static numpy where there is no kv_frame_valid."""
  per_token = np.repeat(frame_mask, tokens_per_frame, axis=0)[None, None]
  if kv_frame_valid is None:
    return per_token
  return per_token & jnp.atleast_2d(kv_frame_valid)[:, None, None]


def pick_history_frames(q, k, mask: masks.MaskSpec, routing: Routing, *, tokens_per_frame: int,
                        kv_frame_valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The history frames each query token picks, per head, as indices.

  q [B, Tq, H, D], k [B, Tk, H, D]. Returns (frames, picked), each [B, H, Tq, P] with P =
  min(top_k, the most history frames any query frame has), possibly 0: frames (int32) are the
  picks by descending score, and picked says which are real. A token with fewer candidates than
  P (a short history, empty cache slots) has its surplus slots False. Own frames are not
  included: every token keeps them (`select_frames`).
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
  candidates = _per_token(allowed & ~own, t, kv_frame_valid)
  # lax.top_k needs a static count no larger than the frames on offer.
  num_picks = min(routing.top_k, int((allowed & ~own).sum(axis=1).max()))
  _, frames = jax.lax.top_k(jnp.where(candidates, scores, -jnp.inf), num_picks)
  # Rows with fewer candidates than picks fill up with non-candidates; those must not leak in.
  candidates = jnp.broadcast_to(candidates, scores.shape)
  return frames, jnp.take_along_axis(candidates, frames, axis=-1)


def select_frames(q, k, mask: masks.MaskSpec, routing: Routing, *, tokens_per_frame: int,
                  kv_frame_valid: jax.Array | None = None) -> jax.Array:
  """[B, H, Tq, Fk] bool: the key frames each query token attends to, per head.

  A query token keeps its own frames and the `routing.top_k` history frames with the highest
  scores (all of them where there are fewer): `pick_history_frames`.
  """
  own = mask.own_frame_mask()
  kept = _per_token(own, tokens_per_frame, kv_frame_valid)
  frames, picked = pick_history_frames(q, k, mask, routing, tokens_per_frame=tokens_per_frame,
                                       kv_frame_valid=kv_frame_valid)
  chosen = ((frames[..., None] == np.arange(own.shape[1])) & picked[..., None]).any(axis=-2)
  return kept | chosen


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
