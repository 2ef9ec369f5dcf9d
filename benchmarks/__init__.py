"""What the benchmarks share: interleaved timing, the table they print, the JSON they write."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Callable

from absl import flags
import jax

from videoar import base_config, errors, files, validate


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
  """Best seconds of each function over `repeats` rounds, after one call each to compile.

  The functions take turns within a round, so load from other processes on a shared machine
  slows all of them alike and their ratios hold; the best of the rounds is the least disturbed.
  """
  for fn in fns.values():
    jax.block_until_ready(fn())
  best = {name: float("inf") for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      best[name] = min(best[name], time.perf_counter() - start)
  return best


# Untimed calls of a function before each timed one. After dense attention, the 2N layout's
# blocked forward at N = 16 took 15.7 / 9.5 / 8.9 / 9.0 / 8.7 ms (medians of 10) in its first
# five calls, with no page faults: a second call is not yet its loop time, a third is.
SETTLE_CALLS = 2


def time_settled(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
  """`time_interleaved`, with each timed call right after SETTLE_CALLS untimed calls of the same
  function.

  A call right after another function that freed large buffers pays to fault fresh pages in (18
  ms of a 20 ms attention forward after dense attention on this CPU), and the call after that is
  still slower than the function in a loop of itself: that measures the order of the calls, not
  the function. Settled, each is timed as it runs in a loop of itself, as a train step does."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  best = {name: float("inf") for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      for _ in range(SETTLE_CALLS):
        jax.block_until_ready(fn())
      start = time.perf_counter()
      jax.block_until_ready(fn())
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def matmul_runner(size: int, dtype=jax.numpy.float32) -> tuple[Callable[[], object], float]:
  """A large square matmul to time beside other work, and its FLOPs."""
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  matmul = jax.jit(lambda a: a @ a)
  return lambda: matmul(a), 2.0 * size**3


def block_matmul_flops(model, num_tokens: int) -> float:
  """Matrix-multiply FLOPs of the transformer blocks of one forward pass on `num_tokens` tokens,
  outside attention's scores: per token and block, the q/k/v and output projections (4 w^2),
  cross-attention's q and output with a text model (2 w^2), the MLP (2 w mlp). AdaLN's
  projections act per frame and are left out. `model`: a config's model fields or the model
  (width, depth, mlp_ratio, text_dim)."""
  per_block = 4 + (2 if model.text_dim else 0) + 2 * model.mlp_ratio
  return 2 * per_block * model.width**2 * model.depth * num_tokens


def check_impls(flag: str, impls: list[str], config=None) -> None:
  """Raises errors.UserError, one line naming --FLAG and its value, for an attention
  implementation in `impls` that this host's platform cannot run with `config`'s model
  (validate.validate_platform, as videoar.main refuses it: cudnn off a GPU, pallas on one; by
  default the base config in bfloat16, which checks the platform alone). All are checked before
  any is built: one that can never run here would end the run in an error after the others'
  minutes. Pallas on a CPU runs in interpret mode: a note on stderr says its timings are that
  mode's."""
  backend = jax.default_backend()
  if config is None:
    config = base_config.get_config()
    config.model.dtype = "bfloat16"
  given = f"--{flag}={','.join(impls)}"
  for impl in impls:
    trial = config.copy_and_resolve_references()
    trial.model.attention_impl = impl
    try:
      validate.validate_platform(trial, backend)
    except errors.ConfigError as e:
      why = str(e).split(" is invalid: ", 1)[-1]
      raise errors.UserError(f"{given}: {impl + ' ' if len(impls) > 1 else ''}{why}") from None
  if "pallas" in impls and backend == "cpu":
    print(f"note: {given} on a 'cpu' host runs Pallas in interpret mode: its timings are"
          " interpret mode's and say nothing of the kernel", file=sys.stderr, flush=True)


def machine() -> dict:
  device = jax.devices()[0]
  return dict(backend=jax.default_backend(), device=device.device_kind, jax=jax.__version__,
              cpus=os.cpu_count(), load_average=os.getloadavg(), host=platform.node())


def print_table(title: str, header: list[str], rows: list[list]) -> None:
  cells = [header] + [[_cell(v) for v in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  print(f"\n{title}")
  for i, row in enumerate(cells):
    print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    if i == 0:
      print("  ".join("-" * w for w in widths))


def _cell(value) -> str:
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
  return str(value)


def define_json_flag() -> None:
  """Defines --json, the file `write_json` writes; a path it could not write (empty, a
  directory, one under a file, in a folder that cannot be made or written) stops at flag
  parsing, not at the end of the run."""
  flags.DEFINE_string("json", None, "Also write the results here as JSON.")
  flags.register_validator("json", _writable_file)


def _writable_file(path: str | None) -> bool:
  if path is None:
    return True
  problem = files.unwritable_file(path, "the JSON file")
  if problem:
    # An empty --json was taken for none: the run wrote nothing, without a word.
    raise flags.ValidationError(problem + (", or leave --json out" if not path else ""))
  return True


def write_json(path: str | None, **results) -> None:
  """Writes `results` and the machine to `path` (nothing for None), whole or not at all: an
  earlier result there (a committed docs/*.json) is replaced only by a complete one."""
  if path:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with files.replaced(path) as f:
      json.dump(dict(machine=machine(), **results), f, indent=2)
    print(f"\nwrote {path}")
