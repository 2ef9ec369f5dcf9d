"""Batches of clips for training and evaluation, built on grain's MapDataset.

Every clip is a pure function of (seed, clip index), and training batches are
random-access by step, so resuming at step s reproduces exactly the batches an
uninterrupted run would have seen.

Held-out clips come from the same seed but from clip indices starting at
EVAL_INDEX_OFFSET; train_batches stops before reaching that range, so no
evaluation clip is ever trained on.
"""

import dataclasses
from typing import Protocol

import grain
import numpy as np

from videoar.data.bouncing import BouncingWorld
from videoar.data.moving_mnist import MovingMnist

EVAL_INDEX_OFFSET = 2**40


class ClipSource(Protocol):
    def clip(self, seed: int, index: int, num_frames: int) -> dict[str, np.ndarray]: ...


SOURCES: dict[str, type[ClipSource]] = {
    "bouncing": BouncingWorld,
    "moving_mnist": MovingMnist,
}


def make_source(name: str, **kwargs) -> ClipSource:
    if name not in SOURCES:
        raise ValueError(f"data.source={name!r} is unknown; allowed: {', '.join(SOURCES)}")
    return SOURCES[name](**kwargs)


@dataclasses.dataclass(frozen=True)
class _HostClip:
    """Maps this host's k-th training clip to its clip in the global stream."""

    source: ClipSource
    seed: int
    num_frames: int
    batch_size: int
    process_index: int
    process_count: int

    def __call__(self, host_position: int) -> dict[str, np.ndarray]:
        step, slot = divmod(host_position, self.batch_size)
        # Within the global batch, this host owns the slots j with j % process_count == process_index.
        global_slot = slot * self.process_count + self.process_index
        index = step * self.batch_size * self.process_count + global_slot
        return self.source.clip(self.seed, index, self.num_frames)


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

    batch_size is per host; the global batch at step s is clips
    s * global_batch + j for j < global_batch = batch_size * process_count, and
    this host takes the j with j % process_count == process_index.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})"
        )
    num_steps = EVAL_INDEX_OFFSET // (batch_size * process_count)
    host_clip = _HostClip(source, seed, num_frames, batch_size, process_index, process_count)
    return (
        grain.MapDataset.range(num_steps * batch_size)
        .map(host_clip)
        .batch(batch_size, drop_remainder=True)
    )


def eval_clips(
    source: ClipSource, *, num_clips: int, num_frames: int, seed: int
) -> dict[str, np.ndarray]:
    """The first num_clips held-out clips (indices from EVAL_INDEX_OFFSET), stacked."""
    if num_clips < 1:
        raise ValueError(f"num_clips={num_clips} must be at least 1")
    clips = [
        source.clip(seed, EVAL_INDEX_OFFSET + i, num_frames) for i in range(num_clips)
    ]
    return {key: np.stack([clip[key] for clip in clips]) for key in clips[0]}
