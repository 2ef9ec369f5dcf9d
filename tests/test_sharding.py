"""Meshes, logical axis names, and a train step, its gradients and the CPU's grouped causal
attention sharded over 8 devices against one device.

The 8-device check runs in a subprocess with --xla_force_host_platform_device_count=8: the device
count is fixed when JAX starts, and this process must stay single-device for the other tests.
Run as a script, this file is that subprocess.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from videoar import errors, experiment, validate
from videoar.attention import blocked, masks, ops
from videoar.data import pipeline
from videoar.train import sharding as sharding_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "configs"))
import bouncing_sf  # noqa: E402
import bouncing_tiny  # noqa: E402
import wan_1p3b  # noqa: E402

# One step on a mesh against one device, from the same initial state and batch. Sharded matmuls
# and reductions add in another order, so float32 results may differ in the last bits. Measured
# on CPU: losses equal, grad norms within 1e-7 relative, parameters (after an Adam step of ~1e-3,
# the learning rate) within 3.5e-10. The tolerances leave a 30-100x margin.
# Gradients away from init (_gradients_away_from_init), sharded against one device: within
# 5.2e-7 of each leaf's largest value, measured; 1.2 with the CPU's attention groups put back in
# the wrong order.
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5
PARAM_ATOL = 1e-8
MESHES = {
    "data2_fsdp2_tensor2": dict(data=2, fsdp=2, sequence=1, tensor=2),
    "fsdp2_sequence2_tensor2": dict(data=1, fsdp=2, sequence=2, tensor=2),
}


def mesh_config(**sizes):
  config = bouncing_tiny.get_config("test").mesh
  for axis, size in sizes.items():
    config[axis] = size
  return config


@pytest.mark.parametrize("sizes,devices,shape", [
    (dict(data=-1), 8, (8, 1, 1, 1)),
    (dict(data=2, fsdp=-1, tensor=2), 8, (2, 2, 1, 2)),
    (dict(data=1, tensor=1, sequence=1, fsdp=1), 1, (1, 1, 1, 1)),
])
def test_mesh_shape_fills_the_minus_one_axis(sizes, devices, shape):
  assert sharding_lib.mesh_shape(mesh_config(**sizes), devices) == shape


@pytest.mark.parametrize("sizes,devices,message", [
    (dict(data=-1, fsdp=-1), 8, "config.mesh.fsdp=-1 is invalid: only one mesh axis may be -1"),
    # The axes the user set are named (the line named only the default's data=-1).
    (dict(data=-1, fsdp=3), 8, "config.mesh.data=-1 is invalid: the other axes (mesh.fsdp=3) take"
     " 3 devices, which do not divide the 8 devices"),
    (dict(data=2), 8, "config.mesh="),
    (dict(tensor=0), 8, "config.mesh.tensor=0 is invalid"),
])
def test_bad_mesh_raises_naming_the_key(sizes, devices, message):
  with pytest.raises(errors.ConfigError) as error:
    sharding_lib.mesh_shape(mesh_config(**sizes), devices)
  assert str(error.value).startswith(message), str(error.value)


def test_cli_rejects_a_mesh_that_does_not_fit_the_devices_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/bouncing_tiny.py:test",
       f"--workdir={tmp_path}/run", "--mode=train", "--config.mesh.data=3",
       # A batch the 3 shards split: validate would refuse the batch of 4 first.
       "--config.data.batch_size=3"],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.mesh={'data': 3, 'fsdp': 1, 'sequence': 1, 'tensor': 1} is invalid:"
      " data 3 x fsdp 1 x sequence 1 x tensor 1 must use all 1 devices")
  # Said before the workdir is made (it was made, with its lock file, first).
  assert not (tmp_path / "run").exists()


def test_rules_must_name_mesh_axes():
  config = mesh_config()
  config.rules = (("embed", "model"),)
  with pytest.raises(errors.ConfigError, match="names model; the mesh axes are"):
    sharding_lib.logical_rules(config)


def tiny_config(**values):
  """bouncing_tiny's test config with `values` ("model__width": 42 sets model.width)."""
  config = bouncing_tiny.get_config("test")
  for key, value in values.items():
    section, name = key.split("__")
    config[section][name] = value
  return config


# (what is wrong, config values, the start of the line) that validate refuses in config.mesh,
# with no devices asked: each failed after the workdir was made (a traceback from jit while the
# train state was traced, a DuplicateSpecError, a ValueError unpacking a rule) or was silently
# ignored (a misspelt logical name, a second rule for one, rules that leave the batch whole).
BAD_MESHES = [
    ("heads over tensor", dict(mesh__data=1, mesh__tensor=2, model__num_heads=1),
     "config.mesh.tensor=2 is invalid: must divide model.num_heads=1 (the rule ('heads',"
     " 'tensor') splits it)"),
    ("MLP width over tensor", dict(mesh__data=1, mesh__tensor=2, model__mlp_ratio=1.1),
     "config.mesh.tensor=2 is invalid: must divide the MLP width int(model.width x"
     " model.mlp_ratio)=35 (the rule ('mlp', 'tensor') splits it)"),
    ("width over fsdp",
     dict(mesh__fsdp=4, model__width=42, model__num_heads=3, model__fine_width=42),
     "config.mesh.fsdp=4 is invalid: must divide model.width=42 (the rule ('embed', ('fsdp',"
     " 'sequence')) splits it)"),
    ("width over fsdp x sequence",
     dict(mesh__data=1, mesh__fsdp=2, mesh__sequence=2, model__width=42, model__num_heads=3,
          model__fine_width=42),
     "config.mesh.sequence=2 is invalid: mesh.fsdp=2 x mesh.sequence=2 = 4 must divide"
     " model.width=42"),
    # The FineDecoder's heads: 48 channels over the trunk's head dim 16.
    ("FineDecoder heads over tensor", dict(mesh__data=1, mesh__tensor=2, model__fine_width=48),
     "config.mesh.tensor=2 is invalid: must divide the FineDecoder's heads model.fine_width=48 /"
     " head dim 16 = 3"),
    ("batch over data", dict(mesh__data=2, data__batch_size=3),
     "config.data.batch_size=3 is invalid: must split evenly over the 2 batch shards of the mesh"
     " (mesh.data=2)"),
    ("an axis of 0", dict(mesh__data=0),
     "config.mesh.data=0 is invalid: must be an integer >= 1, or -1"),
    ("a negative axis", dict(mesh__tensor=-2),
     "config.mesh.tensor=-2 is invalid: must be an integer >= 1, or -1"),
    ("a misspelt logical name", dict(mesh__rules=(("mlpp", "tensor"),)),
     "config.mesh.rules=('mlpp', 'tensor') is invalid: the model has no logical axis 'mlpp' (did"
     " you mean 'mlp'?); its logical axes are batch, frame, token, activation_embed, embed, mlp,"),
    ("a second rule for a name", dict(mesh__rules=(("batch", "data"), ("batch", "fsdp"))),
     "config.mesh.rules=('batch', 'fsdp') is invalid: a second rule for 'batch', which flax would"
     " ignore: give each logical name one rule"),
    ("a mesh axis twice in a rule", dict(mesh__rules=(("batch", ("data", "data")),)),
     "config.mesh.rules=('batch', ('data', 'data')) is invalid: names mesh axis data twice"),
    ("a rule without its outer tuple", dict(mesh__rules=("batch", "data")),
     "config.mesh.rules=('batch', 'data') is invalid: must be a tuple of (logical name, mesh"
     " axes) pairs"),
    ("a rule of a number", dict(mesh__rules=(("batch", 3),)),
     "config.mesh.rules=(('batch', 3),) is invalid: must be a tuple of (logical name, mesh axes)"
     " pairs"),
    ("no rules with data 2", dict(mesh__data=2, mesh__rules=()),
     "config.mesh.data=2 is invalid: must split 'batch', which mesh.rules do not give it"),
    ("data not splitting the batch", dict(mesh__data=2, mesh__rules=(("embed", "data"),)),
     "config.mesh.data=2 is invalid: must split 'batch', which mesh.rules do not give it"),
    ("an axis no rule names",
     dict(mesh__data=1, mesh__tensor=2, mesh__rules=(("batch", "data"),)),
     "config.mesh.tensor=2 is invalid: must be named by a rule of mesh.rules, or its devices"
     " repeat the others' work"),
]


@pytest.mark.parametrize("values,message", [row[1:] for row in BAD_MESHES],
                         ids=[row[0] for row in BAD_MESHES])
def test_validate_refuses_a_mesh_the_model_or_its_rules_cannot_use(values, message):
  with pytest.raises(errors.ConfigError) as error:
    validate.validate(tiny_config(**values))
  assert str(error.value).startswith(message), str(error.value)


@pytest.mark.parametrize("values", [
    dict(mesh__data=1, mesh__tensor=2),
    # A -1 axis is resolved only when the mesh is made (sharding.Layout checks it there).
    dict(mesh__data=1, mesh__fsdp=-1, model__width=42, model__num_heads=3, model__fine_width=42),
    dict(mesh__rules=(("batch", ("data", "fsdp")),)),
    dict(mesh__rules=[["batch", ["data", "fsdp"]], ["mlp", None]]),  # as run.json holds them
])
def test_validate_accepts_a_mesh_whose_rules_split_what_they_can(values):
  validate.validate(tiny_config(**values))


def test_validate_checks_the_mesh_without_asking_for_devices(monkeypatch):
  def no_devices(*args):
    raise AssertionError("validate asked JAX for its devices")
  monkeypatch.setattr(jax, "devices", no_devices)
  monkeypatch.setattr(jax, "device_count", no_devices)
  with pytest.raises(errors.ConfigError, match="config.mesh.tensor=2 is invalid"):
    validate.validate(tiny_config(mesh__data=1, mesh__tensor=2, model__num_heads=1))


# The logical names validate.model_dims lists: those the default rules split.
SPLIT_BY_DEFAULT = {"embed", "cond", "mlp", "heads", "modulation"}


def _sizes(boxed) -> dict[str, set[int]]:
  """{logical name: the sizes of the axes of that name} over the leaves of a boxed tree."""
  sizes = {}
  for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
    for name, size in zip(leaf.names, leaf.value.shape):
      sizes.setdefault(name, set()).add(size)
  return sizes


@pytest.mark.parametrize("config,frame_shape,critic", [
    (tiny_config(), (32, 32, 3), False),  # with a FineDecoder of the trunk's width
    (tiny_config(model__mlp_ratio=1.5, model__fine_width=64, model__num_classes=3,
                 model__num_actions=4, model__text_dim=8), (32, 32, 3), False),
    (wan_1p3b.get_config("tiny"), (8, 8, 4), False),  # scanned blocks, text
    (bouncing_sf.get_config("gan,test"), (32, 32, 3), True),  # the discriminator's taps
], ids=["tiny", "conditioned, wider decoder", "wan tiny", "gan critic"])
def test_model_dims_are_the_parameters_dims_the_default_rules_split(config, frame_shape, critic):
  # validate lists them from the config, without the model: this keeps the list the model's.
  exp = experiment.build_for_shapes(config, frame_shape)
  params = experiment.logical_critic_params if critic else experiment.logical_params
  boxed = jax.eval_shape(lambda: params(exp, jax.random.key(0)))
  listed = {}
  for name, size, _ in validate.model_dims(config.model):
    listed.setdefault(name, set()).add(size)
  assert listed == {name: sizes for name, sizes in _sizes(boxed).items()
                    if name in SPLIT_BY_DEFAULT}


def test_logical_axes_are_the_models_names():
  config = tiny_config(model__num_classes=3, model__num_actions=4, model__text_dim=8,
                       model__scan_layers=True)
  exp = experiment.build_for_shapes(config, (32, 32, 3))
  boxed = jax.eval_shape(lambda: experiment.logical_params(exp, jax.random.key(0)))
  gan = bouncing_sf.get_config("gan,test")
  critic = jax.eval_shape(lambda: experiment.logical_critic_params(
      experiment.build_for_shapes(gan, (32, 32, 3)), jax.random.key(0)))
  names = set(_sizes((boxed, critic)))
  activations = {"batch", "frame", "token", "activation_embed"}  # layers.constrain_tokens, ...
  assert names | activations == set(sharding_lib.LOGICAL_AXES)
  assert not names & activations


@pytest.mark.parametrize("values,shape,message", [
    # A -1 axis as the devices resolved it: fsdp=-1 over 4 devices.
    (dict(model__width=42, model__num_heads=3, model__fine_width=42), (1, 4, 1, 1),
     "config.mesh={'data': 1, 'fsdp': 4, 'sequence': 1, 'tensor': 1} is invalid: mesh.fsdp=4"
     " must divide the 42 entries of axis 'embed' of params/"),
    # A rule for a name that validate.model_dims does not list.
    (dict(mesh__rules=bouncing_tiny.get_config().mesh.rules + (("qkv", "tensor"),)),
     (1, 1, 1, 2), "config.mesh={'data': 1, 'fsdp': 1, 'sequence': 1, 'tensor': 2} is invalid:"
     " mesh.tensor=2 must divide the 3 entries of axis 'qkv' of params/block_0/attn/qkv/"),
], ids=["a -1 axis", "a rule validate does not check"])
def test_layout_refuses_parameters_its_mesh_cannot_split(values, shape, message):
  config = tiny_config(**values)
  exp = experiment.build_for_shapes(config, (32, 32, 3))
  boxed = jax.eval_shape(lambda: experiment.logical_params(exp, jax.random.key(0)))
  mesh = AbstractMesh(shape, sharding_lib.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
  layout = sharding_lib.Layout(mesh, sharding_lib.logical_rules(config.mesh))
  with pytest.raises(errors.ConfigError) as error:
    layout.shardings(boxed)
  assert str(error.value).startswith(message), str(error.value)


def test_a_minus_one_data_axis_the_rules_leave_idle_is_refused_as_resolved():
  with pytest.raises(errors.ConfigError) as error:
    sharding_lib.check_axes_used(dict(data=2, fsdp=1, sequence=1, tensor=1), (), resolved=True)
  assert str(error.value) == (
      "config.mesh={'data': 2, 'fsdp': 1, 'sequence': 1, 'tensor': 1} is invalid: mesh.data=2"
      " must split 'batch', which mesh.rules do not give it (e.g. ('batch', ('data', 'fsdp'))):"
      " every data shard would compute the same step")


def test_every_parameter_has_logical_axis_names():
  config = bouncing_tiny.get_config("test")
  config.model.num_classes, config.model.num_actions, config.model.text_dim = 3, 4, 8
  # No source gives labels, actions and text at once; the parameters need only the model.
  size = config.data.options.size
  exp = experiment.build_for_shapes(config, (size, size, 3))
  boxed = jax.eval_shape(lambda: experiment.logical_params(exp, jax.random.key(0)))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  unnamed = [leaf for leaf in leaves if not isinstance(leaf, nn.LogicallyPartitioned)]
  assert not unnamed
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim, leaf


def _one_step(layout, config):
  """The parameters before and after one train step on `layout` (on the host), the state after
  it (on the mesh) and the step's metrics."""
  exp = experiment.build(config)
  train_step = experiment.make_train_step(exp, layout)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = train_step.init(init_rng)
  initial_params = jax.device_get(state.params)
  batch = experiment.model_inputs(pipeline.train_batches(
      exp.source, batch_size=config.data.batch_size, num_frames=config.data.num_frames,
      seed=config.seed)[0])
  state, metrics = train_step.step(state, layout.global_batch(batch),
                                   jax.device_put(train_rng, layout.replicated))
  return initial_params, jax.device_get(state.params), state, jax.device_get(metrics)


def _gradients_away_from_init(layout, config):
  """The loss's gradients on `layout` at the initial parameters plus fixed noise (the same on
  every layout), on the host. At init the blocks' adaLN-Zero gates are zero, so attention does
  not reach the loss, and Adam's first update is about the learning rate times each gradient's
  sign: a step from init cannot show an attention error. Away from init it can."""
  exp = experiment.build(config)
  train_step = experiment.make_train_step(exp, layout)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  params = jax.device_get(train_step.init(init_rng).params)
  leaves, treedef = jax.tree.flatten(params)
  noise = [0.05 * jax.random.normal(key, leaf.shape, leaf.dtype) for key, leaf in
           zip(jax.random.split(jax.random.key(1), len(leaves)), leaves)]
  params = jax.device_put(jax.tree.unflatten(treedef, [p + n for p, n in zip(leaves, noise)]),
                          train_step.state_sharding.params)
  batch = experiment.model_inputs(pipeline.train_batches(
      exp.source, batch_size=config.data.batch_size, num_frames=config.data.num_frames,
      seed=config.seed)[0])
  loss_fn = experiment.make_loss_fn(exp)

  def grads(params, batch, rng):
    with layout.logical_axes():
      return jax.grad(lambda p: loss_fn(p, batch, rng, 0)[0])(params)

  return jax.device_get(jax.jit(grads)(params, layout.global_batch(batch),
                                       jax.device_put(train_rng, layout.replicated)))


def _largest_relative_difference(tree, reference) -> float:
  return max(float(np.abs(x - y).max() / np.abs(y).max())
             for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(reference)))


def _child_main():
  """In a process with 8 CPU devices: one step on each mesh of MESHES and on one device."""
  assert jax.device_count() == 8, jax.devices()
  config = bouncing_tiny.get_config("test")
  # Warmup would make the first step's learning rate 0 and leave the parameters as they were.
  config.optim.warmup_steps = 0
  config.data.batch_size = 8
  single = sharding_lib.Layout.from_config(config.mesh, devices=jax.devices()[:1])
  initial, reference, _, reference_metrics = _one_step(single, config)
  report = {}
  for name, sizes in MESHES.items():
    for axis, size in sizes.items():
      config.mesh[axis] = size
    _, params, state, metrics = _one_step(sharding_lib.Layout.from_config(config.mesh), config)
    qkv = state.params["params"]["block_0"]["attn"]["qkv"]["kernel"]
    mu = state.opt_state[1][0].mu["params"]["block_0"]["attn"]["qkv"]["kernel"]
    max_diff = lambda a, b: max(float(np.abs(x - y).max())
                                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    report[name] = dict(
        loss=float(metrics["loss"]), reference_loss=float(reference_metrics["loss"]),
        grad_norm=float(metrics["grad_norm"]),
        reference_grad_norm=float(reference_metrics["grad_norm"]),
        max_param_diff=max_diff(params, reference), max_param_change=max_diff(params, initial),
        qkv_spec=list(qkv.sharding.spec), qkv_shard=list(qkv.addressable_shards[0].data.shape),
        qkv_shape=list(qkv.shape), mu_spec=list(mu.sharding.spec))
  # Away from init, against one device: as laid out, and with the CPU's causal attention in
  # groups of one (batch, head) pair, which then split over the sharded batch and heads.
  reference_grads = _gradients_away_from_init(single, config)
  layout = sharding_lib.Layout.from_config(config.mesh)
  report["gradients away from init"] = _largest_relative_difference(
      _gradients_away_from_init(layout, config), reference_grads)
  budget, blocked.CPU_TEMP_BYTES = blocked.CPU_TEMP_BYTES, 1
  report["gradients away from init, grouped attention"] = _largest_relative_difference(
      _gradients_away_from_init(layout, config), reference_grads)
  blocked.CPU_TEMP_BYTES = budget
  report["grouped attention"] = _grouped_attention_error()
  print(json.dumps(report))


def _grouped_attention_error():
  """The CPU's grouped causal attention (blocked.CPU_TEMP_BYTES at one (batch, head) pair a
  group), batch and heads sharded over the 8 devices, against the same attention whole on one
  device: the largest difference in the output and the gradients, over their largest value."""
  spec, tokens = masks.TeacherForcing(4), 4
  keys = jax.random.split(jax.random.key(2), 4)
  q, k, v, cotangent = (jax.random.normal(key, (4, 8 * tokens, 4, 8)) for key in keys)

  def output_and_grads(q, k, v, cotangent):
    attend = lambda q, k, v: ops.attention(q, k, v, spec, tokens_per_frame=tokens)
    out, vjp = jax.vjp(attend, q, k, v)
    return (out,) + vjp(cotangent)

  whole = jax.jit(output_and_grads)(q, k, v, cotangent)
  budget, blocked.CPU_TEMP_BYTES = blocked.CPU_TEMP_BYTES, 1
  mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(AxisType.Auto,) * 2)
  shard = NamedSharding(mesh, P("data", None, "tensor"))
  grouped = jax.jit(output_and_grads)(*(jax.device_put(x, shard) for x in (q, k, v, cotangent)))
  blocked.CPU_TEMP_BYTES = budget
  return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(grouped, whole))


def test_sharded_step_matches_single_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"
             " --xla_cpu_enable_fast_math=false", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=dict(env, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report.pop("grouped attention") <= 1e-5, report
  assert report.pop("gradients away from init") <= GRAD_RTOL, report
  assert report.pop("gradients away from init, grouped attention") <= GRAD_RTOL, report
  for name, r in report.items():
    np.testing.assert_allclose(r["loss"], r["reference_loss"], rtol=LOSS_RTOL, err_msg=name)
    np.testing.assert_allclose(r["grad_norm"], r["reference_grad_norm"], rtol=LOSS_RTOL,
                               err_msg=name)
    assert r["max_param_diff"] <= PARAM_ATOL, (name, r)
    assert r["max_param_change"] > 1e-4, (name, r)  # the step did move the parameters
  # FSDP over the embedding axis, tensor parallelism over the heads; Adam's moments alike.
  r = report["data2_fsdp2_tensor2"]
  assert r["qkv_spec"] == r["mu_spec"] == [["fsdp", "sequence"], None, "tensor", None]
  assert r["qkv_shard"] == [r["qkv_shape"][0] // 2, 3, r["qkv_shape"][2] // 2, r["qkv_shape"][3]]


if __name__ == "__main__":
  _child_main()
