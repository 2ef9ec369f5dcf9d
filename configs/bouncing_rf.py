"""Resampling Forcing on the bouncing world: the teacher-free method and its ablation arms.

Everything not listed here is the base config (videoar/base_config.py: the default run's world,
model, optimizer, sampler and evaluation), so the arms differ from the Teacher Forcing baseline
only in the history they train on. The default run (configs/bouncing_tiny.py) is the
noise_augmentation arm with history guidance, and since 2026-12-02 a FineDecoder (its
docstring); the arms here keep the linear unpatchify they were first measured with, and the
default_model variant gives every arm the default's model and sampler.

Knobs (config.forcing):
  paradigm = "resampling"
  resample_mode    "autoregressive" (the method): history frames are re-generated frame by frame
                   by the current model from x_ts through the sampler's KV-cache path, each on the
                   already degraded frames before it (intra-frame and accumulated error);
                   "parallel": every frame denoised from x_ts in one pass on the clean history
                   (intra-frame error only); "noise_augmentation": the history is x_ts itself.
  resample_shift   shift s of the logit-normal that draws t_s, one per video. 0.6 (the paper's
                   default) keeps t_s mostly low: small enough that the degraded history keeps the
                   content, large enough to look like the model's own errors. Too small behaves
                   like Teacher Forcing; too large lets content drift from the history.
  resample_steps   Euler steps from t_s to 0 in the self-resampling (few: t_s is small, and each
                   step costs a forward pass over the whole clip without gradient).
  warmup_steps     plain Teacher Forcing for the first steps: an untrained model's errors are noise.
Routing (config.model.routing_top_k): 0 is dense attention over the history; k > 0 makes every
query token attend to its own frame plus the k history frames with the highest q . mean(K_j).

Variants (`--config=configs/bouncing_rf.py:VARIANT`, comma-separated; one of the four arms at most):
  noise_augmentation, parallel    the ablation arms
  autoregressive                  the method itself (the default), named so that a sweep can name
                                  its arm (python -m videoar.sweep --arms=...)
  teacher_forcing                 the baseline arm: every forcing key at the base config's (plain
                                  Teacher Forcing: the default run without noise augmentation)
  routed                          history routing with k = 25 % of the training frames (2 of 8)
  window                          the baseline for routing: a sliding window of the same k
                                  (history_window counts chunks: k frames at chunk 1)
  default_model                   every arm on the default run's model, history dropout,
                                  sampler and 1800 steps (base_config.default_model: FineDecoder,
                                  history guidance 3, FVD), so that the arms differ from the
                                  default (configs/bouncing_tiny.py = noise_augmentation,
                                  default_model, FVD off) only in the history they train on
  occluded                        the world where history matters beyond the last two frames: an
                                  opaque grey bar, columns 11-20 (10 px, the frame's middle third),
                                  over the whole height. An object is out of sight (under 10 %
                                  of it shows) for 4 frames at the median, 2-7 frames for 80 % of
                                  the occlusions (measured over 300 clips of 60 frames), and must
                                  come back with its colour, shape and motion: two frames of
                                  history no longer give it. Evaluation adds "recovered", the
                                  objects back in view after an occlusion that the model shows
                                  again (eval/objects.py); of the 32 held-out clips (seed 0), 0,
                                  8 and 18 hold such an object in the three segments (it takes
                                  more than the 2 context frames to be seen, hidden and back)
  moving_mnist                    the arms on Moving-MNIST instead of the bouncing world: two
                                  real digits in 32x32 grey frames at batch 16
                                  (base_config.moving_mnist, configs/mnist_small.py's world),
                                  whose strokes a noisy history hides; not with occluded
  test                            a tiny smoke run
"""

from videoar import base_config


# The variants that each name the history an arm trains on: one at most.
ARMS = ("noise_augmentation", "parallel", "autoregressive", "teacher_forcing")


def get_config(variant: str = ""):
  variants = base_config.variants(
      variant, ARMS + ("routed", "window", "default_model", "occluded", "moving_mnist", "test"))
  arms = list(dict.fromkeys(v for v in variants if v in ARMS))
  if len(arms) > 1:
    # The later one won, silently: a sweep arm named for one trained the other.
    raise ValueError(f"config variants {arms[0]} and {arms[1]} are two forcing arms; name one")
  config = base_config.world(base_config.get_config(), variants)
  arm = arms[0] if arms else "autoregressive"
  # teacher_forcing is the base config's forcing, so the keys the other variants set (window's
  # history_window, default_model's history dropout) hold in whatever order they are named.
  if arm != "teacher_forcing":
    config.forcing.paradigm = "resampling"
    config.forcing.resample_mode = arm
    config.forcing.resample_shift = 0.6
    config.forcing.resample_steps = 3
    config.forcing.warmup_steps = 200
  k = max(1, config.data.num_frames // 4)
  if "routed" in variants:
    config.model.routing_top_k = k
  if "window" in variants:
    config.forcing.history_window = k
  if "default_model" in variants:
    base_config.default_model(config)
  if "test" in variants:
    base_config.tiny(config)
    if config.forcing.paradigm == "resampling":  # Teacher Forcing reads no warm-up key
      config.forcing.warmup_steps = 1
  return config
