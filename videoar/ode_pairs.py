"""ODE pairs for ODE regression (spec 5.1, 9.2): a frozen bidirectional teacher's Euler
trajectories, kept at the student's few-step levels.

  python -m videoar.ode_pairs --config=TEACHER_CONFIG --teacher_workdir=DIR --output=DIR \\
      --num_sequences=N [--num_steps=4 --warp_shift=5 --solver_steps=48 --batch_size=16]

TEACHER_CONFIG is the config the teacher was trained with (forcing.paradigm=bidirectional: full
attention, one t per video); its newest checkpoint in --teacher_workdir is sampled with its EMA
parameters when sample.use_ema, under classifier-free guidance of scale sample.guidance_scale
(override with --config.sample.guidance_scale=W) on its conditioning, drawn with the videos of
its training stream (seed config.seed). Whole clips of data.num_frames frames are integrated from
noise with `solver_steps` (M) Euler steps on flow.step_times(M, warp_shift). Its point
j = k M / K is shift_time(1 - k / K, warp_shift), the student's warped level t_k
(forcing/ode_regression.state_times), so the solver's inputs at j = k M / K for k = 0..K-1 and its
output are the K + 1 states the student regresses from, noisy to clean. M must be a multiple of
K; the shift is the student's warp shift, the one shift for which the grid holds its levels.

Layout (videoar/data/array_record.py; train on it with data.source=array_record,
data.path=DIR, data.num_frames = the teacher's, data.options.eval_fraction=0.0): one sequence per
clip, each frame record holding `video` (the clean endpoint, float32 [H, W, C]) and `ode_states`
(float32 [K + 1, H, W, C], that frame's states at the times above, the last equal to `video`).
Stored per frame, the states stay aligned with whatever frames a clip reads. The conditioning the
teacher was guided with is stored as array_record stores it (label and text per sequence,
actions per frame), so the student is conditioned on the same. ode_pairs.json records num_steps
(K), solver_steps (M), warp_shift, guidance_scale, the K + 1 state `times` and `teacher_step`,
the step of the teacher's checkpoint the pairs were made from (`stale_problem` checks it).

A SIGTERM or Ctrl-C stops the command with one line, exit status 128 + the signal (143, 130),
leaving the shards written so far without index.json and ode_pairs.json, which are written
together last: nothing takes them for pairs, and the same command writes them whole
(array_record.stopped_line).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from typing import Iterable, Iterator

from absl import flags, logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import tqdm

from videoar import errors, experiment, files, validate
from videoar.attention import masks
from videoar.data import array_record, pipeline
from videoar.diffusion import flow
from videoar.errors import UserError
from videoar.forcing import ode_regression
from videoar.models import dit
from videoar.train import checkpoint as checkpoint_lib

METADATA = ode_regression.METADATA


def guided_velocity(model: dit.CausalDiT, params, x_bfhwc, t_bf, cond: dict,
                    guidance_scale: float) -> jax.Array:
  """The teacher's velocity [B, F, H, W, C] on whole clips (full attention over all F frames).

  With conditioning and guidance_scale w != 1 it is guided: uncond + w (cond - uncond), both
  branches in one call of batch 2B. A data-predicting teacher is guided on its velocity, which at a
  given x_t and t is affine in its x0 prediction, so this is the same guidance on x0."""
  n = x_bfhwc.shape[1]
  guided = guidance_scale != 1.0 and bool(cond)
  if guided:
    x_bfhwc, t_bf = jnp.concatenate([x_bfhwc, x_bfhwc]), jnp.concatenate([t_bf, t_bf])
    cond = model.with_null_conditioning(cond)
  v, _ = model.apply(params, x_bfhwc, t_bf, frame_pos_f=jnp.arange(n, dtype=jnp.int32),
                     mask=masks.Full(n), **cond)
  if not guided:
    return v
  v_cond, v_null = jnp.split(v, 2)
  return v_null + guidance_scale * (v_cond - v_null)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "solver_steps", "shift",
                                             "guidance_scale"))
def solve(model: dit.CausalDiT, params, noise_bfhwc, cond: dict, *, num_steps: int,
          solver_steps: int, shift: float, guidance_scale: float) -> jax.Array:
  """The ODE states float32 [B, F, K + 1, H, W, C] of clips started at `noise_bfhwc`: the Euler
  solver's inputs at steps j = k M / K (k = 0..K-1) of the grid flow.step_times(M, shift), then
  its output, at times ode_regression.state_times(K, shift). `cond`: the model's conditioning
  arguments (CausalDiT.conditioning) for the B clips.

  Raises ValueError unless solver_steps (M) is a multiple of num_steps (K).
  """
  if solver_steps % num_steps:
    raise ValueError(f"solver_steps={solver_steps} must be a multiple of num_steps={num_steps}:"
                     " only then does the solver grid hold the student's levels")
  per_level = solver_steps // num_steps
  grid = flow.step_times(solver_steps, shift)
  frames_shape = noise_bfhwc.shape[:2]

  def euler(j, x):
    t_now, t_next = (jnp.full(frames_shape, grid[i]) for i in (j, j + 1))
    v = guided_velocity(model, params, x, t_now, cond, guidance_scale)
    return flow.euler_step(x, v, t_now, t_next)

  def level(x, k):
    # The state the solver starts level k from is the student's input at t_k.
    return jax.lax.fori_loop(0, per_level, lambda i, x: euler(k * per_level + i, x), x), x

  clean, noisy = jax.lax.scan(level, noise_bfhwc.astype(jnp.float32), jnp.arange(num_steps))
  return jnp.moveaxis(jnp.concatenate([noisy, clean[None]]), 0, 2)


def pair_sequences(model: dit.CausalDiT, params, batches: Iterable[dict], rng: jax.Array, *,
                   num_sequences: int, num_steps: int, solver_steps: int, shift: float,
                   guidance_scale: float) -> Iterator[dict[str, np.ndarray]]:
  """The first `num_sequences` ODE pairs as array_record sequences {video [F, H, W, C],
  ode_states [F, K + 1, H, W, C], and the model's conditioning entries (label [], actions [F],
  text [L, D])}.

  Batch i of `batches` (data batches, as pipeline.train_batches gives) sets the shape
  [B, F, H, W, C] of its clips and their conditioning; fold_in(rng, i) draws their noise. Every
  batch is solved whole (one compiled shape); the last one's surplus clips are dropped.
  """
  written = 0
  for i, batch in enumerate(batches):
    noise = jax.random.normal(jax.random.fold_in(rng, i), np.shape(batch["video"]), jnp.float32)
    states = np.asarray(solve(model, params, noise, model.conditioning(batch),
                              num_steps=num_steps, solver_steps=solver_steps, shift=shift,
                              guidance_scale=guidance_scale))
    for b in range(min(len(states), num_sequences - written)):
      yield ({"video": states[b, :, -1], "ode_states": states[b]}
             | {key: np.asarray(batch[key][b]) for key in model.conditioning_keys()})
      written += 1
    if written == num_sequences:
      return


def write_pairs(path: str, model: dit.CausalDiT, params, batches: Iterable[dict],
                rng: jax.Array, *, num_sequences: int, num_steps: int, solver_steps: int,
                shift: float, guidance_scale: float, num_shards: int, teacher_step: int) -> int:
  """Writes pair_sequences() to the array_record directory `path` over `num_shards` frame shards,
  with METADATA beside them (`teacher_step`: the step of the checkpoint `params` came from);
  returns how many sequences were written. METADATA is written right after index.json, a signal
  held until both are (array_record.write_sequences' `finish`): a stop never leaves index.json
  without it, which a rerun would refuse as a dataset and the launch script not take as pairs."""
  sequences = pair_sequences(model, params, batches, rng, num_sequences=num_sequences,
                             num_steps=num_steps, solver_steps=solver_steps, shift=shift,
                             guidance_scale=guidance_scale)
  metadata = dict(num_steps=num_steps, solver_steps=solver_steps, warp_shift=shift,
                  guidance_scale=guidance_scale,
                  times=ode_regression.state_times(num_steps, shift).tolist(),
                  teacher_step=teacher_step)

  def write_metadata():
    # Whole or absent: the launch script takes the file for finished pairs.
    with files.replaced(os.path.join(path, METADATA)) as f:
      json.dump(metadata, f)

  return array_record.write_sequences(
      path, tqdm.tqdm(sequences, total=num_sequences, desc="ODE pairs", unit="sequence"),
      num_shards=min(num_shards, num_sequences), finish=write_metadata)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax's INFO lines on restoring the teacher are noise
  args = flags.FLAGS
  config = args.config
  if config.forcing.paradigm != "bidirectional":
    raise UserError(f"--config has forcing.paradigm={config.forcing.paradigm!r}: the ODE"
                    " teacher is a bidirectional model; pass the config it was trained with")
  # The flags' values were checked as they were parsed (_define_flags); what --output holds is
  # checked here, before the teacher is restored and a batch solved.
  check_output(args.output)
  # Before the data are opened, and in place of the checkpoint's mismatch, whose advice is
  # about --workdir.
  problem = validate.stage_problem(args.teacher_workdir, config, "teacher")
  if problem:
    raise UserError(f"--teacher_workdir={args.teacher_workdir!r} is invalid: {problem}")
  exp = experiment.build(config)
  teacher = experiment.restore_trained(exp, args.teacher_workdir, config.sample.use_ema)
  batches = pipeline.train_batches(exp.source, batch_size=args.batch_size,
                                   num_frames=config.data.num_frames, seed=config.seed)
  written = write_pairs(
      args.output, exp.model, teacher.params, (batches[i] for i in itertools.count()),
      jax.random.key(config.seed), num_sequences=args.num_sequences, num_steps=args.num_steps,
      solver_steps=args.solver_steps, shift=args.warp_shift,
      guidance_scale=config.sample.guidance_scale, num_shards=args.num_shards,
      teacher_step=teacher.step)
  print(f"wrote {written} ODE pairs of {config.data.num_frames} frames to {args.output} from"
        f" the teacher's step {teacher.step}")


def stale_problem(pairs: str, teacher_workdir: str) -> str | None:
  """Why the ODE pairs in the directory `pairs` are not the ones the newest checkpoint of the
  teacher in `teacher_workdir` would make, or None when they are (or the teacher has no
  checkpoint: that is said where the teacher is read).

  Pairs record the teacher's step they were made from (METADATA's teacher_step). Pairs made before
  it was recorded count as made from an earlier teacher when the teacher's newest checkpoint was
  written after their METADATA: an older launch/self_forcing.sh made pairs from a teacher stopped
  part way (a SIGTERM), and they stayed when the teacher was trained on.

  Raises:
    UserError: pairs/METADATA is missing or cannot be read as JSON.
  """
  steps = checkpoint_lib.finished_steps(os.path.join(teacher_workdir, "checkpoints"))
  if not steps:
    return None
  newest = steps[-1]
  path = os.path.join(pairs, METADATA)
  try:
    with open(path) as f:
      made = json.load(f).get("teacher_step")
  except (OSError, ValueError, AttributeError) as e:
    raise UserError(f"{path} cannot be read as ODE pairs' metadata ({type(e).__name__}: {e});"
                    " write the pairs again with python -m videoar.ode_pairs") from None
  if made is None:
    saved = os.path.getmtime(os.path.join(teacher_workdir, "checkpoints", str(newest)))
    if saved <= os.path.getmtime(path):
      return None
    return (f"the ODE pairs in {pairs} record no teacher step (an older videoar.ode_pairs made"
            f" them) and were made before step {newest} of the teacher in {teacher_workdir}")
  if made != newest:
    return (f"the ODE pairs in {pairs} were made from step {made} of the teacher in"
            f" {teacher_workdir}, whose newest checkpoint is step {newest}")
  return None


def check_output(output: str) -> None:
  """Raises UserError when `output` cannot be the new directory of a set of pairs: it, or a
  folder above it, is a file (was a FileExistsError traceback once a batch was solved), or it
  holds a dataset (array_record.write_sequences' own line, said before the teacher is read)."""
  blocking = files.blocking_file(output)
  if blocking:
    raise UserError(f"--output={output!r} is invalid: {blocking} is a file, not a directory to"
                    " write the pairs into")
  if os.path.exists(os.path.join(output, "index.json")):
    raise UserError(f"{output} already holds a dataset (index.json): write to a new folder, or"
                    " move that one away")


def _positive_finite(value: float | None) -> bool:
  """--warp_shift's check: a finite shift > 0 (None: the flag is unset, said elsewhere)."""
  return value is None or (math.isfinite(value) and value > 0)


def _define_flags() -> None:
  """The command's flags, defined only when run as one: other tools define `config` too. Their
  values are checked as they are parsed (one line naming the flag, exit status 2), before the
  teacher is read."""
  config_flags.DEFINE_config_file("config", None, "The config the teacher was trained with.",
                                  lock_config=True)
  flags.DEFINE_string("teacher_workdir", None, "The teacher's workdir (its checkpoints/).")
  flags.DEFINE_string("output", None, "Directory to write the shards, index.json and "
                      f"{METADATA} to.")
  flags.DEFINE_integer("num_sequences", None, "ODE pairs (clips) to write.", lower_bound=1)
  flags.DEFINE_integer("num_steps", 4, "K: the student's few steps (forcing.num_steps).",
                       lower_bound=1)
  flags.DEFINE_float("warp_shift", 5.0, "The student's warp shift (forcing.warp_shift), also the "
                     "solver grid's.")
  # A shift <= 0 warps every time to NaN or out of [0, 1]: the pairs were written, and the
  # student's first step was not finite.
  flags.register_validator("warp_shift", _positive_finite, "must be a finite number > 0 (the"
                           " student's forcing.warp_shift; 1 leaves the times unwarped)")
  flags.DEFINE_integer("solver_steps", 48, "M: Euler steps of the teacher, a multiple of K.",
                       lower_bound=1)
  flags.register_multi_flags_validator(
      ["solver_steps", "num_steps"],
      lambda values: values["num_steps"] < 1 or values["solver_steps"] % values["num_steps"] == 0,
      "--solver_steps must be a multiple of --num_steps: only then does the solver grid hold the"
      " student's levels")
  flags.DEFINE_integer("batch_size", 16, "Clips solved together.", lower_bound=1)
  flags.DEFINE_integer("num_shards", 4, "Frame shards to deal the sequences to.", lower_bound=1)
  flags.mark_flags_as_required(["config", "teacher_workdir", "output", "num_sequences"])


if __name__ == "__main__":
  _define_flags()
  errors.run(main, stopped=lambda signame: array_record.stopped_line(signame,
                                                                      flags.FLAGS.output))
