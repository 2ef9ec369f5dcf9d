"""Kernels that XLA cannot partition, run per shard: `shard_map` over the batch and the heads.

A custom call (a Mosaic kernel; cuDNN's attention, which takes no sharded sequence) sees whole
arrays. Under a mesh, the kernel runs inside `shard_map` with batch and heads split as the
logical axis rules in scope place "batch" and "heads" (videoar/train/sharding.py: flax's
`nn.logical_axis_rules`, bound while the train step traces); every other axis of q, k and v is
gathered (a `sequence` axis: each shard then holds the keys of every frame).
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec


def _mesh_axes(logical_name: str, mesh) -> tuple[str, ...]:
  """The axes of `mesh` that the logical axis rules in scope give `logical_name` (none without
  rules)."""
  entry = nn.logical_to_mesh_axes((logical_name,))[0]
  named = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return tuple(axis for axis in named if axis in mesh.axis_names)


def _split(axes: tuple[str, ...], size: int, what: str, mesh, impl: str) -> tuple[str, ...] | None:
  shards = math.prod(mesh.shape[axis] for axis in axes)
  if size % shards:
    raise ValueError(f"attention impl={impl!r}: {what}={size} does not split over the mesh axes"
                     f" {axes} ({shards} shards) that the logical rules give it")
  return axes or None


def over_batch_and_heads(local: Callable, q, k, v, kv_frame_valid: jax.Array | None, *,
                         impl: str) -> jax.Array:
  """local(q, k, v, kv_frame_valid) -> [B, Tq, H, D] on q [B, Tq, H, D], k/v [B, Tk, H, D] and
  kv_frame_valid ([B, Tk/T], [Tk/T] or None), run inside `shard_map` over the abstract mesh in
  scope, or directly without one.

  Raises ValueError (naming `impl`) for a batch or head count that the mesh axes the logical
  rules give it do not divide."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q, k, v, kv_frame_valid)
  b, _, h, _ = q.shape
  batch = _split(_mesh_axes("batch", mesh), b, "batch", mesh, impl)
  heads = _split(_mesh_axes("heads", mesh), h, "num_heads", mesh, impl)
  qkv_spec = PartitionSpec(batch, None, heads, None)
  if kv_frame_valid is None:
    args, specs = (q, k, v), (qkv_spec,) * 3
    run = lambda q, k, v: local(q, k, v, None)
  else:
    args = (q, k, v, kv_frame_valid)
    specs = (qkv_spec,) * 3 + (PartitionSpec(batch, None) if kv_frame_valid.ndim == 2
                               else PartitionSpec(),)
    run = local
  # check_vma=False: custom calls (pallas_call, cuDNN) do not track which mesh axes their outputs
  # vary over.
  return jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=qkv_spec, check_vma=False)(*args)
