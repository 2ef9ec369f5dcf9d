"""Meshes, logical axis names, and a train step sharded over 8 devices against one device.

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

from videoar import errors, experiment
from videoar.data import pipeline
from videoar.train import sharding as sharding_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "configs"))
import bouncing_tiny  # noqa: E402

# One step on a mesh against one device, from the same initial state and batch. Sharded matmuls
# and reductions add in another order, so float32 results may differ in the last bits. Measured
# on CPU: losses equal, grad norms within 1e-7 relative, parameters (after an Adam step of ~1e-3,
# the learning rate) within 3.5e-10. The tolerances leave a 30-100x margin.
LOSS_RTOL = 1e-5
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
       f"--workdir={tmp_path}", "--mode=train", "--config.mesh.data=3"],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.mesh={'data': 3, 'fsdp': 1, 'sequence': 1, 'tensor': 1} is invalid:"
      " data 3 x fsdp 1 x sequence 1 x tensor 1 must use all 1 devices")


def test_rules_must_name_mesh_axes():
  config = mesh_config()
  config.rules = (("embed", "model"),)
  with pytest.raises(errors.ConfigError, match="names model; the mesh axes are"):
    sharding_lib.logical_rules(config)


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
  print(json.dumps(report))


def test_sharded_step_matches_single_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"
             " --xla_cpu_enable_fast_math=false", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=dict(env, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
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
