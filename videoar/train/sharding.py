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
import difflib
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
# The logical axis names of the model (videoar/models/layers.py, dit.py and discriminator.py):
# the activations' between blocks, then the parameters'. A rule for any other name would be
# ignored by flax without a word.
LOGICAL_AXES = ("batch", "frame", "token", "activation_embed",
                "embed", "mlp", "modulation", "heads", "head_dim", "qkv", "kv", "patch",
                "time_features", "cond", "vocab", "text_features", "fine", "layers",
                "register", "register_embed", "logit")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_RULE_SHAPE = ("must be a tuple of (logical name, mesh axes) pairs, the mesh axes one axis, a"
               " tuple of axes or None: e.g. (('batch', ('data', 'fsdp')), ('mlp', 'tensor'))")


def _fail(key: str, value, allowed: str):
  raise ConfigError(f"config.{key}={value!r} is invalid: {allowed}")


def mesh_sizes(mesh_config: ml_collections.ConfigDict) -> dict[str, int]:
  """The size config.mesh gives every axis in MESH_AXES, -1 where it takes the devices the others
  leave; raises ConfigError for a size that is neither an integer >= 1 nor -1, or a second -1.
  Needs no devices: `validate` calls it before the workdir is made."""
  sizes = {axis: mesh_config[axis] for axis in MESH_AXES}
  for axis, size in sizes.items():
    if not isinstance(size, int) or (size < 1 and size != -1):
      _fail(f"mesh.{axis}", size, "must be an integer >= 1, or -1 for the devices left over")
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1:
    _fail(f"mesh.{fill[1]}", -1, f"only one mesh axis may be -1, and mesh.{fill[0]} is")
  return sizes


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """The size of every axis in MESH_AXES, with a -1 resolved, over `num_devices` devices."""
  sizes = mesh_sizes(mesh_config)
  fill = [axis for axis, size in sizes.items() if size == -1]
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
  """config.mesh.rules as flax wants them: (logical name, mesh axis or axes or None) pairs.

  Raises ConfigError for rules flax would fail on in a traceback (not pairs, a mesh axis twice
  in one rule) or ignore without a word (a logical name the model does not have, a second rule
  for one name, of which flax reads only the first), and for a mesh axis that is not one."""
  if not (isinstance(mesh_config.rules, (tuple, list)) and all(map(_is_rule, mesh_config.rules))):
    _fail("mesh.rules", mesh_config.rules, _RULE_SHAPE)
  rules = []
  for name, axes in mesh_config.rules:
    if axes is not None and not isinstance(axes, str):
      axes = tuple(axes)
    if name not in LOGICAL_AXES:
      close = difflib.get_close_matches(name, LOGICAL_AXES, n=1)
      _fail("mesh.rules", (name, axes), f"the model has no logical axis {name!r}"
            f"{f' (did you mean {close[0]!r}?)' if close else ''}; its logical axes are"
            f" {', '.join(LOGICAL_AXES)}")
    if name in dict(rules):
      _fail("mesh.rules", (name, axes), f"a second rule for {name!r}, which flax would ignore:"
            " give each logical name one rule")
    named = _axes(axes)
    if unknown := [axis for axis in named if axis not in MESH_AXES]:
      _fail("mesh.rules", (name, axes),
            f"names {', '.join(unknown)}; the mesh axes are {', '.join(MESH_AXES)}")
    if repeated := sorted({axis for axis in named if named.count(axis) > 1}):
      _fail("mesh.rules", (name, axes), f"names mesh axis {', '.join(repeated)} twice: an axis"
            " splits a dimension once")
    rules.append((name, axes))
  return tuple(rules)


def _is_rule(rule) -> bool:
  """Whether `rule` is a pair (logical name, mesh axes): the mesh axes one axis, a tuple of
  axes (a list, in a run record) or None."""
  if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
    return False
  axes = rule[1]
  return axes is None or isinstance(axes, str) or (
      isinstance(axes, (tuple, list)) and all(isinstance(axis, str) for axis in axes))


def split_axes(sizes: dict[str, int], rules: Rules, name: str) -> tuple[str, ...]:
  """The mesh axes of more than one device (in `sizes`, MESH_AXES' sizes; -1, not yet resolved,
  counts as none) that `rules` split the logical axis `name` over."""
  return tuple(axis for axis in _axes(dict(rules).get(name)) if sizes[axis] > 1)


def _fail_axes(sizes: dict[str, int], axes: tuple[str, ...], resolved: bool, why: str):
  """Raises ConfigError for the mesh `axes` of sizes `sizes`, naming config.mesh.AXIS (the last
  of them) where `sizes` are config.mesh's own, and config.mesh=SIZES where they are a mesh's as
  made (`resolved`): its -1 axis shows the devices it took, which the config does not say."""
  product = " x ".join(f"mesh.{axis}={sizes[axis]}" for axis in axes)
  if resolved:
    _fail("mesh", sizes, f"{product} {why}")
  if len(axes) > 1:
    why = f"{product} = {math.prod(sizes[axis] for axis in axes)} {why}"
  _fail(f"mesh.{axes[-1]}", sizes[axes[-1]], why)


def check_split(sizes: dict[str, int], rules: Rules, name: str, size: int, what: str, *,
                resolved: bool = False) -> None:
  """Raises ConfigError unless the mesh axes that `rules` split the logical axis `name` over
  divide its `size` (`what`, e.g. "model.num_heads=1"): jit cannot lay out a parameter they do
  not, and failed in a traceback while the train state was traced. `resolved`: `sizes` are the
  mesh's (_fail_axes)."""
  axes = split_axes(sizes, rules, name)
  if size % math.prod(sizes[axis] for axis in axes):
    _fail_axes(sizes, axes, resolved, f"must divide {what} (the rule"
               f" {(name, dict(rules)[name])!r} splits it)")


def check_axes_used(sizes: dict[str, int], rules: Rules, *, resolved: bool = False) -> None:
  """Raises ConfigError for a mesh axis of more than one device that the rules leave idle, whose
  devices would repeat the others' work: data not splitting the batch (data parallelism), or an
  axis no rule names. A -1 in `sizes` (not yet resolved) is not checked; `resolved`: `sizes`
  are the mesh's (_fail_axes)."""
  if sizes["data"] > 1 and "data" not in _axes(dict(rules).get("batch")):
    _fail_axes(sizes, ("data",), resolved, "must split 'batch', which mesh.rules do not give"
               " it (e.g. ('batch', ('data', 'fsdp'))): every data shard would compute the same"
               " step")
  named = {axis for _, axes in rules for axis in _axes(axes)}
  for axis, size in sizes.items():
    if size > 1 and axis not in named:
      _fail_axes(sizes, (axis,), resolved, "must be named by a rule of mesh.rules, or its"
                 " devices repeat the others' work")


@dataclasses.dataclass(frozen=True)
class Layout:
  """A mesh and the rules that place named axes on it."""

  mesh: Mesh
  rules: Rules

  @classmethod
  def from_config(cls, mesh_config: ml_collections.ConfigDict, devices=None) -> Layout:
    """config.mesh over `devices` (all of them when None); raises ConfigError for a mesh that
    does not fit them or whose rules leave an axis idle (with a -1 axis resolved)."""
    mesh = make_mesh(mesh_config, devices)
    rules = logical_rules(mesh_config)
    check_axes_used(dict(mesh.shape), rules, resolved=True)
    return cls(mesh, rules)

  @property
  def replicated(self) -> NamedSharding:
    """The whole array on every device of the mesh (PartitionSpec())."""
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch(self) -> NamedSharding:
    """Every array of a batch: its leading (batch) axis split as the rule for "batch" says."""
    return NamedSharding(self.mesh, nn.logical_to_mesh_axes(("batch",), self.rules))

  def shardings(self, boxed_tree):
    """The NamedSharding of every leaf of a tree whose leaves carry logical axis names
    (nn.LogicallyPartitioned, as init returns them); other leaves are replicated.

    Raises ConfigError for an axis of a leaf that its mesh axes do not divide. `validate` checks
    the model's dimensions against the axes of a fixed size before anything is made; this checks
    every parameter against the mesh as made (a -1 axis resolved, any rule)."""
    boxed = lambda leaf: isinstance(leaf, nn.LogicallyPartitioned)
    sizes = dict(self.mesh.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(boxed_tree, is_leaf=boxed):
      if boxed(leaf):
        for name, size in zip(leaf.names, np.shape(leaf.value)):
          check_split(sizes, self.rules, name, size, f"the {size} entries of axis {name!r} of"
                      f" {jax.tree_util.keystr(path, simple=True, separator='/')}", resolved=True)
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), self.mesh, self.rules)

  @contextlib.contextmanager
  def logical_axes(self):
    """Entered while tracing: binds the model's nn.with_logical_constraint to this mesh."""
    with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), nn.logical_axis_rules(
        self.rules):
      yield

  def check_batch_size(self, global_batch_size: int) -> None:
    """Raises ConfigError (a ValueError) for a data.batch_size that does not split evenly over
    the mesh's batch shards and the processes (their least common multiple must divide it)."""
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
