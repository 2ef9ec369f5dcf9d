"""Config validation: every bad value fails here, before anything compiles, with one line
naming the key and what is allowed."""

from __future__ import annotations

import inspect

import ml_collections

from videoar.attention import ops
from videoar.data import pipeline
from videoar.forcing import PARADIGMS, resampling
from videoar.models import dit

DTYPES = ("float32", "bfloat16")


# Each batch entry a model can be conditioned on, and the config key that turns it on.
CONDITIONING_SIZES = {"label": "model.num_classes", "actions": "model.num_actions",
                      "text": "model.text_dim"}


class ConfigError(ValueError):
  pass


def _fail(key: str, value, allowed: str):
  raise ConfigError(f"config.{key}={value!r} is invalid: {allowed}")


def _positive(config, key: str):
  value = config
  for part in key.split("."):
    value = value[part]
  if not isinstance(value, int) or value < 1:
    _fail(key, value, "must be an integer >= 1")
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  if config.data.source not in pipeline.SOURCES:
    _fail("data.source", config.data.source, f"allowed: {', '.join(pipeline.SOURCES)}")
  if config.data.source in pipeline.RECORDINGS and not config.data.get("path"):
    _fail("data.path", config.data.get("path"),
          f"data.source={config.data.source!r} reads files: set --config.data.path=DIR")
  if config.data.get("prefetch", "threads") not in pipeline.PREFETCH:
    _fail("data.prefetch", config.data.prefetch, f"allowed: {', '.join(pipeline.PREFETCH)}")
  if config.forcing.paradigm not in PARADIGMS:
    _fail("forcing.paradigm", config.forcing.paradigm, f"allowed: {', '.join(PARADIGMS)}")
  options = set(config.forcing) - {"paradigm"}
  accepted = set(inspect.signature(PARADIGMS[config.forcing.paradigm]).parameters) - {
      "model", "params", "batch", "rng", "step"}
  for key in sorted(options - accepted):
    _fail(f"forcing.{key}", config.forcing[key],
          f"paradigm {config.forcing.paradigm!r} takes only: {', '.join(sorted(accepted))}")
  if config.forcing.paradigm == "resampling":
    if config.forcing.get("resample_mode", "autoregressive") not in resampling.MODES:
      _fail("forcing.resample_mode", config.forcing.resample_mode,
            f"allowed: {', '.join(resampling.MODES)}")
    if config.forcing.get("resample_shift", 0.6) <= 0:
      _fail("forcing.resample_shift", config.forcing.resample_shift, "must be > 0")
    if "resample_steps" in config.forcing:
      _positive(config, "forcing.resample_steps")
  if config.model.attention_impl not in ops.IMPLS:
    _fail("model.attention_impl", config.model.attention_impl, f"allowed: {', '.join(ops.IMPLS)}")
  if config.model.get("prediction", "velocity") not in dit.PREDICTIONS:
    _fail("model.prediction", config.model.prediction, f"allowed: {', '.join(dit.PREDICTIONS)}")
  if config.model.get("prediction") == "residual" and not config.model.get(
      "previous_frame_input", False):
    _fail("model.prediction", "residual", "needs model.previous_frame_input=True")
  if config.model.dtype not in DTYPES:
    _fail("model.dtype", config.model.dtype, f"allowed: {', '.join(DTYPES)}")
  if "num_workers" in config.data:
    _positive(config, "data.num_workers")
  for key in ("data.num_frames", "data.batch_size", "model.patch", "model.width", "model.depth",
              "model.num_heads", "forcing.chunk", "train.num_steps", "train.log_every",
              "train.checkpoint_every", "sample.num_steps", "sample.num_videos",
              "sample.length_multiple", "eval.num_clips", "eval.segment_len"):
    _positive(config, key)

  for key in CONDITIONING_SIZES.values():
    value = config.model.get(key.split(".")[1], 0)
    if not isinstance(value, int) or value < 0:
      _fail(key, value, "must be an integer >= 0 (0: not conditioned on it)")

  if config.model.get("previous_frame_input", False) and config.forcing.paradigm in (
      "diffusion_forcing", "bidirectional"):
    _fail("model.previous_frame_input", True,
          f"needs a clean previous frame, which {config.forcing.paradigm} does not train with")
  top_k = config.model.get("routing_top_k", 0)
  if not isinstance(top_k, int) or top_k < 0:
    _fail("model.routing_top_k", top_k, "must be an integer >= 1 (0 turns routing off)")
  if top_k and config.forcing.paradigm == "bidirectional":
    _fail("model.routing_top_k", top_k, "a bidirectional model has no history to route over")
  size = config.data.options.get("size", 32)
  if size % config.model.patch:
    _fail("model.patch", config.model.patch,
          f"must divide the frame size data.options.size={size}")
  if config.model.width % config.model.num_heads:
    _fail("model.num_heads", config.model.num_heads,
          f"must divide model.width={config.model.width}")
  if config.model.width // config.model.num_heads < 8:
    _fail("model.num_heads", config.model.num_heads,
          "leaves fewer than 8 channels a head for the 3D rotary embedding")
  chunk = config.forcing.chunk
  if config.data.num_frames % chunk:
    _fail("forcing.chunk", chunk, f"must divide data.num_frames={config.data.num_frames}")
  if config.sample.context_frames % chunk:
    _fail("sample.context_frames", config.sample.context_frames,
          f"must be a multiple of forcing.chunk={chunk}")
  if not 0 <= config.sample.context_frames < config.data.num_frames:
    _fail("sample.context_frames", config.sample.context_frames,
          f"must be in [0, data.num_frames={config.data.num_frames})")
  if not 0.0 <= config.forcing.cond_drop_prob < 1.0:
    _fail("forcing.cond_drop_prob", config.forcing.cond_drop_prob, "must be in [0, 1)")
  if config.forcing.time_shift <= 0:
    _fail("forcing.time_shift", config.forcing.time_shift, "must be > 0")
  if config.forcing.paradigm == "bidirectional" and chunk != config.data.num_frames:
    _fail("forcing.chunk", chunk,
          "a bidirectional model generates the whole clip at once: set it to data.num_frames")


def validate_against_data(config: ml_collections.ConfigDict, clip: dict) -> None:
  """Checks that a clip of data.source carries what the model is conditioned on."""
  for entry, key in CONDITIONING_SIZES.items():
    size = config.model.get(key.split(".")[1], 0)
    if not size:
      continue
    if entry not in clip:
      _fail(key, size, f"data.source={config.data.source!r} gives no {entry!r} to condition on"
            f" (it gives {', '.join(sorted(clip))})")
    if entry == "text" and clip["text"].shape[-1] != size:
      _fail(key, size, f"data.source={config.data.source!r} gives text embeddings of shape"
            f" {clip['text'].shape}")
