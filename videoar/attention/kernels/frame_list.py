"""A Pallas flash-attention kernel over per-tile lists of key frames, forward and backward.

Each query tile (`block_q` tokens of one query frame) walks a list of key frames, in blocks of
`block_k` tokens, with an online softmax: frames not on its list cost nothing. Two callers fill
the lists:
  block-sparse  static lists from a mask spec's frame mask (`static_tables`);
  routed        per batch and head, the frames any token of the tile selected, own frames
                included (`routed_tables`); a token's row is masked to its own selection, so a
                tile works on at most own + min(history, block_q * top_k) frames.
`kv_frame_valid` hides key frames per batch element either way.

The backward pass is FlashAttention-2's: dq by query tiles over the same lists; dk and dv by key
tiles over the transposed lists (the query tiles that list the frame).

Written with portable Pallas (BlockSpecs, ref slices, `jnp.dot`, `lax.fori_loop`): on CPU it
runs in interpret mode, on a GPU it lowers through Triton, on a TPU through Mosaic. Only the
interpret mode has been run (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from videoar.attention import masks


@dataclasses.dataclass(frozen=True)
class Config:
  """Static shape of a kernel call: tiles of `block_q` query and `block_k` key tokens, both
  dividing the frame; `routed` kernels also read the per-token selection."""

  tokens_per_frame: int
  block_q: int
  block_k: int
  routed: bool
  interpret: bool

  @property
  def tiles_per_frame(self) -> int:
    return self.tokens_per_frame // self.block_q

  @property
  def key_blocks_per_frame(self) -> int:
    return self.tokens_per_frame // self.block_k

  def compiler_params(self):
    if self.interpret or jax.default_backend() != "gpu":
      return None
    from jax.experimental.pallas import triton as pltriton  # pylint: disable=g-import-not-at-top
    return pltriton.CompilerParams(num_warps=4, num_stages=2)


class Tables(NamedTuple):
  """Key frames per query tile and query tiles per key frame, as int32 [B or 1, H or 1, N, L]
  lists with their lengths [B or 1, H or 1, N, 1]."""

  frames: jax.Array
  num_frames: jax.Array
  tiles: jax.Array
  num_tiles: jax.Array


def _lists(membership) -> tuple[jax.Array, jax.Array]:
  """[..., N, M] bool -> the members of each row first, in order, and their count."""
  order = jnp.argsort(~membership, axis=-1, stable=True).astype(jnp.int32)
  return order, membership.sum(axis=-1, keepdims=True, dtype=jnp.int32)


def static_tables(mask: masks.MaskSpec, config: Config) -> Tables:
  """Lists from the frame mask, shared by every batch element and head."""
  frame_mask = np.repeat(mask.frame_mask(), config.tiles_per_frame, axis=0)  # [tiles, Fk]
  frames, num_frames = _lists(jnp.asarray(frame_mask)[None, None])
  tiles, num_tiles = _lists(jnp.asarray(frame_mask.T)[None, None])
  return Tables(frames, num_frames, tiles, num_tiles)


def routed_tables(selection: jax.Array, config: Config) -> Tables:
  """Lists from a routing selection [B, H, Tq, Fk]: a tile lists what any of its tokens picked."""
  b, h, tq, fk = selection.shape
  uses = selection.reshape(b, h, tq // config.block_q, config.block_q, fk).any(axis=3)
  frames, num_frames = _lists(uses)
  tiles, num_tiles = _lists(jnp.swapaxes(uses, 2, 3))
  return Tables(frames, num_frames, tiles, num_tiles)


def _table_spec(table: jax.Array, row_of_program):
  """A BlockSpec for one row of a [B or 1, H or 1, N, L] table."""
  batched, per_head = table.shape[0] > 1, table.shape[1] > 1
  return pl.BlockSpec(
      (None, None, None, table.shape[-1]),
      lambda b, h, i: (b if batched else 0, h if per_head else 0, row_of_program(i), 0))


def _row_ok(valid_ref, selection_ref, frame, rows, config: Config):
  """[block_q, 1] bool: which query rows may see key frame `frame`."""
  ok = jnp.full((config.block_q, 1), valid_ref[frame] != 0)
  if config.routed:
    ok = ok & (selection_ref[rows, pl.ds(frame, 1)] != 0)
  return ok


def _forward_kernel(frames_ref, num_frames_ref, valid_ref, selection_ref, q_ref, k_ref, v_ref,
                    o_ref, lse_ref, *, config: Config, scale: float):
  q = q_ref[...]
  block_q, head_dim = q.shape
  rows = pl.ds(0, block_q)

  def frame_step(u, carry):
    frame = frames_ref[u]
    ok = _row_ok(valid_ref, selection_ref, frame, rows, config)

    def key_block_step(s, carry):
      m, l, acc = carry
      keys = pl.ds(frame * config.tokens_per_frame + s * config.block_k, config.block_k)
      k, v = k_ref[keys, :], v_ref[keys, :]
      logits = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale
      logits = jnp.where(ok, logits, -jnp.inf)
      m_new = jnp.maximum(m, logits.max(axis=1, keepdims=True))
      # Rows that have seen no allowed key yet keep m = -inf; shift them by 0 instead.
      shift = jnp.where(m_new == -jnp.inf, 0.0, m_new)
      p = jnp.exp(logits - shift)
      correction = jnp.exp(m - shift)
      l = l * correction + p.sum(axis=1, keepdims=True)
      acc = acc * correction + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
      return m_new, l, acc

    return jax.lax.fori_loop(0, config.key_blocks_per_frame, key_block_step, carry)

  init = (jnp.full((block_q, 1), -jnp.inf, jnp.float32), jnp.zeros((block_q, 1), jnp.float32),
          jnp.zeros((block_q, head_dim), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, num_frames_ref[0], frame_step, init)
  o_ref[...] = (acc / l).astype(o_ref.dtype)
  lse_ref[...] = (m + jnp.log(l))[:, 0]


def _dq_kernel(frames_ref, num_frames_ref, valid_ref, selection_ref, q_ref, k_ref, v_ref, do_ref,
               lse_ref, delta_ref, dq_ref, *, config: Config, scale: float):
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
  rows = pl.ds(0, q.shape[0])

  def frame_step(u, dq):
    frame = frames_ref[u]
    ok = _row_ok(valid_ref, selection_ref, frame, rows, config)

    def key_block_step(s, dq):
      keys = pl.ds(frame * config.tokens_per_frame + s * config.block_k, config.block_k)
      k, v = k_ref[keys, :], v_ref[keys, :]
      logits = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale
      p = jnp.where(ok, jnp.exp(logits - lse), 0.0)
      dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
      ds = p * (dp - delta)
      return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    return jax.lax.fori_loop(0, config.key_blocks_per_frame, key_block_step, dq)

  dq = jax.lax.fori_loop(0, num_frames_ref[0], frame_step, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(tiles_ref, num_tiles_ref, valid_ref, selection_ref, q_ref, k_ref, v_ref, do_ref,
                lse_ref, delta_ref, dk_ref, dv_ref, *, config: Config, scale: float):
  k, v = k_ref[...], v_ref[...]
  frame = pl.program_id(2) // config.key_blocks_per_frame

  def tile_step(u, carry):
    dk, dv = carry
    rows = pl.ds(tiles_ref[u] * config.block_q, config.block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    lse, delta = lse_ref[rows][:, None], delta_ref[rows][:, None]
    ok = _row_ok(valid_ref, selection_ref, frame, rows, config)
    logits = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale
    p = jnp.where(ok, jnp.exp(logits - lse), 0.0)
    dv = dv + jnp.dot(p.T.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
    ds = p * (dp - delta)
    dk = dk + jnp.dot(ds.T.astype(q.dtype), q, preferred_element_type=jnp.float32)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, num_tiles_ref[0], tile_step, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _common_specs(lists, lengths, valid, selection, config: Config, by_key: bool):
  """Specs of (list, its length, valid, selection) for a grid over query tiles or, `by_key`,
  over key blocks, which see the whole selection."""
  if by_key:
    row = lambda j: j // config.key_blocks_per_frame
    selection_spec = _whole(selection)
  else:
    row = lambda i: i
    selection_spec = _tiled(selection, config.block_q)
  return [_table_spec(lists, row), _table_spec(lengths, row),
          pl.BlockSpec((None, valid.shape[1]), lambda b, h, i: (b, 0)), selection_spec]


def _whole(x):
  """The (batch, head) slice of a [B, H, T, D] or [B, H, T] array."""
  return pl.BlockSpec((None, None) + x.shape[2:], lambda b, h, i: (b, h) + (0,) * (x.ndim - 2))


def _tiled(x, block):
  """Row tiles of a [B, H, T, D] or [B, H, T] array."""
  return pl.BlockSpec((None, None, block) + x.shape[3:],
                      lambda b, h, i: (b, h, i) + (0,) * (x.ndim - 3))


def _forward(q, k, v, valid, selection, tables: Tables, config: Config):
  b, h, tq, d = q.shape
  kernel = functools.partial(_forward_kernel, config=config, scale=1.0 / np.sqrt(d))
  return pl.pallas_call(
      kernel, grid=(b, h, tq // config.block_q),
      in_specs=_common_specs(tables.frames, tables.num_frames, valid, selection, config, False)
      + [_tiled(q, config.block_q), _whole(k), _whole(v)],
      out_specs=[_tiled(q, config.block_q), pl.BlockSpec((None, None, config.block_q),
                                                          lambda b, h, i: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, tq), jnp.float32)],
      compiler_params=config.compiler_params(), interpret=config.interpret,
      name="frame_list_attention_forward",
  )(tables.frames, tables.num_frames, valid, selection, q, k, v)


def _backward(q, k, v, valid, selection, tables: Tables, out, lse, do, config: Config):
  b, h, tq, d = q.shape
  tk = k.shape[2]
  scale = 1.0 / np.sqrt(d)
  delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, config=config, scale=scale), grid=(b, h, tq // config.block_q),
      in_specs=_common_specs(tables.frames, tables.num_frames, valid, selection, config, False)
      + [_tiled(q, config.block_q), _whole(k), _whole(v), _tiled(do, config.block_q),
         _tiled(lse, config.block_q), _tiled(delta, config.block_q)],
      out_specs=_tiled(q, config.block_q),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=config.compiler_params(), interpret=config.interpret,
      name="frame_list_attention_dq",
  )(tables.frames, tables.num_frames, valid, selection, q, k, v, do, lse, delta)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, config=config, scale=scale),
      grid=(b, h, tk // config.block_k),
      in_specs=_common_specs(tables.tiles, tables.num_tiles, valid, selection, config, True)
      + [_whole(q), _tiled(k, config.block_k), _tiled(v, config.block_k), _whole(do),
         _whole(lse), _whole(delta)],
      out_specs=[_tiled(k, config.block_k), _tiled(v, config.block_k)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=config.compiler_params(), interpret=config.interpret,
      name="frame_list_attention_dkv",
  )(tables.tiles, tables.num_tiles, valid, selection, q, k, v, do, lse, delta)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def frame_list_attention(q, k, v, valid, selection, tables: Tables, config: Config):
  """q [B, H, Tq, D], k/v [B, H, Tk, D] (head-major), valid [B, Fk] int32, selection
  [B, H, Tq, Fk] int32 (read only when `config.routed`)."""
  return _forward(q, k, v, valid, selection, tables, config)[0]


def _vjp_forward(q, k, v, valid, selection, tables, config):
  out, lse = _forward(q, k, v, valid, selection, tables, config)
  return out, (q, k, v, valid, selection, tables, out, lse)


def _vjp_backward(config, residuals, do):
  q, k, v, valid, selection, tables, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, valid, selection, tables, out, lse, do, config)
  no_gradient = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0),
                             (valid, selection, tables))
  return (dq, dk, dv) + no_gradient


frame_list_attention.defvjp(_vjp_forward, _vjp_backward)
