"""The train step's model FLOP/s against the machine's measured matmul throughput.

  python benchmarks/train_step.py [--patch=8] [--impls=dense,auto] [--steps=3] [--json=PATH]

The default config (configs/bouncing_tiny.py: teacher forcing on the 2N layout, its history
noise-augmented past step 200, 8 frames of 32x32, batch 8, width 128, depth 4, a FineDecoder at
4x4 sub-patches; the timed steps are warm-up steps, so plain Teacher Forcing) with --patch 8 (16
tokens a frame, the default) or 4 (64 tokens a frame in the trunk, without the FineDecoder, as in
the config's patch4 variant). Each --impls attention implementation runs the same step; they take
turns, so load from other processes slows them alike.

Model FLOPs per step are counted by hand from the shapes: the matmuls of every layer and the
attention over the frame blocks the mask allows (2 FLOPs a multiply-add), forward times 3 for
forward and backward; the optimizer, norms and elementwise work are left out, as is attention
over masked-out blocks, which no implementation needs. XLA's own count of the compiled step
(which includes everything it computes, masked blocks too) is printed beside it.
The reference throughput: on CPU a large float32 matmul, timed in the same rounds as the steps;
on a GPU the chip's bf16 peak (PEAK_BF16 by device kind; a timed bf16 matmul on other chips).
Attention alone (forward and backward at the model's attention shapes, times the depth) is
timed too, as a share of the step. Every timed call follows an untimed call of the same function
(benchmarks.time_settled), as steps follow each other in training. Like `python -m
videoar.main`, the script first re-executes itself onto transparent huge pages where the host
has them (videoar/host_memory.py; GLIBC_TUNABLES=glibc.malloc.hugetlb=0 times it without).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
if __name__ == "__main__":
  # As videoar.main does, before jax is imported: the step's buffers on transparent huge pages,
  # so that the step is timed as training runs it (videoar/host_memory.py).
  from videoar import host_memory
  host_memory.reexec_with_huge_pages()

from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import benchmarks  # noqa: E402
from benchmarks import runners  # noqa: E402
from configs import bouncing_tiny  # noqa: E402
from videoar import errors, validate  # noqa: E402
from videoar.attention import masks, ops  # noqa: E402


def config_for_patch(patch: int):
  """bouncing_tiny with PATCHxPATCH patches in the trunk, and its FineDecoder where there is
  something finer to decode (model.fine_patch below the patch)."""
  config = bouncing_tiny.get_config()
  config.model.patch = patch
  if config.model.fine_patch >= patch:
    config.model.fine_patch = 0  # nothing finer to decode
  return config


def _runs(patch: int) -> bool:
  size = bouncing_tiny.get_config().data.options.size
  if patch < 1 or size % patch:  # validate.validate_source's check, which needs a data source
    return False
  try:
    validate.validate(config_for_patch(patch))
  except errors.ConfigError:
    return False
  return True


def _patch_allowed(patch: int) -> bool:
  """Checked when the flags are parsed: a patch the config cannot run with is named with the
  patches it can (was the error of config.model.fine_patch, a key the user never set)."""
  if _runs(patch):
    return True
  size = bouncing_tiny.get_config().data.options.size
  allowed = ", ".join(str(p) for p in range(1, size + 1) if _runs(p))
  raise flags.ValidationError(f"allowed: {allowed} (divisors of bouncing_tiny's {size}x{size}"
                              " frames)")


benchmarks.define_json_flag()
flags.DEFINE_integer("patch", 8, "Patch side: 8 is the default config, 4 gives 64 tokens a frame"
                     " (and no FineDecoder); a divisor of the frame size.")
flags.register_validator("patch", _patch_allowed)
flags.DEFINE_list("impls", ["dense", "auto"], "Attention implementations to run the step with;"
                  " allowed: " + ", ".join(ops.IMPLS))
flags.DEFINE_integer("steps", 3, "Timed steps per implementation; the best counts.", lower_bound=1)
# Checked when the flags are parsed: a bad name is reported before any step compiles.
flags.register_validator("impls", lambda impls: impls and set(impls) <= set(ops.IMPLS),
                         "allowed: " + ", ".join(ops.IMPLS))
flags.DEFINE_integer("matmul_size", 2048, "Side of the reference matmul (float32; bf16 on a GPU).",
                     lower_bound=1)
FLAGS = flags.FLAGS

# Dense bf16 tensor-core peak, FLOP/s.
PEAK_BF16 = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12}


def model_flops(config, frame_shape, mask: masks.MaskSpec) -> dict:
  """FLOPs of one training step (forward and backward), by hand from the shapes.

  The trunk runs over every frame of `mask` (the 2N layout's history and noisy frames); the
  output (the final layer, or the FineDecoder with model.fine_patch) over the noisy frames only,
  as CausalDiT's outputs_from has it."""
  m = config.model
  h, w, c = frame_shape
  tokens_per_frame = (h // m.patch) * (w // m.patch)
  frames = mask.frame_mask().shape[0]
  output_frames = config.data.num_frames
  tokens = frames * tokens_per_frame
  inputs = 2 if m.previous_frame_input else 1  # the previous frame's pixels beside the noisy ones
  width = m.width
  adaln = 2 * frames * width * 6 * width  # per layer: the modulation, once a frame
  attended_pairs = int(mask.frame_mask().sum()) * tokens_per_frame**2
  attention = 2 * 2 * attended_pairs * width  # q.k and p.v over every head
  trunk_in = (2 * tokens * inputs * m.patch**2 * c * width  # patch embedding
              + 2 * frames * (256 * width + width * width))  # timestep embedding
  if m.fine_patch:
    r2, fine_width = (m.patch // m.fine_patch)**2, m.fine_width
    fine_tokens, fine_hidden = tokens_per_frame * r2, int(fine_width * m.mlp_ratio)
    fine_block = (2 * fine_tokens * fine_width * (4 * fine_width + 2 * fine_hidden)
                  + 2 * fine_width * 6 * fine_width + 2 * 2 * fine_tokens**2 * fine_width)
    per_output_frame = (2 * tokens_per_frame * width * r2 * fine_width  # split
                        + 2 * fine_tokens * inputs * m.fine_patch**2 * c * fine_width  # pixels_in
                        + 2 * width * fine_width  # cond
                        + m.fine_depth * fine_block
                        + 2 * fine_width * 2 * fine_width  # final adaLN
                        + 2 * fine_tokens * fine_width * m.fine_patch**2 * c)  # unpatch
  else:
    per_output_frame = 2 * width * 2 * width + 2 * tokens_per_frame * width * m.patch**2 * c
  per_example = (benchmarks.block_matmul_flops(m, tokens) + m.depth * (adaln + attention)
                 + trunk_in + output_frames * per_output_frame)
  return dict(step=3 * config.data.batch_size * per_example,
              attention_share=m.depth * attention / per_example,
              tokens_per_frame=tokens_per_frame, frames=frames)


def step_runner(config, impl: str):
  """The train step with attention implementation `impl`, and XLA's FLOP count of it."""
  config = config.copy_and_resolve_references()
  config.model.attention_impl = impl
  runner = runners.TrainStepRunner(config)
  return runner.exp, runner, runner.xla_flops()


def attention_runner(config, exp, impl: str):
  """Forward and backward of one layer's attention at the step's shapes."""
  m = config.model
  tokens_per_frame = exp.model.tokens_per_frame(*exp.frame_shape[:2])
  n = config.data.num_frames
  mask = masks.TeacherForcing(n, config.forcing.chunk)
  shape = (config.data.batch_size, 2 * n * tokens_per_frame, m.num_heads, m.width // m.num_heads)
  q, k, v, ct = (jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(0), 4))
  attend = lambda q, k, v: ops.attention(q, k, v, mask, tokens_per_frame=tokens_per_frame,
                                         impl=impl)
  backward = jax.jit(lambda q, k, v, ct: jax.vjp(attend, q, k, v)[1](ct))
  return lambda: backward(q, k, v, ct)


def main(argv):
  del argv
  config = config_for_patch(FLAGS.patch)
  benchmarks.check_impls("impls", FLAGS.impls, config)
  runners, xla_flops = {}, {}
  for impl in FLAGS.impls:
    exp, runners[f"step {impl}"], xla_flops[impl] = step_runner(config, impl)
    runners[f"attention {impl}"] = attention_runner(config, exp, impl)
  mask = masks.TeacherForcing(config.data.num_frames, config.forcing.chunk)
  counted = model_flops(config, exp.frame_shape, mask)
  on_gpu = jax.default_backend() == "gpu"
  device = jax.devices()[0].device_kind
  start = time.perf_counter()
  matmul_dtype = jnp.bfloat16 if on_gpu else jnp.float32
  runners["matmul"], matmul_flops = benchmarks.matmul_runner(FLAGS.matmul_size, matmul_dtype)
  seconds = benchmarks.time_settled(runners, FLAGS.steps)
  reference = matmul_flops / seconds["matmul"]
  reference_name = f"{jnp.dtype(matmul_dtype).name} matmul {FLAGS.matmul_size}"
  if on_gpu and device in PEAK_BF16:
    reference, reference_name = PEAK_BF16[device], f"{device} bf16 peak"
  rows = []
  for impl in FLAGS.impls:
    step_s, attention_s = seconds[f"step {impl}"], seconds[f"attention {impl}"]
    rows.append(dict(impl=impl, step_ms=1e3 * step_s, model_flops=counted["step"],
                     xla_flops=xla_flops[impl], model_flops_per_s=counted["step"] / step_s,
                     fraction_of_reference=counted["step"] / step_s / reference,
                     attention_ms=1e3 * config.model.depth * attention_s,
                     attention_share_of_step=config.model.depth * attention_s / step_s))
  benchmarks.print_table(
      f"Train step, bouncing_tiny with {FLAGS.patch}x{FLAGS.patch} patches"
      f" ({counted['tokens_per_frame']} tokens/frame, {counted['frames']} frames, batch"
      f" {config.data.batch_size}); {reference_name}: {reference / 1e9:.1f} GFLOP/s;"
      f" attention is {counted['attention_share']:.0%} of the model FLOPs",
      ["impl", "step ms", "model GFLOP", "XLA GFLOP", "model GFLOP/s", "of reference",
       "attention ms", "attention share"],
      [[r["impl"], r["step_ms"], r["model_flops"] / 1e9, r["xla_flops"] / 1e9,
        r["model_flops_per_s"] / 1e9, f"{r['fraction_of_reference']:.0%}", r["attention_ms"],
        f"{r['attention_share_of_step']:.0%}"] for r in rows])
  benchmarks.write_json(FLAGS.json, patch=FLAGS.patch, reference=reference_name,
                        reference_flops_per_s=reference, rows=rows, model=counted,
                        seconds_total=time.perf_counter() - start)


if __name__ == "__main__":
  errors.run(main)
