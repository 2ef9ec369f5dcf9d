"""The rolling KV cache with an attention sink, and the training masks that match it (spec §6;
§9.3 T2 with a window, T9).

A model trained on N-frame clips under masks.BlockCausal / TeacherForcing(window=w, sink=S) is
sampled with a cache of S + w * chunk frames whose first S frames stay; past the training length
a chunk must see exactly what the last chunk of a training clip sees.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar import sampling
from videoar.attention import masks
from videoar.diffusion import flow
from videoar.models import dit
from videoar.models import kv_cache

FRAME = (8, 8, 3)


def in_history(query_chunk, key_frame, chunk, window, sink):
  """The definition: with a window, a key frame is history if its chunk lies at most `window`
  chunks back or it is one of the first `sink` frames; without one, always."""
  return not window or query_chunk - key_frame // chunk <= window or key_frame < sink


def brute_block_causal(n, chunk, window, sink):
  return np.array([[j // chunk <= i // chunk and in_history(i // chunk, j, chunk, window, sink)
                    for j in range(n)] for i in range(n)])


def brute_teacher_forcing(n, chunk, window, sink):
  out = np.zeros((2 * n, 2 * n), bool)
  for i, j in itertools.product(range(2 * n), repeat=2):
    qc, kj = (i % n) // chunk, j % n
    if j >= n:  # a noisy key: only the noisy frames of its own chunk see it
      out[i, j] = i >= n and kj // chunk == qc
    else:  # a history key: before the noisy query's chunk, up to the history query's own
      earlier = kj // chunk < qc if i >= n else kj // chunk <= qc
      out[i, j] = earlier and in_history(qc, kj, chunk, window, sink)
  return out


# (frames, chunk, window, sink): sink 0, sink of one and of two chunks, windows from 1 chunk to
# the extrapolation trick's (frames - sink) / chunk - 2.
HISTORIES = [(8, 1, 2, 0), (8, 1, 2, 1), (9, 1, 3, 2), (8, 2, 1, 2), (12, 2, 4, 0), (12, 2, 3, 2),
             (12, 3, 1, 3), (12, 3, 2, 0), (12, 2, 1, 4)]


@pytest.mark.parametrize("n,chunk,window,sink", HISTORIES)
def test_history_masks_equal_brute_force(n, chunk, window, sink):
  block = masks.BlockCausal(n, chunk, window, sink)
  teacher = masks.TeacherForcing(n, chunk, window, sink)
  np.testing.assert_array_equal(block.frame_mask(), brute_block_causal(n, chunk, window, sink))
  np.testing.assert_array_equal(teacher.frame_mask(),
                                brute_teacher_forcing(n, chunk, window, sink))
  np.testing.assert_array_equal(block.frame_mask(),
                                masks.SlidingWindow(n, window + 1, sink, chunk).frame_mask())
  np.testing.assert_array_equal(teacher.to_dense(2),
                                np.kron(teacher.frame_mask(), np.ones((2, 2), bool)))
  assert hash(block) == hash(masks.BlockCausal(n, chunk, window, sink))


@pytest.mark.parametrize("n,chunk,sink", [(12, 2, 0), (12, 3, 0), (12, 2, 2), (12, 3, 3),
                                          (8, 1, 1), (12, 2, 4)])
def test_extrapolation_trick_hides_only_the_chunk_after_the_sink_from_the_last_chunk(n, chunk,
                                                                                     sink):
  """T9 on the masks: window = (N - S) / chunk - 2 (a chunk sees N - chunk frames at most) hides
  from the last chunk the chunk right after the sink, chunk 0 without a sink, and nothing else
  from anyone."""
  window = (n - sink) // chunk - 2
  for spec, full in [(masks.BlockCausal(n, chunk, window, sink), masks.BlockCausal(n, chunk)),
                     (masks.TeacherForcing(n, chunk, window, sink),
                      masks.TeacherForcing(n, chunk))]:
    lost = full.frame_mask() & ~spec.frame_mask()
    assert not (spec.frame_mask() & ~full.frame_mask()).any()
    rows, cols = np.nonzero(lost)
    assert set(rows % n // chunk) == {n // chunk - 1}, f"{spec}: not only the last chunk lost"
    assert set(cols) == set(range(sink, sink + chunk)), f"{spec}: lost {sorted(set(cols))}"
    # Every query frame of the last chunk (history and noisy copy) loses all of that chunk.
    assert len(rows) == chunk * chunk * (2 if isinstance(spec, masks.TeacherForcing) else 1)


def _empty(slots, **kwargs):
  return kv_cache.init(num_layers=1, batch=1, slots=slots, tokens_per_frame=1, num_heads=1,
                       head_dim=1, frame_shape=FRAME, **kwargs)


def _write_next(cache, chunk):
  """`cache` with its next chunk written; each frame's keys and values hold its absolute index."""
  index = (cache.next_index + jnp.arange(chunk)).astype(jnp.float32)
  kv = index[None, None, :, None, None, None]
  return kv_cache.write(cache, kv, kv, jnp.zeros((1, chunk) + FRAME))


def _held(cache):
  """(absolute index, rotary position) of every frame the cache holds, in slot order; asserts
  that each slot holds the keys written for its frame."""
  valid = np.asarray(kv_cache.frame_valid(cache))
  frames = np.asarray(cache.frame_index)[valid]
  np.testing.assert_array_equal(np.asarray(cache.k[0, 0, :, 0, 0, 0])[valid], frames)
  return frames, np.asarray(kv_cache.frame_positions(cache))[valid]


@pytest.mark.parametrize("slots,chunk", [(4, 1), (6, 2), (6, 3)])
def test_cache_without_sink_is_the_fifo_ring_it_was(slots, chunk):
  """sink = 0 and the default span: the slots, frames and rotary positions of the plain ring
  buffer (frame i in slot i mod slots, positions counted from the oldest frame held)."""
  cache = _empty(slots)
  for n in range(12 // chunk):
    next_index = n * chunk
    oldest = max(next_index - slots, 0)
    held = np.arange(oldest, next_index)
    slot_frames = np.full(slots, -1)
    slot_frames[held % slots] = held
    np.testing.assert_array_equal(np.asarray(cache.frame_index), slot_frames)
    frames, positions = _held(cache)
    np.testing.assert_array_equal(positions, frames - oldest)
    np.testing.assert_array_equal(np.asarray(kv_cache.query_positions(cache, chunk)),
                                  next_index - oldest + np.arange(chunk))
    cache = _write_next(cache, chunk)


@pytest.mark.parametrize("n,chunk,window,sink", [(12, 2, 4, 0), (12, 2, 3, 2), (12, 3, 1, 3),
                                                 (8, 1, 2, 1), (12, 2, 1, 4)])
def test_cache_shows_chunks_past_the_training_length_the_last_training_chunks_view(
    n, chunk, window, sink):
  """T9 on the cache (S + w * chunk slots, span N - chunk): chunk i sees, at query positions
  and at key positions, row i of the training mask BlockCausal(N, chunk, w, S) while it lies in
  the N-frame clip; every later chunk sees the last chunk's row, the sink at 0..S-1 and its most
  recent frames at the offsets of that chunk's window."""
  mask = masks.BlockCausal(n, chunk, window, sink).frame_mask()
  last = n // chunk - 1
  cache = _empty(sink + window * chunk, sink=sink, span=n - chunk)
  for i in range(3 * (last + 1)):
    seen_as = min(i, last)  # the training chunk whose view chunk i gets
    np.testing.assert_array_equal(np.asarray(kv_cache.query_positions(cache, chunk)),
                                  seen_as * chunk + np.arange(chunk))
    frames, positions = _held(cache)
    np.testing.assert_array_equal(np.sort(positions),
                                  np.flatnonzero(mask[seen_as * chunk, :seen_as * chunk]))
    shift = (i - seen_as) * chunk
    np.testing.assert_array_equal(frames, np.where(positions < sink, positions, positions + shift))
    cache = _write_next(cache, chunk)


def test_bad_sinks_raise():
  with pytest.raises(ValueError, match="sink=1 must be >= 0 and a multiple of chunk=2"):
    masks.BlockCausal(8, 2, window=1, sink=1)
  with pytest.raises(ValueError, match="sink=-1 must be >= 0"):
    masks.TeacherForcing(8, 1, window=1, sink=-1)
  with pytest.raises(ValueError, match="sink=1 needs a window > 0"):
    masks.TeacherForcing(8, 1, sink=1)
  with pytest.raises(ValueError, match="sink=4 must be >= 0 and leave room in slots=4"):
    _empty(4, sink=4)
  with pytest.raises(ValueError, match="span=3 must be >= slots=4"):
    _empty(4, span=3)
  with pytest.raises(ValueError, match="slots=4 and sink=1 must be multiples of the chunk"):
    _write_next(_empty(4, sink=1), 2)


@jax.jit(static_argnums=0)
def _random_params(model):
  """Random parameters (their shapes do not depend on the frame count); compiled once a model."""
  x = jnp.zeros((1, 1) + FRAME)
  params = model.init(jax.random.key(0), x, jnp.zeros((1, 1)), frame_pos_f=jnp.arange(1),
                      mask=masks.BlockCausal(1), previous_bfhwc=x)
  # AdaLN-zero starts as the identity; random perturbations make every path live.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


def cached_sample(model, params, noise, times, *, chunk, window, sink, train_frames):
  """The Sampler as it is, over its own cache of sink + window * chunk frames with that sink,
  for a model trained on clips of `train_frames` (None: the cache's window)."""
  b = noise.shape[0]
  sampler = sampling.Sampler(model, frame_shape=FRAME, chunk=chunk,
                             window=sink + (window + 1) * chunk, sink_frames=sink,
                             train_frames=train_frames)
  frames, _ = jax.jit(sampler.rollout)(params, sampler.init_cache(b), noise,
                                       jnp.broadcast_to(times, (b, len(times))))
  return frames


def clip_frames(i, chunk, train_frames, sink):
  """Indices into the video of the training clip in which chunk i is run: the video's first
  frames while chunk i fits in `train_frames`; past that, the sink and then the most recent
  frames, chunk i last (the training mask hides those outside its window)."""
  start = i * chunk
  if start + chunk <= train_frames:
    return np.arange(start + chunk)
  recent = train_frames - chunk - sink
  return np.concatenate([np.arange(sink), np.arange(start - recent, start + chunk)])


def reference_sample(model, params, noise, times, *, chunk, train_frames, window, sink):
  """No cache: every Euler step of chunk i reruns the model on its training clip (clip_frames;
  clean frames at t = 0, the chunk at t) at positions 0 .. train_frames - 1 under
  BlockCausal(train_frames, chunk, window, sink), padded with zero frames after the chunk,
  which the causal mask hides from it (one shape: one compilation)."""
  b, num_frames = noise.shape[:2]
  mask = masks.BlockCausal(train_frames, chunk, window, sink)
  apply = jax.jit(lambda x, t, previous: model.apply(
      params, x, t, frame_pos_f=jnp.arange(train_frames), mask=mask, previous_bfhwc=previous)[0])
  pad = lambda a: jnp.concatenate(
      [a, jnp.zeros((b, train_frames - a.shape[1]) + a.shape[2:])], axis=1)
  clean = noise[:, :0]
  for i in range(num_frames // chunk):
    start = i * chunk
    index = clip_frames(i, chunk, train_frames, sink)
    at = len(index) - chunk  # where the chunk sits in its clip
    x = noise[:, start:start + chunk]
    for k in range(len(times) - 1):
      video = jnp.concatenate([clean, x], axis=1)
      # previous_frame_input: clean frames read the frame before them, the chunk the last clean
      # frame, wherever the clip puts them.
      previous = jnp.concatenate(
          [dit.previous_frames(video, chunk, within_history=True)[:, :start],
           dit.previous_frames(video, chunk, within_history=False)[:, start:]], axis=1)
      t = jnp.zeros((b, train_frames)).at[:, at:at + chunk].set(times[k])
      v = apply(pad(video[:, index]), t, pad(previous[:, index]))[:, at:at + chunk]
      x = flow.euler_step(x, v, t[:, at:at + chunk], jnp.full((b, chunk), times[k + 1]))
    clean = jnp.concatenate([clean, x], axis=1)
  return clean


@pytest.mark.parametrize("chunk,window,sink,prediction,previous_frame_input",
                         [(1, 2, 1, "velocity", False), (2, 1, 2, "data", True)])
def test_cache_with_sink_equals_recomputation_under_the_windowed_mask(
    chunk, window, sink, prediction, previous_frame_input):
  """T2 with a window and a sink: a 2-layer model sampled four chunks past its cache's window
  (frames evicted, the sink kept), within a clip as long as the video (span = frames - chunk),
  equals recomputing every step over the whole prefix under BlockCausal(window, sink) at
  absolute positions; and the sink changes the result (a FIFO of as many slots differs)."""
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, prediction=prediction,
                        previous_frame_input=previous_frame_input)
  frames = sink + (window + 1 + 4) * chunk
  params = _random_params(model)
  noise = jax.random.normal(jax.random.key(5), (2, frames) + FRAME)
  times = flow.step_times(2, 2.0)
  cached = cached_sample(model, params, noise, times, chunk=chunk, window=window, sink=sink,
                         train_frames=frames)
  reference = reference_sample(model, params, noise, times, chunk=chunk, train_frames=frames,
                               window=window, sink=sink)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(reference), atol=1e-5, rtol=0)
  fifo = cached_sample(model, params, noise, times, chunk=chunk, window=window + sink // chunk,
                       sink=0, train_frames=None)
  assert float(jnp.abs(fifo - cached).max()) > 1e-3, "the sink changed nothing"


@pytest.mark.parametrize("chunk,window,sink", [(1, 2, 1), (2, 1, 2), (1, 2, 0)])
def test_past_the_training_length_a_chunk_is_the_last_chunk_of_a_training_clip(chunk, window,
                                                                               sink):
  """Sampling four chunks past an N-frame training clip trained with the extrapolation trick
  (N = sink + (window + 2) * chunk) equals running every chunk past N as the last chunk of a
  training clip holding the sink and then the most recent frames, under the training mask at
  positions 0 .. N - 1. One layer, so that a cached frame's keys depend on that frame alone, as
  in such a clip. Without a sink this is the FIFO with its default positions; with one, positions
  counted from the cache's own window (span = slots) put the sink elsewhere, and differ."""
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2)
  train_frames = sink + (window + 2) * chunk
  frames = train_frames + 4 * chunk
  params = _random_params(model)
  noise = jax.random.normal(jax.random.key(6), (2, frames) + FRAME)
  times = flow.step_times(2, 2.0)
  cached = cached_sample(model, params, noise, times, chunk=chunk, window=window, sink=sink,
                         train_frames=train_frames if sink else None)
  reference = reference_sample(model, params, noise, times, chunk=chunk,
                               train_frames=train_frames, window=window, sink=sink)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(reference), atol=1e-5, rtol=0)
  if sink:
    window_relative = cached_sample(model, params, noise, times, chunk=chunk, window=window,
                                    sink=sink, train_frames=None)
    assert float(jnp.abs(window_relative - cached).max()) > 1e-3
