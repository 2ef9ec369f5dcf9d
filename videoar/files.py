"""Files written whole: a reader, or a crash, sees the old file or the new one, never part of one.

`replaced` writes a temporary file beside the target and renames it over the target
(os.replace: atomic within a file system). It leaves the file readable by others (0o644), as
`open` under the usual umask would: tempfile creates its files 0o600, which had left eval.json
and run.json private while every other output of a run was not.

`replaced_together` does the same for a set of outputs (the samples folder; an evaluation's
files): they are written into a hidden temporary folder beside them and renamed into place once
all are written, so that an interrupted run leaves no part of a set where a whole one belongs.

`unwritable` says, before a long run, why a directory it will write into cannot be written;
`unwritable_file` the same of a file a command is told to write (a --json flag).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO


FILE_MODE = 0o644
# The name replaced_together's temporary folders start with: hidden, and saying what they hold.
PARTIAL_PREFIX = ".partial-"
# Where the library keeps what it derives once and reuses (the digit classifier, I3D features, the
# frames of a video folder it cannot write into).
CACHE_ENV = "VIDEOAR_CACHE"


def cache_directory() -> str:
  """$VIDEOAR_CACHE, or ~/.cache/videoar."""
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "videoar")


def unwritable(directory: str) -> str | None:
  """Why a file cannot be written in `directory` (the OSError's words, e.g. "Permission
  denied"), or None when it can. Tried, not asked: the directory (and any missing parents) is
  made and a temporary file created in it, then what was made is removed again. access() says
  yes to root for /proc, which refuses new entries, and nothing of a directory yet to be made."""
  directory = os.path.abspath(directory)
  missing = []  # deepest first, as they are removed
  existing = directory
  while not os.path.lexists(existing):
    missing.append(existing)
    existing = os.path.dirname(existing)
  try:
    os.makedirs(directory, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".videoar-write-test-")
    os.close(fd)
    os.unlink(name)
  except OSError as e:
    return e.strerror or str(e)
  finally:
    for path in missing:
      with contextlib.suppress(OSError):
        os.rmdir(path)
  return None


def blocking_file(path: str) -> str | None:
  """The absolute path of PATH, or of the nearest of its parents that exists, when that is not a
  directory: a file that keeps PATH from being a directory a run can create. None otherwise."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  return None if os.path.isdir(existing) else existing


def unwritable_file(path: str, what: str = "the file") -> str | None:
  """Why a file cannot be written at `path`, worded to follow "FLAG=PATH: ", or None when it
  can: "is empty; name WHAT to write" (WHAT e.g. "the JSON file"), "is a directory; name WHAT
  to write", "FILE is a file, not a directory to write into" (blocking_file), "cannot
  write into FOLDER: WHY" (unwritable). A folder yet to be made, that can be, is no problem (and
  is not made here); nor is a file that exists, which the caller refuses where it must not be
  written over. Checked before a long run, so that its result is not lost at the end."""
  if not path:
    return f"is empty; name {what} to write"
  if os.path.isdir(path):
    return f"is a directory; name {what} to write"
  folder = os.path.dirname(path) or "."
  blocking = blocking_file(folder)
  if blocking:
    return f"{blocking} is a file, not a directory to write into"
  problem = unwritable(folder)
  if problem:
    return f"cannot write into {folder}: {problem}"
  return None


@contextlib.contextmanager
def replaced(path: str, mode: str = "w") -> Iterator[IO]:
  """A temporary file beside `path`, open for writing in `mode` ("w" text, "wb" bytes). When the
  block ends normally it is flushed to disk and renamed to `path`; when the block or the rename
  raises, it is removed and `path` keeps what it held (or stays absent). The directory must
  exist."""
  directory = os.path.dirname(path) or "."
  f = tempfile.NamedTemporaryFile(mode, dir=directory, prefix=f".{os.path.basename(path)}.",
                                  suffix=".tmp", delete=False)
  try:
    with f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(f.name, FILE_MODE)
    os.replace(f.name, path)
  except BaseException:
    os.unlink(f.name)
    raise


@contextlib.contextmanager
def replaced_together(directory: str, names: tuple[str, ...]) -> Iterator[str]:
  """A new hidden folder DIRECTORY/.partial-XXXXXXXX for the block to write each of `names`
  (files or folders) into. When the block ends normally, what it wrote is flushed to disk and
  each of `names` is renamed into `directory`, in their order (the one that marks the set
  complete last), over a file of that name; a folder of that name must be gone by then (move
  the earlier outputs aside as the block's last step, so that they leave only once the new ones
  are whole). When the block or a rename raises, the folder is removed with what it holds and
  `directory` keeps what it held, but for the names already renamed. `directory` must exist.

  Folders that a killed run left (SIGKILL, a power cut: nothing removed them) are removed by
  the next call in `directory`. Each folder is flock-ed while its run writes it, so a live
  run's is left alone; where the filesystem does not lock, no leftover is removed.

  Raises:
    OSError: the folder cannot be made, or a name cannot be renamed (the block did not write
      it, or a folder of that name, not empty, is still in `directory`).
  """
  _remove_abandoned(directory)
  staging = tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=directory)
  fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
  try:
    # Until the lock is taken another call could find the folder abandoned: a window of a few
    # system calls, in which that call's removal makes this one's writes fail, not part-written.
    _lock(fd)
    yield staging
    _sync(staging)
    for name in names:
      os.replace(os.path.join(staging, name), os.path.join(directory, name))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    os.close(fd)  # drops the lock, once the folder is gone


def _remove_abandoned(directory: str) -> None:
  """Removes the replaced_together folders in `directory` that no live run holds."""
  for name in os.listdir(directory):
    if not name.startswith(PARTIAL_PREFIX):
      continue
    path = os.path.join(directory, name)
    try:
      fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # renamed or removed since listed (its run ended), or not a folder
      continue
    try:
      if _lock(fd):
        shutil.rmtree(path, ignore_errors=True)
    finally:
      os.close(fd)


def _lock(fd: int) -> bool:
  """Whether this process now holds the flock on `fd`: False where another run holds it, or
  where the filesystem does not lock (and then a live run's folder cannot be told from a dead
  one's)."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    return False
  return True


def _sync(folder: str) -> None:
  """Flushes every file under `folder` to disk, so that a rename after it never exposes a file
  whose contents a crash could still lose."""
  for root, _, names in os.walk(folder):
    for name in names:
      fd = os.open(os.path.join(root, name), os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
