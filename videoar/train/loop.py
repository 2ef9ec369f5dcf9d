"""The training loop, top to bottom: build, restore, step, log, checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter

from videoar import validate
from videoar.attention import masks
from videoar.data import pipeline
from videoar.eval import routing_figure
from videoar.forcing import PARADIGMS
from videoar.models import dit
from videoar.train import checkpoint as checkpoint_lib
from videoar.train import sharding as sharding_lib
from videoar.train import state as state_lib
from videoar.train import step as step_lib

MODEL_INPUTS = ("video",) + tuple(dit.CONDITIONING_INPUTS)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What train, sample and evaluate share, built from a validated config."""

  config: ml_collections.ConfigDict
  source: pipeline.ClipSource | None  # None: built for shapes only (build_for_shapes)
  model: dit.CausalDiT
  frame_shape: tuple[int, int, int]


def build(config: ml_collections.ConfigDict) -> Experiment:
  validate.validate(config)
  source = pipeline.make_source(config.data.source, path=config.data.get("path"),
                                **config.data.options.to_dict())
  clip = source.clip(config.seed, 0, 1)
  validate.validate_against_data(config, clip)
  return Experiment(config, source, make_model(config), tuple(clip["video"].shape[1:]))


def build_for_shapes(config: ml_collections.ConfigDict,
                     frame_shape: tuple[int, int, int]) -> Experiment:
  """An Experiment without a data source, for work that depends on shapes only (benchmarks,
  the parameters' layout): the config is validated but not checked against any data."""
  validate.validate(config)
  return Experiment(config, None, make_model(config), tuple(frame_shape))


def make_model(config: ml_collections.ConfigDict) -> dit.CausalDiT:
  return dit.CausalDiT(
      patch=config.model.patch, width=config.model.width, depth=config.model.depth,
      num_heads=config.model.num_heads, mlp_ratio=config.model.mlp_ratio,
      num_classes=config.model.num_classes, num_actions=config.model.num_actions,
      text_dim=config.model.get("text_dim", 0),
      attention_impl=config.model.attention_impl,
      routing_top_k=config.model.get("routing_top_k", 0),
      prediction=config.model.get("prediction", "velocity"),
      previous_frame_input=config.model.get("previous_frame_input", False),
      dtype=jnp.dtype(config.model.dtype))


def init_params(exp: Experiment, rng: jax.Array):
  return nn.meta.unbox(logical_params(exp, rng))


def logical_params(exp: Experiment, rng: jax.Array):
  """The parameters, each in an nn.LogicallyPartitioned box that names its axes."""
  n = exp.config.data.num_frames
  x = jnp.zeros((1, n) + exp.frame_shape)
  # Parameter shapes do not depend on the text's length: one token stands in for it.
  example = {"label": jnp.zeros((1,), jnp.int32), "actions": jnp.zeros((1, n), jnp.int32),
             "text": jnp.zeros((1, 1, exp.model.text_dim))}
  return exp.model.init(rng, x, jnp.zeros((1, n)), frame_pos_f=jnp.arange(n),
                        mask=masks.BlockCausal(n), previous_bfhwc=x,
                        **exp.model.conditioning(example))


def make_loss_fn(exp: Experiment):
  f = exp.config.forcing
  paradigm_loss = PARADIGMS[f.paradigm]
  options = {k: v for k, v in f.to_dict().items() if k != "paradigm"}

  def loss_fn(params, batch, rng, step):
    return paradigm_loss(exp.model, params, batch, rng, step=step, **options)

  return loss_fn


def model_inputs(batch: dict) -> dict:
  return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


class _Preemption:
  """SIGTERM asks the run to save a checkpoint and exit 0.

  A single process turns the signal into a flag that the loop checks between steps. Several
  processes must stop after the same step: there JAX's preemption service, started by
  jax.distributed.initialize, catches SIGTERM on any of them and agrees that step with the
  others, and every process asks it after every step.
  """

  def __init__(self):
    self._distributed = jax.process_count() > 1
    self._requested = False
    if not self._distributed:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    if self._distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def restore(self):
    if not self._distributed:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(metrics: dict, step: int) -> None:
  if not np.isfinite(metrics["loss"]):
    raise FloatingPointError(
        f"non-finite loss {metrics['loss']} at step {step}; the last good checkpoint is kept")


def _routing_logger(exp: Experiment, layout: sharding_lib.Layout):
  """Logs how often each history frame is routed to, as a tensorboard histogram over the
  history frame index (mass = mean routing frequency over layers and the query frames that
  may see it). Every process computes it (the arrays span them all); the main one writes."""
  c = exp.config
  frequencies = jax.jit(lambda params, video: routing_figure.routing_frequencies(
      exp.model, params, video, chunk=c.forcing.chunk,
      history_window=c.forcing.get("history_window", 0)).mean(axis=0),
                        out_shardings=layout.replicated)

  def log(writer, params, video, step):
    mean = np.asarray(frequencies(params, video))
    if writer is None:
      return
    n = mean.shape[0]
    visible = np.tril(np.ones((n, n)), -1)
    per_frame = (mean * visible).sum(0) / np.maximum(visible.sum(0), 1)
    writer.add_histogram_raw(
        "routing/history_frame", min=0, max=n - 1, num=n, sum=float((per_frame * np.arange(n)).sum()),
        sum_squares=float((per_frame * np.arange(n) ** 2).sum()),
        bucket_limits=list(np.arange(n) + 0.5), bucket_counts=list(per_frame), global_step=step)

  return log


def _drop_metrics_after(path: str, step: int) -> None:
  """A resumed run logs the steps after its checkpoint again: drops what a killed run logged past
  it, and a last line cut short by the kill."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
  if len(kept) < len(lines):
    with open(path, "w") as f:
      f.writelines(kept)


def train(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
  """Trains on every device of every process; the main process (index 0) writes the logs."""
  exp = build(config)
  layout = sharding_lib.Layout.from_config(config.mesh)
  layout.check_batch_size(config.data.batch_size)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  optimizer = state_lib.make_optimizer(config)
  schedule = state_lib.learning_rate_schedule(config)
  # Made by every process alike, on the whole mesh: device_put cannot place one process's value
  # on the devices of others.
  init_rng, train_rng = jax.jit(lambda: tuple(jax.random.split(jax.random.key(config.seed))),
                                out_shardings=layout.replicated)()
  init, state_sharding = state_lib.make_init(
      functools.partial(logical_params, exp), optimizer, layout)
  like = jax.eval_shape(init, init_rng)
  if is_main:
    num_params = sum(x.size for x in jax.tree.leaves(like.params))
    print(f"CausalDiT with {num_params / 1e6:.2f}M parameters, {config.forcing.paradigm},"
          f" mesh {dict(layout.mesh.shape)}")

  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
  resumed = checkpointer.restore_latest_run(like, train_rng)
  if resumed is None:
    state, data_start = init(init_rng), 0
  else:
    state, train_rng, data_start = resumed.state, resumed.rng, resumed.data["step"]
    if is_main:
      print(f"resumed from step {data_start}")
  start = int(state.step)

  train_step = step_lib.make_train_step(
      loss_fn=make_loss_fn(exp), optimizer=optimizer, schedule=schedule,
      ema_decay=config.optim.ema_decay, layout=layout, state_sharding=state_sharding)
  processes = jax.process_count()
  batches = pipeline.train_batches(
      exp.source, batch_size=config.data.batch_size // processes,
      num_frames=config.data.num_frames, seed=config.seed, process_index=jax.process_index(),
      process_count=processes)
  batch_iter = pipeline.batch_iterator(
      batches[data_start:config.train.num_steps].map(model_inputs),
      prefetch=config.data.get("prefetch", "threads"),
      num_workers=config.data.get("num_workers", 2))

  log_routing = _routing_logger(exp, layout) if exp.model.routing_top_k else None
  writer = SummaryWriter(os.path.join(workdir, "tensorboard")) if is_main else None
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if is_main:
    _drop_metrics_after(metrics_path, start)
  preemption = _Preemption()
  frames_per_step = config.data.batch_size * config.data.num_frames
  last_time, last_step = time.perf_counter(), start
  try:
    for step in tqdm.trange(start, config.train.num_steps, initial=start,
                            total=config.train.num_steps, desc="train", mininterval=2.0,
                            disable=not is_main):
      batch = layout.global_batch(next(batch_iter))
      state, metrics = train_step(state, batch, train_rng)
      done = step + 1
      is_last = done == config.train.num_steps
      preempted = preemption.reached(done)
      if done % config.train.log_every == 0 or is_last:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, done)
        now = time.perf_counter()
        metrics["steps_per_s"] = (done - last_step) / (now - last_time)
        metrics["frames_per_s"] = metrics["steps_per_s"] * frames_per_step
        last_time, last_step = now, done
        if log_routing:
          log_routing(writer, state.params, batch["video"], done)
        if is_main:
          for key, value in metrics.items():
            writer.add_scalar(f"train/{key}", value, done)
          with open(metrics_path, "a") as f:
            f.write(json.dumps(dict(step=done, **metrics)) + "\n")
      if done % config.train.checkpoint_every == 0 or is_last or preempted:
        if done % config.train.log_every and not is_last:
          _check_finite({k: float(v) for k, v in jax.device_get(metrics).items()}, done)
        checkpointer.save(state, data={"step": done, "seed": config.seed}, rng=train_rng)
      if preempted:
        logging.warning("SIGTERM: saved a checkpoint at step %d, exiting", done)
        break
  finally:
    preemption.restore()
    batch_iter.close()
    checkpointer.close()
    if writer:
      writer.close()
  return state


def restore_params(exp: Experiment, workdir: str, use_ema: bool):
  """The trained (EMA) parameters of the newest checkpoint in `workdir`."""
  config = exp.config
  optimizer = state_lib.make_optimizer(config)
  # Whatever mesh trained it, the checkpoint is read whole onto one device of this process.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  like = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      jax.eval_shape(lambda: state_lib.create(init_params(exp, jax.random.key(0)), optimizer)))
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                             keep=config.train.keep_checkpoints)
  try:
    state = checkpointer.restore_latest(like)
  finally:
    checkpointer.close()
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first")
  return state.ema_params if use_ema else state.params
