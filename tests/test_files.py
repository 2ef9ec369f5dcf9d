"""videoar/files.py: a file is replaced whole, readable by others, or not at all."""

import os
import stat

import numpy as np
import pytest

from videoar import files


def test_replaced_writes_the_whole_file_readable_by_others_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "eval.json")
  with files.replaced(path) as f:
    f.write("{}\n")
  with open(path) as f:
    assert f.read() == "{}\n"
  assert stat.S_IMODE(os.stat(path).st_mode) == files.FILE_MODE
  assert os.listdir(tmp_path) == ["eval.json"]


def test_a_write_that_fails_keeps_the_old_file_and_removes_the_temporary(tmp_path):
  path = str(tmp_path / "run.json")
  with open(path, "w") as f:
    f.write("old")
  with pytest.raises(ValueError, match="mid-write"):
    with files.replaced(path) as f:
      f.write("new, cut short")
      raise ValueError("mid-write")
  with open(path) as f:
    assert f.read() == "old"
  assert os.listdir(tmp_path) == ["run.json"]


def test_bytes_mode_writes_arrays(tmp_path):
  path = str(tmp_path / "feature.npy")
  with files.replaced(path, "wb") as f:
    np.save(f, np.arange(3))
  assert np.load(path).tolist() == [0, 1, 2]


def test_a_rename_that_fails_removes_the_temporary(tmp_path, monkeypatch):
  path = str(tmp_path / "metrics.jsonl")

  def crash(*args):
    raise OSError("disk gone")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="disk gone"):
    with files.replaced(path) as f:
      f.write("{}\n")
  assert not os.listdir(tmp_path)
