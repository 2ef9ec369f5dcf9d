"""Attention on the project's sparse layouts: dense masked reference against the project's path.

  python benchmarks/attention.py [--json=PATH] [--repeats=5] [--impl=auto]
  python benchmarks/attention.py --shape=wan --impl=cudnn [--json=PATH]   # on a GPU

Teacher forcing's 2N layout [history ; noisy] at N = 16 and 32 frames of 64 tokens, 4 heads of
64, float32, batch 1 (--shape=wan: N = 3 and 6 frames of Wan's 1,560 tokens, 12 heads of 128,
bfloat16, and no routing rows): forward and forward+backward (gradients of q, k and v),
milliseconds and the speedup of --impl over the dense reference. Then history routing with
top_k = 4: one generated frame (64 query tokens) over a KV cache of 16, 64 and 256 frames, per
path: dense attention over
the whole cache (no routing), the routed reference (dense logits, selection as a mask), the
masked and gather paths of blocked.py, and what impl="auto" runs; growth is the time at 256
frames over the time at 16. Implementations take turns within each round of timing (see
benchmarks.time_settled), so the ratios hold on a loaded machine; each timed call follows an
untimed call of the same function, so that none pays for the memory the one before it freed.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

from absl import flags
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import benchmarks  # noqa: E402
from videoar import errors  # noqa: E402
from videoar.attention import blocked, masks, ops, routing  # noqa: E402

benchmarks.define_json_flag()
flags.DEFINE_integer("repeats", 5, "Timed rounds; the best round counts.", lower_bound=1)
flags.DEFINE_enum("impl", "auto", ops.IMPLS, "The project's path, timed against impl=dense.")
flags.DEFINE_enum("shape", "cpu", ["cpu", "wan"], "cpu: the CPU targets' shapes; wan: Wan's"
                  " frames and heads in bfloat16 (a GPU benchmark).")
FLAGS = flags.FLAGS

class Shape(NamedTuple):
  tokens: int
  heads: int
  head_dim: int
  layout_frames: tuple[int, ...]
  dtype: type


SHAPES = {"cpu": Shape(64, 4, 64, (16, 32), jnp.float32),
          "wan": Shape(1560, 12, 128, (3, 6), jnp.bfloat16)}
TOP_K = 4
HISTORIES = (16, 64, 256)


def qkv(shape: Shape, num_query_frames: int, num_key_frames: int):
  keys = jax.random.split(jax.random.key(0), 3)
  heads = (shape.heads, shape.head_dim)
  q = jax.random.normal(keys[0], (1, num_query_frames * shape.tokens) + heads, shape.dtype)
  k = jax.random.normal(keys[1], (1, num_key_frames * shape.tokens) + heads, shape.dtype)
  v = jax.random.normal(keys[2], (1, num_key_frames * shape.tokens) + heads, shape.dtype)
  return q, k, v


def layout_rows(shape: Shape, impl: str, repeats: int) -> list[dict]:
  rows = []
  for n in shape.layout_frames:
    spec = masks.TeacherForcing(n)
    q, k, v = qkv(shape, 2 * n, 2 * n)
    cotangent = jax.random.normal(jax.random.key(1), q.shape, shape.dtype)
    fns = {}
    for name in ("dense", impl):
      attend = lambda q, k, v, name=name: ops.attention(
          q, k, v, spec, tokens_per_frame=shape.tokens, impl=name)
      forward = jax.jit(attend)
      # The cotangent is an argument: as a constant, XLA would fold the backward's scatters.
      backward = jax.jit(lambda q, k, v, ct, attend=attend: jax.vjp(attend, q, k, v)[1](ct))
      fns[f"{name} fwd"] = lambda forward=forward: forward(q, k, v)
      fns[f"{name} fwd+bwd"] = lambda backward=backward: backward(q, k, v, cotangent)
    seconds = benchmarks.time_settled(fns, repeats)
    for pass_name in ("fwd", "fwd+bwd"):
      dense_ms, path_ms = (1e3 * seconds[f"{name} {pass_name}"] for name in ("dense", impl))
      rows.append(dict(num_frames=n, sequence_frames=2 * n, pass_=pass_name, dense_ms=dense_ms,
                       path_ms=path_ms, speedup=dense_ms / path_ms,
                       allowed_blocks=int(spec.frame_mask().sum()),
                       # cudnn runs the bucketed plan's query frames; blocked, the
                       # unit-causal path.
                       computed_blocks=(blocked.plan(spec, shape.tokens).computed_blocks()
                                        if impl == "cudnn" else
                                        blocked.computed_blocks(spec, shape.tokens)),
                       all_blocks=(2 * n)**2))
  return rows


def routing_rows(shape: Shape, repeats: int) -> list[dict]:
  route = routing.Routing(TOP_K)
  paths = {
      "dense, no routing": lambda spec, *a, **kw: ops.dense_attention(*a, spec, **kw),
      "routed reference": lambda spec, *a, **kw: routing.routed_attention_reference(
          *a, spec, route, **kw),
      "routed masked": lambda spec, *a, **kw: blocked.blocked_attention(
          *a, spec, selection=routing.select_frames(*a[:2], spec, route, **kw), **kw),
      "routed gather": lambda spec, *a, **kw: blocked.routed_gather_attention(
          *a, spec, route, **kw),
      "routed auto": lambda spec, *a, **kw: ops.attention(*a, spec, routing=route, **kw),
  }
  times = {}
  for history in HISTORIES:
    spec = masks.Full(1, history + 1)
    q, k, v = qkv(shape, 1, history + 1)
    valid = jnp.ones((history + 1,), bool)
    fns = {}
    for name, path in paths.items():
      jitted = jax.jit(lambda q, k, v, valid, path=path, spec=spec: path(
          spec, q, k, v, tokens_per_frame=shape.tokens, kv_frame_valid=valid))
      fns[name] = lambda jitted=jitted: jitted(q, k, v, valid)
    # Milliseconds a call: more rounds cost little and steady the figures.
    times[history] = benchmarks.time_settled(fns, 10 * repeats)
  rows = []
  for name in paths:
    per_history = {h: 1e3 * times[h][name] for h in HISTORIES}
    rows.append(dict(path=name, ms_per_frame=per_history,
                     growth=per_history[HISTORIES[-1]] / per_history[HISTORIES[0]]))
  auto_gathers = {h: bool(blocked.prefers_gather(masks.Full(1, h + 1), route))
                  for h in HISTORIES}
  return rows, auto_gathers


def main(argv):
  del argv
  shape = SHAPES[FLAGS.shape]
  if FLAGS.shape == "wan" and jax.default_backend() == "cpu":
    raise errors.UserError("--shape=wan is a GPU benchmark: its dense reference is 100s of GFLOP;"
                           " on a CPU leave --shape at cpu")
  benchmarks.check_impls("impl", [FLAGS.impl])
  layout = layout_rows(shape, FLAGS.impl, FLAGS.repeats)
  tokens, heads, head_dim = shape.tokens, shape.heads, shape.head_dim
  benchmarks.print_table(
      f"2N layout (teacher forcing), {tokens} tokens/frame, {heads} heads of {head_dim},"
      f" {jnp.dtype(shape.dtype).name}, batch 1: dense vs impl={FLAGS.impl}",
      ["N", "pass", "dense ms", f"{FLAGS.impl} ms", "speedup", "blocks allowed/computed/all"],
      [[r["num_frames"], r["pass_"], r["dense_ms"], r["path_ms"], r["speedup"],
        f"{r['allowed_blocks']}/{r['computed_blocks']}/{r['all_blocks']}"] for r in layout])
  if FLAGS.shape == "wan":
    return benchmarks.write_json(FLAGS.json, impl=FLAGS.impl, shape=FLAGS.shape,
                                 tokens_per_frame=tokens, heads=heads, head_dim=head_dim,
                                 dtype=jnp.dtype(shape.dtype).name, layout=layout)
  routed, auto_gathers = routing_rows(shape, FLAGS.repeats)
  benchmarks.print_table(
      f"Routing top_k={TOP_K}: ms per generated frame ({tokens} query tokens) over a KV cache"
      f" (auto gathers: {auto_gathers})",
      ["path"] + [f"history {h}" for h in HISTORIES] + [f"{HISTORIES[-1]}/{HISTORIES[0]}"],
      [[r["path"]] + [r["ms_per_frame"][h] for h in HISTORIES] + [r["growth"]] for r in routed])
  benchmarks.write_json(FLAGS.json, impl=FLAGS.impl, tokens_per_frame=tokens, heads=heads,
                        head_dim=head_dim, top_k=TOP_K, layout=layout, routing=routed,
                        routing_auto_gathers=auto_gathers)


if __name__ == "__main__":
  errors.run(main)
