"""The attention kernel is chosen for the platform compiled for, and runs sharded over a mesh.

The TPU checks compile for a v5e:2x2 topology on this CPU host through libtpu's compile-only
client (launch/aot_compile.py does the same for a whole train step); the sharded check runs in a
subprocess with four host devices, as tests/test_sharding.py does.
"""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from videoar.attention import masks, ops

RULES = (("batch", "data"), ("heads", "tensor"))
SPEC, TOKENS = masks.BlockCausal(2), 128


def _attend(impl):
  return lambda q, k, v: ops.attention(q, k, v, SPEC, tokens_per_frame=TOKENS, impl=impl)


def _lowered_for(devices, impl):
  """The train-step pattern: a jit over a (data, tensor) mesh of `devices`, traced with the
  mesh and the logical rules in scope."""
  mesh = jax.make_mesh((2, 2), ("data", "tensor"), axis_types=(AxisType.Auto,) * 2,
                       devices=devices)
  sharding = NamedSharding(mesh, PartitionSpec("data", None, "tensor", None))
  x = jax.ShapeDtypeStruct((4, 2 * TOKENS, 2, 128), jnp.float32, sharding=sharding)

  def step(q, k, v):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(RULES):
      out, vjp = jax.vjp(_attend(impl), q, k, v)
      return (out,) + vjp(out)

  return jax.jit(step).trace(x, x, x).lower()


@pytest.fixture(scope="module")
def tpu_devices():
  pytest.importorskip("libtpu")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # The compile-only client needs no TPU, and no lock on one another process may hold.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  return topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices


@pytest.mark.parametrize("impl", ["auto", "pallas"])
def test_a_tpu_target_on_a_cpu_host_gets_the_mosaic_kernel(tpu_devices, impl):
  assert jax.default_backend() == "cpu"
  lowered = _lowered_for(tpu_devices, impl)
  text = lowered.as_text()
  # Splash's forward, dq and dkv kernels, each a Mosaic custom call, and no interpret-mode loop.
  assert text.count("tpu_custom_call") == 3, text.count("tpu_custom_call")
  assert "stablehlo.while" not in text
  lowered.compile()  # Mosaic accepts the kernels for the v5e


def test_without_a_mesh_of_devices_the_host_runs_the_interpret_mode_kernel():
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("data",))):
    assert ops.target_platform() == jax.default_backend() == "cpu"
  q = jnp.zeros((1, 2 * TOKENS, 2, 16))
  text = jax.jit(_attend("pallas")).trace(q, q, q).lower().as_text()
  assert "tpu_custom_call" not in text and "stablehlo.while" in text


def test_a_gpu_target_runs_cudnn_in_half_precision_and_has_no_pallas_kernel():
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("data",), abstract_device=device)
  q = jnp.zeros((1, 2 * TOKENS, 2, 16))
  with jax.sharding.use_abstract_mesh(mesh):
    assert ops.target_platform() == "gpu"
    assert ops.choose_impl(SPEC, None, ops.target_platform(), TOKENS, dtype=jnp.bfloat16,
                           head_dim=q.shape[-1]) == "cudnn"
    assert ops.choose_impl(SPEC, None, ops.target_platform(), TOKENS, dtype=q.dtype,
                           head_dim=q.shape[-1]) == "blocked"
    with pytest.raises(ValueError, match="no kernel for platform 'gpu'"):
      jax.make_jaxpr(_attend("pallas"))(q, q, q)


SHARDED_CHECK = textwrap.dedent("""
    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    from videoar.attention import fused, masks, ops
    jax.config.update("jax_default_matmul_precision", "highest")
    spec, tokens = masks.Full(1, 3), 20
    mesh = jax.make_mesh((2, 2), ("data", "tensor"), axis_types=(AxisType.Auto,) * 2)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (4, tokens, 2, 8))
    k, v = (jax.random.normal(key, (4, 3 * tokens, 2, 8)) for key in keys[1:])
    valid = np.array([[True, True, True], [False, True, True]] * 2)
    def attend(impl, q, k, v, valid):
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(
          (("batch", "data"), ("heads", "tensor"))):
        return ops.attention(q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid,
                             impl=impl)
    sharding = NamedSharding(mesh, PartitionSpec("data", None, "tensor", None))
    args = [jax.device_put(x, sharding) for x in (q, k, v)]
    args.append(jax.device_put(valid, NamedSharding(mesh, PartitionSpec("data"))))
    lowered = jax.jit(lambda *a: attend("pallas", *a)).trace(*args).lower().as_text()
    assert "manual" in lowered, "no shard_map"
    out = jax.jit(lambda *a: attend("pallas", *a))(*args)
    np.testing.assert_allclose(out, attend("dense", q, k, v, valid), rtol=1e-5, atol=2e-6)
    # The cuDNN paths' code through XLA's attention, per shard: a chunk over a cache (Full), and
    # a training mask at frames of more than half a query tile (one call per query frame).
    def fused_xla(spec, tokens, q, k, v, valid):
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(
          (("batch", "data"), ("heads", "tensor"))):
        return fused.attention(q, k, v, spec, tokens_per_frame=tokens, kv_frame_valid=valid,
                               implementation="xla")
    full = jax.jit(lambda *a: fused_xla(spec, tokens, *a))
    assert "manual" in full.trace(*args).lower().as_text(), "no shard_map"
    np.testing.assert_allclose(full(*args), attend("dense", q, k, v, valid), rtol=1e-5, atol=2e-6)
    causal, tokens = masks.BlockCausal(3), 70
    x = jax.random.normal(keys[0], (4, 3 * tokens, 2, 8))
    planned = jax.jit(lambda x: fused_xla(causal, tokens, x, 2 * x, -x, None))
    want = ops.attention(x, 2 * x, -x, causal, tokens_per_frame=tokens, impl="dense")
    np.testing.assert_allclose(planned(jax.device_put(x, sharding)), want, rtol=1e-5, atol=2e-6)
    try:
      fused_xla(spec, 20, q[:3], k[:3], v[:3], valid[:3])
      raise AssertionError("a batch of 3 split over data=2 did not raise")
    except ValueError as e:
      assert "impl='cudnn': batch=3 does not split over the mesh axes ('data',)" in str(e), e
    print("ok")
""")


def test_the_kernels_run_inside_shard_map_over_batch_and_heads():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SHARDED_CHECK], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
