"""One run per workdir (the lock, across real processes) and the run record that a resumed run
must match."""

import copy
import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from videoar import errors
from videoar.train import workdir as workdir_lib
from videoar.train.workdir import (
    ABSENT,
    RunRecord,
    RunRefused,
    WorkdirBusy,
    WorkdirLock,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")

# Holds the lock of argv[1] until its stdin closes, saying "held" and "released".
HOLD = """
import sys
from videoar.train.workdir import WorkdirLock
lock = WorkdirLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
lock.release()
print("released", flush=True)
"""
# Tries the lock of argv[1] once; prints "acquired", or the exception's class and message.
TRY = """
import sys
from videoar.train.workdir import WorkdirLock
try:
  WorkdirLock(sys.argv[1]).acquire()
  print("acquired")
except RuntimeError as e:
  print(type(e).__name__)
  print(e)
"""


def python(code, *args, **kwargs):
  return [sys.executable, "-c", code, *args], dict(cwd=ROOT, text=True, **kwargs)


def try_in_subprocess(workdir) -> list[str]:
  command, kwargs = python(TRY, str(workdir), capture_output=True, timeout=60)
  result = subprocess.run(command, check=True, **kwargs)
  return result.stdout.splitlines()


def start_holder(workdir) -> subprocess.Popen:
  command, kwargs = python(HOLD, str(workdir), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  holder = subprocess.Popen(command, **kwargs)
  assert holder.stdout.readline() == "held\n"
  return holder


def test_a_second_process_is_refused_in_one_line_naming_the_holder(tmp_path):
  with WorkdirLock(str(tmp_path)):
    name, message = try_in_subprocess(tmp_path)
  assert name == "WorkdirBusy"
  assert issubclass(WorkdirBusy, RuntimeError)
  assert message.startswith(f"{tmp_path} is in use by another run (host {socket.gethostname()},"
                            f" process {os.getpid()}, started ")
  assert message.endswith("): wait for it to end, or use another --workdir")
  assert try_in_subprocess(tmp_path) == ["acquired"]


def test_a_lock_held_by_another_process_is_free_once_it_releases(tmp_path):
  holder = start_holder(tmp_path)
  try:
    with pytest.raises(WorkdirBusy, match=f"process {holder.pid}, started "):
      WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.stdin.close()
  assert holder.stdout.readline() == "released\n"
  assert holder.wait(timeout=60) == 0
  assert open(tmp_path / ".lock").read() == ""  # a released lock names no holder
  with WorkdirLock(str(tmp_path)):
    holder = json.loads(open(tmp_path / ".lock").read())
  assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
  holder = start_holder(tmp_path)
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=60)
  holder.stdin.close()
  holder.stdout.close()
  # The dead holder's name stays in the file, but the kernel dropped its lock.
  assert json.loads(open(tmp_path / ".lock").read())["pid"] == holder.pid
  with WorkdirLock(str(tmp_path)):
    assert json.loads(open(tmp_path / ".lock").read())["pid"] == os.getpid()


def test_a_lock_that_cannot_be_written_is_one_line_and_leaves_it_free(tmp_path, monkeypatch):
  # A full disk was an OSError traceback from os.pwrite.
  def no_space(*args):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "pwrite", no_space)
  with pytest.raises(errors.UserError) as error:
    WorkdirLock(str(tmp_path)).acquire()
  assert str(error.value) == (f"cannot write the lock {tmp_path}/.lock (No space left on device):"
                              " free space on its filesystem, then rerun")
  monkeypatch.undo()
  lock = WorkdirLock(str(tmp_path))
  lock.acquire()  # not held by the failed attempt
  lock.release()


def test_the_context_manager_releases_on_exception(tmp_path):
  workdir = str(tmp_path / "new")  # created by the lock
  with pytest.raises(ValueError, match="inside"):
    with WorkdirLock(workdir):
      # Another open of the lock file conflicts even within this process.
      with pytest.raises(WorkdirBusy, match=f"process {os.getpid()}"):
        WorkdirLock(workdir).acquire()
      raise ValueError("inside")
  lock = WorkdirLock(workdir)
  lock.acquire()
  lock.release()
  lock.release()  # releasing twice is harmless


CONFIG = {
    "seed": 0,
    "data": {"source": "bouncing", "options": {"size": 32, "path": None}, "batch_size": 16,
             "num_frames": 8, "prefetch": "threads", "num_workers": 2},
    "model": {"width": 128, "depth": 4, "mlp_ratio": 4.0, "previous_frame_input": True},
    "optim": {"learning_rate": 1e-3},
    "train": {"num_steps": 600, "log_every": 50, "checkpoint_every": 500, "keep_checkpoints": 2},
    "sample": {"num_steps": 20, "use_ema": True},
    "eval": {"num_clips": 32, "segment_len": 8},
    "mesh": {"data": -1, "fsdp": 1, "rules": (("batch", ("data", "fsdp")), ("mlp", "tensor"))},
}
DATASET = {"source": "bouncing", "path": None, "files": 0, "fingerprint": "0" * 40}


def changed(**changes) -> RunRecord:
  """A record of CONFIG with changes {"data__batch_size": 32} (ABSENT deletes the key)."""
  config = copy.deepcopy(CONFIG)
  for key, value in changes.items():
    *parents, leaf = key.split("__")
    tree = config
    for parent in parents:
      tree = tree[parent]
    if value is ABSENT:
      del tree[leaf]
    else:
      tree[leaf] = value
  return RunRecord(config=config, dataset=DATASET)


def test_a_record_round_trips_through_strict_json(tmp_path):
  record = changed()
  record.save(str(tmp_path))
  assert RunRecord.load(str(tmp_path)) == record
  saved = json.loads(open(tmp_path / "run.json").read(),
                     parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
  assert saved["config"]["mesh"]["rules"] == [["batch", ["data", "fsdp"]], ["mlp", "tensor"]]
  assert saved["config"]["data"]["options"]["path"] is None
  assert saved["config"]["model"]["previous_frame_input"] is True
  assert saved["dataset"] == DATASET
  assert RunRecord.load(str(tmp_path / "elsewhere")) is None


def test_saving_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
  changed().save(str(tmp_path))
  changed(seed=1).save(str(tmp_path))
  assert os.listdir(tmp_path) == ["run.json"]
  assert RunRecord.load(str(tmp_path)).config["seed"] == 1

  def crash(*args):
    raise OSError("disk gone")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="disk gone"):
    changed(seed=2).save(str(tmp_path))
  assert os.listdir(tmp_path) == ["run.json"]
  assert RunRecord.load(str(tmp_path)).config["seed"] == 1


def test_values_json_cannot_hold_are_refused_naming_the_key():
  with pytest.raises(ValueError, match=r"config.optim.learning_rate=nan cannot be recorded"):
    changed(optim__learning_rate=float("nan"))
  with pytest.raises(TypeError, match=r"config.mesh.rules\[1\] is a set"):
    changed(mesh__rules=(("batch", "data"), {"mlp"}))


def test_a_damaged_record_is_refused_in_one_line(tmp_path):
  (tmp_path / "run.json").write_text('{"config": {}}')
  with pytest.raises(RunRefused, match="is not a run record") as refused:
    RunRecord.load(str(tmp_path))
  assert "\n" not in str(refused.value)
  (tmp_path / "run.json").write_text('{"config": ')
  with pytest.raises(RunRefused, match="is not valid JSON .*: restore it from a copy"):
    RunRecord.load(str(tmp_path))


def test_identical_runs_have_no_differences():
  # Tuples and lists, ints and equal floats are the same values once recorded.
  current = changed(model__mlp_ratio=4,
                    mesh__rules=[["batch", ["data", "fsdp"]], ["mlp", "tensor"]])
  differences = workdir_lib.check_same_run("runs/a", changed(), current)
  assert differences == workdir_lib.Differences(harmless=(), blocking=())
  assert workdir_lib.allowed_line("runs/a", differences) == "resuming runs/a; no changes"


def test_harmless_changes_are_allowed_and_listed_in_one_line():
  current = changed(train__log_every=10, train__checkpoint_every=100, train__keep_checkpoints=5,
                    train__num_steps=1000, sample__num_steps=50, eval__num_clips=ABSENT,
                    mesh__fsdp=4, data__prefetch="processes", data__num_workers=8)
  differences = workdir_lib.check_same_run("runs/a", changed(), current)
  assert differences.blocking == ()
  assert [d.path for d in differences.harmless] == [
      "data.num_workers", "data.prefetch", "eval.num_clips", "mesh.fsdp", "sample.num_steps",
      "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.num_steps"]
  assert workdir_lib.allowed_line("runs/a", differences) == (
      "resuming runs/a; allowed changes: data.num_workers 2 -> 8, data.prefetch threads ->"
      " processes, eval.num_clips 32 -> (absent) (and 6 more)")
  only_logging = workdir_lib.compare(changed(), changed(train__log_every=10))
  assert workdir_lib.allowed_line("runs/a", only_logging) == (
      "resuming runs/a; allowed changes: train.log_every 50 -> 10")


def test_blocking_changes_refuse_in_one_line_naming_old_and_new():
  current = RunRecord(config=changed(data__batch_size=32, seed=1, train__num_steps=500,
                                     train__log_every=10).config,
                      dataset=dict(DATASET, fingerprint="1" * 40))
  with pytest.raises(RunRefused) as refused:
    workdir_lib.check_same_run("runs/a", changed(), current)
  assert str(refused.value) == (
      "runs/a was started with a different run: data.batch_size 16 -> 32, dataset.fingerprint"
      f" {'0' * 40} -> {'1' * 40}, seed 0 -> 1 (and 1 more); to go on use a new --workdir, or"
      " pass --restart_from_weights to start a new run from its weights")
  differences = workdir_lib.compare(changed(), current)
  assert [d.path for d in differences.blocking] == [
      "data.batch_size", "dataset.fingerprint", "seed", "train.num_steps"]
  assert [d.path for d in differences.harmless] == ["train.log_every"]
  two = workdir_lib.compare(changed(), changed(model__width=64, optim__learning_rate=3e-4))
  assert workdir_lib.refusal_line("runs/a", two).startswith(
      "runs/a was started with a different run: model.width 128 -> 64, optim.learning_rate"
      " 0.001 -> 0.0003; to go on")
  # A restart from weights of another shape could not load them: not offered.
  with pytest.raises(RunRefused) as refused:
    workdir_lib.check_same_run("runs/a", changed(), changed(model__width=64),
                               weight_keys=frozenset({"model.width"}))
  assert str(refused.value) == ("runs/a was started with a different run: model.width 128 -> 64;"
                                " its weights do not fit this model: to go on use a new --workdir")


def test_absent_keys_and_changed_types_are_differences():
  differences = workdir_lib.compare(
      changed(model__depth=ABSENT, data__options={}),
      changed(model__routing_top_k=0, model__previous_frame_input=1))
  assert differences.harmless == ()
  assert [str(d) for d in differences.blocking] == [
      "data.options {} -> (absent)",  # an emptied dict is a value of its own
      "data.options.path (absent) -> None",
      "data.options.size (absent) -> 32",
      "model.depth (absent) -> 4",
      "model.previous_frame_input True -> 1",
      "model.routing_top_k (absent) -> 0",
  ]
  emptied_section = workdir_lib.compare(changed(), changed(sample={}))
  assert emptied_section.blocking == ()
  assert [str(d) for d in emptied_section.harmless] == [
      "sample (absent) -> {}", "sample.num_steps 20 -> (absent)", "sample.use_ema True -> (absent)"]


def test_a_run_with_no_steps_left_refuses_in_one_line():
  workdir_lib.check_steps_left("runs/a", checkpoint_step=599, num_steps=600)
  for step in (600, 700):
    with pytest.raises(RunRefused) as refused:
      workdir_lib.check_steps_left("runs/a", checkpoint_step=step, num_steps=600)
    assert str(refused.value) == (
        f"runs/a already reached step {step} >= train.num_steps=600: nothing to train; raise"
        " --config.train.num_steps or use --mode=sample or --mode=evaluate")


def test_moving_aside_keeps_each_earlier_output_in_a_folder_of_its_own(tmp_path):
  assert workdir_lib.move_aside(str(tmp_path), ("eval.json",)) is None  # nothing to keep
  assert not (tmp_path / "previous").exists()
  folders = []
  for content in ("first", "second"):  # within the same second: a second folder, not a merge
    (tmp_path / "eval.json").write_text(content)
    (tmp_path / "samples").mkdir()
    folders.append(workdir_lib.move_aside(str(tmp_path), ("eval.json", "samples", "eval.txt")))
  assert len(set(folders)) == 2
  assert [open(os.path.join(f, "eval.json")).read() for f in folders] == ["first", "second"]
  assert all(sorted(os.listdir(f)) == ["eval.json", "samples"] for f in folders)
  assert os.listdir(tmp_path) == ["previous"]


def test_a_result_of_other_values_differs_in_all_but_how_the_run_logs_and_is_laid_out():
  recorded = {"seed": 0, "sample": {"num_steps": 20}, "train": {"log_every": 50, "num_steps": 9},
              "mesh": {"data": 1}}
  same = copy.deepcopy(recorded)
  same["train"]["log_every"], same["mesh"]["data"] = 1, -1
  assert workdir_lib.result_differences(recorded, same) == ()
  other = copy.deepcopy(recorded)
  other["sample"]["num_steps"], other["train"]["num_steps"], other["new_key"] = 4, 10, 1
  assert [str(d) for d in workdir_lib.result_differences(recorded, other)] == [
      "sample.num_steps 20 -> 4", "train.num_steps 9 -> 10"]


def test_a_damaged_record_with_an_extra_key_is_refused(tmp_path):
  """Guards against accepting run.json with keys besides 'config' and 'dataset': a record must
  be exactly those two objects, not a superset of them."""
  (tmp_path / "run.json").write_text('{"config": {}, "dataset": {}, "extra": {}}')
  with pytest.raises(RunRefused, match="is not a run record"):
    RunRecord.load(str(tmp_path))


def test_sampling_with_another_seed_or_model_is_trained_differently_but_not_other_training(
    tmp_path):
  """Guards against SAMPLING_READS leaving out the seed: sampling a run with a seed other than
  the one it was trained with must be reported, as a model change is; keys only training reads
  (optim.*, data.batch_size) are not."""
  changed().save(str(tmp_path))
  current = changed(seed=1, model__width=256, optim__learning_rate=1e-4, data__batch_size=32)
  differences = workdir_lib.trained_differently(str(tmp_path), current.config)
  assert sorted(str(d) for d in differences) == ["model.width 128 -> 256", "seed 0 -> 1"]
  assert workdir_lib.trained_differently(str(tmp_path / "elsewhere"), current.config) == ()
