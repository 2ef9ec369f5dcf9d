"""Stopping a run between steps: a SIGTERM or a first Ctrl-C asks the trainer to finish the step,
save a checkpoint and exit; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils

from videoar import errors


class Preemption:
  """SIGTERM and the first SIGINT ask the run to stop after the current step, with a checkpoint.

  A single process turns either signal into a flag that the trainer checks between steps; the
  first SIGINT then gives SIGINT Python's default behaviour (errors.interrupt), so a second one
  raises KeyboardInterrupt at once. Several processes must stop after the same step: there JAX's
  preemption service, started by jax.distributed.initialize, catches SIGTERM on any of them and
  agrees that step with the others, and every process asks it after every step (SIGINT keeps its
  default there).

  Attributes:
    signal: the signal that asked the run to stop (signal.SIGTERM or SIGINT), or None.
  """

  def __init__(self):
    self._distributed = jax.process_count() > 1
    self.signal: signal.Signals | None = None
    self._previous = {}
    if not self._distributed:
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum)
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, errors.interrupt)

  def reached(self, step: int) -> bool:
    """Whether the run stops after `step` (the same answer on every process)."""
    if self._distributed:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal = signal.SIGTERM
    return self.signal is not None

  def restore(self) -> None:
    """Puts back the handlers that were there before."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
