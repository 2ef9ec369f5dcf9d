"""One run per workdir, and a record of what that run is, so that a run that is started twice,
interrupted or resumed either continues the same run or refuses in one line saying why.

The lock (`WorkdirLock`) is an flock on WORKDIR/.lock, held from the start of a run to its end.
The kernel drops it when its holder exits, however it exits (return, exception, SIGTERM,
SIGKILL, a crash), so a dead run never blocks the next one. The file itself stays: while a run
holds the lock it names the holder ({"host", "pid", "started"}), which goes into the message of
a run that finds the workdir busy, and which `cat WORKDIR/.lock` shows. A clean release empties
it; a file that still names a holder when no run holds the lock is what a killed run left, and
the next run takes it over. In a multi-host run only process 0 takes the lock: the others would
find it busy where the filesystem is shared.

Caveat: flock is only as good as the filesystem's locking. Local disks lock across processes;
NFSv4 on Linux locks across hosts, but NFS mounted with `nolock` and some FUSE or bucket-backed
filesystems lock only within one host (or not at all). There two hosts can both take the lock,
and the host and process id in WORKDIR/.lock are how to see who holds it.

The record (`RunRecord`, WORKDIR/run.json) is the run's config and the identity of its data.
On resume, `compare` sorts each difference between the recorded run and the current command into
harmless (how often to log and checkpoint, how samples and evaluations are made, how the input
pipeline and the device mesh are laid out, a longer run) and blocking (anything else, which
would make the resumed run a different one). `check_same_run` and `check_steps_left` raise
`RunRefused` with the one line to show.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import math
import os
import socket
from typing import Any, Mapping

from videoar import files
from videoar.errors import UserError

LOCK_NAME = ".lock"
RECORD_NAME = "run.json"
# What evaluating a run writes into its workdir (videoar.eval.run.evaluate), and what sampling
# writes (videoar.eval.run.sample).
EVAL_OUTPUTS = ("eval.json", "eval.txt", "eval_per_frame.png")
SAMPLES_NAME = "samples"
# Where move_aside keeps what a new run or a new evaluation would replace.
PREVIOUS_NAME = "previous"
# The flag that starts a new run from a workdir's weights; the entry point defines it.
RESTART_FLAG = "--restart_from_weights"

# Differences that leave the resumed run the same run: they change when the trainer logs and
# saves, and what happens after training, not what it trains.
# model.remat_policy: what the backward pass recomputes changes memory and time, not the values.
_HARMLESS_KEYS = frozenset({"train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                            "data.prefetch", "data.num_workers", "model.remat_policy"})
# The mesh is harmless too: checkpoints are restored onto any mesh, and the batches a step
# sees do not depend on it.
_HARMLESS_SECTIONS = ("sample.", "eval.", "mesh.")
# What sampling and evaluating a run read of its config, besides sample.* and eval.*: the world
# and its held-out clips, the model, and how the history is cut. The rest only trains.
SAMPLING_READS = ("data.", "model.", "seed.", "forcing.chunk.", "forcing.history_window.",
                  "forcing.sink_frames.")
_TRAINING_ONLY = frozenset({"data.batch_size"})
# How many differences a one-line message shows before "(and N more)".
_SHOWN = 3
# How many characters of a value a message shows (a 40-digit SHA-1 fits).
_VALUE_CHARS = 48


def move_aside(workdir: str, names: tuple[str, ...]) -> str | None:
  """Moves those of `names` (files or folders in `workdir`) that exist into a new folder
  WORKDIR/previous/TIME (the local time to the second, then -2, -3, ... when that is taken), so
  that a new run or evaluation never overwrites an old one's. Returns that folder, or None when
  none of them existed.

  Raises:
    OSError: the folder cannot be made or a name cannot be moved (what moved before stays
      there).
  """
  present = [name for name in names if os.path.lexists(os.path.join(workdir, name))]
  if not present:
    return None
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  aside, attempt = os.path.join(workdir, PREVIOUS_NAME, stamp), 1
  while True:
    try:
      os.makedirs(aside)
      break
    except FileExistsError:
      attempt += 1
      aside = os.path.join(workdir, PREVIOUS_NAME, f"{stamp}-{attempt}")
  for name in present:
    os.rename(os.path.join(workdir, name), os.path.join(aside, name))
  return aside


class WorkdirBusy(UserError, RuntimeError):
  """Another live process holds the workdir's lock."""


class RunRefused(UserError, RuntimeError):
  """The command cannot resume the run in its workdir; the message says why and how to go on."""


class WorkdirLock:
  """The lock that makes a workdir hold one run at a time.

  Use as a context manager, or call acquire() and release(); the lock is held by this process
  until released or until the process exits. A child made by a bare os.fork() shares it until
  the child exits too; spawned and exec'd children do not (Python opens files close-on-exec).
  """

  def __init__(self, workdir: str):
    """workdir: the run's directory, created on acquire() if missing."""
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd: int | None = None

  def acquire(self) -> None:
    """Takes the lock and writes this process's host, pid and start time into the lock file.

    Raises:
      WorkdirBusy: another process holds it; the message names the holder.
      RuntimeError: the filesystem does not support flock.
      UserError: the lock file cannot be written (a full disk).
    """
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(os.pread(fd, 4096, 0))
      os.close(fd)
      raise WorkdirBusy(f"{self.workdir} is in use by another run ({holder}): wait for it to end,"
                        " or use another --workdir") from None
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise RuntimeError(f"cannot lock {self.path} ({e.strerror}): the filesystem does not"
                           " support flock; use a workdir on a local disk or NFSv4") from None
      raise
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started})
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (holder + "\n").encode(), 0)
    except OSError as e:  # a full disk: the run could not write anything else either
      os.close(fd)
      raise UserError(f"cannot write the lock {self.path} ({e.strerror}): free space on"
                      " its filesystem, then rerun") from None
    self._fd = fd

  def release(self) -> None:
    """Empties the lock file and drops the lock; does nothing when not held."""
    if self._fd is None:
      return
    # Emptied before unlocking, so the file names a holder only while one lives (or was killed).
    # It is not deleted: a process that opened it before the deletion would lock a file that
    # the next run no longer sees.
    os.ftruncate(self._fd, 0)
    os.close(self._fd)  # closing the last descriptor drops the flock
    self._fd = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


def _holder(content: bytes) -> str:
  """'host H, process P, started T' from a lock file's content."""
  try:
    holder = json.loads(content)
    return f"host {holder['host']}, process {holder['pid']}, started {holder['started']}"
  except (ValueError, TypeError, KeyError):
    # The holder took the lock and has not written its name yet.
    return "holder not yet recorded in the lock file"


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What a run is: its config and the identity of its data, as plain JSON values.

  Attributes:
    config: the config as a nested dict (config.to_dict()), tuples turned into lists.
    dataset: the data source's identity, e.g. {"source": "video_folder", "path": "/abs/dir",
      "files": 120, "fingerprint": "<sha1>"}.

  Raises (on construction):
    TypeError: a value or key JSON cannot hold (only str, int, float, bool, None, list, tuple
      and dict with str keys can be recorded); the message names its key path.
    ValueError: a float that is NaN or infinite, which strict JSON cannot hold.
  """

  config: dict
  dataset: dict

  def __post_init__(self):
    # Normalised on construction, so a record compares equal to itself after a save and load.
    object.__setattr__(self, "config", _plain(self.config, "config"))
    object.__setattr__(self, "dataset", _plain(self.dataset, "dataset"))

  def save(self, workdir: str) -> None:
    """Writes WORKDIR/run.json atomically: a crash leaves the old record or the new, whole.

    Save the current record after a resume passes check_same_run, so that run.json describes
    the newest command (its allowed changes included).
    """
    with files.replaced(os.path.join(workdir, RECORD_NAME)) as f:
      json.dump({"config": self.config, "dataset": self.dataset}, f, indent=2, allow_nan=False)
      f.write("\n")

  @classmethod
  def load(cls, workdir: str) -> RunRecord | None:
    """The record in WORKDIR/run.json, or None when there is none (a workdir no run started).

    Raises:
      RunRefused: run.json is not a run record; the line's advice is a reader's (restore it),
        and a command that would write the workdir adds its own.
    """
    path = os.path.join(workdir, RECORD_NAME)
    try:
      with open(path) as f:
        content = json.load(f)
    except FileNotFoundError:
      return None
    except ValueError as e:
      raise RunRefused(f"{path} is not valid JSON ({e}): restore it from a copy") from None
    if (not isinstance(content, dict) or set(content) != {"config", "dataset"}
        or not all(isinstance(v, dict) for v in content.values())):
      raise RunRefused(f"{path} is not a run record (a JSON object of 'config' and 'dataset'"
                       " objects): restore it from a copy")
    return cls(config=content["config"], dataset=content["dataset"])


def _plain(value: Any, path: str) -> Any:
  """`value` as strict JSON values: tuples become lists; errors name the key path."""
  if isinstance(value, Mapping):
    for key in value:
      if not isinstance(key, str):
        raise TypeError(f"run record: {path} has the key {key!r}; only str keys can be recorded")
    return {key: _plain(v, f"{path}.{key}") for key, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError(f"run record: {path}={value} cannot be recorded in JSON; use a finite value")
  if value is None or isinstance(value, (str, int, float)):  # bool is an int
    return value
  raise TypeError(f"run record: {path} is a {type(value).__name__}; only str, int, float, bool,"
                  " None, list, tuple and dict can be recorded")


class _Absent:
  """A key that one of two records lacks."""

  def __repr__(self) -> str:
    return "(absent)"


ABSENT = _Absent()


@dataclasses.dataclass(frozen=True)
class Difference:
  """One differing key: `path` is dotted ("data.batch_size"; the data's identity under
  "dataset."), `old` and `new` the recorded and current values, ABSENT where a record lacks it."""

  path: str
  old: Any
  new: Any

  def __str__(self) -> str:
    return f"{self.path} {_show(self.old)} -> {_show(self.new)}"


@dataclasses.dataclass(frozen=True)
class Differences:
  """The differences between a recorded run and the current one, sorted by path."""

  harmless: tuple[Difference, ...]  # allowed on resume; list them
  blocking: tuple[Difference, ...]  # each makes it a different run


def compare(recorded: RunRecord, current: RunRecord) -> Differences:
  """Every key path whose value differs between two records (int 1 and float 1.0 do not differ;
  True and 1 do), sorted into harmless and blocking."""
  old, new = _leaves(recorded), _leaves(current)
  harmless, blocking = [], []
  for path in sorted(old.keys() | new.keys()):
    a, b = old.get(path, ABSENT), new.get(path, ABSENT)
    if not _same(a, b):
      (harmless if _is_harmless(path, a, b) else blocking).append(Difference(path, a, b))
  return Differences(harmless=tuple(harmless), blocking=tuple(blocking))


def data_difference(first: dict, second: dict) -> Difference | None:
  """The first difference between the data two configs (as dicts) train and evaluate on:
  data.source, else the first key of data.options (in sorted order) whose value differs; None
  where they are the same world. Other data keys (clip length, batch size) are the run's own. A
  key one config lacks (a hand-written config, or an option added to the code after the run) is
  not known, so not a difference: it was said as "-> None"."""
  for key in ("source", "options"):
    records = []
    for config in (first, second):
      data = config.get("data")
      data = data if isinstance(data, dict) else {}
      records.append(RunRecord({"data": {key: data[key]}} if key in data else {}, {}))
    # Sorted by key.
    differences = [d for d in compare(*records).blocking
                   if ABSENT not in (d.old, d.new)]
    if differences:
      return differences[0]
  return None


def check_same_run(workdir: str, recorded: RunRecord, current: RunRecord, *,
                   weight_keys: frozenset[str] = frozenset()) -> Differences:
  """The differences between the run in `workdir` and the current one, when it may resume.
  `weight_keys` are the dotted keys whose change gives the weights another shape or meaning
  (validate.TRAINED_MODEL_PATHS): the refusal then offers no restart from them.

  Raises:
    RunRefused: a blocking difference; the message is refusal_line's.
  """
  differences = compare(recorded, current)
  if differences.blocking:
    # What makes it another model or method is said first: a listing cut at a few differences
    # must not hide it behind the data options.
    first = lambda d: (d.path not in weight_keys, d.path != "forcing.paradigm", d.path)
    shown = Differences(differences.harmless, tuple(sorted(differences.blocking, key=first)))
    raise RunRefused(refusal_line(
        workdir, shown, weights_fit=not any(d.path in weight_keys for d in differences.blocking)))
  return differences


def refusal_line(workdir: str, differences: Differences, *, weights_fit: bool = True) -> str:
  """The one line refusing to resume a run with blocking differences, e.g. "runs/a was started
  with a different run: data.batch_size 16 -> 32, seed 0 -> 1 (and 2 more); to go on use a new
  --workdir, or pass --restart_from_weights to start a new run from its weights"; without the
  restart when its weights would not fit the current model (`weights_fit` false)."""
  line = f"{workdir} was started with a different run: {_listing(differences.blocking)}"
  if not weights_fit:
    return f"{line}; its weights do not fit this model: to go on use a new --workdir"
  return (f"{line}; to go on use a new --workdir, or pass {RESTART_FLAG} to start a new run from"
          " its weights")


def allowed_line(workdir: str, differences: Differences) -> str:
  """The one line to log on resuming, e.g. "resuming runs/a; allowed changes: train.log_every
  50 -> 10", or "resuming runs/a; no changes" when there are no harmless differences."""
  if not differences.harmless:
    return f"resuming {workdir}; no changes"
  return f"resuming {workdir}; allowed changes: {_listing(differences.harmless)}"


def evaluation_changes(differences: Differences) -> list[str]:
  """The allowed changes on resume that change what the evaluation while training measures
  (sample.* and eval.*, but eval.every, which only says when), each as "KEY OLD -> NEW"."""
  return [str(d) for d in differences.harmless
          if d.path.startswith(("sample.", "eval.")) and d.path != "eval.every"]


def trained_differently(workdir: str, config: Mapping[str, Any]) -> tuple[Difference, ...]:
  """The keys that sampling and evaluation read (SAMPLING_READS: the world and its held-out
  clips, the model, how the history is cut), other than sample.* and eval.*, whose values in
  `config` (a config as a dict) differ from the run recorded in `workdir`. A key one of the two
  lacks (added to the code after the run) is left out: its value then is not known. Empty when
  no run is recorded there.

  Raises:
    RunRefused: run.json is not a run record.
  """
  recorded = RunRecord.load(workdir)
  if recorded is None:
    return ()
  blocking = compare(RunRecord(recorded.config, {}), RunRecord(dict(config), {})).blocking
  return tuple(d for d in blocking
               if ABSENT not in (d.old, d.new) and d.path not in _TRAINING_ONLY
               and (d.path + ".").startswith(SAMPLING_READS))


def trained_differently_line(workdir: str, differences: tuple[Difference, ...]) -> str:
  """The line that says so, e.g. "note: runs/a was trained with other values (its run.json ->
  this command): data.options.num_objects 2 -> 4; samples and evaluation use this command's"."""
  return (f"note: {workdir} was trained with other values (its run.json -> this command):"
          f" {_listing(differences)}; samples and evaluation use this command's")


def result_differences(recorded: Mapping[str, Any],
                       config: Mapping[str, Any]) -> tuple[Difference, ...]:
  """The keys whose values differ between the config that produced a workdir's result
  (`recorded`, e.g. its eval.json's "config") and `config` (both configs as dicts), other than
  those that only say how to log, save, feed and lay out the run (the harmless keys but
  train.num_steps, and mesh.*): each one means the result is not `config`'s. A key one of the
  two lacks (added to the code after the result) is left out."""
  differences = compare(RunRecord(dict(recorded), {}), RunRecord(dict(config), {}))
  return tuple(sorted((d for d in differences.harmless + differences.blocking
                      if ABSENT not in (d.old, d.new) and d.path not in _HARMLESS_KEYS
                      and not d.path.startswith("mesh.")), key=lambda d: d.path))


def other_values_line(workdir: str, what: str, differences: tuple[Difference, ...]) -> str:
  """The line saying that `workdir` holds `what` ("the results", "a run") of other values,
  e.g. "runs/s/a/seed0 holds the results of other values (recorded -> this command):
  model.width 32 -> 64"."""
  return (f"{workdir} holds {what} of other values (recorded -> this command):"
          f" {_listing(differences)}")


def check_steps_left(workdir: str, checkpoint_step: int, num_steps: int) -> None:
  """Checks that a resumed run has steps left to train.

  Args:
    workdir: the run's directory, for the message.
    checkpoint_step: the step of the checkpoint it resumes from.
    num_steps: the current config's train.num_steps.

  Raises:
    RunRefused: checkpoint_step >= num_steps, e.g. "runs/a already reached step 600 >=
      train.num_steps=600: nothing to train; raise --config.train.num_steps or use
      --mode=sample or --mode=evaluate".
  """
  if checkpoint_step >= num_steps:
    raise RunRefused(
        f"{workdir} already reached step {checkpoint_step} >= train.num_steps={num_steps}: nothing"
        " to train; raise --config.train.num_steps or use --mode=sample or --mode=evaluate")


def _leaves(record: RunRecord) -> dict[str, Any]:
  """Dotted path -> value of every leaf: the config's at the top, the data's under "dataset."."""
  leaves = {}

  def walk(tree: dict, prefix: str) -> None:
    for key, value in tree.items():
      if isinstance(value, dict) and value:  # an empty dict is a value of its own
        walk(value, f"{prefix}{key}.")
      else:
        leaves[prefix + key] = value

  walk(record.config, "")
  walk(record.dataset, "dataset.")
  return leaves


def _same(a: Any, b: Any) -> bool:
  """Equality of JSON values that tells bools from numbers (Python has True == 1)."""
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(map(_same, a, b))
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, bool) or isinstance(b, bool):
    return type(a) is type(b) and a == b
  if isinstance(a, (int, float)) and isinstance(b, (int, float)):
    return a == b
  return type(a) is type(b) and a == b


def _is_harmless(path: str, old: Any, new: Any) -> bool:
  if path == "train.num_steps":
    # A longer run extends this one. Beware that the learning rate's cosine decay spans
    # train.num_steps (state.py), so from the resumed step on it is higher than the recorded
    # run's would have been; a shorter run is refused, as its decay would jump the other way.
    return all(_is_number(v) for v in (old, new)) and new > old
  return path in _HARMLESS_KEYS or f"{path}.".startswith(_HARMLESS_SECTIONS)  # "eval" too


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _listing(differences: tuple[Difference, ...]) -> str:
  """The first few differences, comma-separated, then "(and N more)"."""
  shown = ", ".join(str(d) for d in differences[:_SHOWN])
  hidden = len(differences) - _SHOWN
  return f"{shown} (and {hidden} more)" if hidden > 0 else shown


def _show(value: Any) -> str:
  """A value as a message shows it: strings bare unless empty or spaced, others as Python
  writes them, cut to _VALUE_CHARS characters."""
  if isinstance(value, str) and value and not any(c.isspace() for c in value):
    text = value
  else:
    text = repr(value)
  return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS - 3] + "..."
