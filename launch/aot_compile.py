"""Compiles the train step for a TPU topology on a machine without TPUs; prints its memory use.

  pip install 'libtpu==0.0.42.*'   # the TPU compiler, for jax 0.10.2; it runs on a CPU host
  python launch/aot_compile.py --config=configs/bouncing_tiny.py --topology=v5p:2x4x4 \\
      --config.mesh.data=1 --config.mesh.fsdp=8 --config.mesh.sequence=4 ...

--topology is libtpu's topology name: the chip generation and its chip grid (v5p:2x4x4 is a
v5p-64: 32 chips on 8 hosts; v5e:4x4 a v5e-16). The train state, the batch and the key are
abstract (jax.eval_shape), the mesh is config.mesh over the topology's devices, and the step is
built as in training (videoar/experiment.py's make_train_step), so a configuration that does not fit fails here as
it would on the pod. --frame_shape gives the model's frames (H,W,C: latents, for a latent source)
without reading the data; by default they come from the config's source. docs/scaling.md has the
command and the output for a Wan-1.3B-sized model.
"""

from __future__ import annotations

import os
import sys
import time

# This only compiles, it never runs on a chip: libtpu's one-process-per-host lock (taken by any
# JAX process on this host that found libtpu, a CPU training run included) must not stop it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402  (after the environment libtpu reads when jax loads it)
from absl import flags  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from videoar import errors, experiment  # noqa: E402
from videoar.train import sharding as sharding_lib  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A config file (configs/NAME.py[:VARIANT]).",
                                lock_config=True)
flags.DEFINE_string("topology", None, "libtpu topology name, e.g. v5p:2x4x4 (a v5p-64).")
experiment.define_frame_shape_flag()
flags.mark_flags_as_required(["config", "topology"])
FLAGS = flags.FLAGS

GIB = 2**30


def main(argv):
  del argv
  config = FLAGS.config
  # An empty name is libtpu's default topology (8 TPU v2 devices), compiled for without a word.
  if not FLAGS.topology:
    raise errors.UserError("--topology is empty: name the TPU slice to compile for, e.g."
                           " --topology=v5p:2x4x4 (a v5p-64) or --topology=v5e:4x4 (a v5e-16)")
  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=FLAGS.topology).devices
  except jax.errors.JaxRuntimeError as e:  # a name libtpu does not know, or no libtpu
    raise errors.UserError(f"--topology={FLAGS.topology}: {str(e).splitlines()[0]}") from e
  if FLAGS.frame_shape:
    # No source: this compiles, it reads no data.
    exp = experiment.build_for_shapes(config, tuple(int(n) for n in FLAGS.frame_shape))
  else:
    exp = experiment.build(config)
  train_step = experiment.make_train_step(
      exp, sharding_lib.Layout.from_config(config.mesh, devices=devices))
  layout = train_step.layout
  state = train_step.abstract_state()
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=layout.replicated)
  batch = experiment.example_batch(exp, sharding=layout.batch)

  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  model = exp.model
  tokens = model.tokens_per_frame(*exp.frame_shape[:2])
  processes = len({d.process_index for d in devices})
  print(f"topology {FLAGS.topology}: {len(devices)} {devices[0].device_kind} devices,"
        f" {processes} hosts; mesh {dict(layout.mesh.shape)}")
  print(f"model: {num_params / 1e9:.3f}B parameters (width {model.width}, depth {model.depth},"
        f" {model.num_heads} heads, MLP {int(model.width * model.mlp_ratio)}, {model.dtype},"
        f" attention {model.attention_impl}); batch {config.data.batch_size} clips x"
        f" {config.data.num_frames} frames x {tokens} tokens; train state"
        f" {state_bytes / GIB:.1f} GiB in all")
  start, start_cpu = time.perf_counter(), time.process_time()
  try:
    lowered = train_step.step.trace(state, batch, rng).lower()
    # Each Pallas TPU (Mosaic) kernel lowers to one tpu_custom_call; interpret mode to none.
    print(f"Mosaic kernels in the lowered step: {lowered.as_text().count('tpu_custom_call')}")
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    sys.exit(f"does not fit (found after {time.perf_counter() - start:.0f} s): {e}")
  # CPU time too: on a loaded host the wall time says more about the load than the compiler.
  print(f"compiled in {time.perf_counter() - start:.0f} s (trace, lower and compile;"
        f" {time.process_time() - start_cpu:.0f} s of CPU)")
  memory = compiled.memory_analysis()
  print(memory)
  # Donated arguments share their buffers with the outputs they become.
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  print(f"per device: arguments {memory.argument_size_in_bytes / GIB:.2f} GiB, outputs"
        f" {memory.output_size_in_bytes / GIB:.2f} GiB (aliased to donated arguments"
        f" {memory.alias_size_in_bytes / GIB:.2f} GiB), temporaries"
        f" {memory.temp_size_in_bytes / GIB:.2f} GiB; peak about {peak / GIB:.2f} GiB")
  cost = compiled.cost_analysis()
  if cost and "flops" in cost:
    print(f"per device: {cost['flops'] / 1e12:.1f} TFLOP per step (XLA's count)")


if __name__ == "__main__":
  errors.run(main)
