"""Self Forcing on the bouncing world: a bidirectional teacher, an ODE-initialised causal few-step
student, then Self Forcing (DMD against the teacher, an online critic). One config, a variant per
stage, each stage reading the one before from a workdir named here (launch/self_forcing.sh runs
them in order):

  teacher  the bidirectional teacher: full attention over the 8-frame clip, one t per video
           (forcing/bidirectional.py); it is the real score and the critic's initialisation.
  ode      the causal few-step student regressed onto the teacher's ODE trajectories
           (forcing/ode_regression.py), read from ArrayRecord shards that
             python -m videoar.ode_pairs --config=configs/bouncing_sf.py:teacher ...
           writes from the teacher's 16-step Euler solutions, stored at the student's 4 warped
           times [1, 0.9375, 0.8333, 0.625] and the clean end.
  (none)   Self Forcing (spec: the reference code guandeh17/Self-Forcing): the student rolls
           out whole videos with its own 4-step sampler over the KV cache, chunk by chunk; one
           exit step per iteration carries gradient; DMD (forcing.loss="sid": SiD) against the
           teacher; the critic starts from the teacher and takes forcing.critic_updates
           flow-matching updates per generator update; the EMA of the generator is sampled with
           the same 4-step sampler (sample.solver="few_step").
  gan      Self Forcing's GAN variant (spec 4; the same as --config.forcing.loss=gan, except that
           with "test" it also puts the one discriminator tap on the tiny model's one block):
           the critic becomes a discriminator, the teacher-initialised backbone plus a
           classification head reading its tokens after forcing.discriminator_taps, trained on
           the logistic loss between the rollouts and the world's clips (forcing/self_forcing.py
           says why these are "real"); the generator on the non-saturating GAN loss alone.
           Train it in a workdir of its own, e.g. runs/bouncing_sf/self_forcing_gan.
  world    with "ode": the ODE student sampled and evaluated on the world (its training data are
           the pairs, which hold nothing out).
  occluded, moving_mnist
           the whole pipeline on configs/bouncing_rf.py's other worlds (the same data keys as its
           variants of those names), so that Self Forcing's rows sit beside the Resampling
           Forcing arms there; every stage takes the same one (VARIANT=moving_mnist bash
           launch/self_forcing.sh runs them under runs/bouncing_sf_moving_mnist/).
  test     tiny shapes and a few steps of whichever stage is named with it (e.g. "teacher,test").

The world, model and clip are configs/bouncing_tiny.py's (32x32, 2 objects, width 128, depth 4,
8x8 patches, 8 frames), without its FineDecoder. The student (ODE stage and generator) reads its clean previous frame as
plain Teacher Forcing (configs/bouncing_rf.py:teacher_forcing) does, and generates chunks of 2
frames; the teacher and the critic score whole noised videos, where no frame is clean, so they do
not read it (experiment.Experiment.score_model). Learning rates keep the reference's shape (the critic's
5x lower than the generator's, beta1 = 0, clip 10, EMA 0.99), re-tuned for this scale.
"""

import ml_collections

from videoar import base_config

RUNS = "runs/bouncing_sf"


def get_config(variant: str = ""):
  variants = base_config.variants(
      variant, ("teacher", "ode", "gan", "world", "occluded", "moving_mnist", "test"))
  config = base_config.world(base_config.get_config(), variants)
  config.data.batch_size = 16  # the batch its stages in docs/results.md were measured at
  config.model.prediction = "data"
  stages = list(dict.fromkeys(v for v in variants if v in ("teacher", "ode")))
  if len(stages) > 1:  # the first one won, silently
    raise ValueError(f"config variants {stages[0]} and {stages[1]} are two stages; name one")
  stage = stages[0] if stages else "self_forcing"
  if "world" in variants and stage != "ode":  # the other stages train on the world already
    raise ValueError(f"config variant 'world' is of the ODE stage ('ode,world'), not of"
                     f" {stage!r}")
  runs = RUNS + ("_test" if "test" in variants else "")
  if stage == "teacher":
    config.forcing.paradigm = "bidirectional"
    config.model.previous_frame_input = False
    config.forcing.chunk = config.data.num_frames
    config.sample.context_frames = 0
    config.train.num_steps = 1200
    config.eval.every = 0  # unconditional 8-frame clips: no continuation to score
  elif stage == "ode":
    config.forcing.paradigm = "ode_regression"
    config.forcing.chunk = 2
    if "world" not in variants:  # trained on the teacher's pairs
      config.data.source = "array_record"
      config.data.path = f"{runs}/ode_pairs"
      config.data.options = ml_collections.ConfigDict(dict(stride=1, eval_fraction=0.0))
    config.sample.solver = "few_step"
    config.sample.num_steps = config.forcing.num_steps
    config.sample.time_shift = config.forcing.warp_shift
    config.train.num_steps = 1200
    config.eval.every = 0  # its data are the pairs, which hold no clip out; see "world"
  else:
    config.forcing.paradigm = "self_forcing"
    config.forcing.chunk = 2
    config.forcing.teacher_workdir = f"{runs}/teacher"
    config.forcing.generator_workdir = f"{runs}/ode"
    config.optim.learning_rate = 1e-4
    config.forcing.critic_learning_rate = 2e-5
    config.optim.b1 = 0.0
    config.optim.b2 = 0.999
    config.optim.grad_clip = 10.0
    config.optim.ema_decay = 0.99
    config.optim.warmup_steps = 10
    config.sample.solver = "few_step"
    config.sample.num_steps = config.forcing.num_steps
    config.sample.time_shift = config.forcing.warp_shift
    config.train.num_steps = 200
    config.train.log_every = 10
    config.train.checkpoint_every = 50
  if "gan" in variants:
    if stage != "self_forcing":
      raise ValueError(f"config variant 'gan' is of the Self Forcing stage, not of {stage!r}")
    config.forcing.loss = "gan"
  if "test" in variants:
    base_config.tiny(config)
    config.data.num_frames = 4
    config.forcing.chunk = 4 if stage == "teacher" else 2
    config.sample.context_frames = 0 if stage == "teacher" else 2
    config.sample.length_multiple = 1
    if stage == "self_forcing":
      config.forcing.critic_updates = 2
    if config.forcing.loss == "gan":
      config.forcing.discriminator_taps = (config.model.depth - 1,)
  return config
