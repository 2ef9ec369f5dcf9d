"""Frame-block sparse attention in XLA: no work for the frame blocks a mask leaves empty.

A mask spec's frame mask is static, so which key frames each query frame needs is known when
tracing. Query frames are taken in groups of a few frames (a query tile of ~128 tokens); each
group gathers the key frames any of its frames may see, padded to a multiple of a few frames.
Groups whose padded key lists have the same length form a bucket; a bucket is one `lax.map` over
its groups, each a softmax attention of its query tile over its key frames, batch and heads
vectorised (so that batch and head sharding carry through). The work is the allowed frame blocks
plus a little padding, in a handful of buckets, never one computation per frame; the gather
indices are constants, and autodiff gives the backward (the gathers become scatter-adds of whole
frames).

Routing (routing.py) is served two ways:
  masked  the blocks the frame mask allows, narrowed by the per-token selection: work grows with
          the history, in dense tiles. The choice in training, where the history is short.
  gather  each query token gathers the keys and values of the frames it selected: work grows
          with top_k, not with the history (selecting costs one dot per frame mean). The choice
          for a chunk of queries over a long KV cache in sampling.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import masks
from videoar.attention import routing as routing_lib

# A query tile of about this many tokens keeps the matmuls efficient while a group of query frames
# rarely needs key frames that only some of its frames see.
QUERY_TILE_TOKENS = 128
# Key lists are padded to a multiple of 1/MAX_BUCKETS of the longest: at most this many batched
# computations, at most 1/(2 MAX_BUCKETS) of the work wasted on padding on average.
MAX_BUCKETS = 8


@dataclasses.dataclass(frozen=True)
class Bucket:
  """Query groups whose (padded) key frame lists have the same length."""

  groups: np.ndarray  # [G_b] int: query groups
  keys: np.ndarray    # [G_b, L] int: key frames of each group; padding repeats a real one
  allowed: np.ndarray  # [G_b, group_size, L] bool: frame mask of the group's frames on its keys


@dataclasses.dataclass(frozen=True)
class Plan:
  """How `blocked_attention` covers a frame mask, in static numpy."""

  group_size: int
  buckets: tuple[Bucket, ...]
  group_order: np.ndarray  # [num_groups] int: where each query group lies in the buckets' outputs

  def computed_blocks(self) -> int:
    """(query frame, key frame) blocks computed, padding included."""
    return sum(b.keys.size * self.group_size for b in self.buckets)


def _query_group_size(num_query_frames: int, tokens_per_frame: int) -> int:
  """The most whole frames, dividing the query frames, that fit in a query tile."""
  fits = max(1, QUERY_TILE_TOKENS // tokens_per_frame)
  return max(g for g in range(1, min(fits, num_query_frames) + 1) if num_query_frames % g == 0)


@functools.lru_cache(maxsize=None)
def plan(mask: masks.MaskSpec, tokens_per_frame: int) -> Plan:
  frame_mask = mask.frame_mask()
  fq = frame_mask.shape[0]
  if not frame_mask.any(axis=1).all():
    raise ValueError(f"blocked attention: {mask} has query frames that see no key frame")
  group_size = _query_group_size(fq, tokens_per_frame)
  group_masks = frame_mask.reshape(fq // group_size, group_size, -1)
  key_lists = [np.flatnonzero(m.any(axis=0)) for m in group_masks]
  longest = max(len(keys) for keys in key_lists)
  step = -(-longest // MAX_BUCKETS)
  padded = [-(-len(keys) // step) * step for keys in key_lists]
  buckets = []
  for length in sorted(set(padded)):
    groups = np.array([g for g, p in enumerate(padded) if p == length])
    keys = np.stack([np.pad(key_lists[g], (0, length - len(key_lists[g])), mode="edge")
                     for g in groups])
    real = np.arange(length)[None, :] < np.array([len(key_lists[g]) for g in groups])[:, None]
    allowed = np.take_along_axis(group_masks[groups], keys[:, None, :], axis=2)
    buckets.append(Bucket(groups, keys, allowed & real[:, None, :]))
  order = np.argsort(np.concatenate([b.groups for b in buckets]))
  return Plan(group_size, tuple(buckets), order)


def _softmax_attention(q, k, v, allowed):
  """q [B, H, Tq, D], k/v [B, H, Tk, D], allowed broadcasting to [B, H, Tq, Tk].

  The normalisation divides the [Tq, D] output rather than the [Tq, Tk] weights: one pass less
  over the largest array."""
  scale = 1.0 / np.sqrt(q.shape[-1])
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(allowed, logits, -jnp.inf)
  # Any shift gives the same softmax: the max only keeps exp in range, so it needs no gradient.
  shift = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
  weights = jnp.exp(logits - shift)
  total = weights.sum(axis=-1, keepdims=True)
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return (out / total).astype(v.dtype)


def blocked_attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
                      kv_frame_valid: jax.Array | None = None,
                      selection: jax.Array | None = None) -> jax.Array:
  """Attention over the frame blocks `mask` allows; equal to `reference.dense_attention`.

  `selection` ([B, H, Tq, Fk] bool, from routing.select_frames) further narrows each query
  token's key frames.
  """
  t = tokens_per_frame
  p = plan(mask, t)
  b, tq, h, d = q.shape
  fk = k.shape[1] // t
  gs = p.group_size
  num_groups = tq // (gs * t)
  # Head-major, so that the batched matmuls need no transposes of the gathered keys.
  q_groups = jnp.moveaxis(q.reshape(b, num_groups, gs * t, h, d), 3, 1)
  k_frames = jnp.moveaxis(k.reshape(b, fk, t, h, d), 3, 1)
  v_frames = jnp.moveaxis(v.reshape(b, fk, t, h, d), 3, 1)
  valid = None if kv_frame_valid is None else jnp.atleast_2d(kv_frame_valid)
  if selection is not None:
    selection = selection.reshape(b, h, num_groups, gs, t, fk)
  outs = []
  for bucket in p.buckets:  # a few static shapes, not a loop over frames
    num, length = bucket.keys.shape
    # [G_b, B or 1, H or 1, gs, T or 1, L]: which key frames each query token may see.
    allowed = jnp.asarray(bucket.allowed)[:, None, None, :, None, :]
    if valid is not None:
      allowed = allowed & jnp.moveaxis(valid[:, bucket.keys], 1, 0)[:, :, None, None, None, :]
    if selection is not None:
      picked = jnp.take_along_axis(selection[:, :, bucket.groups],
                                   bucket.keys[None, None, :, None, None, :], axis=-1)
      allowed = allowed & jnp.moveaxis(picked, 2, 0)

    # One query group per iteration: the logits, the largest array, are then one group's (in
    # cache at batch 1), and the backward pass is a loop of the same size.
    def one_group(xs):
      group, keys, allowed = xs
      allowed = jnp.broadcast_to(allowed[..., None], allowed.shape[:3] + (t, length, t))
      allowed = allowed.reshape(allowed.shape[:2] + (gs * t, length * t))
      return _softmax_attention(
          q_groups[:, :, group], k_frames[:, :, keys].reshape(b, h, length * t, d),
          v_frames[:, :, keys].reshape(b, h, length * t, d), allowed)

    outs.append(jax.lax.map(one_group, (bucket.groups, bucket.keys, allowed)))
  out = jnp.concatenate(outs)[p.group_order]  # [G, B, H, gs*T, D]
  return jnp.transpose(out, (1, 0, 3, 2, 4)).reshape(b, tq, h, d)


def prefers_gather(mask: masks.MaskSpec, routing: routing_lib.Routing, head_dim: int) -> bool:
  """Whether gathering each token's picked frames costs less than masking the allowed blocks.

  Per query token and key, the masked path computes one logit over all the history the mask
  allows; the gather path copies 2 * head_dim floats (key and value) for top_k frames only. On
  CPU a copied float costs about 1/6 of a masked logit (calibrated on benchmarks/attention.py's
  cache of 16, 64 and 256 frames), so gathering wins once the history holds more than
  top_k * head_dim / 3 frames."""
  history = mask.frame_mask() & ~mask.own_frame_mask()
  return history.sum(axis=1).mean() > routing.top_k * head_dim / 3


def routed_gather_attention(q, k, v, mask: masks.MaskSpec, routing: routing_lib.Routing, *,
                            tokens_per_frame: int,
                            kv_frame_valid: jax.Array | None = None) -> jax.Array:
  """Routed attention at O(top_k) frames per query token; equal to
  `routing.routed_attention_reference`.

  Each token gathers the keys and values of the frames it selected, own frames included, and
  attends to those alone: one gather and two batched matrix-vector products."""
  t = tokens_per_frame
  b, tq, h, d = q.shape
  fk = k.shape[1] // t
  frame_mask, own = mask.frame_mask(), mask.own_frame_mask()
  selection = routing_lib.select_frames(q, k, mask, routing, tokens_per_frame=t,
                                        kv_frame_valid=kv_frame_valid)
  # The most frames any token selects: static, so every token gathers that many; tokens that
  # selected fewer (short history, empty cache slots) mask the surplus.
  width = int((own.sum(axis=1) + np.minimum(routing.top_k, (frame_mask & ~own).sum(axis=1))).max())
  _, frames = jax.lax.top_k(selection.astype(jnp.float32), width)  # [B, H, Tq, width]
  selected = jnp.take_along_axis(selection, frames, axis=-1)
  batch_index = jnp.arange(b)[:, None, None, None]
  head_index = jnp.arange(h)[None, :, None, None]

  def gathered(x):
    """[B, H, Tq, width * T, D]: the keys (values) of every token's selected frames."""
    per_frame = x.reshape(b, fk, t, h, d)[batch_index, frames, :, head_index]
    return per_frame.reshape(b, h, tq, width * t, d)

  # The gathered keys as the left operand: a matrix-vector product per token with no transpose.
  batch_dims = ((0, 1, 2), (0, 1, 2))
  logits = jax.lax.dot_general(gathered(k), jnp.moveaxis(q, 2, 1), (((4,), (3,)), batch_dims),
                               preferred_element_type=jnp.float32) / np.sqrt(d)
  logits = jnp.where(jnp.repeat(selected, t, axis=-1), logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jax.lax.dot_general(weights, gathered(v), (((3,), (3,)), batch_dims),
                            preferred_element_type=jnp.float32)
  return jnp.moveaxis(out, 1, 2).astype(v.dtype)
