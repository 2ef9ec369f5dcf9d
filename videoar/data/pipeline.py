"""Batches of clips for training and evaluation, built on grain's MapDataset.

Every source is a ClipSource: clip(seed, index, num_frames) is a pure function of its
arguments. Procedural sources (bouncing, moving_mnist) render clip `index` of an endless stream
chosen by `seed`. Recorded sources (atari, video_folder, array_record) hold finite frame
sequences on disk; RecordedClips cuts them into clips of F frames at a stride, and the training
stream visits those clips in a seeded shuffle that changes every epoch.

The global training stream is then split between hosts (host p takes clips p::process_count)
and batched. Batches are random-access by step, so resuming at step s reproduces exactly the
batches an uninterrupted run would have seen (the trainer resumes by starting the batches at the
checkpoint's step: no iterator state is saved); batch_iterator reads them in order with thread or
process prefetch.

Held-out clips come from clip indices starting at EVAL_INDEX_OFFSET: for a procedural source,
the same seed's stream past anything train_batches reaches; for a recorded source, frames no
training clip touches: whole videos for video_folder (a seeded eval_fraction of the files, at
least one), the last eval_fraction of every sequence's frames for atari and array_record.
check_eval_clips says before training whether there are enough of them.
"""

import dataclasses
import functools
from typing import Protocol

import grain
import numpy as np
from absl import flags

from videoar.data.array_record import ArrayRecordLatents
from videoar.data.atari import AtariEpisodes
from videoar.data.bouncing import BouncingWorld
from videoar.data.moving_mnist import MovingMnist
from videoar.data.video_folder import VideoFolder

EVAL_INDEX_OFFSET = 2**40
PREFETCH = ("threads", "processes")


class ClipSource(Protocol):
  """A data source: clips addressed by (seed, index) (module docstring)."""

  def clip(self, seed: int, index: int, num_frames: int) -> dict[str, np.ndarray]:
    """Clip `index` of `num_frames` frames, a pure function of its arguments: `video`
    [F, H, W, C] and the source's other arrays; index >= EVAL_INDEX_OFFSET is held out."""
    ...


class Recording(Protocol):
  """Finite frame sequences on disk: Atari episodes, video files, encoded latent sequences."""

  def lengths(self) -> np.ndarray:
    """Frames in each sequence, int64 [num_sequences]."""
    ...

  def read(self, sequence: int, frames: np.ndarray) -> dict[str, np.ndarray]:
    """`video` [len(frames), H, W, C] (uint8 pixels or float latents), per-frame arrays
    [len(frames), ...] and per-sequence arrays, of the given frames of one sequence."""
    ...

  def id_counts(self) -> dict[str, int]:
    """{entry: n} for the id entries it gives (`label`, `actions`) whose range it knows: every
    id of `entry` in the recording is in [0, n)."""
    ...


PROCEDURAL_SOURCES = {"bouncing": BouncingWorld, "moving_mnist": MovingMnist}
RECORDINGS = {"atari": AtariEpisodes, "video_folder": VideoFolder,
              "array_record": ArrayRecordLatents}
SOURCES: dict[str, type] = PROCEDURAL_SOURCES | RECORDINGS
HOLD_OUTS = ("tail", "sequences")
# Videos in a folder are often short clips whose tails could not hold an evaluation clip; the
# atari and array_record results in docs/ were measured on the tails.
HOLD_OUT = {"atari": "tail", "video_folder": "sequences", "array_record": "tail"}


@dataclasses.dataclass(frozen=True)
class RecordedClips:
  """The clips of a Recording: num_frames frames, `stride` frames apart.

  What is held out for evaluation depends on `hold_out` (make_source sets it from HOLD_OUT):
    "tail": the last eval_fraction of every sequence's frames; the rest is for training.
    "sequences": round(eval_fraction x the number of sequences), at least one unless
      eval_fraction is 0, drawn with a fixed seed (every run holds out the same ones for a given
      number of sequences); no frame of them is for training and all frames of the others are.
      ValueError if that leaves no sequence to train on.
  Training clip i is the i-th window in sequence order, one starting at every frame (the
  training stream shuffles them). Held-out clip EVAL_INDEX_OFFSET + i comes from windows that
  do not overlap, in a fixed shuffled order, so a few of them already span many sequences.
  """

  recording: Recording
  stride: int = 1
  eval_fraction: float = 0.1
  hold_out: str = "tail"

  def __post_init__(self):
    if not isinstance(self.stride, int) or self.stride < 1:
      raise ValueError(f"data.options.stride={self.stride!r} must be an integer >= 1")
    if not 0.0 <= self.eval_fraction < 1.0:
      raise ValueError(f"data.options.eval_fraction={self.eval_fraction!r} must be in [0, 1)")
    if self.hold_out not in HOLD_OUTS:
      raise ValueError(
          f"RecordedClips.hold_out={self.hold_out!r} is unknown; allowed: {', '.join(HOLD_OUTS)}")

  def num_clips(self, num_frames: int, held_out: bool = False) -> int:
    return int(_window_table(self, num_frames, held_out)[1][-1])

  def held_out_sequences(self) -> np.ndarray:
    """The sequences with held-out frames, sorted, int64 [K]."""
    return np.flatnonzero(_split(self)[2])

  def clip(self, seed: int, index: int, num_frames: int) -> dict[str, np.ndarray]:
    del seed  # a recorded clip is what is on disk; the seed orders the training stream
    held_out = index >= EVAL_INDEX_OFFSET
    position = index - EVAL_INDEX_OFFSET if held_out else index
    first_frames, cumulative, order = _window_table(self, num_frames, held_out)
    if not 0 <= position < cumulative[-1]:
      split = "held-out" if held_out else "training"
      if not cumulative[-1]:
        training, _, held = _split(self)
        longest = int((held if held_out else training).max(initial=0))
        raise IndexError(
            f"no {split} clip of {num_frames} frames at stride {self.stride}"
            f" ({(num_frames - 1) * self.stride + 1} frames) fits in {self.recording}: its longest"
            f" {split} stretch is {longest} frames; lower data.num_frames or data.options.stride")
      raise IndexError(
          f"{split} clip {position} of {num_frames} frames at stride {self.stride} is out of"
          f" range: {self.recording} has {cumulative[-1]}")
    window = int(order[position]) if held_out else position
    sequence = int(np.searchsorted(cumulative, window, side="right")) - 1
    start = first_frames[sequence] + (window - cumulative[sequence]) * (
        (num_frames - 1) * self.stride + 1 if held_out else 1)
    clip = dict(self.recording.read(sequence, start + self.stride * np.arange(num_frames)))
    video = clip["video"]
    if video.dtype == np.uint8:
      clip["video"] = video.astype(np.float32) / 127.5 - 1.0
    else:
      clip["video"] = video.astype(np.float32)
    return clip


@functools.lru_cache(maxsize=16)
def _split(clips: RecordedClips) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(training frames from the start of each sequence, first held-out frame, held-out frames),
  each int64 [N]."""
  lengths = clips.recording.lengths()
  if clips.hold_out == "tail":
    train_lengths = np.floor(lengths * (1.0 - clips.eval_fraction)).astype(np.int64)
    return train_lengths, train_lengths, lengths - train_lengths
  count = max(1, round(clips.eval_fraction * len(lengths))) if clips.eval_fraction else 0
  if count >= len(lengths) == 1:
    # eval_fraction=0 would only move the refusal to the held-out clips that sampling and
    # evaluation continue.
    raise ValueError(
        f"{clips.recording} has 1 sequence, and whole sequences are held out for evaluation"
        f" (data.options.eval_fraction={clips.eval_fraction}): add a second, one to train on and"
        " one to evaluate on")
  if count >= len(lengths):
    raise ValueError(
        f"data.options.eval_fraction={clips.eval_fraction} holds out {count} of the"
        f" {len(lengths)} sequences of {clips.recording} whole, leaving none to train on: add"
        " sequences, or lower eval_fraction")
  # A fixed seed, not the run's: every run is evaluated on the same sequences.
  held = np.zeros(len(lengths), bool)
  held[np.random.default_rng(0).permutation(len(lengths))[:count]] = True
  return np.where(held, 0, lengths), np.zeros_like(lengths), np.where(held, lengths, 0)


@functools.lru_cache(maxsize=16)
def _window_table(clips: RecordedClips, num_frames: int, held_out: bool):
  """(first frame of each sequence's part, cumulative window counts [N + 1], visiting order)."""
  train_lengths, held_first_frames, held_lengths = _split(clips)
  span = (num_frames - 1) * clips.stride + 1
  if held_out:
    first_frames, windows = held_first_frames, held_lengths // span
  else:
    first_frames = np.zeros_like(train_lengths)
    windows = np.maximum(train_lengths - span + 1, 0)
  cumulative = np.concatenate([[0], np.cumsum(windows)])
  # A fixed order, not the run's seed: every run is evaluated on the same held-out clips.
  order = np.random.default_rng(0).permutation(cumulative[-1]) if held_out else None
  return first_frames, cumulative, order


def make_source(name: str, *, path: str | None = None, **options) -> ClipSource:
  """The source data.source=`name`; recorded sources read `path` (data.path)."""
  if name not in SOURCES:
    raise ValueError(f"data.source={name!r} is unknown; allowed: {', '.join(SOURCES)}")
  if name in PROCEDURAL_SOURCES:
    if path:
      raise ValueError(f"data.source={name!r} reads no files, but data.path={path!r} is set")
    return PROCEDURAL_SOURCES[name](**options)
  if not path:
    raise ValueError(f"data.source={name!r} reads files: set data.path")
  clip_options = {key: options.pop(key) for key in ("stride", "eval_fraction") if key in options}
  return RecordedClips(RECORDINGS[name](path=path, **options), hold_out=HOLD_OUT[name],
                       **clip_options)


def id_counts(source: ClipSource) -> dict[str, int]:
  """The recording's Recording.id_counts() for a recorded source; {} for a procedural one,
  which gives no ids."""
  return source.recording.id_counts() if isinstance(source, RecordedClips) else {}


def frame_shape(source: ClipSource) -> tuple[int, int, int]:
  """(H, W, C) of the source's frames (pixels, or latent positions x channels), read from the
  first frame of sequence 0 (recorded) or of clip 0 (procedural)."""
  if isinstance(source, RecordedClips):
    video = source.recording.read(0, np.arange(1))["video"]
  else:
    video = source.clip(0, 0, 1)["video"]
  height, width, channels = video.shape[1:]
  return int(height), int(width), int(channels)


@dataclasses.dataclass(frozen=True)
class _Clip:
  """Clip `index` of the source, as a picklable function for grain's workers."""

  source: ClipSource
  seed: int
  num_frames: int

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    return self.source.clip(self.seed, int(index), self.num_frames)


def _training_stream(source: ClipSource, num_frames: int, seed: int) -> grain.MapDataset:
  """Element i is clip i of the global training stream."""
  if isinstance(source, RecordedClips):
    count = source.num_clips(num_frames)
    if not count:
      raise ValueError(
          f"no training clip of {num_frames} frames at stride {source.stride} fits in"
          f" {source.recording}: lower data.num_frames or data.options.stride")
    # Each epoch visits every clip once, in an order drawn from (seed, epoch).
    indices = grain.MapDataset.range(count).shuffle(seed).repeat()
  else:
    indices = grain.MapDataset.range(EVAL_INDEX_OFFSET)
  return indices.map(_Clip(source, seed, num_frames))


def train_batches(
    source: ClipSource,
    *,
    batch_size: int,
    num_frames: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
  """ds[step] is this host's training batch for `step`: a dict of stacked arrays.

  batch_size is per host; the global batch at step s is clips s * global_batch + j of the
  training stream for j < global_batch = batch_size * process_count, and this host takes the
  j with j % process_count == process_index.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be at least 1")
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} must be in [0, process_count={process_count})")
  host_stream = _training_stream(source, num_frames, seed)[process_index::process_count]
  return host_stream.batch(batch_size, drop_remainder=True)


def batch_iterator(batches: grain.MapDataset, *, prefetch: str = "threads",
                   num_workers: int = 2) -> grain.DatasetIterator:
  """Iterates `batches` in order while `num_workers` threads or processes prepare the next ones
  (a run resumed at step s iterates batches[s:]). Threads suit sources whose clips cost little
  Python time (file reads, NumPy); processes escape the GIL for Python-heavy sources but each
  worker starts by importing what the pipeline's functions need, which takes seconds.

  Raises ValueError for a `prefetch` not in PREFETCH or fewer than one worker.
  """
  if prefetch not in PREFETCH:
    raise ValueError(f"data.prefetch={prefetch!r} is unknown; allowed: {', '.join(PREFETCH)}")
  if num_workers < 1:
    raise ValueError(f"data.num_workers={num_workers} must be at least 1")
  if prefetch == "threads":
    return iter(batches.to_iter_dataset(
        grain.ReadOptions(num_threads=num_workers, prefetch_buffer_size=2 * num_workers)))
  if not flags.FLAGS.is_parsed():
    # grain's process prefetch reads its own absl flags; a program that never parsed flags
    # (a test, a notebook) gets their defaults.
    flags.FLAGS.mark_as_parsed()
  return iter(batches.to_iter_dataset().mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2)))


def check_eval_clips(source: ClipSource, *, num_clips: int, num_frames: int) -> None:
  """Raises ValueError (one line: how many held-out clips of num_frames frames there are, and
  the config keys that change it) unless `source` holds out num_clips of them, as eval_clips
  will ask. Procedural sources always do."""
  if num_clips < 1:
    raise ValueError(f"num_clips={num_clips} must be at least 1")
  if not isinstance(source, RecordedClips):
    return
  available = source.num_clips(num_frames, held_out=True)
  if available >= num_clips:
    return
  lengths = source.recording.lengths()
  span = (num_frames - 1) * source.stride + 1
  if source.hold_out == "sequences":
    held = lengths[source.held_out_sequences()]
    where = f"{len(held)} whole sequences of its {len(lengths)}"
    if len(held):
      sizes = f"{held.min()}-{held.max()}" if held.min() < held.max() else f"{held.min()}"
      where += f" ({sizes} frames)"
  else:
    where = f"the last {source.eval_fraction:g} of each of its {len(lengths)} sequences"
  raise ValueError(
      f"{source.recording} holds out only {available} clips of {num_frames} frames at stride"
      f" {source.stride} ({span} frames each) in {where}, fewer than the {num_clips} asked for:"
      " raise data.options.eval_fraction, or lower eval.num_clips, sample.num_videos,"
      " sample.length_multiple, sample.context_frames or data.options.stride")


def eval_clips(
    source: ClipSource, *, num_clips: int, num_frames: int, seed: int
) -> dict[str, np.ndarray]:
  """The first num_clips held-out clips (indices from EVAL_INDEX_OFFSET), stacked; raises
  check_eval_clips' ValueError if the source holds out fewer."""
  check_eval_clips(source, num_clips=num_clips, num_frames=num_frames)
  clips = [source.clip(seed, EVAL_INDEX_OFFSET + i, num_frames) for i in range(num_clips)]
  return {key: np.stack([clip[key] for clip in clips]) for key in clips[0]}
