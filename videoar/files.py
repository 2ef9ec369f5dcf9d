"""Files written whole: a reader, or a crash, sees the old file or the new one, never part of one.

`replaced` writes a temporary file beside the target and renames it over the target
(os.replace: atomic within a file system). It leaves the file readable by others (0o644), as
`open` under the usual umask would: tempfile creates its files 0o600, which had left eval.json
and run.json private while every other output of a run was not.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

FILE_MODE = 0o644


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
