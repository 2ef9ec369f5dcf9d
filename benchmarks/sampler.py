"""Streaming generation: first-chunk latency and frames per second of `Sampler.stream`.

  python benchmarks/sampler.py [--shape=tiny] [--chunks=8] [--json=PATH]
  python benchmarks/sampler.py --shape=wan1.3b --dtype=bfloat16   # on a GPU

Shapes:
  tiny     the default config's model (configs/bouncing_tiny.py: 32x32 frames, 8x8 patches,
           width 128, depth 4) with its sampler: frame-wise chunks, 20 Euler steps, a KV cache
           of 7 frames.
  wan1.3b  the transformer trunk of Wan2.1-1.3B: width 1536, 30 layers, 12 heads, MLP 8960, latent
           frames of 60x104x16 in 2x2 patches (1560 tokens), chunks of 3 latent frames, 4 steps,
           a window of 21 latent frames. Self-attention and MLP only: Wan's text cross-attention
           and VAE are not part of this model. Random weights, cast to --dtype.
Latency counts from the call to `stream` to its first chunk, cold (compiling included) and warm
(a second stream); frames/s counts the chunks after the first of the warm stream.

  python benchmarks/sampler.py --arms=noise_augmentation,routed,window [--frames=80]

times instead the sampler of each arm (a variant of configs/bouncing_rf.py, with its model's
routing and its sampler's window as the arm trained them; random weights) in one run, the arms
taking turns: milliseconds per generated frame over a stream of --frames frames, the routing
study's sampling cost (docs/results.md, "History routing"). Past the training length every arm's
KV cache is full, so the cost per frame stays level from there on.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import benchmarks  # noqa: E402
from configs import bouncing_rf, bouncing_tiny  # noqa: E402
from videoar import sampling  # noqa: E402
from videoar.attention import masks, ops  # noqa: E402
from videoar.models import dit  # noqa: E402

flags.DEFINE_string("json", None, "Also write the results here as JSON.")
flags.DEFINE_enum("shape", "tiny", ["tiny", "wan1.3b"], "Model and sampler shape.")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype; default: the shape's.")
flags.DEFINE_enum("impl", "auto", ops.IMPLS, "Attention implementation.")
flags.DEFINE_integer("chunks", 8, "Chunks streamed each time.")
flags.DEFINE_list("arms", None, "Variants of configs/bouncing_rf.py whose samplers to time per"
                  " frame, side by side; each arm's config sets the shape, dtype and attention,"
                  " so --shape, --dtype, --impl and --chunks do not apply.")
flags.DEFINE_integer("frames", 80, "With --arms: frames streamed each time (80: 10x training).")
flags.DEFINE_integer("repeats", 5, "With --arms: timed streams per arm (the best counts).")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Shape:
  frame_shape: tuple[int, int, int]
  patch: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  chunk: int
  window: int
  num_steps: int
  dtype: str


def shapes() -> dict[str, Shape]:
  config = bouncing_tiny.get_config()
  size = config.data.options.size
  m = config.model
  return {
      "tiny": Shape((size, size, 3), m.patch, m.width, m.depth, m.num_heads, m.mlp_ratio,
                    config.forcing.chunk, config.data.num_frames, config.sample.num_steps,
                    m.dtype),
      "wan1.3b": Shape((60, 104, 16), 2, 1536, 30, 12, 8960 / 1536, 3, 21, 4, "bfloat16"),
  }


def time_arms(arms: list[str]) -> None:
  """Milliseconds per generated frame of each arm's sampler, timed in turns
  (benchmarks.time_interleaved) over streams of --frames frames from an empty cache, batch 1."""
  if len(set(arms)) < len(arms):
    raise SystemExit(f"--arms={','.join(arms)} must name distinct arms")
  # Here, not at the top: experiment reads the data pipeline (grain), which the GPU image of the
  # --shape path lacks.
  from videoar import experiment
  streams, rows = {}, []
  for arm in arms:
    try:
      config = bouncing_rf.get_config(arm)
    except ValueError as e:
      raise SystemExit(f"--arms={arm}: {e}") from None
    size = config.data.options.size
    exp = experiment.build_for_shapes(config, (size, size, 3))
    params = experiment.init_params(exp, jax.random.key(0))
    sampler = experiment.make_sampler(exp)
    if FLAGS.frames % sampler.chunk:
      raise SystemExit(f"--frames={FLAGS.frames} must be a multiple of the chunk {sampler.chunk}")

    def stream(sampler=sampler, params=params, config=config):
      *_, last = sampler.stream(params, jax.random.key(1), FLAGS.frames, config.sample.num_steps,
                                config.sample.time_shift)
      return last

    streams[arm] = stream
    rows.append(dict(arm=arm, routing_top_k=config.model.routing_top_k,
                     kv_cache_frames=sampler.slots, num_steps=config.sample.num_steps))
  best = benchmarks.time_interleaved(streams, FLAGS.repeats)
  base = best[arms[0]]
  for row in rows:
    row["ms_per_frame"] = 1e3 * best[row["arm"]] / FLAGS.frames
    row["relative"] = best[row["arm"]] / base
  benchmarks.print_table(
      f"Sampling cost per generated frame, configs/bouncing_rf.py arms ({FLAGS.frames} frames from"
      f" an empty cache, batch 1, best of {FLAGS.repeats}; relative to {arms[0]})",
      ["arm", "routing k", "KV cache frames", "steps", "ms per frame", "relative"],
      [[r["arm"], r["routing_top_k"], r["kv_cache_frames"], r["num_steps"], r["ms_per_frame"],
        r["relative"]] for r in rows])
  benchmarks.write_json(FLAGS.json, frames=FLAGS.frames, repeats=FLAGS.repeats, arms=rows)


def main(argv):
  del argv
  if FLAGS.arms:
    return time_arms(FLAGS.arms)
  shape = shapes()[FLAGS.shape]
  if FLAGS.shape == "wan1.3b" and jax.default_backend() == "cpu":
    raise SystemExit("--shape=wan1.3b is a GPU benchmark: one chunk is tens of TFLOPs")
  dtype = jnp.dtype(FLAGS.dtype or shape.dtype)
  model = dit.CausalDiT(patch=shape.patch, width=shape.width, depth=shape.depth,
                        num_heads=shape.num_heads, mlp_ratio=shape.mlp_ratio,
                        attention_impl=FLAGS.impl, dtype=dtype)
  chunk_frames = jnp.zeros((1, shape.chunk) + shape.frame_shape)
  params = jax.jit(lambda rng: jax.tree.map(lambda p: p.astype(dtype), model.init(
      rng, chunk_frames, jnp.zeros((1, shape.chunk)), frame_pos_f=jnp.arange(shape.chunk),
      mask=masks.BlockCausal(shape.chunk, shape.chunk))))(jax.random.key(0))
  num_params = sum(p.size for p in jax.tree.leaves(params))
  sampler = sampling.Sampler(model, frame_shape=shape.frame_shape, chunk=shape.chunk,
                             window=shape.window)

  def stream():
    """Seconds to the first chunk and to each chunk after it."""
    start = time.perf_counter()
    times = []
    for _ in sampler.stream(params, jax.random.key(1), shape.chunk * FLAGS.chunks,
                            shape.num_steps, time_shift=1.0):
      times.append(time.perf_counter() - start)
    return times

  cold = stream()
  warm = stream()
  steady_frames = shape.chunk * (FLAGS.chunks - 1)
  result = dict(shape=FLAGS.shape, dtype=dtype.name, impl=FLAGS.impl, params=num_params,
                tokens_per_frame=model.tokens_per_frame(*shape.frame_shape[:2]),
                chunk=shape.chunk, window=shape.window, num_steps=shape.num_steps,
                chunks=FLAGS.chunks, first_chunk_cold_s=cold[0], first_chunk_warm_s=warm[0],
                frames_per_s=steady_frames / (warm[-1] - warm[0]),
                chunk_ms=1e3 * (warm[-1] - warm[0]) / (FLAGS.chunks - 1),
                # Against the chunk index: level once the KV cache is full (a rolling window).
                # Element 0 is the first chunk's latency, prefill included.
                warm_chunk_ms_by_index=[1e3 * (b - a) for a, b in zip([0.0] + warm, warm)])
  benchmarks.print_table(
      f"Streaming sampler, {FLAGS.shape} ({num_params / 1e6:.1f}M parameters, {dtype.name},"
      f" {result['tokens_per_frame']} tokens/frame, chunks of {shape.chunk}, {shape.num_steps}"
      f" steps, window {shape.window}, attention impl={FLAGS.impl})",
      ["first chunk cold s", "first chunk warm ms", "ms per chunk", "frames/s"],
      [[result["first_chunk_cold_s"], 1e3 * result["first_chunk_warm_s"], result["chunk_ms"],
        result["frames_per_s"]]])
  benchmarks.write_json(FLAGS.json, **result)


if __name__ == "__main__":
  app.run(main)
