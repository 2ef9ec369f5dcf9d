"""The streaming autoregressive sampler.

Frames are generated in chunks of `chunk` frames. Each chunk starts from its own start point
(noise, or for Resampling Forcing a partly noised frame), is integrated with Euler steps while
attending to the KV cache of earlier clean frames, and is then run once more at t = 0 to write its
keys and values into the cache. The cache is a ring buffer of `window - chunk` frames, so the
model never sees more history, nor larger positions, than in training; generation can go on past
the training length.

Two solvers integrate a chunk over a time grid t_0 = 1 > ... > t_K = 0:
- "euler": Euler steps along the model's velocity;
- "few_step" (Self Forcing, spec 1.4-1.7): for k < K, predict x0 at t_k, then re-noise it to
  t_{k+1} with fresh noise, x = (1 - t_{k+1}) x0 + t_{k+1} xi_k; the chunk is the last x0
  prediction. The same loop is Self Forcing's training rollout: it can stop at an exit step
  s < K (the prediction at t_s is then the chunk), and only that prediction carries gradient;
  the earlier steps, the cache and the t = 0 rewrite are constants.

`rollout` scans this chunk step over a whole video (used by evaluation, by Resampling Forcing's
self-resampling and by Self Forcing's training rollout); `stream` calls the same jitted chunk step
from the host and yields each chunk as soon as it is done.
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import masks
from videoar.diffusion import flow
from videoar.models import dit
from videoar.models import kv_cache as kv_cache_lib


SOLVERS = ("euler", "few_step")


def data_prediction(model: dit.CausalDiT, velocity, x_t, t_bf):
  """The clean frames x0 [B, F, H, W, C] that `model`'s velocity at (x_t, t_bf [B, F]) stands
  for (a "residual" or "warp" model outputs data, relative to the previous frame)."""
  prediction = "data" if model.prediction in dit.PREDICTIONS_FROM_PREVIOUS else model.prediction
  return flow.data_from_velocity(prediction, velocity, x_t, t_bf)


def window_frames(num_frames: int, chunk: int, history_window: int = 0,
                  sink_frames: int = 0) -> int:
  """Frames a chunk sees in sampling (cache + itself): as many as in training, where a
  `history_window` > 0 limits the history to that many chunks after `sink_frames` sink frames
  (masks.TeacherForcing / BlockCausal with a sink)."""
  if history_window:
    return min(num_frames, sink_frames + (history_window + 1) * chunk)
  return num_frames


class Sampler:
  """Autoregressive chunked sampling with a KV cache.

  Args:
    model: the CausalDiT.
    frame_shape: (H, W, C).
    chunk: frames generated together (1 = frame-wise).
    window: frames the model saw in training; the cache holds `window - chunk` of them.
    guidance_scale: classifier-free guidance on the model's conditioning: class label, actions,
      text, and with `guide_history` the history (1 = off).
    guide_history: the null pass also reads the null history, zero frames in place of the
      cache's and the previous frame (History-Guided Video Diffusion, Song et al. 2025): the
      guided velocity moves away from what the model would draw without history, toward what
      this history implies. The model must have learnt the null history in training
      (forcing.history_drop_prob, teacher.drop_history).
    guidance_interval: (low, high): guidance applies only at times t in [low, high], elsewhere the
      conditional velocity is used alone (Kynkaanniemi et al. 2024, "Applying Guidance in a
      Limited Interval"): high noise decides what is drawn, low noise its detail and colour.
    solver: "euler" or "few_step" (module docstring). The few-step solver draws its re-noising
      from an explicit key: xi_k of chunk i of a rollout is normal(fold_in(fold_in(rng, i), k)).
    sink_frames: the first frames written (context or generated), kept in the cache for good
      (kv_cache.init); the model must have been trained with the same sink (masks).
    train_frames: the training clip's length N (default `window`): past it, a chunk takes the
      positions of a training clip's last chunk (kv_cache.init's span, N - chunk).
    history_time: the time (noise level) each generated chunk is labelled with when it is
      written to the cache; a prefilled context stays at t = 0. A model trained on a history
      labelled with its noise level (forcing.history_time_input) is told to trust its own
      frames that much less, which Diffusion Forcing (Chen et al. 2024) uses to stabilise long
      rollouts (on our worlds it did not help: docs/results.md). 0: clean, as in training.

  Raises ValueError for a chunk below 1, a frame_shape that is not three positive sizes, a
  window that is not whole chunks, a sink that is not, or an unknown solver.
  """

  def __init__(self, model: dit.CausalDiT, *, frame_shape: tuple[int, int, int], chunk: int,
               window: int, guidance_scale: float = 1.0, solver: str = "euler",
               sink_frames: int = 0, train_frames: int | None = None,
               guide_history: bool = False, guidance_interval: tuple[float, float] = (0.0, 1.0),
               history_time: float = 0.0):
    if not _is_int(chunk) or chunk < 1:
      raise ValueError(f"sampler chunk={chunk!r} must be an integer >= 1")
    if len(frame_shape) != 3 or not all(_is_int(size) and size >= 1 for size in frame_shape):
      raise ValueError(f"sampler frame_shape={tuple(frame_shape)!r} must be (H, W, C), three"
                       " positive sizes")
    if window % chunk:
      raise ValueError(f"sampler window={window} must be a multiple of chunk={chunk}")
    if solver not in SOLVERS:
      raise ValueError(f"sampler solver={solver!r} is unknown; allowed: {', '.join(SOLVERS)}")
    if sink_frames % chunk:
      raise ValueError(f"sampler sink_frames={sink_frames} must be a multiple of chunk={chunk}")
    self.sink_frames = sink_frames
    # Past the training length a chunk takes the positions of a training clip's last chunk.
    self.span = (window if train_frames is None else train_frames) - chunk
    self.solver = solver
    self.model = model
    self.frame_shape = tuple(int(size) for size in frame_shape)
    self.chunk = chunk
    self.slots = window - chunk
    self.guidance_scale = guidance_scale
    self.guide_history = guide_history
    self.guidance_interval = tuple(guidance_interval)
    self.history_time = history_time
    self.guided = guidance_scale != 1.0 and (guide_history or bool(model.conditioning_keys()))
    self._jit_chunk_step = jax.jit(self.chunk_step)
    self._jit_prefill = jax.jit(self.prefill)

  # --- building blocks -------------------------------------------------------------------------

  def init_cache(self, batch: int) -> kv_cache_lib.KVCache:
    """An empty KV cache (kv_cache.init) for `batch` videos: window - chunk slots in every
    model layer, this sampler's sink and span; 2 x batch rows under guidance (conditional, then
    null pass). Raises ValueError (kv_cache.init) for a sink that leaves no slot to roll through,
    or train_frames below the window."""
    h, w, _ = self.frame_shape
    m = self.model
    return kv_cache_lib.init(
        num_layers=m.depth, batch=batch * (2 if self.guided else 1), slots=self.slots,
        tokens_per_frame=m.tokens_per_frame(h, w), num_heads=m.num_heads, head_dim=m.head_dim,
        frame_shape=self.frame_shape, sink=self.sink_frames, span=self.span, dtype=m.dtype)

  def _apply(self, params, cache, x_bchwc, t_bc, previous_bchwc, cond, *, clean=False):
    """One model call on a chunk over the cache; inputs are per video, and under guidance they
    are doubled here: conditional, then null conditioning. With guide_history the null pass's
    previous frame is zeros, and so is its chunk when `clean` (a chunk being written to the
    cache becomes history)."""
    cond = cond or {}
    if self.guided:
      null_history = lambda a: jnp.zeros_like(a) if self.guide_history else a
      x_null = null_history(x_bchwc) if clean else x_bchwc
      x_bchwc, t_bc, previous_bchwc = (
          jnp.concatenate(pair) for pair in ((x_bchwc, x_null), (t_bc, t_bc),
                                             (previous_bchwc, null_history(previous_bchwc))))
      cond = self.model.with_null_conditioning(cond)
    c = x_bchwc.shape[1]
    return self.model.apply(
        params, x_bchwc, t_bc, frame_pos_f=kv_cache_lib.query_positions(cache, c),
        mask=masks.Full(c, self.slots + c),
        previous_bfhwc=previous_bchwc if self.model.previous_frame_input else None, cache=cache,
        **cond)

  def _cache_rows(self, cache_array):
    """The rows of a (possibly CFG-doubled) cache array that belong to the conditional pass."""
    return jnp.split(cache_array, 2)[0] if self.guided else cache_array

  def velocity(self, params, cache, x_bchwc, t_bc, cond=None):
    """The model's velocity [B, c, H, W, C] of a chunk x_bchwc [B, c, H, W, C] at times t_bc
    [B, c] over the cache, conditioned on `cond` (CausalDiT.conditioning); a model with
    previous_frame_input reads the cache's last frame as every frame's previous one. Under
    guidance (classifier-free, Ho & Salimans 2022; with guide_history, of the history too):
    v_null + s (v_cond - v_null), s = guidance_scale at times inside guidance_interval and 1
    (v_cond alone) outside it."""
    last = self._cache_rows(cache.last_frame)[:, None]
    previous = jnp.broadcast_to(last, x_bchwc.shape)
    v, _ = self._apply(params, cache, x_bchwc, t_bc, previous, cond)
    if not self.guided:
      return v
    v_cond, v_null = jnp.split(v, 2)
    low, high = self.guidance_interval
    scale_bc = jnp.where((t_bc >= low) & (t_bc <= high), self.guidance_scale, 1.0)
    return v_null + scale_bc[..., None, None, None] * (v_cond - v_null)

  def data_prediction(self, params, cache, x_bchwc, t_bc, cond=None):
    """The model's (guided) x0 prediction of a chunk over the cache."""
    v = self.velocity(params, cache, x_bchwc, t_bc, cond)
    return data_prediction(self.model, v, x_bchwc, t_bc)

  def denoise_chunk(self, params, cache, x_start_bchwc, times_bs, cond=None):
    """Euler integration of one chunk over per-video time grids times_bs [B, steps + 1].

    `cond` holds the model's conditioning arguments (CausalDiT.conditioning), per-frame ones
    for this chunk's frames."""
    c = x_start_bchwc.shape[1]

    def step(i, x):
      t_now = jnp.broadcast_to(times_bs[:, i, None], (x.shape[0], c))
      t_next = jnp.broadcast_to(times_bs[:, i + 1, None], (x.shape[0], c))
      v = self.velocity(params, cache, x, t_now, cond)
      return flow.euler_step(x, v, t_now, t_next)

    return jax.lax.fori_loop(0, times_bs.shape[1] - 1, step, x_start_bchwc)

  def write_chunk(self, params, cache, x0_bchwc, cond=None, t=0.0):
    """Runs the chunk at time `t` (0: clean) and appends its keys and values to the cache."""
    t0 = jnp.full(x0_bchwc.shape[:2], t, jnp.float32)
    last = self._cache_rows(cache.last_frame)[:, None]
    previous = jnp.concatenate([last, x0_bchwc[:, :-1]], axis=1)
    _, (k, v) = self._apply(params, cache, x0_bchwc, t0, previous, cond, clean=True)
    return kv_cache_lib.write(cache, k, v, self._with_null_rows(x0_bchwc))

  def _with_null_rows(self, frames):
    """Clean frames as the cache keeps them: under guidance the null pass's rows follow (the
    null history's zeros with guide_history)."""
    if not self.guided:
      return frames
    return jnp.concatenate([frames, jnp.zeros_like(frames) if self.guide_history else frames])

  def few_step_chunk(self, params, cache, x_start_bchwc, times_bs, rng, exit_step, cond=None):
    """The few-step solver on one chunk up to `exit_step` s (spec 1.4-1.6): returns the x0
    prediction at t_s [B, c, H, W, C], the only model call that carries gradient.

    times_bs [B, K + 1]; rng: this chunk's key, xi_k = normal(fold_in(rng, k)); exit_step: an int
    (a traced one runs the steps before it in a while loop) in [0, K - 1]. The steps before the
    exit run on frozen parameters, and the cache and the start are taken as constants: the exit
    input x_{t_s} is then a constant too (spec 1.5), and the loop has nothing to differentiate.
    """
    b, c = x_start_bchwc.shape[:2]
    frozen, cache = jax.lax.stop_gradient((params, cache))
    times = lambda k: jnp.broadcast_to(times_bs[:, k, None], (b, c))

    def step(k, x):
      x0 = self.data_prediction(frozen, cache, x, times(k), cond)
      xi = jax.random.normal(jax.random.fold_in(rng, k), x.shape, x.dtype)
      return flow.interpolate(x0, xi, times(k + 1))

    x = jax.lax.fori_loop(0, exit_step, step, jax.lax.stop_gradient(x_start_bchwc))
    return self.data_prediction(params, cache, x, times(exit_step), cond)

  def chunk_step(self, params, cache, x_start_bchwc, times_bs, cond=None, rng=None,
                 exit_step=None):
    """One chunk from its start over times_bs [B, steps + 1]; returns (x0, cache with it).

    The few-step solver needs `rng` (this chunk's key) and stops at `exit_step` (default: the
    last step, times_bs.shape[1] - 2); its cache is rewritten from the detached x0 with frozen
    parameters, so no gradient crosses chunks (spec 1.7). Raises ValueError for `rng` or
    `exit_step` given to the Euler solver, or the few-step one without `rng`."""
    if self.solver == "euler":
      if rng is not None or exit_step is not None:
        raise ValueError("the euler solver takes no rng or exit_step; they are few_step's")
      x0 = self.denoise_chunk(params, cache, x_start_bchwc, times_bs, cond)
      return x0, self.write_chunk(params, cache, x0, cond, self.history_time)
    if rng is None:
      raise ValueError("the few_step solver needs an rng for its re-noising")
    if exit_step is None:
      exit_step = times_bs.shape[1] - 2
    x0 = self.few_step_chunk(params, cache, x_start_bchwc, times_bs, rng, exit_step, cond)
    frozen, x0_detached = jax.lax.stop_gradient((params, x0))
    return x0, self.write_chunk(frozen, jax.lax.stop_gradient(cache), x0_detached, cond,
                                self.history_time)

  # --- whole videos ----------------------------------------------------------------------------

  def _check_whole_chunks(self, num_frames: int) -> None:
    """Raises ValueError unless `num_frames` frames make whole chunks."""
    if num_frames % self.chunk:
      raise ValueError(f"{num_frames} frames are not a multiple of chunk={self.chunk}")

  def _check_call(self, num_frames, num_steps, time_shift, context_bfhwc, cond, batch) -> None:
    """Raises ValueError, in one line naming the argument, its value and what is allowed, for
    arguments of generate or stream that would fail deep inside the model (a context of other
    frames, a batch of none), or give silently wrong frames (NaN from time_shift=0, the start
    noise back from num_steps=0, pixels of 0-255 read as model values, nothing at all from
    num_frames <= 0)."""
    if not _is_int(num_frames) or num_frames < 1:
      raise ValueError(f"num_frames={num_frames!r} is invalid: must be a positive multiple of"
                       f" chunk={self.chunk} (the frames to generate after the context)")
    self._check_whole_chunks(num_frames)
    self._check_steps(num_steps, time_shift)
    if context_bfhwc is not None:
      self._check_frames("context_bfhwc", context_bfhwc)
      if context_bfhwc.shape[1] % self.chunk:
        raise ValueError(
            f"context_bfhwc has {context_bfhwc.shape[1]} frames (shape"
            f" {tuple(context_bfhwc.shape)}): must be a multiple of chunk={self.chunk}, as the"
            " context is written into the cache chunk by chunk")
    elif cond:
      key, value = next(iter(cond.items()))
      if not value.shape[0]:
        raise ValueError(f"cond[{key!r}] has shape {tuple(value.shape)}: its batch (the videos to"
                         " generate) must be at least 1")
    elif not _is_int(batch) or batch < 1:
      raise ValueError(f"batch={batch!r} is invalid: must be an integer >= 1 (the videos to"
                       " generate)")

  def _check_steps(self, num_steps, time_shift) -> None:
    """Raises ValueError for a num_steps or time_shift that gives no usable time grid."""
    if not _is_int(num_steps) or num_steps < 1:
      raise ValueError(f"num_steps={num_steps!r} is invalid: must be an integer >= 1 (0 would"
                       " return the start noise)")
    if not isinstance(time_shift, (int, float, np.number)) or not np.isfinite(time_shift) or (
        time_shift <= 0):
      raise ValueError(f"time_shift={time_shift!r} is invalid: must be a finite number > 0 (1"
                       " leaves the time grid unshifted; 0 makes every frame NaN)")

  def _check_frames(self, name: str, frames_bfhwc) -> None:
    """Raises ValueError unless `frames_bfhwc` (the argument `name`) is [B >= 1, F, H, W, C] of
    this sampler's frame shape, of a floating dtype."""
    shape = tuple(frames_bfhwc.shape)
    if len(shape) != 5 or shape[2:] != self.frame_shape:
      h, w, c = self.frame_shape
      raise ValueError(f"{name} has shape {shape}: must be [batch, frames, {h}, {w}, {c}], frames"
                       f" of the shape this sampler was built for (frame_shape={self.frame_shape})")
    if not shape[0]:
      raise ValueError(f"{name} has shape {shape}: its batch must be at least 1")
    if not jnp.issubdtype(frames_bfhwc.dtype, jnp.floating):
      raise ValueError(
          f"{name} has dtype {frames_bfhwc.dtype}: must be floating, frames as the data pipeline"
          " gives them (pixels in [-1, 1]: uint8 p as p / 127.5 - 1; latents as written)")

  def _chunks(self, x_bf):
    """[B, F, ...] -> [F / chunk, B, chunk, ...] for scanning."""
    b, f = x_bf.shape[:2]
    self._check_whole_chunks(f)
    return jnp.moveaxis(x_bf.reshape((b, f // self.chunk, self.chunk) + x_bf.shape[2:]), 1, 0)

  def _unchunk(self, x_nbc):
    x = jnp.moveaxis(x_nbc, 0, 1)
    return x.reshape((x.shape[0], -1) + x.shape[3:])

  def _per_frame(self, cond):
    """`cond` split into (per-video entries, per-frame entries chunked for scanning)."""
    per_video = {k: v for k, v in cond.items() if k not in dit.PER_FRAME_CONDITIONING}
    per_frame = {k: self._chunks(v) for k, v in cond.items() if k in dit.PER_FRAME_CONDITIONING}
    return per_video, per_frame

  def prefill(self, params, cache, context_bfhwc, cond=None):
    """Writes given clean frames (a prompt) into the cache, chunk by chunk."""
    per_video, per_frame = self._per_frame(cond or {})

    def body(cache, xs):
      x0, chunk_cond = xs
      return self.write_chunk(params, cache, x0, per_video | chunk_cond), None

    cache, _ = jax.lax.scan(body, cache, (self._chunks(context_bfhwc), per_frame))
    return cache

  def rollout(self, params, cache, x_start_bfhwc, times_bs, cond=None, rng=None,
              exit_step=None):
    """Generates len(x_start) frames after what the cache holds; returns (frames, cache).

    Few-step solver: chunk i (counted from this call's first) re-noises with key
    fold_in(rng, i), and every chunk stops at the same `exit_step` (chunk_step)."""
    per_video, per_frame = self._per_frame(cond or {})
    starts = self._chunks(x_start_bfhwc)
    chunk_rngs = None
    if rng is not None:
      chunk_rngs = jax.vmap(functools.partial(jax.random.fold_in, rng))(
          jnp.arange(starts.shape[0]))

    def body(cache, xs):
      x_start, chunk_cond, chunk_rng = xs
      x0, cache = self.chunk_step(params, cache, x_start, times_bs, per_video | chunk_cond,
                                  chunk_rng, exit_step)
      return cache, x0

    cache, frames = jax.lax.scan(body, cache, (starts, per_frame, chunk_rngs))
    return self._unchunk(frames), cache

  def rollout_on_true_history(self, params, cache, x_start_bfhwc, times_bs, true_bfhwc,
                              cond=None, own_cache=False, own_previous_frame=False):
    """Generates len(x_start) frames after what the cache holds, each chunk over a cache of the
    TRUE frames before it (`true_bfhwc`, the same shape, is written to the cache after each
    chunk in place of what was generated); returns the generated frames.

    Chunk i is what `rollout` gives as its first chunk after a prefill of the true frames before
    it: the model's one-chunk quality with its own errors kept out of its history, so that
    set beside `rollout` it separates what one step gets wrong from what accumulates over many
    (the exposure bias that Resampling Forcing and Self Forcing address).

    own_cache, own_previous_frame: let the model's own frames back in along one path, to find
    which one carries the accumulated error: `own_cache` writes the generated chunks to the KV
    cache (keyed over the model's own frame before each, as `rollout` writes them),
    `own_previous_frame` gives the next chunk the last generated frame as its previous-frame
    input (models with previous_frame_input; the model reads the truth along the other path).
    Both: exactly `rollout`.

    Euler solver only; raises ValueError for the few-step one, whose rollout re-noises from
    keys this call does not take, and for frames that are not whole chunks."""
    if self.solver != "euler":
      raise ValueError("rollout_on_true_history runs the euler solver only; this sampler's is"
                       f" {self.solver!r}")
    per_video, per_frame = self._per_frame(cond or {})

    # The cache's previous frame is the last one written; only where the paths read different
    # frames must it be set, before the write (the written chunk's keys read the frame before it
    # along the cache's path) and after it (the next chunk reads the previous-frame path's).
    mixed = own_cache != own_previous_frame

    def body(carry, xs):
      cache, own_last, true_last = carry
      x_start, true_chunk, chunk_cond = xs
      chunk_cond = per_video | chunk_cond
      x0 = self.denoise_chunk(params, cache, x_start, times_bs, chunk_cond)
      if mixed:
        cache = self._with_last_frame(cache, own_last if own_cache else true_last)
      cache = self.write_chunk(params, cache, x0 if own_cache else true_chunk, chunk_cond)
      own_last, true_last = x0[:, -1], true_chunk[:, -1]
      if mixed:
        cache = self._with_last_frame(cache, own_last if own_previous_frame else true_last)
      return (cache, own_last, true_last), x0

    last = self._cache_rows(cache.last_frame)
    _, frames = jax.lax.scan(body, (cache, last, last), (
        self._chunks(x_start_bfhwc), self._chunks(true_bfhwc), per_frame))
    return self._unchunk(frames)

  def _with_last_frame(self, cache, frame_bhwc):
    """`cache` whose previous frame for the next chunk is `frame_bhwc` [B, H, W, C]."""
    return cache.replace(
        last_frame=self._with_null_rows(frame_bhwc).astype(cache.last_frame.dtype))

  def _start(self, prefill, params, batch, num_steps, time_shift, context_bfhwc, cond):
    """An empty cache with the context prefilled, the context length, and the Euler grid."""
    cache = self.init_cache(batch)
    num_context = 0
    if context_bfhwc is not None:
      num_context = context_bfhwc.shape[1]
      cache = prefill(params, cache, context_bfhwc, _frames(cond, 0, num_context))
    times = jnp.broadcast_to(flow.step_times(num_steps, time_shift), (batch, num_steps + 1))
    return cache, num_context, times

  @functools.partial(jax.jit, static_argnums=(0, 3, 4, 5), static_argnames=("batch",))
  def generate(self, params, rng, num_frames: int, num_steps: int, time_shift: float,
               context_bfhwc=None, cond=None, batch: int = 1):
    """Generates `num_frames` frames [B, num_frames, H, W, C] from noise after an optional clean
    context.

    `context_bfhwc`: [B, F, H, W, C] of frame_shape, F a multiple of the chunk, floating frames
    as the data pipeline gives them (pixels in [-1, 1], uint8 p as p / 127.5 - 1; latents as
    written), the scale the generated frames come out on. `cond`: the model's conditioning
    arguments (CausalDiT.conditioning); per-frame ones (actions) cover context and generated
    frames. `batch` videos are generated when neither the context nor the conditioning gives the
    batch size. `num_steps` >= 1 Euler (or few-step) steps on flow.step_times' grid shifted by
    `time_shift` > 0. The start noise is normal(rng); the few-step solver runs all `num_steps`
    steps and re-noises with fold_in(rng, 1) as rollout's key.

    Raises ValueError while tracing, before anything compiles, for a num_frames that is not a
    positive multiple of the chunk, num_steps < 1, a time_shift that is not finite and > 0, a
    batch of 0, or a context of another frame shape, of a frame count that is not whole chunks,
    or of an integer dtype (pixels of 0-255 are not rescaled on a guess)."""
    self._check_call(num_frames, num_steps, time_shift, context_bfhwc, cond, batch)
    cond = cond or {}
    batch = _batch_size(context_bfhwc, cond, batch)
    cache, num_context, times = self._start(self.prefill, params, batch, num_steps, time_shift,
                                            context_bfhwc, cond)
    noise = jax.random.normal(rng, (batch, num_frames) + self.frame_shape)
    frames, _ = self.rollout(params, cache, noise, times,
                             _frames(cond, num_context, num_context + num_frames),
                             self._renoise_rng(rng))
    return frames

  @functools.partial(jax.jit, static_argnums=(0, 4, 5, 6),
                     static_argnames=("own_cache", "own_previous_frame"))
  def generate_on_true_history(self, params, rng, video_bfhwc, num_context: int, num_steps: int,
                               time_shift: float, cond=None, own_cache=False,
                               own_previous_frame=False):
    """Frames num_context.. of `video_bfhwc` [B, F, H, W, C] generated each chunk over the true
    frames before it (rollout_on_true_history, with its own_cache and own_previous_frame), after
    a prefill of the first num_context; returns [B, F - num_context, H, W, C]. The start noise
    is normal(rng) of that shape, what `generate` draws for as many frames, so the first chunk
    is generate's. Conditioning, frames and the time grid as in `generate`, over all F frames.

    Raises ValueError while tracing for a video as generate refuses a context, a num_context
    that does not leave the context and the rest whole chunks (the rest at least one), or
    generate's num_steps and time_shift."""
    self._check_steps(num_steps, time_shift)
    self._check_frames("video_bfhwc", video_bfhwc)
    total = video_bfhwc.shape[1]
    if not _is_int(num_context) or not 0 <= num_context < total or (
        num_context % self.chunk or (total - num_context) % self.chunk):
      raise ValueError(
          f"num_context={num_context!r} is invalid for video_bfhwc of {total} frames: the"
          f" context and the frames after it must each be a multiple of chunk={self.chunk},"
          " and at least one chunk must follow the context")
    cond = cond or {}
    batch, num_frames = video_bfhwc.shape[:2]
    cache, _, times = self._start(self.prefill, params, batch, num_steps, time_shift,
                                  video_bfhwc[:, :num_context] if num_context else None, cond)
    noise = jax.random.normal(rng, (batch, num_frames - num_context) + self.frame_shape)
    return self.rollout_on_true_history(params, cache, noise, times, video_bfhwc[:, num_context:],
                                        _frames(cond, num_context, num_frames), own_cache,
                                        own_previous_frame)

  def _renoise_rng(self, rng):
    """The few-step solver's re-noising key next to start noise drawn from `rng`."""
    return jax.random.fold_in(rng, 1) if self.solver == "few_step" else None

  def stream(self, params, rng, num_frames: int, num_steps: int, time_shift: float,
             context_bfhwc=None, cond=None, batch: int = 1) -> Iterator[np.ndarray]:
    """An iterator over the chunks [B, chunk, H, W, C], each as soon as it is generated; one
    compiled chunk step. Chunk i starts from normal(key_i) (key_i split from `rng` in turn) and
    the few-step solver re-noises it with fold_in(key_i, 1). Arguments, shapes and the range of
    frames as in `generate`.

    Raises ValueError, on the call and before compiling, for the arguments generate refuses: a
    num_frames that is not a positive multiple of the chunk, num_steps < 1, a time_shift that
    is not finite and > 0, a batch of 0, a context of another frame shape, of a frame count
    that is not whole chunks, or of an integer dtype."""
    self._check_call(num_frames, num_steps, time_shift, context_bfhwc, cond, batch)
    return self._stream(params, rng, num_frames, num_steps, time_shift, context_bfhwc, cond, batch)

  def _stream(self, params, rng, num_frames, num_steps, time_shift, context_bfhwc, cond, batch):
    """The generator behind stream(), which checks its arguments first: a generator's body runs
    only when the first chunk is asked for."""
    cond = cond or {}
    batch = _batch_size(context_bfhwc, cond, batch)
    cache, num_context, times = self._start(self._jit_prefill, params, batch, num_steps,
                                            time_shift, context_bfhwc, cond)
    for i in range(num_frames // self.chunk):
      rng, noise_rng = jax.random.split(rng)
      noise = jax.random.normal(noise_rng, (batch, self.chunk) + self.frame_shape)
      start = num_context + i * self.chunk
      x0, cache = self._jit_chunk_step(params, cache, noise, times,
                                       _frames(cond, start, start + self.chunk),
                                       self._renoise_rng(noise_rng))
      yield np.asarray(x0)


def _frames(cond: dict, start: int, stop: int) -> dict:
  """`cond` with its per-frame entries cut to frames [start, stop)."""
  return {key: value[:, start:stop] if key in dit.PER_FRAME_CONDITIONING else value
          for key, value in cond.items()}


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _batch_size(context_bfhwc, cond: dict, default: int) -> int:
  if context_bfhwc is not None:
    return context_bfhwc.shape[0]
  return next((value.shape[0] for value in cond.values()), default)
