"""Config validation: every bad value fails here, before anything compiles, with one line
naming the key and what is allowed (errors.ConfigError).

`validate(config)` checks the config on its own: its keys against the base config
(videoar/base_config.py), each value's range, and the values that must agree. `validate_source`
checks it against the data source it names: the source's options, its frame size against the
patch, the conditioning it gives, and the held-out clips that sampling and evaluation will ask
for.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os

import ml_collections

from videoar import base_config, sampling
from videoar.attention import ops
from videoar.data import pipeline
from videoar.diffusion import flow
from videoar.errors import ConfigError, fail
from videoar.forcing import PARADIGMS, resampling, self_forcing
from videoar.models import dit
from videoar.train import checkpoint as checkpoint_lib
from videoar.train import sharding as sharding_lib
from videoar.train import workdir as workdir_lib

DTYPES = ("float32", "bfloat16")

# Each batch entry a model can be conditioned on, and the config key that turns it on.
CONDITIONING_SIZES = {"label": "model.num_classes", "actions": "model.num_actions",
                      "text": "model.text_dim"}
# The entries among them that are ids into an embedding (the id equal to its size is the null).
_ID_NAMES = {"label": "class label", "actions": "action id"}
# The keys every paradigm's loss_fn gets from the trainer rather than from config.forcing.
_LOSS_ARGUMENTS = frozenset({"model", "params", "batch", "rng", "step"})
# Self Forcing trains a generator against a critic (experiment.py): its config.forcing keys are
# self_forcing.Options' and those of its critic and of the stages it starts from.
SELF_FORCING = "self_forcing"
_SELF_FORCING_KEYS = frozenset(
    {f.name for f in dataclasses.fields(self_forcing.Options)} - {"num_frames", "frame_shape"}
    | {"critic_learning_rate", "critic_updates", "teacher_workdir", "generator_workdir"})
METHODS = tuple(PARADIGMS) + (SELF_FORCING,)


def _keys(tree: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  """The dotted keys of a config, data.options' contents excepted (they belong to the source)."""
  keys = set()
  for key, value in tree.items():
    path = prefix + key
    if isinstance(value, ml_collections.ConfigDict) and path != "data.options":
      keys |= _keys(value, path + ".")
    else:
      keys.add(path)
  return keys


def _get(config: ml_collections.ConfigDict, key: str):
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def _positive(config, key: str):
  value = _get(config, key)
  if not isinstance(value, int) or value < 1:
    fail(key, value, "must be an integer >= 1")
  return value


def _check_finite(config: ml_collections.ConfigDict) -> None:
  """Every float (and every float in a tuple), data.options' too, is finite: no range check
  below catches NaN, an infinity passes some, and the run record cannot hold either."""
  def leaves(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from leaves(value, prefix + key + ".")
      else:
        yield prefix + key, value
  for key, value in leaves(config, ""):
    if any(isinstance(x, float) and not math.isfinite(x)
           for x in (value if isinstance(value, (tuple, list)) else (value,))):
      fail(key, value, "must be finite")


def paradigm_options(config: ml_collections.ConfigDict) -> dict:
  """The config.forcing values that the chosen paradigm reads (its loss_fn's keyword arguments;
  Self Forcing's keys)."""
  if config.forcing.paradigm == SELF_FORCING:
    accepted = _SELF_FORCING_KEYS
  else:
    accepted = set(inspect.signature(PARADIGMS[config.forcing.paradigm]).parameters)
  return {key: value for key, value in config.forcing.items()
          if key in accepted - _LOSS_ARGUMENTS}


def _check_keys(config: ml_collections.ConfigDict) -> None:
  base = base_config.get_config()
  expected, present = _keys(base), _keys(config)
  for key in sorted(present - expected):
    raise ConfigError(f"config.{key} is not a key of the base config (videoar/base_config.py);"
                      f" check its spelling")
  for key in sorted(expected - present):
    raise ConfigError(f"config.{key} is missing: build configs on"
                      " videoar.base_config.get_config(), which defines every key")
  # Keys another paradigm reads would be silently ignored.
  taken = set(paradigm_options(config)) | {"paradigm"}
  for key in sorted(set(config.forcing) - taken):
    if config.forcing[key] != base.forcing[key]:
      fail(f"forcing.{key}", config.forcing[key],
           f"paradigm {config.forcing.paradigm!r} does not read it (it reads"
           f" {', '.join(sorted(taken - {'paradigm'}))})")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError, one line naming the first bad key, for a config that cannot run."""
  _check_finite(config)
  if config.data.source not in pipeline.SOURCES:
    fail("data.source", config.data.source, f"allowed: {', '.join(pipeline.SOURCES)}")
  if config.forcing.paradigm not in METHODS:
    fail("forcing.paradigm", config.forcing.paradigm, f"allowed: {', '.join(METHODS)}")
  _check_keys(config)
  if config.data.source in pipeline.RECORDINGS and not config.data.path:
    fail("data.path", config.data.path,
         f"data.source={config.data.source!r} reads files: set --config.data.path=DIR")
  if config.data.source in pipeline.PROCEDURAL_SOURCES and config.data.path:
    fail("data.path", config.data.path,
         f"data.source={config.data.source!r} reads no files: leave data.path unset")
  if config.data.prefetch not in pipeline.PREFETCH:
    fail("data.prefetch", config.data.prefetch, f"allowed: {', '.join(pipeline.PREFETCH)}")
  if config.forcing.resample_mode not in resampling.MODES:
    fail("forcing.resample_mode", config.forcing.resample_mode,
         f"allowed: {', '.join(resampling.MODES)}")
  if config.forcing.loss_weighting not in flow.LOSS_WEIGHTINGS:
    fail("forcing.loss_weighting", config.forcing.loss_weighting,
         f"allowed: {', '.join(flow.LOSS_WEIGHTINGS)}")
  if config.forcing.history_time_input and config.forcing.resample_mode != "noise_augmentation":
    fail("forcing.history_time_input", True, "labels a noised history with its noise level: it"
         " needs forcing.resample_mode='noise_augmentation'")
  if not 0.0 <= config.sample.history_time < 1.0:
    fail("sample.history_time", config.sample.history_time, "must be in [0, 1)")
  if config.sample.history_time and not (config.forcing.history_time_input
                                         or config.forcing.paradigm == "diffusion_forcing"):
    fail("sample.history_time", config.sample.history_time, "needs a model trained on a history"
         " labelled with its noise level: forcing.history_time_input=True or paradigm"
         " diffusion_forcing")
  if config.forcing.resample_shift <= 0:
    fail("forcing.resample_shift", config.forcing.resample_shift, "must be > 0")
  if config.model.attention_impl not in ops.IMPLS:
    fail("model.attention_impl", config.model.attention_impl, f"allowed: {', '.join(ops.IMPLS)}")
  if config.model.attention_impl == "pallas" and config.model.routing_top_k:
    fail("model.attention_impl", "pallas", "has no routed kernel: with model.routing_top_k > 0"
         " use auto or blocked")
  if config.model.prediction not in dit.PREDICTIONS:
    fail("model.prediction", config.model.prediction, f"allowed: {', '.join(dit.PREDICTIONS)}")
  if (config.model.prediction in dit.PREDICTIONS_FROM_PREVIOUS
      and not config.model.previous_frame_input):
    fail("model.prediction", config.model.prediction, "needs model.previous_frame_input=True")
  if config.model.warp_sigma < 0:
    fail("model.warp_sigma", config.model.warp_sigma, "must be >= 0 (pixels; 0: not smoothed)")
  # A warp's own keys would be silently ignored by another prediction.
  base_model = base_config.get_config().model
  for key in ("warp_sigma", "warp_residual"):
    if config.model.prediction != "warp" and config.model[key] != base_model[key]:
      fail(f"model.{key}", config.model[key],
           f"read only with model.prediction='warp' (this config has"
           f" {config.model.prediction!r})")
  if config.model.dtype not in DTYPES:
    fail("model.dtype", config.model.dtype, f"allowed: {', '.join(DTYPES)}")
  if config.model.remat_policy not in dit.REMAT_POLICIES:
    fail("model.remat_policy", config.model.remat_policy,
         f"allowed: {', '.join(dit.REMAT_POLICIES)}")
  for key in ("data.num_frames", "data.batch_size", "data.num_workers", "model.patch",
              "model.width", "model.depth", "model.num_heads", "model.fine_width",
              "model.fine_depth", "forcing.chunk",
              "forcing.resample_steps", "train.num_steps", "train.log_every",
              "train.checkpoint_every", "train.keep_checkpoints", "sample.num_steps",
              "sample.num_videos", "sample.length_multiple", "eval.num_clips",
              "eval.segment_len", "eval.during_training_clips"):
    _positive(config, key)
  for key in list(CONDITIONING_SIZES.values()) + ["model.routing_top_k",
                                                  "eval.every",
                                                  "forcing.history_window",
                                                  "forcing.warmup_steps"]:
    value = _get(config, key)
    if not isinstance(value, int) or value < 0:
      fail(key, value, "must be an integer >= 0 (0 turns it off)")
  if not isinstance(config.seed, int) or not 0 <= config.seed < 2**32:
    # It seeds the data streams too, whose seeds are unsigned and 32-bit (grain's shuffle refuses
    # more); jax.random.key keeps only its low 32 bits (seed 2**32 would init as seed 0) and
    # raises an OverflowError from 2**63.
    fail("seed", config.seed, "must be an integer in [0, 2**32)")

  if config.model.previous_frame_input and config.forcing.paradigm in (
      "diffusion_forcing", "bidirectional"):
    fail("model.previous_frame_input", True,
         f"needs a clean previous frame, which {config.forcing.paradigm} does not train with")
  if config.model.routing_top_k and config.forcing.paradigm == "bidirectional":
    fail("model.routing_top_k", config.model.routing_top_k,
         "a bidirectional model has no history to route over")
  if config.model.width % config.model.num_heads:
    fail("model.num_heads", config.model.num_heads,
         f"must divide model.width={config.model.width}")
  if config.model.width // config.model.num_heads < 8:
    fail("model.num_heads", config.model.num_heads,
         "leaves fewer than 8 channels a head for the 3D rotary embedding")
  fine = config.model.fine_patch
  if not isinstance(fine, int) or fine < 0 or (fine and config.model.patch % fine):
    fail("model.fine_patch", fine, f"must be 0 (off) or a divisor of model.patch="
         f"{config.model.patch}")
  head_dim = config.model.width // config.model.num_heads
  if fine and config.model.fine_width % head_dim:
    fail("model.fine_width", config.model.fine_width,
         f"must be a multiple of the trunk's head dim {head_dim} (model.width="
         f"{config.model.width} / model.num_heads={config.model.num_heads})")
  if head_dim % 2:  # the FineDecoder's heads have the trunk's head dim: it holds for them too
    fail("model.num_heads", config.model.num_heads, f"leaves an odd head dim model.width="
         f"{config.model.width} / model.num_heads={config.model.num_heads} = {head_dim}: the"
         " rotary embedding turns pairs of channels")
  narrowest = min([config.model.width] + ([config.model.fine_width] if fine else []))
  if not int(narrowest * config.model.mlp_ratio) >= 1:
    fail("model.mlp_ratio", config.model.mlp_ratio, f"leaves the MLP of a block of width"
         f" {narrowest} no unit: int(width x mlp_ratio) must be >= 1")
  _check_mesh(config)
  chunk = config.forcing.chunk
  if config.data.num_frames % chunk:
    fail("forcing.chunk", chunk, f"must divide data.num_frames={config.data.num_frames}")
  if config.sample.context_frames % chunk:
    fail("sample.context_frames", config.sample.context_frames,
         f"must be a multiple of forcing.chunk={chunk}")
  if not 0 <= config.sample.context_frames < config.data.num_frames:
    fail("sample.context_frames", config.sample.context_frames,
         f"must be in [0, data.num_frames={config.data.num_frames})")
  if not 0.0 <= config.forcing.cond_drop_prob < 1.0:
    fail("forcing.cond_drop_prob", config.forcing.cond_drop_prob, "must be in [0, 1)")
  for key in ("forcing.time_shift", "sample.time_shift"):
    if not _get(config, key) > 0:  # flow.shift_time leaves [0, 1] or is 0 for s <= 0
      fail(key, _get(config, key), "must be > 0")
  if not config.sample.guidance_scale >= 0:
    fail("sample.guidance_scale", config.sample.guidance_scale, "must be >= 0 (1 is no guidance)")
  if not 0.0 <= config.forcing.history_drop_prob < 1.0:
    fail("forcing.history_drop_prob", config.forcing.history_drop_prob, "must be in [0, 1)")
  if config.sample.guide_history and not config.forcing.history_drop_prob:
    fail("sample.guide_history", True, "needs a model trained without history some of the time:"
         " forcing.history_drop_prob > 0")
  interval = tuple(config.sample.guidance_interval)
  if len(interval) != 2 or not 0.0 <= interval[0] < interval[1] <= 1.0:
    fail("sample.guidance_interval", config.sample.guidance_interval,
         "must be (low, high) with 0 <= low < high <= 1")
  if config.sample.guide_history and config.sample.guidance_scale == 1.0:
    fail("sample.guide_history", True, "guides nothing at sample.guidance_scale=1")
  if config.sample.guidance_scale != 1.0 and not (config.sample.guide_history
                                                  or _conditioned(config)):
    # The sampler would run unguided without a word (Sampler.guided).
    fail("sample.guidance_scale", config.sample.guidance_scale,
         "guides nothing: the model is conditioned on nothing (model.num_classes, num_actions and"
         " text_dim are 0) and sample.guide_history is off; set 1, or guide on the history")
  _check_optimizer(config.optim)
  if config.sample.solver not in sampling.SOLVERS:
    fail("sample.solver", config.sample.solver, f"allowed: {', '.join(sampling.SOLVERS)}")
  if config.forcing.paradigm == SELF_FORCING:
    _check_self_forcing(config)
  sink = config.forcing.sink_frames
  if not isinstance(sink, int) or sink < 0 or sink % chunk:
    fail("forcing.sink_frames", sink, f"must be a multiple of forcing.chunk={chunk}, >= 0")
  if sink and not config.forcing.history_window:
    fail("forcing.sink_frames", sink, "needs forcing.history_window > 0 (a sink is what a"
         " sliding window keeps besides the recent frames)")
  if sink and sink >= config.data.num_frames - chunk:
    fail("forcing.sink_frames", sink, f"must leave room for a chunk's history below"
         f" data.num_frames={config.data.num_frames}")
  if config.forcing.paradigm == "bidirectional" and chunk != config.data.num_frames:
    fail("forcing.chunk", chunk,
         "a bidirectional model generates the whole clip at once: set it to data.num_frames")


def model_dims(model: ml_collections.ConfigDict) -> list[tuple[str, int, str]]:
  """(logical axis name, size, the config values it comes from) of every dimension of the
  model's parameters that the default mesh.rules split (base_config.py): embed, cond, mlp, heads
  and modulation, of the trunk's blocks (and of a discriminator's taps, which have the trunk's
  width) and of the FineDecoder's. test_sharding.py checks them against the parameters' shapes.
  A rule for another name is checked against the parameters once the mesh is made
  (sharding.Layout.shardings)."""
  head_dim = model.width // model.num_heads
  mlp = int(model.width * model.mlp_ratio)
  dims = [("heads", model.num_heads, f"model.num_heads={model.num_heads}"),
          ("mlp", mlp, f"the MLP width int(model.width x model.mlp_ratio)={mlp}"),
          ("embed", model.width, f"model.width={model.width}"),
          ("cond", model.width, f"model.width={model.width}"),
          ("modulation", 6 * model.width, f"a block's AdaLN outputs 6 x model.width="
           f"{6 * model.width}")]
  if not model.fine_patch:  # the final layer; a FineDecoder has its own
    return dims + [("modulation", 2 * model.width, f"the final layer's AdaLN outputs 2 x"
                    f" model.width={2 * model.width}")]
  fine, fine_mlp = model.fine_width, int(model.fine_width * model.mlp_ratio)
  return dims + [
      ("heads", fine // head_dim, f"the FineDecoder's heads model.fine_width={fine} / head dim"
       f" {head_dim} = {fine // head_dim}"),
      ("mlp", fine_mlp, f"the FineDecoder's MLP width int(model.fine_width x model.mlp_ratio)="
       f"{fine_mlp}"),
      ("embed", fine, f"model.fine_width={fine}"),
      ("modulation", 6 * fine, f"a FineDecoder block's AdaLN outputs 6 x model.fine_width="
       f"{6 * fine}"),
      ("modulation", 2 * fine, f"the FineDecoder's final AdaLN outputs 2 x model.fine_width="
       f"{2 * fine}")]


def _check_mesh(config: ml_collections.ConfigDict) -> None:
  """config.mesh without the devices: its sizes, its rules, and what the rules split over the
  axes of a fixed size (a -1 axis is checked when the mesh is made, sharding.Layout): the batch,
  and the model's dimensions (model_dims). Each was found only after the workdir was made, the
  dimensions in a traceback while the train state was traced."""
  sizes = sharding_lib.mesh_sizes(config.mesh)
  rules = sharding_lib.logical_rules(config.mesh)
  sharding_lib.check_axes_used(sizes, rules)
  batch_axes = sharding_lib.split_axes(sizes, rules, "batch")
  shards = math.prod(sizes[axis] for axis in batch_axes)
  if config.data.batch_size % shards:
    axes = " x ".join(f"mesh.{axis}={sizes[axis]}" for axis in batch_axes)
    fail("data.batch_size", config.data.batch_size, f"must split evenly over the {shards} batch"
         f" shards of the mesh ({axes})")
  for name, size, what in model_dims(config.model):
    sharding_lib.check_split(sizes, rules, name, size, what)


def validate_platform(config: ml_collections.ConfigDict, backend: str) -> None:
  """Raises ConfigError for an attention implementation `backend` (the platform the job runs on,
  "cpu", "gpu" or "tpu") has no kernel for. Separate from `validate`, which initialises no JAX
  backend: a sweep validates its arms in a process that must leave the GPU to its runs."""
  if config.model.attention_impl == "pallas" and backend == "gpu":
    fail("model.attention_impl", "pallas", "has no GPU kernel: use auto (cuDNN where it serves"
         " the call) or cudnn")
  if config.model.attention_impl == "cudnn":
    if backend != "gpu":
      fail("model.attention_impl", "cudnn", f"needs a GPU and this host runs on {backend!r}: use"
           " auto, which picks cuDNN on a GPU")
    if config.model.routing_top_k:
      fail("model.attention_impl", "cudnn", "has no routed kernel: with model.routing_top_k > 0"
           " use auto or blocked")
    if config.model.dtype != "bfloat16":
      fail("model.attention_impl", "cudnn", f"needs model.dtype='bfloat16' (this config has"
           f" {config.model.dtype!r})")


def _check_optimizer(optim: ml_collections.ConfigDict) -> None:
  """Ranges in which AdamW and the EMA are defined: b2 = 1 makes Adam's bias correction 0/0."""
  if not optim.learning_rate > 0:
    fail("optim.learning_rate", optim.learning_rate, "must be > 0")
  if not isinstance(optim.warmup_steps, int) or optim.warmup_steps < 0:
    fail("optim.warmup_steps", optim.warmup_steps, "must be an integer >= 0")
  if not optim.weight_decay >= 0:
    fail("optim.weight_decay", optim.weight_decay, "must be >= 0")
  if not optim.grad_clip > 0:
    fail("optim.grad_clip", optim.grad_clip, "must be > 0")
  for key in ("b1", "b2", "ema_decay"):
    if not 0.0 <= optim[key] < 1.0:
      fail(f"optim.{key}", optim[key], "must be in [0, 1)")


# The stages a Self Forcing run starts from (experiment._generator_critic_train_step) and what
# each must be: the teacher scores whole clips (the bidirectional stage); the generator starts
# from one network of this model (the ODE stage; any run but another Self Forcing run fits).
STAGES = {"teacher": "the bidirectional teacher (configs/bouncing_sf.py:teacher)",
          "generator": "the causal student (configs/bouncing_sf.py:ode)"}
# The model keys whose trained values a checkpoint must be read with: they shape its weights or
# say what its output is (a Self Forcing stage, a run sampled or evaluated). The teacher is read
# without the previous-frame input (Experiment.score_model); a scan_layers mismatch has its own
# message (checkpoint.Checkpointer).
TRAINED_MODEL_KEYS = ("patch", "width", "depth", "num_heads", "mlp_ratio", "num_classes",
                     "num_actions", "text_dim", "prediction", "fine_patch", "fine_width",
                     "fine_depth", "warp_sigma", "warp_residual")
# A run's own checkpoint also depends on previous_frame_input (its input projections read the
# previous frame), which the teacher's stage check leaves out; as dotted config paths, as a run
# record's differences name them.
TRAINED_MODEL_PATHS = frozenset(f"model.{key}" for key in
                                (*TRAINED_MODEL_KEYS, "previous_frame_input"))


def validate_stages(config: ml_collections.ConfigDict) -> None:
  """Checks that the stages a Self Forcing run starts from (forcing.teacher_workdir,
  forcing.generator_workdir) are trained runs of the right kind (stage_problem); raises
  ConfigError naming the key."""
  if config.forcing.paradigm != SELF_FORCING:
    return
  for stage in STAGES:
    workdir = config.forcing[f"{stage}_workdir"]
    problem = stage_problem(workdir, config, stage)
    if problem:
      fail(f"forcing.{stage}_workdir", workdir, problem)


def stage_problem(workdir: str | None, config: ml_collections.ConfigDict,
                  stage: str) -> str | None:
  """What keeps `workdir` from being the `stage` (a key of STAGES) that a run of `config` reads,
  worded to follow "KEY=WORKDIR is invalid: "; None when nothing does. The stage must hold a
  finished checkpoint and a run.json whose run is of the stage's kind (the teacher
  bidirectional, the generator anything but Self Forcing), of config's model
  (TRAINED_MODEL_KEYS; for the generator previous_frame_input too) and, for the teacher, of its
  data (workdir.data_difference: the source and its options). Reads no checkpoint."""
  needed = f"it must be the workdir of {STAGES[stage]}, trained first"
  if not workdir:
    return f"not set: {needed}"
  if not os.path.isdir(workdir):
    return f"no such directory: {needed}"
  if not checkpoint_lib.finished_steps(os.path.join(workdir, "checkpoints")):
    return f"its checkpoints/ holds no finished checkpoint: {needed}"
  try:
    record = workdir_lib.RunRecord.load(workdir)
  except workdir_lib.RunRefused:  # its message's advice is about --workdir
    record = None
  if record is None:
    return f"it holds no readable run record ({workdir_lib.RECORD_NAME}): {needed}"
  paradigm = record.config.get("forcing", {}).get("paradigm")
  wrong_kind = paradigm != "bidirectional" if stage == "teacher" else paradigm == SELF_FORCING
  if wrong_kind:
    return f"the run in it is of forcing.paradigm={paradigm!r}: {needed}"
  # The teacher scores this run's videos as samples of its world; the generator (the ODE
  # student) trained on the teacher's pairs, another source by design.
  if stage == "teacher":
    difference = workdir_lib.data_difference(record.config, config.to_dict())
    if difference:
      return (f"the run in it trained on other data ({difference}: its run.json -> this config):"
              f" {needed} on this config's data")
  trained = record.config.get("model", {})
  keys = TRAINED_MODEL_KEYS + (("previous_frame_input",) if stage == "generator" else ())
  for key in keys:
    # The fine decoder's width and depth are read only with a fine patch. A key the record
    # lacks (a run from before the key existed) is left to the checkpoint's own check.
    if key.startswith("fine_") and key != "fine_patch" and not config.model.fine_patch:
      continue
    if key in trained and trained[key] != config.model[key]:
      return (f"the run in it trained model.{key}={trained[key]!r} and this config has"
              f" {config.model[key]!r}: {needed} with this config's model")
  return None


def _check_self_forcing(config: ml_collections.ConfigDict) -> None:
  """Self Forcing's own values, and that its models can share one architecture."""
  f = config.forcing
  if f.loss not in self_forcing.LOSSES:
    fail("forcing.loss", f.loss, f"allowed: {', '.join(self_forcing.LOSSES)}")
  if f.loss == "gan":
    _check_gan(config)
  else:
    base = base_config.get_config().forcing
    for key in self_forcing.GAN_KEYS:
      if _tuple(f[key]) != _tuple(base[key]):
        fail(f"forcing.{key}", f[key], f"only forcing.loss='gan' reads it (loss={f.loss!r})")
  if not f.critic_learning_rate > 0:
    fail("forcing.critic_learning_rate", f.critic_learning_rate, "must be > 0")
  _positive(config, "forcing.critic_updates")
  _positive(config, "forcing.num_steps")
  # As forcing.time_shift: flow.shift_time takes a shift <= 0 out of (0, 1] (at 0 every few-step
  # time is 0, a first step that is not finite, and every score time the clamp's low end).
  # Finite: _check_finite.
  for key in ("warp_shift", "score_shift"):
    if not f[key] > 0:
      fail(f"forcing.{key}", f[key], "must be > 0 (1 leaves the times unwarped)")
  if not f.real_guidance >= 0:
    fail("forcing.real_guidance", f.real_guidance, "must be >= 0 (0 is no guidance: the teacher's"
         " x0 is cond + g (cond - uncond))")
  if not _conditioned(config) and f.real_guidance != base_config.get_config().forcing.real_guidance:
    # self_forcing.real_score scores unguided without a word: there is no unconditional score.
    fail("forcing.real_guidance", f.real_guidance, "guides nothing: the teacher is conditioned"
         " on nothing (model.num_classes, num_actions and text_dim are 0)")
  clamp = _tuple(f.score_clamp)
  if len(clamp) != 2 or not 0.0 <= clamp[0] < clamp[1] <= 1.0:
    fail("forcing.score_clamp", f.score_clamp, "must be (low, high) with 0 <= low < high <= 1")


def _conditioned(config: ml_collections.ConfigDict) -> bool:
  """Whether the model reads conditioning (a class, actions or text) that guidance can drop."""
  return any(config.model[key] for key in ("num_classes", "num_actions", "text_dim"))


def _tuple(value) -> tuple:
  """A scalar or sequence config value as a tuple (a command line may give either)."""
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _check_gan(config: ml_collections.ConfigDict) -> None:
  """The GAN variant's keys: two positive weights, penalties >= 0, taps that are blocks."""
  f = config.forcing
  weights = _tuple(f.gan_weights)
  if len(weights) != 2 or not all(isinstance(w, (int, float)) and w > 0 for w in weights):
    fail("forcing.gan_weights", f.gan_weights, "must be (w_G, w_D), both > 0")
  for key in ("r1_weight", "r2_weight"):
    if not isinstance(f[key], (int, float)) or not f[key] >= 0:
      fail(f"forcing.{key}", f[key], "must be >= 0 (0 turns it off)")
  taps, depth = _tuple(f.discriminator_taps), config.model.depth
  if (not taps or not all(isinstance(i, int) and 0 <= i < depth for i in taps)
      or list(taps) != sorted(set(taps))):
    fail("forcing.discriminator_taps", f.discriminator_taps,
         f"must be increasing block indices in [0, model.depth={depth})")


def source_options(config: ml_collections.ConfigDict) -> dict:
  """data.options as keyword arguments of data.source; raises ConfigError naming an option the
  source does not take."""
  options = config.data.options.to_dict()
  source = pipeline.SOURCES[config.data.source]
  allowed = {f.name for f in dataclasses.fields(source)} - {"path"}
  if config.data.source in pipeline.RECORDINGS:
    allowed |= {f.name for f in dataclasses.fields(pipeline.RecordedClips)} - {"recording",
                                                                              "hold_out"}
  for key in sorted(set(options) - allowed):
    fail(f"data.options.{key}", options[key],
         f"data.source={config.data.source!r} takes only: {', '.join(sorted(allowed))}")
  # A recording is made (Atari's episodes played, a folder's videos decoded) before a frame of it
  # can be checked: where its options give the frame's size, the patch is checked first.
  if config.data.source in pipeline.RECORDINGS and "size" in allowed:
    default = {f.name: f.default for f in dataclasses.fields(source)}["size"]
    size = options.get("size", default)
    if isinstance(size, int):  # else the source's own check names it
      _check_patch(config, size, size)
  return options


def _check_patch(config: ml_collections.ConfigDict, height: int, width: int) -> None:
  """That model.patch divides the data's frames of height x width."""
  patch = config.model.patch
  if height % patch or width % patch:
    fail("model.patch", patch, f"must divide the frame size {height}x{width} of"
         f" data.source={config.data.source!r}")


def validate_source(config: ml_collections.ConfigDict, source: pipeline.ClipSource,
                    clip: dict) -> None:
  """Checks the config against its data source, given one training `clip` of it: the frame size
  against the patch, the conditioning the model asks for (ids within its embeddings, where the
  source knows their range: pipeline.id_counts), and the held-out clips that `sample` and
  `evaluate` continue."""
  _check_patch(config, *clip["video"].shape[1:3])
  for entry, key in CONDITIONING_SIZES.items():
    size = _get(config, key)
    if not size:
      continue
    if entry not in clip:
      fail(key, size, f"data.source={config.data.source!r} gives no {entry!r} to condition on"
           f" (it gives {', '.join(sorted(clip))})")
    if entry == "text" and clip["text"].shape[-1] != size:
      fail(key, size, f"data.source={config.data.source!r} gives text embeddings of shape"
           f" {clip['text'].shape}")
    # A larger id would read past the embedding (NaN at the first step) or as the null id.
    count = pipeline.id_counts(source).get(entry, 0)
    if entry in _ID_NAMES and count > size:
      fail(key, size, f"data.source={config.data.source!r} has {_ID_NAMES[entry]}s up to"
           f" {count - 1}: must be >= {count} (the id {key.split('.')[-1]} is the null one)")
  # Frame t's action is the one that led to it from frame t - 1: frames `stride` apart keep one
  # action of every `stride`, and the model would be told only the last of those that acted.
  stride = config.data.options.get("stride", 1)
  if config.model.num_actions and "actions" in clip and stride > 1:
    fail("data.options.stride", stride, "must be 1 for a model conditioned on actions"
         " (model.num_actions): each frame's action leads to it from the frame before, so"
         f" frames {stride} apart would drop {stride - 1} of every {stride} actions")
  # Labels asked of a source (a video folder's subfolders) that no model reads were dropped
  # without a word: the run trained unconditioned.
  if config.data.options.get("labels") and not config.model.num_classes:
    count = pipeline.id_counts(source).get("label", 0)
    fail("data.options.labels", True, f"gives every clip one of {count} class labels, which"
         f" model.num_classes=0 does not read: set model.num_classes={count} to condition on"
         " them, or leave labels off")
  if config.forcing.paradigm == "ode_regression":
    # Its data are the teacher's ODE pairs, whole clips with nothing held out; its student is
    # sampled and evaluated on the world (configs/bouncing_sf.py's "ode,world").
    return
  held_out_frames = (config.sample.context_frames
                     + config.sample.length_multiple * config.data.num_frames)
  num_clips = max(config.sample.num_videos, config.eval.num_clips)
  try:
    pipeline.check_eval_clips(source, num_clips=num_clips, num_frames=held_out_frames)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  _check_held_out_memory(config, num_clips, clip["video"].shape[1:], host_memory_bytes())


def host_memory_bytes() -> int:
  """This host's physical memory in bytes (sysconf)."""
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_held_out_memory(config: ml_collections.ConfigDict, num_clips: int,
                           frame_shape: tuple[int, ...], memory_bytes: int) -> None:
  """Raises ConfigError when sampling or evaluating `num_clips` held-out clips of frames of
  `frame_shape` cannot fit in `memory_bytes`. The least they hold at once, in float32: the
  clips (context and true continuation), and while the sampler runs its start noise and its
  continuation (Sampler.generate); the KV cache spans the training length, not the sample, and is
  left out. A value that passes may still not fit: `--mode=sample` of 2 clips continued by 16,000
  frames of 32x32x3 (this figure: 0.79 GB) peaked at 4.2 GB resident (2026-12-07). Without the
  check a long sample.length_multiple was killed for memory without a word, after training."""
  generated = config.sample.length_multiple * config.data.num_frames
  frames = config.sample.context_frames + 2 * generated
  needed = num_clips * frames * math.prod(frame_shape) * 4
  if needed <= memory_bytes:
    return
  shape = "x".join(str(n) for n in frame_shape)
  fail("sample.length_multiple", config.sample.length_multiple,
       f"{num_clips} held-out clips continued by {generated} frames of {shape} need at least"
       f" {needed / 2**30:.1f} GiB (float32: the clips, the start noise and the continuation),"
       f" more than this host's {memory_bytes / 2**30:.1f} GiB of memory: lower"
       " sample.length_multiple, or sample.num_videos and eval.num_clips")
