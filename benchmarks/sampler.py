"""Streaming generation: first-chunk latency and frames per second of `Sampler.stream`.

  python benchmarks/sampler.py [--config=configs/NAME.py[:VARIANT]] [--impls=auto,dense]
      [--chunks=8] [--json=PATH]
  python benchmarks/sampler.py --config=configs/wan_1p3b.py:sampler --frame_shape=60,104,16 \
      --impls=cudnn,dense --video_frames_per_frame=4 --json=PATH                # on a GPU

The model and sampler are the config's (default configs/bouncing_tiny.py), built as in training
(videoar/experiment.py: scanned blocks, dtype, routing, the KV cache's window and sink), with
random weights cast to the model's compute dtype (a deployment streams in that dtype);
--frame_shape gives the frames of a latent source (Wan's [60, 104, 16]), and a text-conditioned
model gets a random text embedding of --text_tokens tokens. Latency counts from the call to
`stream` to its first chunk, cold (compiling included) and warm (a second stream). frames/s
counts the chunks after the first of the warm stream, steady frames/s those that see a full KV
cache, each times --video_frames_per_frame (4 for Wan's VAE latents, refused on pixel frames;
the DiT only, no VAE decoding). Each implementation in --impls streams in turn with the same
weights; one the host's platform can never run (cudnn off a GPU) is refused before any builds,
and one that fails at run time (cudnn on a mask it does not serve) is reported (the
dispatcher's refusal in one line, any other error with its traceback; under "failed" in the
JSON) and the others still run. The profile
beside it, over the steady chunk time (chunks that see a full KV cache; if none do, those after
the first): one attention call at the chunk's shape over a full KV cache, timed alone, and its
share of a chunk (calls per chunk x that time); the model's FLOPs per chunk (attention, and the
per-token matrix multiplies) and the rate they ran at, beside a square matmul's rate in the
model's dtype measured in the same run.

  python benchmarks/sampler.py --arms=noise_augmentation,routed,window [--variant=default_model]
      [--frames=80]
  python benchmarks/sampler.py --arms=noise_augmentation,routed@1,routed,routed@4 ...

times instead the sampler of each arm (a variant of configs/bouncing_rf.py, with its model's
routing and its sampler's window as the arm trained them; random weights) in one run, the arms
taking turns: milliseconds per generated frame over a stream of --frames frames, the routing
study's sampling cost (docs/results.md, "History routing"). `routed@K` and `window@K` are those
arms with K frames instead of the config's 25 % (model.routing_top_k, forcing.history_window:
what videoar.sweep's --set gives them). Past the training length every arm's KV cache is full,
so the cost per frame stays level from there on.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import benchmarks  # noqa: E402
from configs import bouncing_rf, bouncing_tiny  # noqa: E402
from videoar import errors, experiment  # noqa: E402
from videoar.attention import masks, ops  # noqa: E402
from videoar.attention import routing as routing_lib  # noqa: E402
from videoar.eval import perceptual  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A config file (configs/NAME.py[:VARIANT]);"
                                " default configs/bouncing_tiny.py.")
experiment.define_frame_shape_flag()
flags.DEFINE_list("impls", None, "Attention implementations to stream with, in turn (default:"
                  " the config's model.attention_impl); allowed: " + ", ".join(ops.IMPLS))
flags.DEFINE_integer("text_tokens", 512, "Tokens of the random text embedding (text models).",
                     lower_bound=1)
flags.DEFINE_integer("video_frames_per_frame", 1, "Video frames a model frame decodes to (4 for"
                     " Wan's latents), for frames/s; latent frames only (a pixel frame is one"
                     " video frame).", lower_bound=1)
benchmarks.define_json_flag()
# frames/s counts the chunks after the first, so two at least; steady frames/s needs more chunks
# than the config's KV cache holds (left out with fewer), which flag parsing does not know.
flags.DEFINE_integer("chunks", 8, "Chunks streamed each time (at least 2).", lower_bound=2)
flags.DEFINE_list("arms", None, "Variants of configs/bouncing_rf.py whose samplers to time per"
                  " frame, side by side (routed@K, window@K: with K history frames); each arm's"
                  " config sets the model and sampler, so --config, --frame_shape, --impls,"
                  " --text_tokens, --video_frames_per_frame and --chunks do not apply (refused).")
flags.DEFINE_integer("frames", 80, "With --arms: frames streamed each time (80: 10x training).",
                     lower_bound=1)
flags.DEFINE_integer("repeats", 5, "With --arms: timed streams per arm (the best counts).",
                     lower_bound=1)
flags.DEFINE_string("variant", "", "With --arms: variants of configs/bouncing_rf.py added to every"
                    " arm, as videoar.sweep's --variant (default_model: the default run's model"
                    " and sampler, history guidance included).")
FLAGS = flags.FLAGS

# Matrix-multiply FLOPs of one model call on a chunk above which a CPU run is refused: Wan's is
# about 12 TFLOP (its chunk, five calls with attention, about 200).
CPU_FLOP_LIMIT = 1e12


# The flags of a config's stream that --arms replaces with its arms' configs and --frames.
ARMS_REPLACE = ("config", "frame_shape", "impls", "text_tokens", "video_frames_per_frame",
                "chunks")


def check_arms_flags(arms: list[str]) -> None:
  """Raises errors.UserError naming the flags given with --arms that its arms replace (they
  were ignored without a word); a --config.KEY override counts as --config."""
  given = [f"--{name}" for name in ARMS_REPLACE
           if FLAGS[name].present or any(FLAGS[other].present for other in FLAGS
                                         if other.startswith(name + "."))]
  if given:
    raise errors.UserError(
        f"--arms={','.join(arms)} with {', '.join(given)}: each arm's config (a variant of"
        " configs/bouncing_rf.py) sets the model and its sampler, so these do not apply; leave"
        " them out, or --arms")


def check_video_frames(frame_shape: tuple[int, ...]) -> None:
  """Raises errors.UserError for --video_frames_per_frame above 1 on pixel frames
  (perceptual.is_pixels: 1 or 3 channels), each of which is one video frame: frames/s was
  multiplied by it."""
  if FLAGS.video_frames_per_frame > 1 and perceptual.is_pixels(np.empty((0, *frame_shape))):
    raise errors.UserError(
        f"--video_frames_per_frame={FLAGS.video_frames_per_frame}: the model's frames are pixels"
        f" ({'x'.join(map(str, frame_shape))}), each one video frame; it is for latents (e.g."
        " --frame_shape=60,104,16 of Wan's VAE): leave it at 1")


# The config key an arm's `@K` sets: the number of history frames the arm attends to.
ARM_FRAMES_KEY = {"routed": ("model", "routing_top_k"), "window": ("forcing", "history_window")}


def arm_config(arm: str):
  """The config of an arm of --arms: `NAME` (a variant of configs/bouncing_rf.py) or `NAME@K`
  (routed or window with K history frames), plus --variant.

  Raises errors.UserError naming the arm when the variant or K is not allowed."""
  name, at, frames = arm.partition("@")
  try:
    config = bouncing_rf.get_config(",".join(filter(None, (name, FLAGS.variant))))
  except ValueError as e:
    raise errors.UserError(f"--arms={arm} --variant={FLAGS.variant}: {e}") from None
  if at:
    if name not in ARM_FRAMES_KEY or not frames.isdigit() or int(frames) < 1:
      raise errors.UserError(f"--arms={arm}: @K needs an arm in {sorted(ARM_FRAMES_KEY)} and a"
                             " whole number of frames K >= 1")
    group, key = ARM_FRAMES_KEY[name]
    config[group][key] = int(frames)
  return config


def time_arms(arms: list[str]) -> None:
  """Milliseconds per generated frame of each arm's sampler, timed in turns
  (benchmarks.time_interleaved) over streams of --frames frames from an empty cache, batch 1."""
  if len(set(arms)) < len(arms):
    raise errors.UserError(f"--arms={','.join(arms)} must name distinct arms")
  streams, rows = {}, []
  for arm in arms:
    config = arm_config(arm)
    size = config.data.options.size
    exp = experiment.build_for_shapes(config, (size, size, 3))
    params = experiment.init_params(exp, jax.random.key(0))
    sampler = experiment.make_sampler(exp)
    if FLAGS.frames % sampler.chunk:
      raise errors.UserError(f"--frames={FLAGS.frames} must be a multiple of the chunk"
                             f" {sampler.chunk}")

    def stream(sampler=sampler, params=params, config=config):
      *_, last = sampler.stream(params, jax.random.key(1), FLAGS.frames, config.sample.num_steps,
                                config.sample.time_shift)
      return last

    streams[arm] = stream
    rows.append(dict(arm=arm, variant=FLAGS.variant, routing_top_k=config.model.routing_top_k,
                     kv_cache_frames=sampler.slots, num_steps=config.sample.num_steps))
  best = benchmarks.time_interleaved(streams, FLAGS.repeats)
  base = best[arms[0]]
  for row in rows:
    row["ms_per_frame"] = 1e3 * best[row["arm"]] / FLAGS.frames
    row["relative"] = best[row["arm"]] / base
  benchmarks.print_table(
      f"Sampling cost per generated frame, configs/bouncing_rf.py arms"
      f"{' with variant ' + FLAGS.variant if FLAGS.variant else ''} ({FLAGS.frames} frames from"
      f" an empty cache, batch 1, best of {FLAGS.repeats}; relative to {arms[0]})",
      ["arm", "routing k", "KV cache frames", "steps", "ms per frame", "relative"],
      [[r["arm"], r["routing_top_k"], r["kv_cache_frames"], r["num_steps"], r["ms_per_frame"],
        r["relative"]] for r in rows])
  benchmarks.write_json(FLAGS.json, frames=FLAGS.frames, repeats=FLAGS.repeats, arms=rows)


def build(config, impl: str) -> experiment.Experiment:
  config = config.copy_and_resolve_references()
  config.model.attention_impl = impl
  if FLAGS.frame_shape:
    return experiment.build_for_shapes(config, tuple(int(n) for n in FLAGS.frame_shape))
  return experiment.build(config)


def attention_call(exp: experiment.Experiment, sampler, impl: str):
  """One self-attention call of a chunk over a full KV cache, as the model makes it."""
  model = exp.model
  tokens = model.tokens_per_frame(*exp.frame_shape[:2])
  c, slots = sampler.chunk, sampler.slots
  keys = jax.random.split(jax.random.key(2), 3)
  heads = (model.num_heads, model.head_dim)
  q = jax.random.normal(keys[0], (1, c * tokens) + heads, model.dtype)
  k, v = (jax.random.normal(key, (1, (slots + c) * tokens) + heads, model.dtype)
          for key in keys[1:])
  valid = jnp.ones((slots + c,), bool)
  routing = routing_lib.Routing(model.routing_top_k) if model.routing_top_k else None
  attend = jax.jit(lambda q, k, v, valid: ops.attention(
      q, k, v, masks.Full(c, slots + c), tokens_per_frame=tokens, kv_frame_valid=valid,
      routing=routing, impl=impl))
  flops = 4 * q.shape[1] * k.shape[1] * model.num_heads * model.head_dim
  return (lambda: attend(q, k, v, valid)), flops


def stream_impl(config, impl: str, params) -> dict:
  exp = build(config, impl)
  sampler = experiment.make_sampler(exp)
  model, c = exp.model, config.sample
  cond = {}
  if model.text_dim:
    cond = model.conditioning({"text": jax.random.normal(
        jax.random.key(3), (1, FLAGS.text_tokens, model.text_dim), model.dtype)})
  chunk = sampler.chunk

  def stream():
    """Seconds to the first chunk and to each chunk after it."""
    start = time.perf_counter()
    times = []
    for _ in sampler.stream(params, jax.random.key(1), chunk * FLAGS.chunks, c.num_steps,
                            c.time_shift, cond=cond):
      times.append(time.perf_counter() - start)
    return times

  cold = stream()
  warm = stream()
  chunk_s = (warm[-1] - warm[0]) / (FLAGS.chunks - 1)
  # Chunks after the first that see a full KV cache: the steady state of a long stream.
  full = max(sampler.slots // chunk, 1)
  steady_s = ((warm[-1] - warm[full - 1]) / (FLAGS.chunks - full)
              if FLAGS.chunks > full else None)
  attend, attention_flops = attention_call(exp, sampler, impl)
  attention_s = benchmarks.time_interleaved({"attention": attend}, 5)["attention"]
  # Model calls per chunk: each solver step, then the clean chunk written to the cache; the
  # guided batch is doubled within each call.
  calls = (c.num_steps + 1) * model.depth
  batch = 2 if sampler.guided else 1
  tokens = model.tokens_per_frame(*exp.frame_shape[:2])
  linear_flops = benchmarks.block_matmul_flops(model, chunk * tokens) * (c.num_steps + 1) * batch
  model_flops = linear_flops + calls * batch * attention_flops
  return dict(
      impl=impl, chunk=chunk, kv_cache_frames=sampler.slots, sink_frames=sampler.sink_frames,
      routing_top_k=model.routing_top_k, num_steps=c.num_steps, solver=c.solver,
      first_chunk_cold_s=cold[0], first_chunk_warm_s=warm[0], chunk_ms=1e3 * chunk_s,
      frames_per_s=FLAGS.video_frames_per_frame * chunk / chunk_s,
      steady_frames_per_s=FLAGS.video_frames_per_frame * chunk / steady_s if steady_s else None,
      # Against the chunk index: level once the KV cache is full (a rolling window). Element 0
      # is the first chunk's latency.
      warm_chunk_ms_by_index=[1e3 * (b - a) for a, b in zip([0.0] + warm, warm)],
      attention_call_ms=1e3 * attention_s, attention_calls_per_chunk=calls,
      attention_share=calls * batch * attention_s / (steady_s or chunk_s),
      attention_tflop_per_chunk=calls * batch * attention_flops / 1e12,
      attention_tflops=attention_flops / attention_s / 1e12,
      model_tflop_per_chunk=model_flops / 1e12,
      model_tflops=model_flops / (steady_s or chunk_s) / 1e12)


def main(argv):
  del argv
  if FLAGS.arms:
    check_arms_flags(FLAGS.arms)
    return time_arms(FLAGS.arms)
  config = FLAGS.config or bouncing_tiny.get_config()
  impls = FLAGS.impls or [config.model.attention_impl]
  for impl in impls:
    if impl not in ops.IMPLS:
      raise errors.UserError(f"--impls: {impl!r} is unknown; allowed: {', '.join(ops.IMPLS)}")
  # Every impl the platform can never run is refused before any builds (cudnn on a CPU); one
  # that fails at run time (cudnn on a mask it does not serve) is reported below.
  benchmarks.check_impls("impls" if FLAGS.impls else "config.model.attention_impl", impls, config)
  # Initialised with the config's own attention: the init call runs a training mask, which an
  # impl named in --impls may not serve (cudnn at frames of a few tokens).
  exp = build(config, config.model.attention_impl)
  check_video_frames(exp.frame_shape)
  model = exp.model
  tokens = model.tokens_per_frame(*exp.frame_shape[:2])
  chunk_tokens = config.forcing.chunk * tokens
  if (jax.default_backend() == "cpu"
      and benchmarks.block_matmul_flops(model, chunk_tokens) > CPU_FLOP_LIMIT):
    raise errors.UserError(f"{model.depth} blocks of width {model.width} on {chunk_tokens} tokens"
                           " a chunk is a GPU benchmark: one model call is over a TFLOP")
  params = jax.jit(lambda rng: jax.tree.map(
      lambda p: p.astype(model.dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
      experiment.init_params(exp, rng)))(jax.random.key(0))
  num_params = sum(p.size for p in jax.tree.leaves(params))
  # The device's matrix rate in the model's dtype, measured in this run: the yardstick for the
  # model's TFLOP/s (an 8192-cube product on an accelerator, 1024 on a CPU).
  size = 1024 if jax.default_backend() == "cpu" else 8192
  matmul, matmul_flops = benchmarks.matmul_runner(size, model.dtype)
  matmul_s = benchmarks.time_interleaved({"matmul": matmul}, 10)["matmul"]
  matmul_tflops = matmul_flops / matmul_s / 1e12
  rows, failed = [], {}
  for impl in impls:
    # One impl that fails (cudnn on a mask it does not serve) leaves the others'
    # figures: its error is printed and written to the JSON, and the exit status is 1.
    try:
      rows.append(stream_impl(config, impl, params))
    except Exception as e:  # noqa: BLE001 - reported, then the run exits 1
      # The dispatcher's refusals (ValueError: an impl that does not serve this platform or
      # mask) say all in their one line; anything else keeps its traceback for diagnosis.
      if not isinstance(e, ValueError):
        traceback.print_exc()
      failed[impl] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      print(f"--impls: {impl} failed: {failed[impl]}", flush=True)
  if not rows:
    raise SystemExit(f"every impl failed: {failed}")
  title = (f"Streaming sampler ({num_params / 1e6:.1f}M parameters, {model.dtype.name}, depth"
           f" {model.depth}, {tokens} tokens/frame, chunks of {rows[0]['chunk']},"
           f" {rows[0]['num_steps']} {rows[0]['solver']} steps, KV cache"
           f" {rows[0]['kv_cache_frames']} frames (sink {rows[0]['sink_frames']}), routing"
           f" top-k {rows[0]['routing_top_k'] or '-'}; {benchmarks.machine()['device']},"
           f" {size}-cube matmul {matmul_tflops:.3g} TFLOP/s)")
  benchmarks.print_table(
      title, ["impl", "first chunk cold s", "first chunk warm ms", "ms per chunk", "frames/s",
              "steady frames/s", "attention ms/call", "attention share", "attention TFLOP/s",
              "model TFLOP/chunk", "model TFLOP/s"],
      [[r["impl"], r["first_chunk_cold_s"], 1e3 * r["first_chunk_warm_s"], r["chunk_ms"],
        r["frames_per_s"], r["steady_frames_per_s"] or "-", r["attention_call_ms"],
        r["attention_share"], r["attention_tflops"], r["model_tflop_per_chunk"],
        r["model_tflops"]] for r in rows])
  for r in rows:
    print(f"{r['impl']}: ms per chunk by index "
          + " ".join(f"{t:.1f}" for t in r["warm_chunk_ms_by_index"]))
  benchmarks.write_json(FLAGS.json, params=num_params, dtype=model.dtype.name,
                        tokens_per_frame=tokens, depth=model.depth, width=model.width,
                        video_frames_per_frame=FLAGS.video_frames_per_frame,
                        chunks=FLAGS.chunks, matmul_size=size, matmul_tflops=matmul_tflops,
                        impls=rows, failed=failed)
  if failed:
    raise SystemExit(1)


if __name__ == "__main__":
  errors.run(main)
