"""Restoring checkpoints: a changed config, damaged steps and filesystem faults, each one line with
nothing on disk lost."""

import errno
import gc
import glob
import importlib.util
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from videoar import experiment
from videoar.train import checkpoint as checkpoint_lib
from videoar.train import state as state_lib


def make_state(step: int, width: int = 4, extra: bool = False) -> state_lib.TrainState:
  params = {"dense": {"kernel": jnp.full((3, width), float(step)), "bias": jnp.zeros((width,))}}
  if extra:
    params["norm"] = {"scale": jnp.ones((width,))}
  state = state_lib.create(params, optax.adam(1e-3))
  return state.replace(step=jnp.asarray(step, jnp.int32))


@pytest.fixture
def saved(tmp_path):
  """A checkpoints directory with steps 1 and 2 of a run: its path."""
  directory = str(tmp_path / "checkpoints")
  checkpointer = checkpoint_lib.Checkpointer(directory, keep=5)
  for step in (1, 2):
    checkpointer.save(make_state(step), data={"step": step}, rng=jax.random.key(step))
  checkpointer.close()
  return directory


def restore(directory, like=None):
  checkpointer = checkpoint_lib.Checkpointer(directory, keep=5)
  try:
    return checkpointer.restore_latest_run(like or make_state(0), jax.random.key(0))
  finally:
    checkpointer.close()


def files(root) -> dict:
  """Every file under `root`: relative path -> size."""
  return {os.path.relpath(path, root): os.path.getsize(path)
          for path in glob.glob(os.path.join(root, "**"), recursive=True) if os.path.isfile(path)}


def test_close_leaves_no_thread_of_the_checkpointer_running(tmp_path, monkeypatch):
  # A thread still running at interpreter exit prints a traceback after the run's last line
  # (orbax's temporary-directory cleanup, which its own close() does not wait for). A slow
  # directory listing off the main thread, as on a network filesystem, keeps that thread
  # running past close().
  listdir = os.listdir

  def slow_off_main(*args):
    if threading.current_thread() is not threading.main_thread():
      time.sleep(0.5)
    return listdir(*args)

  monkeypatch.setattr(os, "listdir", slow_off_main)
  before = set(threading.enumerate())
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=1)
  checkpointer.close()
  # asyncio_N are idle workers of an event loop's default executor, which the interpreter joins
  # quietly at exit.
  assert [t.name for t in threading.enumerate() if t not in before and t.is_alive()
          and not t.name.startswith("asyncio_")] == []


def test_a_reader_leaves_a_save_in_progress_alone_and_a_writer_clears_it(saved):
  # A sampling or evaluation run on a workdir that was training deleted the trainer's save in
  # progress, and the trainer then died on its next save (a probe, 2026-12-07).
  in_progress = os.path.join(saved, "3.orbax-checkpoint-tmp")
  os.makedirs(os.path.join(in_progress, "state"))
  reader = checkpoint_lib.Checkpointer(saved, keep=5, read_only=True)
  try:
    assert int(reader.restore_latest(make_state(0)).step) == 2
  finally:
    reader.close()
  assert os.path.isdir(in_progress)
  checkpoint_lib.Checkpointer(saved, keep=5).close()  # the run that was writing it, restarted
  assert not os.path.exists(in_progress)


def test_a_reader_creates_no_checkpoints_directory_and_logs_no_warning(tmp_path, caplog):
  # orbax warned three times that a read-only manager drops saving and retention settings,
  # before every sampling and evaluation.
  with caplog.at_level("WARNING"):
    checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=5, read_only=True).close()
  assert os.listdir(tmp_path) == []
  assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def test_newest_run_round_trips(saved):
  resumed = restore(saved)
  assert int(resumed.state.step) == resumed.data["step"] == 2
  np.testing.assert_array_equal(resumed.state.params["dense"]["kernel"], np.full((3, 4), 2.0))
  np.testing.assert_array_equal(jax.random.key_data(resumed.rng),
                                jax.random.key_data(jax.random.key(2)))


def test_a_save_in_flight_is_no_checkpoint_until_it_is_whole(saved, monkeypatch):
  """While the thread writing step 3 is held before its last rename, the directory holds no
  step 3: finished_steps lists 1 and 2 and a reader restores step 2 (orbax writes into a
  temporary name and renames it when whole, so a crash mid-save leaves no half step)."""
  release, rename = threading.Event(), os.rename

  def held_off_main(*args, **kwargs):
    if threading.current_thread() is not threading.main_thread():
      release.wait(timeout=60)
    return rename(*args, **kwargs)

  monkeypatch.setattr(os, "rename", held_off_main)
  writer = checkpoint_lib.Checkpointer(saved, keep=5)
  try:
    writer.save(make_state(3), data={"step": 3}, rng=jax.random.key(3))
    time.sleep(1.0)  # time for a writer that does not rename to write step 3 whole
    assert checkpoint_lib.finished_steps(saved) == [1, 2]
    reader = checkpoint_lib.Checkpointer(saved, keep=5, read_only=True)
    try:
      assert int(reader.restore_latest(make_state(0)).step) == 2
    finally:
      reader.close()
  finally:
    release.set()
    writer.close()
  assert checkpoint_lib.finished_steps(saved) == [1, 2, 3]


@pytest.mark.parametrize("like,first", [
    (make_state(0, width=8),
     "params/dense/bias is float32[4] in the checkpoint, float32[8] in this config"),
    (make_state(0, extra=True), "params/norm/scale is not in the checkpoint"),
], ids=["width", "new_parameter"])
def test_changed_config_raises_one_line_and_moves_nothing(saved, tmp_path, capfd, like, first):
  before = files(tmp_path)
  with pytest.raises(checkpoint_lib.CheckpointMismatch) as error:
    restore(saved, like)
  message = str(error.value)
  assert message.startswith(f"checkpoint 2 in {saved} was written for another model or optimizer: "
                            f"{first} (")
  assert "arrays differ); use a new --workdir, or restore the config" in message
  assert "\n" not in message
  assert files(tmp_path) == before
  assert "Traceback" not in capfd.readouterr().err


def _truncate_arrays(step_dir):
  data_files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  assert data_files
  for path in data_files:
    os.truncate(path, os.path.getsize(path) // 2)


def _garble(path):
  """Overwrites `path` with random bytes of its own length."""
  garbage = np.random.default_rng(0).bytes(os.path.getsize(path))
  with open(path, "wb") as f:
    f.write(garbage)


DAMAGES = {
    "truncated_arrays": _truncate_arrays,
    "lost_tree_metadata": lambda step_dir: os.remove(os.path.join(step_dir, "state", "_METADATA")),
    "lost_data_state": lambda step_dir: os.remove(os.path.join(step_dir, "data", "metadata")),
    "cut_data_state": lambda step_dir: os.truncate(os.path.join(step_dir, "data", "metadata"), 3),
    # Random bytes that do not decode as UTF-8 (was CheckpointUnreadable's advice to rerun,
    # for a UnicodeDecodeError that no rerun mends).
    "garbled_data_state": lambda step_dir: _garble(os.path.join(step_dir, "data", "metadata")),
}


# A failed restore leaves reads behind that would each print a traceback when they end.
NO_UNRAISABLE = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@NO_UNRAISABLE
@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_newest_is_moved_aside_and_the_one_before_restores(saved, caplog, damage):
  DAMAGES[damage](os.path.join(saved, "2"))
  damaged_files = files(os.path.join(saved, "2"))

  resumed = restore(saved)
  assert int(resumed.state.step) == resumed.data["step"] == 1
  assert os.listdir(saved) == ["1"]
  (moved,) = os.listdir(saved + ".damaged")
  assert moved.startswith("2-")
  assert files(os.path.join(saved + ".damaged", moved)) == damaged_files  # nothing lost
  (line,) = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert line.startswith(f"checkpoint 2 in {saved} is damaged (")
  assert line.endswith(f"moved to {saved}.damaged/{moved}")
  assert "\n" not in line
  gc.collect()  # orbax's unfinished read coroutines raise when collected


@NO_UNRAISABLE
def test_every_checkpoint_damaged_raises_one_line_and_deletes_nothing(saved):
  for step in ("1", "2"):
    _truncate_arrays(os.path.join(saved, step))
  with pytest.raises(checkpoint_lib.CheckpointsDamaged) as error:
    restore(saved)
  moved = sorted(os.listdir(saved + ".damaged"))
  assert [name.split("-")[0] for name in moved] == ["1", "2"]
  assert os.listdir(saved) == []
  message = str(error.value)
  assert message.startswith(f"every checkpoint in {saved} is damaged; moved, not deleted: ")
  assert all(os.path.join(saved + ".damaged", name) in message for name in moved)
  assert "\n" not in message


def _raise(error):
  def fail(*args, **kwargs):
    raise error
  return fail


TRANSIENT = {
    "EIO": (OSError(errno.EIO, "Input/output error", "/ckpt/2/state/d/0"),
            "OSError: [Errno 5] Input/output error: '/ckpt/2/state/d/0'"),
    "ESTALE": (OSError(errno.ESTALE, "Stale file handle"), "OSError: [Errno 116] Stale"),
    "tensorstore_UNAVAILABLE": (ValueError("UNAVAILABLE: Error reading local file [tensorstore_spec"
                                           "='{}']"),
                                "ValueError: UNAVAILABLE: Error reading local file)"),
    "wrapped_EACCES": (Exception("Encountered error while reading array index"),
                       "PermissionError: [Errno 13] Permission denied"),
}


@pytest.mark.parametrize("fault", TRANSIENT)
def test_filesystem_fault_raises_one_line_and_moves_nothing(saved, tmp_path, monkeypatch, fault):
  error, reason = TRANSIENT[fault]
  if fault == "wrapped_EACCES":  # as orbax wraps TensorStore's errors: `raise Exception from e`
    error.__cause__ = PermissionError(errno.EACCES, "Permission denied")
  monkeypatch.setattr(ocp.CheckpointManager, "restore", _raise(error))
  before = files(tmp_path)
  with pytest.raises(checkpoint_lib.CheckpointUnreadable) as caught:
    restore(saved)
  message = str(caught.value)
  assert message.startswith(f"checkpoint 2 in {saved} could not be read ({reason}")
  assert message.endswith(f"nothing was moved or deleted: rerun once the filesystem reads again,"
                          f" or move {saved}/2 aside to go on from the step before")
  assert "\n" not in message
  assert files(tmp_path) == before


def test_damage_status_from_a_failing_filesystem_moves_nothing(saved, tmp_path, monkeypatch):
  # TensorStore reports ENOTCONN (a network mount gone) as FAILED_PRECONDITION, as it does an
  # undecodable file: reading the files again tells them apart.
  monkeypatch.setattr(ocp.CheckpointManager, "restore",
                      _raise(ValueError("FAILED_PRECONDITION: Error reading local file")))
  monkeypatch.setattr(checkpoint_lib, "_read_through", _raise(
      OSError(errno.ENOTCONN, "Transport endpoint is not connected", f"{saved}/2/state/d/0")))
  before = files(tmp_path)
  with pytest.raises(checkpoint_lib.CheckpointUnreadable, match=r"\(OSError: \[Errno 107\]"):
    restore(saved)
  assert files(tmp_path) == before


def _config(name: str, variant: str):
  """get_config(variant) of configs/NAME, loaded from its file (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(__file__), "..", "configs", name)
  spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _run_of(exp, workdir) -> str:
  """WORKDIR with a checkpoint (step 0) of a fresh train state of `exp`'s model."""
  state = state_lib.create(experiment.init_params(exp, jax.random.key(0)),
                           state_lib.make_optimizer(exp.config))
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=1)
  checkpointer.save(state)
  checkpointer.close()
  return str(workdir)


def test_scan_layers_is_advised_only_when_the_block_layout_is_the_whole_difference(tmp_path):
  """A checkpoint of a completely different model in the other block layout (a Wan tiny run
  read by the bouncing world's tiny model, and the reverse) used to get the advice to set
  model.scan_layers, after which it failed again; it is another model, named by an array whose
  shapes differ. The same model in the other layout still gets the advice."""
  wan_config = _config("wan_1p3b.py", "tiny")
  wan = experiment.build_for_shapes(wan_config, (8, 8, 4))

  def bouncing_model(scan_layers):
    config = _config("bouncing_tiny.py", "test")
    config.model.depth = 2  # the scanned layout stacks more than one block
    config.model.scan_layers = scan_layers
    return experiment.build(config)

  bouncing, bouncing_scanned = bouncing_model(False), bouncing_model(True)
  assert wan.config.model.scan_layers and not bouncing.config.model.scan_layers
  cases = [
      (bouncing, _run_of(wan, tmp_path / "wan"),
       "was written for another model or optimizer: params/params/patch_embed/kernel is"
       " float32[16, 32] in the checkpoint, float32[384, 32] in this config ("),
      (wan, _run_of(bouncing, tmp_path / "bouncing"),
       "was written for another model or optimizer: params/params/patch_embed/kernel is"
       " float32[384, 32] in the checkpoint, float32[16, 32] in this config ("),
      (bouncing, _run_of(bouncing_scanned, tmp_path / "bouncing_scanned"),
       "holds the model's blocks scanned and this config builds them unscanned: set"
       " --config.model.scan_layers=True to read it"),
      (bouncing_scanned, str(tmp_path / "bouncing"),
       "holds the model's blocks unscanned and this config builds them scanned: set"
       " --config.model.scan_layers=False to read it"),
  ]
  for reader, workdir, says in cases:
    with pytest.raises(checkpoint_lib.CheckpointMismatch) as error:
      experiment.restore_trained(reader, workdir, use_ema=True)
    message = str(error.value)
    assert message.startswith(f"checkpoint 0 in {workdir}/checkpoints {says}"), message
    assert "\n" not in message
    if "another model" in message:
      assert "--config.model.scan_layers" not in message
      assert message.endswith("arrays differ); use a new --workdir, or restore the config the"
                              " run was started with")
