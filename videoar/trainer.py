"""The training loop, top to bottom: lock, build, restore, step, log, checkpoint.

  state = trainer.train(experiment.build(config), workdir)

Trains on every device of every process; the main process (index 0) holds the workdir's lock
and writes the logs. The train step, its state and its shardings come from
experiment.make_train_step; the loop only feeds batches, logs, saves and stops:
  - after train.num_steps;
  - on a SIGTERM or a first Ctrl-C, after saving the step it was on (Interrupted);
  - on a step whose loss, gradient or update is not finite, naming it, before anything of it is
    saved (FloatingPointError): the newest checkpoint on disk stays the last good one;
  - when the data pipeline fails (after saving the last finished step) or a save fails
    (RunFailed, one line naming the cause).
A workdir holds one run (train/workdir.py): its run.json records the config and the data, and a
command that would continue it as a different run refuses in one line (RunRefused), unless
`restart_from_weights` starts a new run from its weights.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import jax
import numpy as np
import tqdm

from videoar import errors, experiment, validate
from videoar.data import pipeline
from videoar.eval import run as eval_run
from videoar.forcing import teacher
from videoar.train import checkpoint as checkpoint_lib
from videoar.train import metrics_log
from videoar.train import preemption as preemption_lib
from videoar.train import state as state_lib
from videoar.train import workdir as workdir_lib


class Interrupted(Exception):
  """A signal stopped the run after saving its step; the same command resumes it.

  Attributes:
    signal: the signal (SIGTERM or SIGINT); step: the step saved.
  """

  def __init__(self, signum: signal.Signals, step: int):
    self.signal, self.step = signum, step
    super().__init__(f"{signum.name}: saved step {step}; the same command resumes from it")


class RunFailed(RuntimeError):
  """A fault outside the step (the data pipeline, writing a checkpoint) stopped the run, after
  keeping what could be kept; the message is one line naming the cause."""


def _cause(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"


def data_identity(exp: experiment.Experiment) -> dict:
  """What the run's data is, beyond its config: a recorded source's sequences and frames, so a
  folder whose files changed under a run is not resumed as the same run."""
  config = exp.config
  identity = {"source": config.data.source,
              "path": os.path.abspath(config.data.path) if config.data.path else None}
  if isinstance(exp.source, pipeline.RecordedClips):
    lengths = exp.source.recording.lengths()
    identity.update(sequences=len(lengths), frames=int(lengths.sum()))
  return identity


def _check_finite(metrics: dict, step: int, saved: int | None) -> None:
  """Raises FloatingPointError when metrics["finite"] (train/step.py) is false."""
  if not bool(metrics["finite"]):
    kept = f"step {saved}" if saved is not None else "none yet"
    raise FloatingPointError(
        f"step {step} is not finite (loss {float(metrics['loss']):.4g}, gradient norm"
        f" {float(metrics['grad_norm']):.4g}): nothing of it was saved; the newest checkpoint,"
        f" {kept}, is the last good one")


def _routing_frequencies(exp: experiment.Experiment, layout):
  """Jitted `(params, batch) -> [N, N]`: the mean routing frequency over layers on the batch's
  videos and conditioning (every process computes it, since the arrays span them all)."""
  c = exp.config
  return jax.jit(lambda params, batch: teacher.routing_frequencies(
      exp.model, params, batch["video"], exp.model.conditioning(batch), chunk=c.forcing.chunk,
      history_window=c.forcing.history_window, sink_frames=c.forcing.sink_frames).mean(axis=0),
      out_shardings=layout.replicated)


def train(exp: experiment.Experiment, workdir: str, *,
          restart_from_weights: bool = False) -> state_lib.TrainState:
  """Trains `exp` in `workdir` from its newest checkpoint (or from scratch) to train.num_steps.

  With `restart_from_weights`, a workdir's checkpoints start a new run: its parameters and EMA
  parameters are loaded, the step and the optimizer start afresh, and the old run's checkpoints,
  logs, evaluation and samples are moved to WORKDIR/previous/TIME/ (workdir.move_aside).

  Returns the final state. Raises Interrupted (after saving) on a SIGTERM or a first SIGINT;
  FloatingPointError naming a step that is not finite; RunFailed when the data pipeline or a
  save fails (after saving the last finished step where it can); workdir.WorkdirBusy when
  another run holds the workdir; workdir.RunRefused when the workdir's run is another one, has
  no steps left, or has no checkpoint to restart from (checked before the workdir is made);
  checkpoint errors for checkpoints of another model or damaged ones; errors.UserError when the
  workdir cannot be created; ConfigError naming forcing.teacher_workdir or generator_workdir when
  the stages a Self Forcing run starts from are not trained runs it can read
  (validate.validate_stages; checked before the workdir is made).
  """
  is_main = jax.process_index() == 0
  checkpoints = os.path.join(workdir, "checkpoints")
  # Only training reads the stages a Self Forcing run starts from: a trained run is sampled and
  # evaluated from its own checkpoints, with or without them.
  validate.validate_stages(exp.config)
  # The ODE student is sampled and evaluated on the world (experiment.check_ode_pairs), but it
  # trains on pairs only: without them its loss failed while it was traced (a KeyError).
  if exp.config.forcing.paradigm == "ode_regression" and "ode_states" not in exp.clip_spec:
    raise errors.ConfigError(
        f"config.data.source={exp.config.data.source!r} is invalid: forcing.paradigm="
        "'ode_regression' trains on ODE pairs (data.source='array_record' with data.path made by"
        " python -m videoar.ode_pairs); this data can sample and evaluate the student, not"
        " train it")
  if restart_from_weights and not checkpoint_lib.finished_steps(checkpoints):
    raise workdir_lib.RunRefused(
        f"{workdir_lib.RESTART_FLAG}: {checkpoints} holds no finished checkpoint to take the"
        " weights from; without the flag the run trains from scratch")
  # Before the workdir is made: the mesh made on this host's devices (a size larger than they
  # are, a -1 axis resolved) and the parameters' shardings over it are checked here. It traces;
  # nothing compiles.
  train_step = experiment.make_train_step(exp)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.UserError(f"cannot create the workdir {workdir}: {e.strerror}") from None
  lock = workdir_lib.WorkdirLock(workdir)
  if is_main:
    lock.acquire()
  try:
    return _train(exp, train_step, workdir, is_main, restart_from_weights)
  finally:
    lock.release()


def _train(exp: experiment.Experiment, train_step: experiment.TrainStep, workdir: str,
           is_main: bool, restart_from_weights: bool) -> state_lib.TrainState:
  config = exp.config
  layout = train_step.layout
  # Made by every process alike, on the whole mesh: device_put cannot place one process's value
  # on the devices of others.
  init_rng, train_rng = jax.jit(lambda: tuple(jax.random.split(jax.random.key(config.seed))),
                                out_shardings=layout.replicated)()
  like = jax.eval_shape(train_step.init, init_rng)

  # --- the run in the workdir: resume it, refuse, or start a new one ---------------------------
  record = workdir_lib.RunRecord(config.to_dict(), data_identity(exp))
  try:
    recorded = workdir_lib.RunRecord.load(workdir)
  except workdir_lib.RunRefused as e:
    raise workdir_lib.RunRefused(f"{e}, or use a new --workdir") from None
  checkpoints = os.path.join(workdir, "checkpoints")
  # Checked before any checkpoint is opened: the record says what changed better than the arrays
  # of a checkpoint that no longer fit.
  newest = max(checkpoint_lib.finished_steps(checkpoints), default=None)
  if newest is not None and not restart_from_weights:
    same_run = lambda: workdir_lib.check_same_run(workdir, recorded, record,
                                                  weight_keys=validate.TRAINED_MODEL_PATHS)
    # Another run is said before the step count, which raising train.num_steps would not make
    # this run; a shorter train.num_steps alone is the step count's to say.
    if recorded is not None and any(d.path != "train.num_steps" for d in
                                    workdir_lib.compare(recorded, record).blocking):
      same_run()
    workdir_lib.check_steps_left(workdir, newest, config.train.num_steps)
    if recorded is not None:
      differences = same_run()
  if is_main:  # once the workdir's run is not refused: a refusal is its one line
    num_params = sum(x.size for x in jax.tree.leaves(like.params))
    # Resampling names its mode: the default's "noise_augmentation" is a baseline, not the
    # paper's self-resampling, and the banner is where a user first reads what trains.
    paradigm = config.forcing.paradigm
    if paradigm == "resampling":
      paradigm += f" ({config.forcing.resample_mode})"
    print(f"CausalDiT with {num_params / 1e6:.2f}M parameters, {paradigm},"
          f" mesh {dict(layout.mesh.shape)}")

  checkpointer = checkpoint_lib.Checkpointer(checkpoints, keep=config.train.keep_checkpoints)
  try:
    resumed = checkpointer.restore_latest_run(like, train_rng)
  except BaseException:
    checkpointer.close()
    raise
  if resumed is not None and restart_from_weights:
    checkpointer.close()
    state = train_step.init(init_rng).replace(params=resumed.state.params,
                                               ema_params=resumed.state.ema_params)
    if is_main:
      # Its evaluation and samples too: they describe the old run, not the new one.
      aside = workdir_lib.move_aside(
          workdir, ("checkpoints", "metrics.jsonl", "tensorboard", workdir_lib.RECORD_NAME,
                    *workdir_lib.EVAL_OUTPUTS, workdir_lib.SAMPLES_NAME))
      print(f"a new run from the weights of step {resumed.data['step']}; the old run is in"
            f" {aside}")
    checkpointer = checkpoint_lib.Checkpointer(checkpoints, keep=config.train.keep_checkpoints)
    resumed, data_start = None, 0
  elif resumed is None:
    state, data_start = train_step.start(init_rng), 0
    if is_main:
      # Nothing to resume (a first run, or every checkpoint damaged and moved aside): logs an
      # earlier run left would be overwritten by this one's, so they go to previous/ first.
      aside = workdir_lib.move_aside(
          workdir, ("metrics.jsonl", "tensorboard", workdir_lib.RECORD_NAME,
                    *workdir_lib.EVAL_OUTPUTS, workdir_lib.SAMPLES_NAME))
      if aside:
        print(f"no checkpoint in {checkpoints} to resume from: a new run; what an earlier one"
              f" left is in {aside}")
  else:
    state, train_rng, data_start = resumed.state, resumed.rng, resumed.data["step"]
    if is_main:
      print(workdir_lib.allowed_line(workdir, differences) if recorded is not None else
            f"resuming {workdir} (it has no run record yet: this run's is written now)")
      print(f"resumed from step {data_start}")
  if is_main:
    record.save(workdir)
  start = int(state.step)
  saved = data_start if resumed is not None else None

  # --- the data, the logs, the signals ---------------------------------------------------------
  processes = jax.process_count()
  batches = pipeline.train_batches(
      exp.source, batch_size=config.data.batch_size // processes,
      num_frames=config.data.num_frames, seed=config.seed, process_index=jax.process_index(),
      process_count=processes)
  batch_iter = pipeline.batch_iterator(
      batches[data_start:data_start + config.train.num_steps - start].map(
          experiment.model_inputs),
      prefetch=config.data.prefetch, num_workers=config.data.num_workers)
  routing_frequencies = _routing_frequencies(exp, layout) if exp.model.routing_top_k else None
  generator_critic = config.forcing.paradigm == "self_forcing"  # the model is the generator
  # Sampling reads the whole model on one process: a run over several skips it, and says so.
  evaluate = None
  if config.eval.every and processes == 1:
    evaluate = eval_run.DuringTraining(exp)
  elif config.eval.every and is_main:
    print(f"eval.every={config.eval.every}: no evaluation while training over {processes}"
          " processes; evaluate the checkpoints with --mode=evaluate")
  log = metrics_log.MetricsLog(workdir, is_main=is_main, resume_step=start)
  if resumed is not None and recorded is not None:
    changed = workdir_lib.evaluation_changes(differences)
    if changed and evaluate is not None:
      log.write_resume(start, changed)
  preemption = preemption_lib.Preemption()
  frames_per_step = config.data.batch_size * config.data.num_frames
  last_time, last_step = time.perf_counter(), start
  # The bar counts completed steps: after dispatching step s + 1, the loop waits for step s (and
  # checks that it is finite), so the device always has the next step queued and the bar never
  # runs ahead of it.
  progress = tqdm.tqdm(initial=start, total=config.train.num_steps, desc="train", unit="step",
                       mininterval=2.0, disable=not is_main)
  pending = None

  def complete(step_metrics, step):
    jax.block_until_ready(step_metrics)
    _check_finite(step_metrics, step, saved)
    progress.update(1)

  def keep(step):
    """Saves the state after `step` (finished, finite) unless saved; says what is on disk."""
    nonlocal pending, saved
    if pending is not None:
      complete(pending, step)
      pending = None
    if step > (saved or 0):
      checkpointer.save(state, data={"step": step, "seed": config.seed}, rng=train_rng)
      saved = step
    return (f"saved step {saved}; the same command resumes from it" if saved
            else "no step was saved")

  # --- the loop --------------------------------------------------------------------------------
  try:
    for step in range(start, config.train.num_steps):
      try:
        local_batch = next(batch_iter)
      except Exception as e:  # a data worker died, a file became unreadable, ...
        raise RunFailed(f"the data pipeline failed before step {step + 1} ({_cause(e)});"
                        f" {keep(step)}") from e
      batch = layout.global_batch(local_batch)
      state, metrics = train_step.step(state, batch, train_rng)
      done = step + 1
      if pending is not None:
        complete(pending, step)
      pending = metrics
      is_last = done == config.train.num_steps
      preempted = preemption.reached(done)
      if done % config.train.log_every == 0 or is_last:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, done, saved)
        del metrics["finite"]
        now = time.perf_counter()
        metrics["steps_per_s"] = (done - last_step) / (now - last_time)
        metrics["frames_per_s"] = metrics["steps_per_s"] * frames_per_step
        last_time, last_step = now, done
        if routing_frequencies:
          log.routing_histogram(done, np.asarray(routing_frequencies(
              experiment.sampled_params(state, False, generator_critic), batch)))
        log.write(done, metrics)
      if evaluate and (done % config.eval.every == 0 or is_last):
        # The bar stands still for these seconds: say why, so that it does not look hung.
        progress.set_postfix_str(f"evaluating at step {done}")
        evaluation_start = time.perf_counter()
        log.write_eval(done, *evaluate(experiment.sampled_params(
            state, config.sample.use_ema, generator_critic)))
        # steps_per_s is the training's rate (eval.learning_curve adds it up to minutes of
        # training): the next log's window starts after the evaluation, not before it.
        last_time += time.perf_counter() - evaluation_start
        progress.set_postfix_str("")
      if done % config.train.checkpoint_every == 0 or is_last or preempted:
        _check_finite(jax.device_get(pending), done, saved)
        try:
          checkpointer.save(state, data={"step": done, "seed": config.seed}, rng=train_rng)
        except Exception as e:
          # From the disk: the save that failed may be an earlier asynchronous one, which
          # `saved` already counted.
          newest = max(checkpoint_lib.finished_steps(checkpoints), default=None)
          raise RunFailed(f"saving step {done} to {checkpoints} failed ({_cause(e)}); the newest"
                          f" checkpoint is {'none' if newest is None else f'step {newest}'}") from e
        saved = done
      if preempted:
        complete(pending, done)
        pending = None
        raise Interrupted(preemption.signal, done)
    if pending is not None:
      complete(pending, config.train.num_steps)
  except jax.errors.JaxRuntimeError as e:
    # Steps run asynchronously: an allocation that fails surfaces where a step's result is
    # awaited. The shapes, not the run, are at fault, so it is the user's line, not a traceback.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    newest = max(checkpoint_lib.finished_steps(checkpoints), default=None)
    raise errors.UserError(
        f"the train step does not fit in this machine's memory ({_cause(e)}); lower"
        " data.batch_size or data.num_frames, or the model's size (model.width, model.depth),"
        f" or shard it (mesh); the newest checkpoint is"
        f" {'none' if newest is None else f'step {newest}'}") from None
  finally:
    progress.close()
    preemption.restore()
    batch_iter.close()
    stopping = sys.exc_info()[1] is not None
    try:
      log.close()
    except OSError as e:
      # A full disk fails the logs' last flush too: the error that stopped the run says more.
      if not stopping:
        raise RunFailed(f"writing the logs in {workdir} failed ({_cause(e)})") from e
    try:
      checkpointer.close()  # waits for the last asynchronous save to be written
    except Exception as e:
      raise RunFailed(f"writing a checkpoint to {checkpoints} failed ({_cause(e)}); the same"
                      " command resumes from the newest complete one") from e
  return state
