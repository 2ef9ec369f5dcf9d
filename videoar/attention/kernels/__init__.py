"""Pallas attention kernels behind `ops.attention(..., impl="pallas")`.

  block-sparse, GPU and CPU   frame_list.py over static lists from the mask spec.
  block-sparse, TPU           splash attention (splash.py) with the mask spec as its mask.
  routed (top-k), everywhere  frame_list.py over the frames each query tile's tokens picked.
On CPU every kernel runs in Pallas interpret mode: right, slow, for tests. On a GPU frame_list
lowers through Triton; no kernel here has run on a GPU or a TPU yet (docs/performance.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from videoar.attention import masks
from videoar.attention import routing as routing_lib
from videoar.attention.kernels import frame_list, splash

# Triton's tiles are powers of two, and its dot needs at least 16 rows; larger tiles than
# MAX_BLOCK gain little.
GPU_MIN_BLOCK, MAX_BLOCK = 16, 64


def _block(tokens_per_frame: int) -> int:
  """The largest power-of-two tile, up to MAX_BLOCK tokens, that divides the frame."""
  return min(MAX_BLOCK, tokens_per_frame & -tokens_per_frame)


def _check_supported(q, tokens_per_frame: int, platform: str) -> None:
  if platform == "gpu":
    head_dim = q.shape[-1]
    if tokens_per_frame % GPU_MIN_BLOCK:
      raise ValueError(
          f"attention impl='pallas' on GPU tiles frames in blocks of >= {GPU_MIN_BLOCK} tokens:"
          f" tokens_per_frame={tokens_per_frame} is not a multiple of {GPU_MIN_BLOCK}; use"
          " impl='blocked'")
    if head_dim < GPU_MIN_BLOCK or head_dim & (head_dim - 1):
      raise ValueError(f"attention impl='pallas' on GPU needs a power-of-two head_dim >= "
                       f"{GPU_MIN_BLOCK}, not {head_dim}; use impl='blocked'")


def attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
              kv_frame_valid: jax.Array | None = None,
              routing: routing_lib.Routing | None = None) -> jax.Array:
  """q [B, Tq, H, D], k/v [B, Tk, H, D]: as `ops.attention`."""
  platform = jax.default_backend()
  _check_supported(q, tokens_per_frame, platform)
  interpret = platform == "cpu"
  b, tq, h, _ = q.shape
  fk = k.shape[1] // tokens_per_frame
  if routing is None and platform == "tpu":
    return splash.attention(q, k, v, mask, tokens_per_frame=tokens_per_frame,
                            kv_frame_valid=kv_frame_valid, interpret=interpret)
  valid = jnp.ones((b, fk), jnp.int32)
  if kv_frame_valid is not None:
    valid = jnp.broadcast_to(jnp.atleast_2d(kv_frame_valid), (b, fk)).astype(jnp.int32)
  block = _block(tokens_per_frame)
  config = frame_list.Config(tokens_per_frame, block, block, routing is not None, interpret)
  if routing is None:
    tables = frame_list.static_tables(mask, config)
    selection = jnp.zeros((b, h, tq, 1), jnp.int32)  # read only by routed kernels
  else:
    # The selection already holds kv_frame_valid: the kernel needs nothing else.
    picked = routing_lib.select_frames(q, k, mask, routing, tokens_per_frame=tokens_per_frame,
                                       kv_frame_valid=kv_frame_valid)
    tables = frame_list.routed_tables(picked, config)
    selection = picked.astype(jnp.int32)
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  out = frame_list.frame_list_attention(heads_major(q), heads_major(k), heads_major(v), valid,
                                        selection, tables, config)
  return heads_major(out)

