"""Resampling Forcing: Teacher Forcing on a history that the model has degraded itself.

Exposure bias comes from training on clean history and generating on the model's own imperfect
history. Here the history frames are first degraded by the model, then used as the context of
the usual parallel frame-level loss (targets stay the clean frames):

1. one t_s per video from the shifted logit-normal (shift `resample_shift`, default 0.6: mostly
   low noise); every frame is noised to x_ts = (1 - t_s) x + t_s eps;
2. without gradient, x_ts is integrated back to t = 0 in `resample_steps` Euler steps by the
   current model, frame after frame through the sampler's KV-cache path, each frame conditioned
   on the already degraded frames before it (`autoregressive`: intra-frame error and error
   accumulated across frames);
3. teacher.history_conditioned_loss with the degraded history.
The first `warmup_steps` steps are plain Teacher Forcing: an untrained model's errors are noise.

Ablation arms (`resample_mode`): `noise_augmentation` uses x_ts itself as history; `parallel`
denoises every x_ts^i in one parallel pass conditioned on the clean history x^{<i} (intra-frame
error only).

`history_time_input` (noise augmentation only) labels the noised history with its level t_s as
its tokens' time instead of t = 0, so the model is told how far to trust its history: GameNGen's
conditioning augmentation (Valevski et al. 2024, after Ho et al. 2021's cascaded diffusion). The
sampler then labels what it writes to its KV cache with sample.history_time (0: trusted as
clean; above 0: its own frames treated as slightly noisy, Diffusion Forcing's stabilisation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from videoar import sampling
from videoar.diffusion import flow
from videoar.forcing import common, teacher
from videoar.models import dit

MODES = ("autoregressive", "parallel", "noise_augmentation")


def degrade_history(model: dit.CausalDiT, params, video_bfhwc, cond: dict, rng, *,
                    chunk: int, mode: str, resample_shift: float, resample_steps: int,
                    history_window: int = 0, sink_frames: int = 0):
  """The model's own resampling of `video`, with no gradient to anything: (history [B, N, H, W, C],
  t_s [B], the noise level each video's history was drawn from)."""
  params = jax.lax.stop_gradient(params)
  b, n = video_bfhwc.shape[:2]
  time_rng, noise_rng = jax.random.split(rng)
  t_s = flow.sample_time(time_rng, (b,), resample_shift)
  eps = jax.random.normal(noise_rng, video_bfhwc.shape)
  x_ts = flow.interpolate(video_bfhwc, eps, jnp.broadcast_to(t_s[:, None], (b, n)))
  times_bs = flow.step_times(resample_steps, 1.0, t_s)
  if mode == "noise_augmentation":
    history = x_ts
  elif mode == "autoregressive":
    sampler = sampling.Sampler(
        model, frame_shape=video_bfhwc.shape[2:], chunk=chunk,
        window=sampling.window_frames(n, chunk, history_window, sink_frames),
        sink_frames=sink_frames, train_frames=n)
    history, _ = sampler.rollout(params, sampler.init_cache(b), x_ts, times_bs, cond)
  elif mode == "parallel":
    history = _parallel_resample(model, params, video_bfhwc, x_ts, times_bs, cond, chunk=chunk,
                                 history_window=history_window, sink_frames=sink_frames)
  else:
    raise ValueError(f"forcing.resample_mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
  return jax.lax.stop_gradient(history), t_s


def _parallel_resample(model, params, video_bfhwc, x_ts, times_bs, cond, *, chunk,
                       history_window, sink_frames):
  """Every frame denoised at once on the 2N layout, conditioned on the clean history."""
  b, n = video_bfhwc.shape[:2]

  def step(i, x):
    t_now = jnp.broadcast_to(times_bs[:, i, None], (b, n))
    t_next = jnp.broadcast_to(times_bs[:, i + 1, None], (b, n))
    v, _ = teacher.apply_two_n(model, params, video_bfhwc, x, t_now, cond, chunk=chunk,
                               history_window=history_window, sink_frames=sink_frames)
    return flow.euler_step(x, v, t_now, t_next)

  return jax.lax.fori_loop(0, times_bs.shape[1] - 1, step, x_ts)


def loss_fn(model: dit.CausalDiT, params, batch, rng, *, chunk: int, time_shift: float,
            cond_drop_prob: float, step, resample_mode: str, resample_shift: float,
            resample_steps: int, loss_weighting: str = "velocity", warmup_steps: int = 0,
            history_window: int = 0, sink_frames: int = 0, history_drop_prob: float = 0.0,
            history_time_input: bool = False):
  """Resampling Forcing's loss of a batch {video [B, N, H, W, C], the model's conditioning}:
  teacher.history_conditioned_loss of the clean frames on a history the model degraded itself
  (degrade_history, without gradient, by resample_mode "noise_augmentation", "parallel" or
  "autoregressive", reading the batch's conditioning without dropout). While the train step
  `step` < warmup_steps the history is the clean video: plain Teacher Forcing. With
  history_time_input the history is labelled with its noise level t_s instead of t = 0.
  Returns (loss, {"loss": loss, "history_mse": the history's mean squared error to the video}).

  Raises ValueError for history_time_input without resample_mode="noise_augmentation", an
  unknown resample_mode or an unknown loss_weighting.
  """
  # The loss draws exactly what Teacher Forcing draws; resampling has a stream of its own.
  cond_rng, loss_rng = jax.random.split(rng)
  resample_rng = jax.random.fold_in(rng, 1)
  cond = common.conditioning(model, batch, cond_rng, cond_drop_prob)
  video = batch["video"]

  if history_time_input and resample_mode != "noise_augmentation":
    raise ValueError("history_time_input labels a noised history with its level: it needs"
                     f" resample_mode='noise_augmentation', not {resample_mode!r}")
  clean_t_b = jnp.zeros(video.shape[:1], jnp.float32)

  def degraded():
    history, t_s = degrade_history(
        model, params, video, model.conditioning(batch), resample_rng, chunk=chunk,
        mode=resample_mode, resample_shift=resample_shift, resample_steps=resample_steps,
        history_window=history_window, sink_frames=sink_frames)
    return history, t_s if history_time_input else clean_t_b

  history, history_t_b = jax.lax.cond(step < warmup_steps, lambda: (video, clean_t_b), degraded)
  loss, metrics = teacher.history_conditioned_loss(
      model, params, history, video, cond, loss_rng, chunk=chunk,
      time_shift=time_shift, loss_weighting=loss_weighting, history_window=history_window,
      sink_frames=sink_frames, history_drop_prob=history_drop_prob,
      history_t_b=history_t_b)
  metrics["history_mse"] = common.mse(history, video)
  return loss, metrics
