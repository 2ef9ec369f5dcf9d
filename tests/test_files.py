"""videoar/files.py: a file is replaced whole, readable by others, or not at all; so is a set of
outputs."""

import fcntl
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


def test_outputs_replaced_together_appear_in_their_order_and_leave_no_temporary(tmp_path):
  (tmp_path / "eval.json").write_text("old")
  with files.replaced_together(str(tmp_path), ("samples", "eval.json")) as staging:
    assert os.path.basename(staging).startswith(files.PARTIAL_PREFIX)
    os.mkdir(os.path.join(staging, "samples"))
    with open(os.path.join(staging, "samples", "strip.png"), "w") as f:
      f.write("png")
    with open(os.path.join(staging, "eval.json"), "w") as f:
      f.write("new")
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(staging), "eval.json"]
  assert sorted(os.listdir(tmp_path)) == ["eval.json", "samples"]
  assert (tmp_path / "eval.json").read_text() == "new"
  assert os.listdir(tmp_path / "samples") == ["strip.png"]


def test_outputs_replaced_together_and_interrupted_leave_the_directory_as_it_was(tmp_path):
  (tmp_path / "samples").mkdir()
  (tmp_path / "samples" / "strip.png").write_text("old")
  with pytest.raises(KeyboardInterrupt):
    with files.replaced_together(str(tmp_path), ("samples",)) as staging:
      os.mkdir(os.path.join(staging, "samples"))
      raise KeyboardInterrupt
  assert os.listdir(tmp_path) == ["samples"]
  assert (tmp_path / "samples" / "strip.png").read_text() == "old"


def test_a_killed_writers_temporary_folder_is_removed_and_a_live_ones_kept(tmp_path):
  """A run killed outright (SIGKILL) leaves its folder; the next one removes it, but not the
  folder of a run still writing, whose lock it finds held."""
  dead, live = (tmp_path / f"{files.PARTIAL_PREFIX}{name}" for name in ("dead", "live"))
  for folder in (dead, live):
    (folder / "samples").mkdir(parents=True)
    (folder / "samples" / "sample_0.mp4").write_bytes(b"part")
  fd = os.open(live, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    with files.replaced_together(str(tmp_path), ("eval.json",)) as staging:
      with open(os.path.join(staging, "eval.json"), "w") as f:
        f.write("{}")
    assert sorted(os.listdir(tmp_path)) == sorted(["eval.json", live.name])
  finally:
    os.close(fd)


def test_an_interrupt_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
  """Guards against `replaced` cleaning up only on Exception: a KeyboardInterrupt (Ctrl-C) inside
  the block must also remove the temporary file and leave the old content."""
  path = str(tmp_path / "run.json")
  with open(path, "w") as f:
    f.write("old")
  with pytest.raises(KeyboardInterrupt):
    with files.replaced(path) as f:
      f.write("new, cut short")
      raise KeyboardInterrupt
  with open(path) as f:
    assert f.read() == "old"
  assert os.listdir(tmp_path) == ["run.json"]


def test_outputs_replaced_together_are_renamed_in_their_order_up_to_a_failing_one(tmp_path):
  """Guards against renaming `names` in another order than given: the last name marks the set
  complete, so when the second rename fails (a non-empty folder of that name is still there) the
  first name has arrived and the last has not."""
  (tmp_path / "samples").mkdir()
  (tmp_path / "samples" / "strip.png").write_text("old")
  with pytest.raises(OSError):
    with files.replaced_together(str(tmp_path), ("frames", "samples", "eval.json")) as staging:
      for name in ("frames", "samples"):
        os.mkdir(os.path.join(staging, name))
        with open(os.path.join(staging, name, "strip.png"), "w") as f:
          f.write("new")
      with open(os.path.join(staging, "eval.json"), "w") as f:
        f.write("new")
  assert sorted(os.listdir(tmp_path)) == ["frames", "samples"]
  assert (tmp_path / "frames" / "strip.png").read_text() == "new"
  assert (tmp_path / "samples" / "strip.png").read_text() == "old"
