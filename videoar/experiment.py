"""The experiment factory: everything a run is made of, built from a validated config in one place.

The trainer (videoar/trainer.py), sampling and evaluation (videoar/eval/), the AOT compile tool,
the benchmarks and the tests all build through here:

  exp = experiment.build(config)                  the data source, the model, one clip's shapes
  exp = experiment.build_for_shapes(config, hwc)  the same without a data source (benchmarks, AOT)
  define_frame_shape_flag()  --frame_shape=H,W,C, the hwc of a tool that builds for shapes
  example_batch(exp, b)     the shapes and dtypes of a training batch (what the step is traced on)
  make_train_step(exp)      the optimizer, the sharded state initialiser and the jitted step
  restore_params(exp, dir)  the trained (EMA) parameters of a run's newest checkpoint
  restore_trained(exp, dir) the same with the step of the checkpoint they were read from
  require_checkpoint(dir)   that a run has one, checked before anything is built
  make_sampler(exp)         the streaming sampler, with the window the model was trained with
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any, Callable, NamedTuple

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videoar import sampling, validate
from videoar.attention import masks
from videoar.data import pipeline
from videoar.errors import ConfigError, MissingInput, fail
from videoar.forcing import PARADIGMS, ode_regression, self_forcing
from videoar.models import discriminator, dit
from videoar.train import checkpoint as checkpoint_lib
from videoar.train import sharding as sharding_lib
from videoar.train import state as state_lib
from videoar.train import step as step_lib
from videoar.train import workdir as workdir_lib

# What a train step reads of a batch: the clips, their conditioning, and ODE-regression's stored
# teacher trajectories.
MODEL_INPUTS = ("video",) + tuple(dit.CONDITIONING_INPUTS) + ("ode_states",)
# Text length of a shapes-only experiment: parameter shapes do not depend on it.
TEXT_TOKENS_FOR_SHAPES = 8


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What train, sample and evaluate share, built from a validated config.

  Attributes:
    config: the validated config.
    source: the data source, or None for an experiment built for shapes only.
    model: the CausalDiT.
    clip_spec: {name: ShapeDtypeStruct} of one training clip's model inputs (video [F, H, W, C]
      and the conditioning the model reads), without the batch axis.
  """

  config: ml_collections.ConfigDict
  source: pipeline.ClipSource | None
  model: dit.CausalDiT
  clip_spec: dict

  @property
  def frame_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of a frame as the model sees it (pixels or latents)."""
    return tuple(self.clip_spec["video"].shape[1:])

  @property
  def score_model(self) -> dit.CausalDiT:
    """Self Forcing's teacher and critic: the model without the previous-frame input and without
    routing. They score whole noised videos at one t, where no frame is clean, so only the causal
    generator (and the ODE-regressed student it starts from) may read its clean previous frame;
    and they attend bidirectionally, with no history to route over (routing has no parameters:
    a routed generator's teacher is the dense bidirectional model it was trained as)."""
    return self.model.clone(previous_frame_input=False, routing_top_k=0)


def build(config: ml_collections.ConfigDict) -> Experiment:
  """The experiment of `config`, its data source opened and checked against it.

  Raises ConfigError (one line) for a config that cannot run, or data that cannot give what it
  asks for: the source's options, its frame size against the patch, the conditioning, the
  held-out clips of sampling and evaluation, and for ODE regression on an array_record set,
  pairs of other levels than its forcing keys' (check_ode_pairs).
  """
  validate.validate(config)
  options = validate.source_options(config)
  try:
    source = pipeline.make_source(config.data.source, path=config.data.path, **options)
    clip = source.clip(config.seed, 0, config.data.num_frames)
  except IndexError as e:  # no training clip of num_frames frames
    raise ConfigError(f"config.data.num_frames={config.data.num_frames} is invalid: {e}") from e
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(f"config.data: {e}") from e
  validate.validate_source(config, source, clip)
  check_ode_pairs(config, clip)
  model = make_model(config)
  read = {"video", "ode_states"} | set(model.conditioning_keys())
  spec = {key: jax.ShapeDtypeStruct(np.shape(value), np.asarray(value).dtype)
          for key, value in clip.items() if key in read}
  return Experiment(config, source, model, spec)


def check_ode_pairs(config: ml_collections.ConfigDict, clip: dict) -> None:
  """For forcing.paradigm="ode_regression" on data.source="array_record" (its training data):
  that data.path holds ODE pairs (their METADATA, which videoar/ode_pairs.py writes, and
  ode_states in `clip`, one training clip) made at the student's levels, num_steps and
  warp_shift as config.forcing has them. Raises ConfigError naming the key, the file and both
  values. Other sources are not checked: the ODE student is sampled and evaluated on the world
  (configs/bouncing_sf.py:ode,world), which holds no pairs.

  Called by build, before the trainer makes the workdir: the loss otherwise fails while it is
  traced (a KeyError, or a ValueError on the count of states), or, for pairs of another warp
  shift, trains silently on states at the wrong times."""
  if config.forcing.paradigm != "ode_regression" or config.data.source != "array_record":
    return
  path = config.data.path
  metadata_path = os.path.join(path, ode_regression.METADATA)
  if not os.path.isfile(metadata_path) or "ode_states" not in clip:
    missing = (f"no {ode_regression.METADATA}" if not os.path.isfile(metadata_path)
               else "its frames have no ode_states")
    fail("data.path", path, f"it holds no ODE pairs ({missing}), which"
         " forcing.paradigm='ode_regression' trains on: write them from the teacher with"
         " python -m videoar.ode_pairs --output=DIR and pass that DIR")
  try:
    with open(metadata_path) as f:
      metadata = json.load(f)
    made = {"num_steps": int(metadata["num_steps"]), "warp_shift": float(metadata["warp_shift"])}
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise ConfigError(f"config.data.path={path!r} is invalid: {metadata_path} cannot be read as"
                      f" ODE pairs' metadata ({type(e).__name__}: {e}); write the pairs again"
                      " with python -m videoar.ode_pairs") from None
  f = config.forcing
  for key, same in (("num_steps", made["num_steps"] == f.num_steps),
                    ("warp_shift", math.isclose(made["warp_shift"], f.warp_shift,
                                                rel_tol=1e-6))):
    if not same:
      fail(f"forcing.{key}", f[key], f"the ODE pairs in data.path={path!r} were made with"
           f" {key}={made[key]!r} ({metadata_path}): make pairs with python -m"
           f" videoar.ode_pairs --{key}={f[key]!r}, or train with forcing.{key}={made[key]!r}")
  states = np.shape(clip["ode_states"])[1]
  if states != f.num_steps + 1:  # a set whose metadata is not its own
    fail("data.path", path, f"its ode_states hold {states} states per frame and its"
         f" {ode_regression.METADATA} says num_steps={made['num_steps']} (K + 1 ="
         f" {made['num_steps'] + 1}): write the pairs again with python -m videoar.ode_pairs")


def build_for_shapes(config: ml_collections.ConfigDict,
                     frame_shape: tuple[int, int, int]) -> Experiment:
  """An Experiment without a data source, for work that depends on shapes only (benchmarks, the
  AOT tool, the parameters' layout): the config is validated but not checked against any data.
  Conditioning inputs get the shapes the model asks for (text: TEXT_TOKENS_FOR_SHAPES tokens),
  and ODE regression its pairs' states (ode_states [F, forcing.num_steps + 1, H, W, C])."""
  validate.validate(config)
  h, w, _ = frame_shape
  if h % config.model.patch or w % config.model.patch:
    fail("model.patch", config.model.patch, f"must divide the frame size {h}x{w}")
  model = make_model(config)
  n = config.data.num_frames
  shapes = {"video": ((n,) + tuple(frame_shape), jnp.float32), "label": ((), jnp.int32),
            "actions": ((n,), jnp.int32),
            "text": ((TEXT_TOKENS_FOR_SHAPES, config.model.text_dim), jnp.float32),
            "ode_states": ((n, config.forcing.num_steps + 1) + tuple(frame_shape), jnp.float32)}
  keys = ("video",) + model.conditioning_keys()
  if config.forcing.paradigm == "ode_regression":  # the teacher's states are its batches' input
    keys += ("ode_states",)
  return Experiment(config, None, model, {key: jax.ShapeDtypeStruct(*shapes[key]) for key in keys})


def define_frame_shape_flag() -> None:
  """Defines --frame_shape=H,W,C, the frames of a tool's build_for_shapes (the AOT compile, the
  sampler benchmark). Checked when the flags are parsed: a value that is not three positive
  integers is reported before anything is built or compiled."""
  flags.DEFINE_list("frame_shape", None, "H,W,C of a frame as the model sees it (default: the"
                    " config's data source).")
  flags.register_validator(
      "frame_shape", lambda shape: shape is None or (
          len(shape) == 3 and all(n.isdigit() and int(n) > 0 for n in shape)),
      "must be three positive integers H,W,C (e.g. 60,104,16)")


def make_model(config: ml_collections.ConfigDict) -> dit.CausalDiT:
  """The CausalDiT that config.model describes, unbound (Module.init makes its parameters);
  validate.validate checks the keys, not this."""
  m = config.model
  return dit.CausalDiT(
      patch=m.patch, width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      num_classes=m.num_classes, num_actions=m.num_actions, text_dim=m.text_dim,
      attention_impl=m.attention_impl, routing_top_k=m.routing_top_k, prediction=m.prediction,
      previous_frame_input=m.previous_frame_input, fine_patch=m.fine_patch,
      fine_width=m.fine_width, fine_depth=m.fine_depth, warp_sigma=m.warp_sigma,
      warp_residual=m.warp_residual, dtype=jnp.dtype(m.dtype), scan_layers=m.scan_layers,
      remat_policy=m.remat_policy)


def example_batch(exp: Experiment, batch_size: int | None = None,
                  sharding: jax.sharding.Sharding | None = None) -> dict:
  """{name: ShapeDtypeStruct} of a training batch of `batch_size` (default data.batch_size)
  clips: what pipeline.train_batches gives, after model_inputs."""
  b = exp.config.data.batch_size if batch_size is None else batch_size
  return {key: jax.ShapeDtypeStruct((b,) + spec.shape, spec.dtype, sharding=sharding)
          for key, spec in exp.clip_spec.items()}


def random_batch(exp: Experiment, seed: int = 0) -> dict[str, np.ndarray]:
  """A training batch of random values of example_batch's shapes (for timing: no data read)."""
  rng = np.random.default_rng(seed)
  m = exp.config.model
  high = {"label": m.num_classes, "actions": m.num_actions}
  batch = {}
  for key, spec in example_batch(exp).items():
    if key in high:
      batch[key] = rng.integers(0, high[key], spec.shape).astype(spec.dtype)
    else:
      batch[key] = rng.uniform(-1, 1, spec.shape).astype(spec.dtype)
  return batch


def model_inputs(batch: dict) -> dict:
  """The entries of a data batch that the train step reads."""
  return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def logical_params(exp: Experiment, rng: jax.Array, model: dit.CausalDiT | None = None):
  """The parameters of `model` (default exp.model), each in an nn.LogicallyPartitioned box that
  names its axes."""
  model = model or exp.model
  n = exp.config.data.num_frames
  example = {key: jnp.zeros(spec.shape, spec.dtype)
             for key, spec in example_batch(exp, batch_size=1).items()}
  x = example.pop("video")
  return model.init(rng, x, jnp.zeros((1, n)), frame_pos_f=jnp.arange(n),
                    mask=masks.BlockCausal(n), previous_bfhwc=x, **model.conditioning(example))


def logical_critic_params(exp: Experiment, rng: jax.Array):
  """Self Forcing's critic parameters, boxed like logical_params: the score model's, or for the
  GAN variant (forcing.loss="gan") the discriminator's {"backbone": the score model's, "head":
  its classification head's (models/discriminator.py)}."""
  f = exp.config.forcing
  if f.loss != "gan":
    return logical_params(exp, rng, exp.score_model)
  backbone_rng, head_rng = jax.random.split(rng)
  return {"backbone": logical_params(exp, backbone_rng, exp.score_model),
          "head": discriminator.init_head(exp.score_model, len(f.discriminator_taps), head_rng)}


def init_params(exp: Experiment, rng: jax.Array, model: dit.CausalDiT | None = None):
  """The parameters of `model` (default exp.model), unboxed."""
  return nn.meta.unbox(logical_params(exp, rng, model))


def make_loss_fn(exp: Experiment) -> Callable:
  """`loss_fn(params, batch, rng, step) -> (loss, metrics)` of config.forcing.paradigm."""
  paradigm_loss = PARADIGMS[exp.config.forcing.paradigm]
  options = validate.paradigm_options(exp.config)

  def loss_fn(params, batch, rng, step):
    return paradigm_loss(exp.model, params, batch, rng, step=step, **options)

  return loss_fn


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """The sharded train step of an experiment and what it is built from.

  Attributes:
    layout: the mesh and the shardings of batches and replicated values.
    init: jitted `rng -> TrainState`, built on the mesh, each device computing its own shards.
    state_sharding: the TrainState's shardings.
    step: jitted `(state, batch, rng) -> (state, metrics)`, the state donated.
    start: `rng -> TrainState` of a new run: init, and for Self Forcing the weights of the
      stages before it (forcing.teacher_workdir, forcing.generator_workdir).
  """

  layout: sharding_lib.Layout
  init: Callable
  state_sharding: state_lib.TrainState
  step: Callable
  start: Callable

  def abstract_state(self) -> state_lib.TrainState:
    """The TrainState as ShapeDtypeStructs with their shardings (nothing computed)."""
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.eval_shape(self.init, jax.ShapeDtypeStruct(key.shape, key.dtype,
                                                          sharding=self.layout.replicated))


def make_train_step(exp: Experiment, layout: sharding_lib.Layout | None = None) -> TrainStep:
  """The train step of `exp` over `layout` (default: config.mesh over this process's devices):
  one network and its loss (config.forcing.paradigm in PARADIGMS), or Self Forcing's generator
  against its critic.

  Raises ConfigError when the mesh does not fit the devices or the batch the mesh.
  """
  config = exp.config
  layout = layout or sharding_lib.Layout.from_config(config.mesh)
  layout.check_batch_size(config.data.batch_size)
  if config.forcing.paradigm == "self_forcing":
    return _generator_critic_train_step(exp, layout)
  optimizer = state_lib.make_optimizer(config)
  schedule = state_lib.learning_rate_schedule(config)
  init, state_sharding = state_lib.make_init(lambda rng: logical_params(exp, rng),
                                             lambda params: state_lib.create(params, optimizer),
                                             layout)
  step = step_lib.make_train_step(
      loss_fn=make_loss_fn(exp), optimizer=optimizer, schedule=schedule,
      ema_decay=config.optim.ema_decay, layout=layout, state_sharding=state_sharding)
  return TrainStep(layout, init, state_sharding, step, start=init)


def self_forcing_options(exp: Experiment) -> self_forcing.Options:
  """Self Forcing's settings from config.forcing, for the experiment's clip."""
  f = exp.config.forcing
  return self_forcing.Options(
      num_frames=exp.config.data.num_frames, frame_shape=exp.frame_shape, chunk=f.chunk,
      num_steps=f.num_steps, warp_shift=f.warp_shift, real_guidance=f.real_guidance,
      score_shift=f.score_shift, score_clamp=tuple(f.score_clamp), loss=f.loss,
      gan_weights=tuple(f.gan_weights), r1_weight=f.r1_weight, r2_weight=f.r2_weight,
      discriminator_taps=tuple(f.discriminator_taps))


def _generator_critic_train_step(exp: Experiment, layout: sharding_lib.Layout) -> TrainStep:
  """Self Forcing: the causal few-step generator (config.model), its critic and the frozen
  teacher (exp.score_model: the same without the previous-frame input); one step is one
  generator update and forcing.critic_updates critic updates (step_lib.generator_critic_step).
  In the GAN variant the
  critic is a discriminator, {"backbone", "head"} (logical_critic_params), trained by one
  optimizer at forcing.critic_learning_rate (the reference's head learning-rate multiplier is 1);
  the teacher only initialises its backbone."""
  config, f = exp.config, exp.config.forcing
  model, score_model, options = exp.model, exp.score_model, self_forcing_options(exp)
  generator_optimizer = state_lib.make_optimizer(config)
  critic_optimizer = state_lib.make_optimizer(config, peak=f.critic_learning_rate)
  schedule = state_lib.learning_rate_schedule(config)

  def logical_networks(rng):
    generator_rng, critic_rng, teacher_rng = jax.random.split(rng, 3)
    return {"generator": logical_params(exp, generator_rng),
            "critic": logical_critic_params(exp, critic_rng),
            "teacher": logical_params(exp, teacher_rng, score_model)}

  init, state_sharding = state_lib.make_init(
      logical_networks, lambda params: state_lib.create_generator_critic(
          params, generator_optimizer, critic_optimizer), layout)

  def generator_loss(generator, critic, teacher, batch, rng):
    return self_forcing.generator_loss(model, generator, score_model, teacher, score_model,
                                       critic, batch, rng, options)

  def critic_loss(critic, generator, batch, rng):
    return self_forcing.critic_loss(model, generator, score_model, critic, batch, rng, options)

  step = step_lib.make_train_step(
      step_fn=step_lib.generator_critic_step, generator_loss=generator_loss,
      critic_loss=critic_loss, generator_optimizer=generator_optimizer,
      critic_optimizer=critic_optimizer, critic_updates=f.critic_updates, schedule=schedule,
      ema_decay=config.optim.ema_decay, layout=layout, state_sharding=state_sharding)

  def start(rng):
    """The teacher's weights for the teacher and the critic (spec 2.1; in the GAN variant the
    discriminator's backbone, its head as init drew it), the ODE-initialised student's for the
    generator and its EMA; optimizers from scratch."""
    state = init(rng)
    teacher = restore_params(exp, f.teacher_workdir, use_ema=True, single_network=True,
                             model=score_model)
    generator = restore_params(exp, f.generator_workdir, use_ema=True, single_network=True)
    # Each network gets buffers of its own: the step donates them all.
    place = lambda tree, sharding: jax.tree.map(jnp.copy, jax.device_put(tree, sharding))
    shardings = state_sharding.params
    if f.loss == "gan":
      critic = dict(state.params["critic"],
                    backbone=place(teacher, shardings["critic"]["backbone"]))
    else:
      critic = place(teacher, shardings["critic"])
    params = {"generator": place(generator, shardings["generator"]), "critic": critic,
              "teacher": place(teacher, shardings["teacher"])}
    return state.replace(params=params, ema_params={"generator": place(
        generator, state_sharding.ema_params["generator"])})

  return TrainStep(layout, init, state_sharding, step, start)


class Trained(NamedTuple):
  """What `restore_trained` read: the sampler's weights, and the step of the checkpoint they
  came from (its directory's name, which is its train state's step)."""

  params: Any
  step: int


def restore_params(exp: Experiment, workdir: str, use_ema: bool, single_network: bool = False,
                   model: dit.CausalDiT | None = None):
  """`restore_trained(...).params`: the weights alone, for a caller that records no step."""
  return restore_trained(exp, workdir, use_ema, single_network, model).params


def check_trained_alike(workdir: str, config: ml_collections.ConfigDict) -> None:
  """For sampling or evaluating the run in `workdir` with `config`: raises workdir.RunRefused
  when its run.json records another model (validate.TRAINED_MODEL_PATHS: weights of other
  shapes or another output, whose figures would be another model's; said from the record,
  before any checkpoint is read, with what to pass instead), and notes on stderr the other values
  that sampling reads (workdir.trained_differently): samples and figures use `config`'s."""
  differences = workdir_lib.trained_differently(workdir, config.to_dict())
  weights = [d for d in differences if d.path in validate.TRAINED_MODEL_PATHS]
  if weights:
    raise workdir_lib.RunRefused(
        f"{workdir} was trained with another model: {', '.join(map(str, weights))} (its"
        f" run.json -> this command); pass the values it was trained with")
  if differences:
    print(workdir_lib.trained_differently_line(workdir, differences), file=sys.stderr)


def restore_trained(exp: Experiment, workdir: str, use_ema: bool, single_network: bool = False,
                    model: dit.CausalDiT | None = None) -> Trained:
  """The trained (EMA) parameters of the newest readable checkpoint in WORKDIR/checkpoints, on
  one device, and that checkpoint's step: the model's, or for a Self Forcing run the
  generator's. `single_network` reads a run of one network of `model` (default exp.model; a
  Self Forcing stage before the last) whatever exp's paradigm. The step is the one read, not the
  newest in the folder when the caller looks: a damaged newest checkpoint is moved aside and the
  one before it read, and a run training in the same workdir may save another meanwhile.

  Raises errors.MissingInput (a FileNotFoundError) when there is none, and the Checkpointer's
  errors for checkpoints of another model or damaged ones; for a run whose run.json records
  other data (workdir.data_difference) whose weights do not fit, a CheckpointMismatch naming it.
  """
  config = exp.config
  directory = require_checkpoint(workdir)
  generator_critic = config.forcing.paradigm == "self_forcing" and not single_network
  optimizer = state_lib.make_optimizer(config)

  def create():
    params = init_params(exp, jax.random.key(0), model)
    if generator_critic:
      critic = nn.meta.unbox(logical_critic_params(exp, jax.random.key(0)))
      teacher = init_params(exp, jax.random.key(0), exp.score_model)
      return state_lib.create_generator_critic(
          {"generator": params, "critic": critic, "teacher": teacher}, optimizer, optimizer)
    return state_lib.create(params, optimizer)

  # Whatever mesh trained it, the checkpoint is read whole onto one device of this process.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                      jax.eval_shape(create))
  checkpointer = checkpoint_lib.Checkpointer(directory, keep=config.train.keep_checkpoints,
                                             read_only=True)
  try:
    state = checkpointer.restore_latest(like)
  except checkpoint_lib.CheckpointMismatch as e:
    # A run's model keys are checked against its run.json before (videoar.main); what is left to
    # shape its weights is its data's frames (their channels), which the advice to use a new
    # workdir would not mend. A stage's data may differ by design (the ODE student's pairs).
    record = None if single_network else workdir_lib.RunRecord.load(workdir)
    difference = record and workdir_lib.data_difference(record.config, config.to_dict())
    if difference:
      raise checkpoint_lib.CheckpointMismatch(
          f"{workdir} was trained on other data ({difference}: its run.json -> this config),"
          " whose frames its weights do not fit: pass the data it was trained with") from e
    raise
  finally:
    checkpointer.close()
  if state is None:
    raise MissingInput(f"no readable checkpoint in {directory}: train first"
                       " (--mode=train or --mode=all)")
  return Trained(sampled_params(state, use_ema, generator_critic), int(state.step))


def require_checkpoint(workdir: str) -> str:
  """WORKDIR/checkpoints, when it holds a finished checkpoint; raises errors.MissingInput (a
  FileNotFoundError) when not. Reads no checkpoint: a tool of a trained run calls it before it
  builds (an Atari source generates its episodes first), and it is said before orbax opens (and
  would create) the directory."""
  directory = os.path.join(workdir, "checkpoints")
  if not checkpoint_lib.finished_steps(directory):
    raise MissingInput(f"no checkpoint in {directory}: train first (--mode=train or --mode=all)")
  return directory


def sampled_params(state: state_lib.TrainState, use_ema: bool, generator_critic: bool):
  """The weights a sampler uses from a train state: its EMA (`use_ema`) or trained parameters,
  of the model, or of the generator of a generator/critic state."""
  params = state.ema_params if use_ema else state.params
  return params["generator"] if generator_critic else params


def make_sampler(exp: Experiment) -> sampling.Sampler:
  """The streaming sampler of `exp`: its chunk, the frames it saw in training, its guidance."""
  c = exp.config
  window = sampling.window_frames(c.data.num_frames, c.forcing.chunk, c.forcing.history_window,
                                  c.forcing.sink_frames)
  return sampling.Sampler(exp.model, frame_shape=exp.frame_shape, chunk=c.forcing.chunk,
                          window=window, guidance_scale=c.sample.guidance_scale,
                          solver=c.sample.solver, sink_frames=c.forcing.sink_frames,
                          train_frames=c.data.num_frames,
                          guide_history=c.sample.guide_history,
                          guidance_interval=c.sample.guidance_interval,
                          history_time=c.sample.history_time)
