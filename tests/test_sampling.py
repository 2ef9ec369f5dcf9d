"""The KV-cached sampler against recomputation of the whole prefix without a cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar import sampling
from videoar.attention import masks
from videoar.diffusion import flow
from videoar.models import dit


def _random_params(model, frames, chunk, key=0):
  x = jnp.zeros((2, frames, 8, 8, 3))
  example = {"label": jnp.zeros((2,), jnp.int32), "text": jnp.zeros((2, 3, model.text_dim))}
  params = model.init(jax.random.key(key), x, jnp.zeros((2, frames)),
                      frame_pos_f=jnp.arange(frames), mask=masks.BlockCausal(frames, chunk),
                      previous_bfhwc=x, **model.conditioning(example))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(key + 1), len(leaves))
  return jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


def recompute_sample(model, params, noise_bfhwc, times, chunk, cond=None):
  """No cache: every Euler step reruns the model on all clean frames so far plus the chunk."""
  b, n = noise_bfhwc.shape[:2]
  clean = noise_bfhwc[:, :0]
  for start in range(0, n, chunk):
    x = noise_bfhwc[:, start:start + chunk]
    f = start + chunk
    previous = None
    if getattr(model, "previous_frame_input", False):
      # Clean frames read the frame before them, the chunk reads the last clean frame.
      sequence = jnp.concatenate([clean, x], axis=1)
      previous = jnp.concatenate(
          [dit.previous_frames(sequence, chunk, within_history=True)[:, :start],
           dit.previous_frames(sequence, chunk, within_history=False)[:, start:]], axis=1)
    for i in range(len(times) - 1):
      t = jnp.concatenate([jnp.zeros((b, start)), jnp.full((b, chunk), times[i])], axis=1)
      v, _ = model.apply(params, jnp.concatenate([clean, x], axis=1), t,
                         frame_pos_f=jnp.arange(f), mask=masks.BlockCausal(f, chunk),
                         previous_bfhwc=previous, **(cond or {}))
      x = flow.euler_step(x, v[:, start:], t[:, start:], jnp.full((b, chunk), times[i + 1]))
    clean = jnp.concatenate([clean, x], axis=1)
  return clean


@pytest.mark.parametrize(
    "chunk,prediction,previous_frame_input,routing_top_k,fine_patch",
    [(1, "velocity", False, 0, 0), (2, "velocity", False, 0, 0), (2, "data", True, 0, 0),
     (1, "data", True, 0, 0), (1, "velocity", False, 2, 0), (2, "data", True, 1, 0),
     (2, "residual", True, 0, 0), (2, "data", True, 0, 2), (1, "warp", True, 0, 0),
     (2, "warp", True, 1, 2)])
def test_cached_sampling_equals_recomputation(chunk, prediction, previous_frame_input,
                                              routing_top_k, fine_patch):
  """Also with history routing: over the cache a chunk routes among the same frames, with the
  same keys, as in the full recomputation; and through the FineDecoder."""
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, prediction=prediction,
                        previous_frame_input=previous_frame_input, routing_top_k=routing_top_k,
                        fine_patch=fine_patch, fine_width=32)
  frames, steps = 6, 3
  params = _random_params(model, frames, chunk)
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=chunk, window=frames)
  noise = jax.random.normal(jax.random.key(5), (2, frames, 8, 8, 3))
  times = flow.step_times(steps, 2.0)
  cached, _ = jax.jit(sampler.rollout)(params, sampler.init_cache(2), noise,
                                       jnp.broadcast_to(times, (2, steps + 1)))
  reference = recompute_sample(model, params, noise, times, chunk)
  # A warp reads the frame before at the large displacements random weights give, where the
  # kernel is steep: rounding grows about 3x a frame (1e-6 in the first, 1e-4 by the sixth).
  atol = 1e-4 * float(jnp.abs(reference).max()) if prediction == "warp" else 1e-5
  np.testing.assert_allclose(np.asarray(cached), np.asarray(reference), atol=atol, rtol=0)
  assert float(jnp.abs(cached).max()) > 0.1


@pytest.mark.parametrize("conditioning,interval", [("label", (0.0, 1.0)), ("text", (0.0, 1.0)),
                                                   ("label", (0.6, 1.0)), ("label", (0.0, 0.01))])
def test_cached_sampling_with_guidance_equals_recomputation(conditioning, interval):
  """Classifier-free guidance on a class label, and on a text embedding through
  cross-attention (text_dim > 0, the all-zero text as its null). With guidance_interval
  (low, high), the guided velocity at times inside it and the conditional one alone outside (the
  steps here are at t = 1 and 0.5)."""
  sizes = {"label": dict(num_classes=3), "text": dict(text_dim=5)}[conditioning]
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, **sizes)
  frames, steps, scale = 4, 2, 2.5
  params = _random_params(model, frames, 1)
  cond = model.conditioning({"label": jnp.array([0, 2]),
                             "text": jax.random.normal(jax.random.key(7), (2, 3, 5))})
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=1, window=frames,
                             guidance_scale=scale, guidance_interval=interval)
  noise = jax.random.normal(jax.random.key(5), (2, frames, 8, 8, 3))
  times = flow.step_times(steps)
  cached, _ = jax.jit(sampler.rollout)(params, sampler.init_cache(2), noise,
                                       jnp.broadcast_to(times, (2, steps + 1)), cond)

  class Guided:
    """The model with CFG applied inside the interval, for the no-cache reference."""

    def apply(self, params, x, t, **kw):
      v_c, kv = model.apply(params, x, t, **kw)
      v_u, _ = model.apply(params, x, t, **(kw | model.null_conditioning(cond)))
      w = jnp.where((t >= interval[0]) & (t <= interval[1]), scale, 1.0)[..., None, None, None]
      return v_u + w * (v_c - v_u), kv

  reference = recompute_sample(Guided(), params, noise, times, 1, cond)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(reference), atol=1e-5, rtol=0)
  unguided = recompute_sample(model, params, noise, times, 1, cond)
  differs = float(jnp.abs(cached - unguided).max()) > 1e-3
  assert differs == (interval[1] >= 1.0), "guidance changed nothing, or acted outside its interval"


@pytest.mark.parametrize("chunk,interval", [(1, (0.0, 1.0)), (2, (0.0, 1.0)), (1, (0.7, 1.0))])
def test_history_guidance_equals_recomputation_with_a_null_history_of_zeros(chunk, interval):
  """guide_history: the null pass reads zero frames as its whole history (the cache and the
  previous-frame input), as a model trained with teacher.drop_history saw for a dropped video,
  while the chunk being denoised is the conditional pass's; with a guidance interval that leaves
  out the step at t = 2/3 (as the default's leaves out t < 0.5), unguided there."""
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, prediction="data",
                        previous_frame_input=True)
  frames, steps, scale = 4, 2, 2.0
  params = _random_params(model, frames, chunk)
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=chunk, window=frames,
                             guidance_scale=scale, guide_history=True, guidance_interval=interval)
  noise = jax.random.normal(jax.random.key(5), (2, frames, 8, 8, 3))
  times = flow.step_times(steps, 2.0)
  cached, _ = jax.jit(sampler.rollout)(params, sampler.init_cache(2), noise,
                                       jnp.broadcast_to(times, (2, steps + 1)))

  class HistoryGuided:
    """The model with history guidance applied, for the no-cache reference."""
    previous_frame_input = True

    def apply(self, params, x, t, previous_bfhwc, **kw):
      v_c, kv = model.apply(params, x, t, previous_bfhwc=previous_bfhwc, **kw)
      start = x.shape[1] - chunk
      x_null = jnp.concatenate([jnp.zeros_like(x[:, :start]), x[:, start:]], axis=1)
      v_u, _ = model.apply(params, x_null, t, previous_bfhwc=jnp.zeros_like(previous_bfhwc),
                           **kw)
      w = jnp.where((t >= interval[0]) & (t <= interval[1]), scale, 1.0)[..., None, None, None]
      return v_u + w * (v_c - v_u), kv

  reference = recompute_sample(HistoryGuided(), params, noise, times, chunk)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(reference), atol=1e-5, rtol=0)
  unguided = recompute_sample(model, params, noise, times, chunk)
  assert float(jnp.abs(cached - unguided).max()) > 1e-3, "guidance changed nothing"


def test_rolling_cache_generates_past_the_window_with_flat_positions():
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2)
  params = _random_params(model, 4, 1)
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=1, window=4)
  chunks = list(sampler.stream(params, jax.random.key(0), num_frames=10, num_steps=2,
                               time_shift=1.0, batch=2))
  assert len(chunks) == 10 and all(c.shape == (2, 1, 8, 8, 3) for c in chunks)
  assert all(np.isfinite(c).all() for c in chunks)
  assert sampler._jit_chunk_step._cache_size() == 1, "the chunk step must compile once"


def test_context_prefill_equals_generating_into_the_same_frames():
  """Prefilling frames into the cache is the same as having generated them."""
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2)
  params = _random_params(model, 4, 1)
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=1, window=4)
  noise = jax.random.normal(jax.random.key(1), (1, 4, 8, 8, 3))
  times = jnp.broadcast_to(flow.step_times(2), (1, 3))
  frames, cache_a = sampler.rollout(params, sampler.init_cache(1), noise, times)
  cache_b = sampler.prefill(params, sampler.init_cache(1), frames)
  np.testing.assert_allclose(np.asarray(cache_a.k), np.asarray(cache_b.k), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(cache_a.frame_index), np.asarray(cache_b.frame_index))


@pytest.mark.parametrize("chunk,guide_history", [(2, False), (1, True)])
def test_rollout_on_true_history_equals_a_fresh_prefill_of_the_truth_before_each_chunk(
    chunk, guide_history):
  """Chunk i of rollout_on_true_history is the first chunk `rollout` generates after a prefill
  of the true frames before it, from the same start noise: past the window too (the rolling
  cache of true frames), and under history guidance (its null rows hold the null history)."""
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, prediction="data",
                        previous_frame_input=True)
  window, context, generated, steps = 4, 2, 4, 2
  params = _random_params(model, window, chunk)
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=chunk, window=window,
                             guide_history=guide_history,
                             guidance_scale=2.0 if guide_history else 1.0)
  truth = jax.random.uniform(jax.random.key(3), (2, context + generated, 8, 8, 3), minval=-1)
  noise = jax.random.normal(jax.random.key(4), (2, generated, 8, 8, 3))
  times = jnp.broadcast_to(flow.step_times(steps, 2.0), (2, steps + 1))
  cache = sampler.prefill(params, sampler.init_cache(2), truth[:, :context])
  on_truth = jax.jit(sampler.rollout_on_true_history)(params, cache, noise, times,
                                                      truth[:, context:])
  for start in range(0, generated, chunk):
    fresh = sampler.prefill(params, sampler.init_cache(2), truth[:, :context + start])
    first, _ = sampler.rollout(params, fresh, noise[:, start:start + chunk], times)
    np.testing.assert_allclose(np.asarray(on_truth[:, start:start + chunk]), np.asarray(first),
                               atol=1e-5, rtol=0)
  # Not the model's own rollout: the history differs from the second chunk on.
  own, _ = sampler.rollout(params, cache, noise, times)
  assert float(jnp.abs(own[:, chunk:] - on_truth[:, chunk:]).max()) > 1e-3
  # The whole-video entry point draws generate's start noise from the same key.
  key = jax.random.key(6)
  whole = sampler.generate_on_true_history(params, key, truth, context, steps, 2.0)
  own_whole = sampler.generate(params, key, generated, steps, 2.0, truth[:, :context])
  np.testing.assert_allclose(np.asarray(whole[:, :chunk]), np.asarray(own_whole[:, :chunk]),
                             atol=1e-5)
  assert whole.shape == noise.shape


@pytest.mark.parametrize("guide_history", [False, True])
def test_own_frames_along_one_path_of_the_rollout_on_true_history(guide_history):
  """rollout_on_true_history with the model's own frames let back in: along both paths it is
  `rollout`; along one, each frame is the first one `rollout` generates over that path's cache
  with that path's previous frame set by hand; for a model without the previous-frame input, the
  own cache alone is `rollout` and the own previous frame alone changes nothing; with it, each
  path alone differs from both."""
  window, context, generated, steps = 4, 2, 4, 2
  truth = jax.random.uniform(jax.random.key(3), (2, context + generated, 8, 8, 3), minval=-1)
  noise = jax.random.normal(jax.random.key(4), (2, generated, 8, 8, 3))
  times = jnp.broadcast_to(flow.step_times(steps, 2.0), (2, steps + 1))
  for previous_frame_input in (True, False):
    model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, prediction="data",
                          previous_frame_input=previous_frame_input)
    params = _random_params(model, window, 1)
    sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=1, window=window,
                               guide_history=guide_history, guidance_scale=2.0)
    cache = sampler.prefill(params, sampler.init_cache(2), truth[:, :context])
    run = jax.jit(sampler.rollout_on_true_history, static_argnums=(6, 7))
    on = {(c, p): np.asarray(run(params, cache, noise, times, truth[:, context:], None, c, p))
          for c in (False, True) for p in (False, True)}
    own = np.asarray(sampler.rollout(params, cache, noise, times)[0])
    np.testing.assert_allclose(on[True, True], own, atol=1e-5, rtol=0)

    def with_previous(cache, frame):  # the cache's previous frame set, null rows as it keeps them
      if sampler.guided:
        frame = jnp.concatenate([frame, jnp.zeros_like(frame) if guide_history else frame])
      return cache.replace(last_frame=frame)

    for i in range(1, generated):
      # Own cache: frame i is the first frame generated over the context and the i frames
      # generated before it (written as a rollout writes them), with the true frame before it
      # as the previous frame.
      own_cache = sampler.prefill(params, cache, jnp.asarray(on[True, False][:, :i]))
      first, _ = sampler.rollout(params, with_previous(own_cache, truth[:, context + i - 1]),
                                 noise[:, i:i + 1], times)
      np.testing.assert_allclose(on[True, False][:, i:i + 1], np.asarray(first), atol=1e-5,
                                 rtol=0)
      # Own previous frame: over a prefill of the true frames, with the generated frame before.
      fresh = sampler.prefill(params, sampler.init_cache(2), truth[:, :context + i])
      previous = jnp.asarray(on[False, True][:, i - 1])
      first, _ = sampler.rollout(params, with_previous(fresh, previous), noise[:, i:i + 1], times)
      np.testing.assert_allclose(on[False, True][:, i:i + 1], np.asarray(first), atol=1e-5,
                                 rtol=0)
    if previous_frame_input:
      for one_path in (on[True, False], on[False, True]):
        assert np.abs(one_path - own).max() > 1e-3
        assert np.abs(one_path - on[False, False]).max() > 1e-3
    else:
      np.testing.assert_allclose(on[True, False], own, atol=1e-5, rtol=0)
      np.testing.assert_allclose(on[False, True], on[False, False], atol=1e-5, rtol=0)


def test_rollout_on_true_history_rejects_the_few_step_solver():
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2)
  params = _random_params(model, 4, 1)
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=1, window=4, solver="few_step")
  x = jnp.zeros((1, 2, 8, 8, 3))
  with pytest.raises(ValueError, match="euler solver only; this sampler's is 'few_step'"):
    sampler.rollout_on_true_history(params, sampler.init_cache(1), x, jnp.ones((1, 3)), x)


def test_stream_rejects_a_partial_chunk_on_the_call_like_generate():
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2)
  params = _random_params(model, 4, 2)
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=2, window=4)
  message = "5 frames are not a multiple of chunk=2"
  with pytest.raises(ValueError) as error:
    sampler.stream(params, jax.random.key(0), num_frames=5, num_steps=2, time_shift=1.0)
  assert str(error.value) == message
  assert sampler._jit_chunk_step._cache_size() == sampler._jit_prefill._cache_size() == 0
  # Raised while tracing: JAX appends a note on its traceback filtering to the message.
  with pytest.raises(ValueError, match=f"^{message}"):
    sampler.generate(params, jax.random.key(0), 5, 2, 1.0)


_CONTEXT = np.zeros((1, 2, 8, 8, 3), np.float32)


@pytest.mark.parametrize("arguments,message", [
    (dict(context_bfhwc=np.zeros((1, 2, 16, 8, 3), np.float32)),
     "context_bfhwc has shape (1, 2, 16, 8, 3): must be [batch, frames, 8, 8, 3], frames of the"
     " shape this sampler was built for (frame_shape=(8, 8, 3))"),
    (dict(context_bfhwc=np.zeros((1, 2, 8, 8, 4), np.float32)),
     "context_bfhwc has shape (1, 2, 8, 8, 4): must be [batch, frames, 8, 8, 3]"),
    (dict(context_bfhwc=np.zeros((2, 8, 8, 3), np.float32)),
     "context_bfhwc has shape (2, 8, 8, 3): must be [batch, frames, 8, 8, 3]"),
    (dict(context_bfhwc=np.zeros((1, 3, 8, 8, 3), np.float32)),
     "context_bfhwc has 3 frames (shape (1, 3, 8, 8, 3)): must be a multiple of chunk=2, as the"
     " context is written into the cache chunk by chunk"),
    (dict(context_bfhwc=np.full((1, 2, 8, 8, 3), 255, np.uint8)),
     "context_bfhwc has dtype uint8: must be floating, frames as the data pipeline gives them"
     " (pixels in [-1, 1]: uint8 p as p / 127.5 - 1; latents as written)"),
    (dict(context_bfhwc=np.zeros((0, 2, 8, 8, 3), np.float32)),
     "context_bfhwc has shape (0, 2, 8, 8, 3): its batch must be at least 1"),
    (dict(time_shift=0.0), "time_shift=0.0 is invalid: must be a finite number > 0 (1 leaves the"
     " time grid unshifted; 0 makes every frame NaN)"),
    (dict(time_shift=float("nan")), "time_shift=nan is invalid: must be a finite number > 0"),
    (dict(num_steps=0), "num_steps=0 is invalid: must be an integer >= 1 (0 would return the"
     " start noise)"),
    (dict(batch=0, context_bfhwc=None), "batch=0 is invalid: must be an integer >= 1 (the videos to generate)"),
    (dict(num_frames=-2), "num_frames=-2 is invalid: must be a positive multiple of chunk=2 (the"
     " frames to generate after the context)"),
    (dict(num_frames=0), "num_frames=0 is invalid: must be a positive multiple of chunk=2"),
], ids=["context of other frames", "context of other channels", "context without frames axis",
        "context of a partial chunk", "uint8 context", "context of no video", "time_shift 0",
        "time_shift nan", "num_steps 0", "batch 0", "negative num_frames", "no frames"])
def test_bad_arguments_to_stream_and_generate_are_one_line_naming_them(arguments, message):
  """Each used to fail inside the model (a concatenate TypeError, a ZeroDivisionError), or to
  give wrong frames without a word (NaN from time_shift=0, the start noise from num_steps=0,
  pixels of 0-255 taken for model values, nothing at all for num_frames=-2): now refused on
  the call, before anything compiles, naming the argument and what it must be."""
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2)
  params = _random_params(model, 4, 2)
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=2, window=4)
  arguments = dict(num_frames=2, num_steps=2, time_shift=1.0, context_bfhwc=_CONTEXT,
                   batch=1) | arguments
  with pytest.raises(ValueError) as error:
    sampler.stream(params, jax.random.key(0), **arguments)
  assert str(error.value).startswith(message)
  assert "\n" not in str(error.value)
  assert sampler._jit_chunk_step._cache_size() == sampler._jit_prefill._cache_size() == 0
  context, batch = arguments.pop("context_bfhwc"), arguments.pop("batch")
  with pytest.raises(ValueError) as error:  # raised while tracing: JAX appends a note
    sampler.generate(params, jax.random.key(0), *arguments.values(), context, batch=batch)
  assert str(error.value).startswith(message)


def test_a_sampler_of_no_chunk_or_of_frames_of_another_rank_is_refused_naming_the_argument():
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2)
  with pytest.raises(ValueError, match=r"^sampler chunk=0 must be an integer >= 1$"):
    sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=0, window=4)
  with pytest.raises(ValueError, match=r"^sampler frame_shape=\(8, 8\) must be \(H, W, C\)"):
    sampling.Sampler(model, frame_shape=(8, 8), chunk=1, window=4)


def test_generate_on_true_history_refuses_a_context_that_leaves_a_partial_chunk():
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2)
  params = _random_params(model, 4, 2)
  sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=2, window=4)
  video = np.zeros((1, 4, 8, 8, 3), np.float32)
  for num_context in (1, 4):
    with pytest.raises(ValueError, match=(
        f"^num_context={num_context} is invalid for video_bfhwc of 4 frames: the context and the"
        " frames after it must each be a multiple of chunk=2, and at least one chunk must")):
      sampler.generate_on_true_history(params, jax.random.key(0), video, num_context, 2, 1.0)
  with pytest.raises(ValueError, match="^video_bfhwc has dtype uint8: must be floating"):
    sampler.generate_on_true_history(params, jax.random.key(0), video.astype(np.uint8), 2, 2,
                                     1.0)
