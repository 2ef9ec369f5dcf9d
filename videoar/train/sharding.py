"""Device meshes, and where the train state and the batches live on them.

The model names the axes of every parameter and of the activations between its blocks
(videoar/models/layers.py). config.mesh gives the sizes of the mesh axes and the rules that map
those logical names to them:

  data      data parallelism: batches are split, parameters are replicated.
  fsdp      fully sharded data parallelism: batches are split, and so are the parameters, their
            EMA and the optimizer moments; XLA all-gathers each weight where it is used and
            reduce-scatters its gradient.
  sequence  sequence parallelism: the frames of every clip are split between the blocks, and
            attention gathers the keys and values of the other frames. Parameters are sharded
            over it as over fsdp.
  tensor    tensor parallelism: heads, MLP hidden units and AdaLN outputs are split.

One size may be -1: the devices the others leave.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from videoar.errors import ConfigError

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def _fail(key: str, value, allowed: str):
  raise ConfigError(f"config.{key}={value!r} is invalid: {allowed}")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """The size of every axis in MESH_AXES, with a -1 resolved, over `num_devices` devices."""
  sizes = {axis: mesh_config[axis] for axis in MESH_AXES}
  for axis, size in sizes.items():
    if not isinstance(size, int) or (size < 1 and size != -1):
      _fail(f"mesh.{axis}", size, "must be an integer >= 1, or -1 for the devices left over")
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1:
    _fail(f"mesh.{fill[1]}", -1, f"only one mesh axis may be -1, and mesh.{fill[0]} is")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if num_devices % fixed:
      # Named by the axes the user set, not only the -1 axis (often the default's data axis).
      others = ", ".join(f"mesh.{axis}={size}" for axis, size in sizes.items() if size > 1)
      _fail(f"mesh.{fill[0]}", -1, f"the other axes ({others}) take {fixed} devices, which do not"
            f" divide the {num_devices} devices")
    sizes[fill[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    shape = " x ".join(f"{axis} {size}" for axis, size in sizes.items())
    _fail("mesh", dict(sizes), f"{shape} must use all {num_devices} devices")
  return tuple(sizes.values())


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The mesh config.mesh describes, over `devices` (all of them when None)."""
  devices = jax.devices() if devices is None else devices
  # jax.make_mesh orders the devices by their physical topology on TPUs and GPUs. Auto axes:
  # shardings come from the rules and XLA's propagation, not from the types of arrays.
  return jax.make_mesh(mesh_shape(mesh_config, len(devices)), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_rules(mesh_config: ml_collections.ConfigDict) -> Rules:
  """config.mesh.rules as flax wants them: (logical name, mesh axis or axes or None) pairs."""
  rules = []
  for name, axes in mesh_config.rules:
    if axes is not None and not isinstance(axes, str):
      axes = tuple(axes)
    named = (axes,) if isinstance(axes, str) else axes or ()
    if unknown := [axis for axis in named if axis not in MESH_AXES]:
      _fail("mesh.rules", (name, axes),
            f"names {', '.join(unknown)}; the mesh axes are {', '.join(MESH_AXES)}")
    rules.append((name, axes))
  return tuple(rules)


@dataclasses.dataclass(frozen=True)
class Layout:
  """A mesh and the rules that place named axes on it."""

  mesh: Mesh
  rules: Rules

  @classmethod
  def from_config(cls, mesh_config: ml_collections.ConfigDict, devices=None) -> Layout:
    return cls(make_mesh(mesh_config, devices), logical_rules(mesh_config))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch(self) -> NamedSharding:
    """Every array of a batch: its leading (batch) axis split as the rule for "batch" says."""
    return NamedSharding(self.mesh, nn.logical_to_mesh_axes(("batch",), self.rules))

  def shardings(self, boxed_tree):
    """The NamedSharding of every leaf of a tree whose leaves carry logical axis names
    (nn.LogicallyPartitioned, as init returns them); other leaves are replicated."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), self.mesh, self.rules)

  @contextlib.contextmanager
  def logical_axes(self):
    """Entered while tracing: binds the model's nn.with_logical_constraint to this mesh."""
    with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), nn.logical_axis_rules(
        self.rules):
      yield

  def check_batch_size(self, global_batch_size: int) -> None:
    shards = math.prod(self.mesh.shape[axis] for axis in _axes(self.batch.spec[0]))
    processes = jax.process_count()
    if global_batch_size % math.lcm(shards, processes):
      _fail("data.batch_size", global_batch_size,
            f"must split evenly over the {shards} batch shards of the mesh and the {processes}"
            " processes")

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The step's global batch from this process's part of it (pipeline.train_batches with this
    process's index and the process count)."""
    arrays = {key: jax.make_array_from_process_local_data(self.batch, value)
              for key, value in local_batch.items()}
    if jax.process_count() == 1:
      return arrays
    return self._clip_order(arrays)

  @functools.cached_property
  def _clip_order(self):
    """Puts clip j of the global batch at row j.

    Process p reads the clips j with j % process_count == p (pipeline.train_batches), and
    make_array_from_process_local_data lays each process's clips out as one block of rows.
    Undoing that interleaving (an all-to-all of the batch) makes the batches, and so the run,
    the same on any number of processes.
    """

    def reorder(x):
      processes = jax.process_count()
      rows = x.shape[0] // processes
      blocks = _process_blocks(self.batch, x.shape[0])
      by_block = x.reshape((processes, rows) + x.shape[1:])
      if blocks != list(range(processes)):
        by_block = jnp.take(by_block, np.asarray(blocks), axis=0)
      return by_block.swapaxes(0, 1).reshape(x.shape)

    return jax.jit(lambda batch: jax.tree.map(reorder, batch), out_shardings=self.batch)


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _process_blocks(sharding: NamedSharding, batch_size: int) -> list[int]:
  """For each process, which block of batch_size / process_count rows its devices hold."""
  processes = jax.process_count()
  rows_per_process = batch_size // processes
  rows = collections.defaultdict(set)
  for device, index in sharding.devices_indices_map((batch_size,)).items():
    rows[device.process_index].update(range(batch_size)[index[0]])
  blocks = []
  for process in range(processes):
    held = sorted(rows[process])
    first = held[0]
    if held != list(range(first, first + rows_per_process)) or first % rows_per_process:
      raise ValueError(
          f"process {process} holds batch rows {held[0]}..{held[-1]} ({len(held)} rows), not one"
          f" block of {rows_per_process}: the mesh axes that do not split the batch (sequence,"
          " tensor) must lie within a process")
    blocks.append(first // rows_per_process)
  return blocks
