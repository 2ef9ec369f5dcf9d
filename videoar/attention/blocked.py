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

Causal layouts without a window (BlockCausal, and TeacherForcing's 2N layout) take a faster
path with no mask and no gather (`_causal_attention`). In units of one chunk, query unit i
sees key units 0..i; in the 2N layout the history chunk i and the noisy chunk i + 1 see exactly
the same history keys 0..i, so they are paired into one query unit, and each noisy chunk also sees
its own noisy keys (one batched diagonal). Unit-causal attention splits by binary levels: the
diagonal, then for s = 1, 2, 4, ... the upper s units of every aligned run of 2s units over the
lower s key units, a dense rectangle; each level is one batched matmul pair over blocks of one
shape. Each query row gets a partial softmax from the diagonal and from each level its unit
index has a bit set in, merged by their row maxima as in online softmax. The work is the allowed
blocks, plus at most part of one block per level where the units are not a power of two, plus
(2N layout) a zero noisy chunk that pads the last query unit. Compiled for a CPU, the path runs
in groups of (batch, head) pairs, one group after another, small enough that the call's
temporaries stay under glibc's mmap threshold, and its backward then saves only q, k and v and
recomputes each group's forward (CPU_TEMP_BYTES).

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
from typing import Callable

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
# The unit-causal path computes a level's logits in slices of at most this many floats (8 MB):
# an array past glibc's 32 MB mmap threshold is fresh pages, faulted in on every call, and cache
# sized slices are faster still. 2N layout, 64 tokens a frame, 4 heads of 64, forward on 2 CPU
# cores (docs/performance.md, "The unit-causal forward"): 7.9 ms at 8 MB against 9.4 ms at 4 MB
# (N = 16) and 45 against 48 ms (N = 32), 55-59 ms at 16-64 MB; forward+backward the same at 4
# and 8 MB, slower at 2 MB.
MAX_LOGITS = 1 << 21
# XLA:CPU allocates a call's temporaries as one block, and glibc serves a block larger than its
# highest mmap threshold (32 MB) as fresh pages that every call faults in again: at the 2N
# layout's N = 32 (64 tokens a frame, 4 heads of 64) that was 13-15 ms of a 48 ms forward. So on a
# CPU the unit-causal path runs in groups of (batch, head) pairs whose temporaries stay within
# CPU_TEMP_BYTES, and where the backward needs more than one group it saves only q, k and v and
# recomputes each group's forward (flash attention's trade of arithmetic for memory). Bytes per
# logit: the compiled forward's and forward+backward's temporaries at N = 16 and 32, over their
# logits (docs/performance.md, "Temporaries under the mmap threshold").
CPU_TEMP_BYTES = 30 << 20
FORWARD_BYTES_PER_LOGIT = 6.5
BACKWARD_BYTES_PER_LOGIT = 13.0


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
  """How `blocked_attention` covers `mask` for frames of `tokens_per_frame` tokens: query
  frames in groups (the most whole frames dividing them that fit a QUERY_TILE_TOKENS tile), each
  group's key frames padded to a multiple of 1/MAX_BUCKETS of the longest list, groups of one
  padded length in one Bucket. Static numpy, cached per (mask, tokens_per_frame).
  Raises ValueError for a mask with a query frame that sees no key frame."""
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


def _partial_softmax(q, k, v):
  """Softmax attention of q [..., Q, D] (already scaled) over k, v [..., K, D], not normalised.

  Returns (shift, total, out), float32: the row shift [..., Q, 1] (the row maximum), the row
  sums [..., Q, 1] of w = exp(q . k - shift), and out = w @ v [..., Q, D]; the attention is
  out / total, and pieces of one row over disjoint keys merge by their shifts (`_merge`)."""
  logits = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
  # Any shift gives the same softmax: the max only keeps exp in range, so it needs no gradient.
  shift = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
  weights = jnp.exp(logits - shift)
  out = jnp.einsum("...qk,...kd->...qd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return shift, weights.sum(axis=-1, keepdims=True), out


@dataclasses.dataclass(frozen=True)
class _Piece:
  """A partial softmax (`_partial_softmax`) of some rows of a [B, H, U, Tq, X] query layout.

  `take` picks those rows of a [B, H, U, Tq, X] array in the piece's own shape; `place(x, fill)`
  puts an array of the piece's shape back into [B, H, U, Tq, X], `fill` in the other rows."""

  shift: jax.Array
  total: jax.Array
  out: jax.Array
  take: Callable[[jax.Array], jax.Array]
  place: Callable[[jax.Array, float], jax.Array]


def _merge(pieces: list[_Piece]) -> jax.Array:
  """[B, H, U, Tq, D] float32: softmax attention over the union of the pieces' keys.

  Every row must be in at least one piece. The rescaling is done on the [.., 1] statistics, so
  the D-wide work is one weighted sum of the pieces' outputs."""
  shift = functools.reduce(jnp.maximum, [p.place(p.shift, -jnp.inf) for p in pieces])
  scales = [jnp.exp(p.shift - p.take(shift)) for p in pieces]
  total = sum(p.place(p.total * s, 0.0) for p, s in zip(pieces, scales))
  return sum(p.place(p.out * (s / p.take(total)), 0.0) for p, s in zip(pieces, scales))


def _resize_units(x: jax.Array, units: int, fill: float = 0.0) -> jax.Array:
  """x [B, H, U, ...] cut or padded with `fill` to `units` along the unit axis."""
  if units <= x.shape[2]:
    return x[:, :, :units]
  widths = [(0, 0)] * x.ndim
  widths[2] = (0, units - x.shape[2])
  return jnp.pad(x, widths, constant_values=fill)


def _capped_partial_softmax(q, k, v):
  """`_partial_softmax` of q [B, H, M, Q, D] over k, v [B, H, M, K, D], in a loop over slices of
  the query rows when the logits would exceed MAX_LOGITS floats."""
  b, h, m, rows, d = q.shape
  parts = 1
  while b * h * m * rows * k.shape[3] > MAX_LOGITS * parts and rows % (2 * parts) == 0:
    parts *= 2
  if parts == 1:
    return _partial_softmax(q, k, v)
  slices = jnp.moveaxis(q.reshape(b, h, m, parts, rows // parts, d), 3, 0)
  out = jax.lax.map(lambda x: _partial_softmax(x, k, v), slices)
  return tuple(jnp.moveaxis(x, 0, 3).reshape(b, h, m, rows, x.shape[-1]) for x in out)


def _unit_causal_pieces(q, k, v) -> list[_Piece]:
  """q [B, H, U, Tq, D], k and v [B, H, U, Tk, D]; query unit i sees key units 0..i.

  The diagonal, then per level s = 1, 2, 4, ... < U the query units [2ms + s, 2ms + 2s) over
  the key units [2ms, 2ms + s) for every block m whose query half starts before U (module
  docstring). Padded query units (past U, in the last block of a level) compute rows that
  `place` drops."""
  b, h, u, tq, d = q.shape
  pieces = [_Piece(*_partial_softmax(q, k, v), take=lambda x: x, place=lambda x, _: x)]
  s = 1
  while s < u:
    num = -(-(u - s) // (2 * s))

    def half(x, which, fill=0.0, s=s, num=num):
      """[B, H, num, s * T, X]: the lower (0) or upper (1) s units of every block."""
      x = _resize_units(x, 2 * s * num, fill)
      return x.reshape(b, h, num, 2, s * x.shape[3], x.shape[-1])[:, :, :, which]

    def place(x, fill, s=s, num=num):
      x = jnp.pad(x[:, :, :, None], [(0, 0)] * 3 + [(1, 0), (0, 0), (0, 0)],
                  constant_values=fill)
      return _resize_units(x.reshape(b, h, 2 * s * num, tq, x.shape[-1]), u, fill)

    parts = _capped_partial_softmax(half(q, 1), half(k, 0), half(v, 0))
    # Padded rows take ones: `_merge` divides by the row totals, and a zero there would make
    # NaN gradients even in rows that `place` drops.
    pieces.append(_Piece(*parts, take=lambda x, half=half: half(x, 1, 1.0), place=place))
    s *= 2
  return pieces


def _causal_units(mask: masks.MaskSpec) -> tuple[int, bool] | None:
  """(chunk, paired) where `mask` is unit-causal over chunks with no window (paired: the 2N
  layout), else None. Exact types: a subclass may change the frame mask."""
  if type(mask) is masks.BlockCausal and not mask.window:  # pylint: disable=unidiomatic-typecheck
    return mask.chunk, False
  if type(mask) is masks.TeacherForcing and not mask.window:  # pylint: disable=unidiomatic-typecheck
    return mask.chunk, True
  return None


def computed_blocks(mask: masks.MaskSpec, tokens_per_frame: int) -> int:
  """(query frame, key frame) blocks `blocked_attention` computes for `mask`, padding
  included."""
  causal = _causal_units(mask)
  if causal is None:
    return plan(mask, tokens_per_frame).computed_blocks()
  chunk, paired = causal
  fq = mask.frame_mask().shape[0]
  units = fq // chunk // (2 if paired else 1)
  unit_pairs = units + sum(-(-(units - s) // (2 * s)) * s * s
                           for s in (2**i for i in range(units.bit_length())) if s < units)
  rows = 2 * chunk if paired else chunk
  return unit_pairs * rows * chunk + (units * chunk * chunk if paired else 0)


def _pair_groups(batch: int, heads: int, pair_logits: int,
                 bytes_per_logit: float) -> tuple[int, int]:
  """(batch parts, head parts): the fewest groups of (batch, head) pairs, heads split before
  the batch, whose `pair_logits` logits each take at most CPU_TEMP_BYTES; one pair a group
  where a single pair takes more."""
  most_pairs = CPU_TEMP_BYTES // (pair_logits * bytes_per_logit)
  splits = [(1, p) for p in range(1, heads + 1) if heads % p == 0]
  splits += [(p, heads) for p in range(2, batch + 1) if batch % p == 0]
  for batch_parts, head_parts in splits:
    if (batch // batch_parts) * (heads // head_parts) <= most_pairs:
      return batch_parts, head_parts
  return batch, heads


def _in_groups(fn, parts: tuple[int, int], *xs):
  """fn over groups of (batch, head) pairs of xs [B, T, H, D] (T may differ between them),
  one after another in a `lax.map`: returns fn's outputs [B, T, H, D] in their places."""
  batch_parts, head_parts = parts
  if parts == (1, 1):
    return fn(*xs)
  b, h = xs[0].shape[0], xs[0].shape[2]
  bg, hg = b // batch_parts, h // head_parts

  def group(i):
    start = (i // head_parts * bg, 0, i % head_parts * hg, 0)
    return fn(*(jax.lax.dynamic_slice(x, start, (bg, x.shape[1], hg, x.shape[3])) for x in xs))

  def put_back(y):  # [groups, B/bp, T, H/hp, D] -> [B, T, H, D]
    y = y.reshape(batch_parts, head_parts, bg, y.shape[2], hg, y.shape[4])
    return jnp.moveaxis(y, 1, 3).reshape(b, y.shape[3], h, y.shape[5])

  return jax.tree.map(put_back, jax.lax.map(group, jnp.arange(batch_parts * head_parts)))


def _causal_attention(q, k, v, mask: masks.MaskSpec, tokens_per_frame: int,
                      bounded_temporaries: bool) -> jax.Array:
  """`blocked_attention` for the unit-causal masks of `_causal_units`; with
  `bounded_temporaries`, in groups of (batch, head) pairs (CPU_TEMP_BYTES)."""
  attend = functools.partial(_unit_causal_attention, chunk_paired=_causal_units(mask),
                             tokens_per_frame=tokens_per_frame)
  if not bounded_temporaries:
    return attend(q, k, v)
  pair_logits = computed_blocks(mask, tokens_per_frame) * tokens_per_frame**2
  b, _, h, _ = q.shape
  forward = _pair_groups(b, h, pair_logits, FORWARD_BYTES_PER_LOGIT)
  backward = _pair_groups(b, h, pair_logits, BACKWARD_BYTES_PER_LOGIT)
  if backward == (1, 1):
    return attend(q, k, v)

  @jax.custom_vjp
  def grouped(q, k, v):
    return _in_groups(attend, forward, q, k, v)

  def grouped_forward(q, k, v):
    return grouped(q, k, v), (q, k, v)

  def grouped_backward(saved, d_out):
    group_vjp = lambda q, k, v, d_out: jax.vjp(attend, q, k, v)[1](d_out)
    return _in_groups(group_vjp, backward, *saved, d_out)

  grouped.defvjp(grouped_forward, grouped_backward)
  return grouped(q, k, v)


def _unit_causal_attention(q, k, v, chunk_paired: tuple[int, bool],
                           tokens_per_frame: int) -> jax.Array:
  """Unit-causal attention (module docstring) of q, k, v [B, T, H, D] in one computation;
  chunk_paired: `_causal_units` of the mask."""
  chunk, paired = chunk_paired
  b, tq, h, d = q.shape
  ct = chunk * tokens_per_frame
  streams = 2 if paired else 1
  units = tq // (ct * streams)
  # Head-major, [B, H, stream, U, chunk tokens, D]. q is scaled (in the transpose's pass) rather
  # than the logits, which are larger wherever a row sees more than D keys.
  head_major = lambda x: jnp.moveaxis(x.reshape(b, streams, units, ct, h, d), 4, 1)
  qh, kh, vh = head_major(q * np.asarray(1 / np.sqrt(d), q.dtype)), head_major(k), head_major(v)
  if not paired:
    out = _merge(_unit_causal_pieces(qh[:, :, 0], kh[:, :, 0], vh[:, :, 0]))
    return jnp.moveaxis(out, 1, 3).reshape(b, tq, h, d).astype(v.dtype)
  # History chunk i and noisy chunk i + 1 both see history chunks 0..i: one query unit. The
  # noisy chunk past the last is zeros, its rows dropped.
  noisy_next = _resize_units(qh[:, :, 1, 1:], units)
  pieces = _unit_causal_pieces(jnp.concatenate([qh[:, :, 0], noisy_next], axis=3),
                               kh[:, :, 0], vh[:, :, 0])
  # Every noisy chunk over its own noisy keys; noisy chunk 0 sees nothing else.
  own = _partial_softmax(qh[:, :, 1], kh[:, :, 1], vh[:, :, 1])

  def own_place(x, fill):
    widths = [(0, 0), (0, 0), (0, 1), (ct, 0), (0, 0)]
    return jnp.pad(x, widths, constant_values=fill)

  pieces.append(_Piece(*(x[:, :, 1:] for x in own), take=lambda x: x[:, :, :units - 1, ct:],
                       place=own_place))
  out = _merge(pieces)  # [B, H, U, 2 * ct, D]
  first_noisy = own[2][:, :, :1] / own[1][:, :, :1]
  noisy = jnp.concatenate([first_noisy, out[:, :, :units - 1, ct:]], axis=2)
  out = jnp.stack([out[:, :, :, :ct], noisy], axis=2)  # [B, H, 2, U, ct, D]
  return jnp.moveaxis(out, 1, 4).reshape(b, tq, h, d).astype(v.dtype)


def blocked_attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
                      kv_frame_valid: jax.Array | None = None,
                      selection: jax.Array | None = None,
                      platform: str | None = None) -> jax.Array:
  """Attention over the frame blocks `mask` allows; equal to `reference.dense_attention`.

  `selection` ([B, H, Tq, Fk] bool, from routing.select_frames) further narrows each query
  token's key frames. BlockCausal and TeacherForcing without a window, `kv_frame_valid` or a
  selection run the unit-causal path (module docstring); everything else the bucketed plan.
  `platform`: the one compiled for (ops.target_platform); on "cpu" the unit-causal path keeps
  its temporaries under glibc's mmap threshold (CPU_TEMP_BYTES).
  """
  causal = _causal_units(mask)
  if causal is not None and kv_frame_valid is None and selection is None:
    return _causal_attention(q, k, v, mask, tokens_per_frame, platform == "cpu")
  return _planned_attention(q, k, v, mask, tokens_per_frame=tokens_per_frame,
                            kv_frame_valid=kv_frame_valid, selection=selection)


def _planned_attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
                       kv_frame_valid: jax.Array | None = None,
                       selection: jax.Array | None = None) -> jax.Array:
  """`blocked_attention` by the bucketed plan (module docstring)."""
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


def prefers_gather(mask: masks.MaskSpec, routing: routing_lib.Routing) -> bool:
  """Whether gathering each token's picked frames costs less than masking the allowed blocks.

  Per query token, the masked path computes attention over all the history the mask allows; the
  gather path copies top_k frames' keys and values and attends to those. Both scale with the
  frame's tokens times the head dimension, so the choice is by frame counts: on CPU a gathered
  frame costs about as much as 8 masked ones (benchmarks/attention.py's shapes, top_k = 2, 4 and
  8 over caches of 16 to 64 frames: the paths cross at 16, 32 and 64 frames), so gathering wins
  once the history holds more than 8 * top_k frames."""
  history = mask.frame_mask() & ~mask.own_frame_mask()
  return history.sum(axis=1).mean() > 8 * routing.top_k


def routed_gather_attention(q, k, v, mask: masks.MaskSpec, routing: routing_lib.Routing, *,
                            tokens_per_frame: int,
                            kv_frame_valid: jax.Array | None = None) -> jax.Array:
  """Routed attention at O(top_k) frames per query token; equal to
  `routing.routed_attention_reference`.

  q [B, Tq, H, D], k and v [B, Tk, H, D] (whole frames of `tokens_per_frame` tokens); returns
  [B, Tq, H, D] in v's dtype. Every token of a query frame keeps the same own frames (static), so
  they are one batched attention per query frame over a static slice of the keys. Each token then
  gathers the keys and values of the history frames it selected and attends to those alone: a
  `lax.scan` over selection slots (the r-th selected history frame of every token), each a gather
  of one frame per token and two batched matrix-vector products, folded into a running softmax
  by row maxima (online softmax). One slot at a time keeps the gathered keys in cache (all slots
  at once were 2 x 21 MB at 64 query tokens of 4 heads of 64, 2-5x slower on CPU); the running
  merge replaced a stack of the slots' results reduced after the loop, which XLA:CPU ran as one
  fusion of 1.8 ms for 82K floats (benchmarks/attention.py's cache of 16 frames)."""
  t = tokens_per_frame
  b, tq, h, d = q.shape
  fk = k.shape[1] // t
  fq = tq // t
  own = mask.own_frame_mask()
  frames, picked = routing_lib.pick_history_frames(q, k, mask, routing, tokens_per_frame=t,
                                                   kv_frame_valid=kv_frame_valid)
  lowest = jnp.finfo(jnp.float32).min
  k_frames, v_frames = k.reshape(b, fk, t, h, d), v.reshape(b, fk, t, h, d)
  q = q * np.asarray(1 / np.sqrt(d), q.dtype)

  # Own frames: each query frame's list padded to the longest by repeating a real one, masked.
  own_lists = [np.flatnonzero(row) for row in own]
  num_own = max(len(f) for f in own_lists)
  own_frames = np.stack([np.pad(f, (0, num_own - len(f)), mode="edge") for f in own_lists])
  own_real = np.arange(num_own)[None, :] < np.array([len(f) for f in own_lists])[:, None]
  head_major = lambda x: jnp.moveaxis(x[:, own_frames].reshape(b, fq, num_own * t, h, d), 3, 1)
  q_frames = jnp.moveaxis(q.reshape(b, fq, t, h, d), 3, 1)  # [B, H, Fq, T, D]
  logits = jnp.einsum("bhfqd,bhfkd->bhfqk", q_frames, head_major(k_frames),
                      preferred_element_type=jnp.float32)
  # [1 or B, Fq, own tokens]: static numpy unless a cache hides frames.
  keep = np.repeat(own_real, t, axis=-1)[None]
  if kv_frame_valid is not None:
    keep = keep & jnp.repeat(jnp.atleast_2d(kv_frame_valid)[:, own_frames], t, axis=-1)
  # A token whose own frames are all hidden keeps finite logits: its shift stays finite, and the
  # history slots then outweigh them by exp(lowest - shift) = 0.
  logits = jnp.where(keep[:, None, :, None, :], logits, lowest)
  shift = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
  weights = jnp.exp(logits - shift)
  out = jnp.einsum("bhfqk,bhfkd->bhfqd", weights.astype(v.dtype), head_major(v_frames),
                   preferred_element_type=jnp.float32)
  running = (shift.reshape(b, h, tq, 1), weights.sum(axis=-1, keepdims=True).reshape(b, h, tq, 1),
             out.reshape(b, h, tq, d))

  # Every token has the same number of slots (static); tokens that picked fewer frames (short
  # history, empty cache slots) mask the surplus.
  if frames.shape[-1]:
    batch_index = jnp.arange(b)[:, None, None]
    head_index = jnp.arange(h)[None, :, None]
    q_heads = jnp.moveaxis(q, 2, 1)  # [B, H, Tq, D]
    batch_dims = ((0, 1, 2), (0, 1, 2))

    def one_slot(running, xs):
      frame, picked = xs  # [B, H, Tq] each
      keys = k_frames[batch_index, frame, :, head_index]  # [B, H, Tq, T, D]
      values = v_frames[batch_index, frame, :, head_index]
      # The gathered keys as the left operand: a matrix-vector product per token, no transpose.
      logits = jax.lax.dot_general(keys, q_heads, (((4,), (3,)), batch_dims),
                                   preferred_element_type=jnp.float32)
      logits = jnp.where(picked[..., None], logits, lowest)
      shift = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
      weights = jnp.exp(logits - shift)
      out = jax.lax.dot_general(weights.astype(v.dtype), values, (((3,), (3,)), batch_dims),
                                preferred_element_type=jnp.float32)
      old_shift, old_total, old_out = running
      new_shift = jnp.maximum(old_shift, shift)
      old_scale, scale = jnp.exp(old_shift - new_shift), jnp.exp(shift - new_shift)
      return (new_shift, old_total * old_scale + weights.sum(axis=-1, keepdims=True) * scale,
              old_out * old_scale + out * scale), None

    running, _ = jax.lax.scan(one_slot, running, (jnp.moveaxis(frames, -1, 0),
                                                  jnp.moveaxis(picked, -1, 0)))
  _, total, out = running
  return jnp.moveaxis(out / total, 1, 2).astype(v.dtype)
