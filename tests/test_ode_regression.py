"""ODE pairs (videoar/ode_pairs.py) and the ODE-regression paradigm
(videoar/forcing/ode_regression.py): spec 5.1, 5.2 and 9.2, on a tiny model."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar import errors, experiment, ode_pairs
from videoar.attention import masks
from videoar.data import array_record, pipeline
from videoar.diffusion import flow
from videoar.errors import ConfigError
from videoar.forcing import PARADIGMS, ode_regression
from videoar.models import dit
from test_data_sources import stop_once_writing

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "configs"))
import bouncing_rf  # noqa: E402
import bouncing_sf  # noqa: E402

K, M, SHIFT = 4, 8, 5.0
FRAMES, CHUNK, SHAPE = 6, 2, (8, 8, 3)
CLASSES = 3


@pytest.fixture(scope="module")
def model_and_params():
  """A tiny class-conditioned CausalDiT with every parameter perturbed, so that the zero-initialised
  output layers do not hide what the inputs do."""
  model = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2, num_classes=CLASSES)
  x = jnp.zeros((1, FRAMES) + SHAPE)
  params = jax.jit(lambda rng: model.init(rng, x, jnp.zeros((1, FRAMES)),
                                         frame_pos_f=jnp.arange(FRAMES), mask=masks.Full(FRAMES),
                                         labels_b=jnp.zeros((1,), jnp.int32)))(jax.random.key(0))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [leaf + 0.2 * jax.random.normal(key, leaf.shape)
                                     for leaf, key in zip(leaves, keys)])
  return model, params


def test_state_times_are_the_warped_list_plus_zero_and_on_the_solver_grid():
  np.testing.assert_allclose(ode_regression.state_times(4, 5.0),
                             [1.0, 0.9375, 0.8333333, 0.625, 0.0], rtol=1e-6)
  for solver_steps in (16, 24, 48):  # spec 9.2: any such M with the student's shift
    grid = np.asarray(flow.step_times(solver_steps, SHIFT))
    np.testing.assert_allclose(grid[::solver_steps // K], ode_regression.state_times(K, SHIFT),
                               atol=1e-6)


def test_guidance_is_uncond_plus_w_times_cond_minus_uncond(model_and_params):
  model, params = model_and_params
  x = jax.random.normal(jax.random.key(2), (2, FRAMES) + SHAPE)
  t = jnp.full((2, FRAMES), 0.7)
  cond = {"labels_b": jnp.array([0, 2])}
  apply = jax.jit(lambda labels: model.apply(params, x, t, frame_pos_f=jnp.arange(FRAMES),
                                              mask=masks.Full(FRAMES), labels_b=labels)[0])
  v_cond, v_null = apply(cond["labels_b"]), apply(jnp.full((2,), CLASSES))
  assert not np.allclose(v_cond, v_null, atol=1e-3)
  guided = jax.jit(ode_pairs.guided_velocity, static_argnums=(0, 5))
  # The doubled batch runs other matmul blocks: float32 rounding of velocities up to about 10,
  # times 1 + 2 * 3 through the guidance.
  np.testing.assert_allclose(guided(model, params, x, t, cond, 3.0),
                             v_null + 3.0 * (v_cond - v_null), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(guided(model, params, x, t, cond, 1.0), v_cond, rtol=1e-5,
                             atol=1e-5)


def test_stored_states_are_the_euler_inputs_at_the_warped_levels_and_its_output(
    model_and_params):
  model, params = model_and_params
  noise = jax.random.normal(jax.random.key(3), (2, FRAMES) + SHAPE)
  cond = {"labels_b": jnp.array([1, 2])}
  states = ode_pairs.solve(model, params, noise, cond, num_steps=K, solver_steps=M, shift=SHIFT,
                           guidance_scale=2.0)
  assert states.shape == (2, FRAMES, K + 1) + SHAPE
  grid = flow.step_times(M, SHIFT)
  velocity = jax.jit(lambda x, t: ode_pairs.guided_velocity(model, params, x, t, cond, 2.0))
  x, inputs = noise, []
  for j in range(M):  # the solver written out step by step
    inputs.append(x)
    t_now, t_next = jnp.full((2, FRAMES), grid[j]), jnp.full((2, FRAMES), grid[j + 1])
    x = flow.euler_step(x, velocity(x, t_now), t_now, t_next)
  for k in range(K):
    np.testing.assert_allclose(states[:, :, k], inputs[k * M // K], atol=1e-5, err_msg=f"k={k}")
  np.testing.assert_allclose(states[:, :, K], x, atol=1e-5)
  np.testing.assert_array_equal(states[:, :, 0], noise)
  with pytest.raises(ValueError, match="solver_steps=6 must be a multiple of num_steps=4"):
    ode_pairs.solve(model, params, noise, cond, num_steps=K, solver_steps=6, shift=SHIFT,
                    guidance_scale=2.0)


@dataclasses.dataclass(frozen=True)
class StubStudent:
  """Stands in for the CausalDiT: on frames with t > 0 its x0 prediction is
  params["clean"] + params["offset"]; it checks that the clip is seen block-causally."""

  prediction: str = "velocity"
  previous_frame_input: bool = False

  def conditioning(self, batch):
    return {}

  def apply(self, params, x_bfhwc, t_bf, *, frame_pos_f, mask, previous_bfhwc):
    assert previous_bfhwc is None
    n = x_bfhwc.shape[1]
    assert mask == masks.BlockCausal(n, CHUNK)
    np.testing.assert_array_equal(frame_pos_f, np.arange(n))
    t = t_bf[..., None, None, None]
    x0 = params["clean"] + params["offset"]
    return jnp.where(t > 0, (x_bfhwc - x0) / jnp.where(t > 0, t, 1.0), 0.0), None


def test_loss_is_zero_for_the_clean_clip_and_ignores_clean_frames():
  rng = jax.random.key(4)
  b = 3
  k_bf = ode_regression.draw_state_indices(rng, b, FRAMES, CHUNK, K)
  assert (k_bf == K).any() and (k_bf < K).any()  # both kinds of frames are in the draw
  video = jax.random.normal(jax.random.key(5), (b, FRAMES) + SHAPE)
  states = jax.random.normal(jax.random.key(6), (b, FRAMES, K + 1) + SHAPE)
  states = states.at[:, :, K].set(video)
  loss_fn = lambda states, offset: PARADIGMS["ode_regression"](
      StubStudent(), {"clean": video, "offset": offset}, {"video": video, "ode_states": states},
      rng, step=0, chunk=CHUNK, num_steps=K, warp_shift=SHIFT)[0]
  assert float(loss_fn(states, 0.0)) < 1e-10
  # An x0 error of 1 on every noisy frame is a loss of 1: clean frames, whose x0 is their input
  # (here far from the target), neither add to the sum nor to the count.
  np.testing.assert_allclose(loss_fn(states.at[:, :, K].add(100.0), 1.0), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="holds 5 states per frame; num_steps=3 reads 4"):
    PARADIGMS["ode_regression"](StubStudent(), {}, {"video": video, "ode_states": states}, rng,
                                step=0, chunk=CHUNK, num_steps=3, warp_shift=SHIFT)


def test_state_index_is_shared_within_a_chunk_and_uniform_and_independent_across_chunks():
  b = 4000
  k_bf = np.asarray(ode_regression.draw_state_indices(jax.random.key(7), b, FRAMES, CHUNK, K))
  chunks = k_bf.reshape(b, FRAMES // CHUNK, CHUNK)
  assert (chunks == chunks[..., :1]).all()
  k = chunks[..., 0]
  # Each value 1/(K + 1) of all chunks, each pair of consecutive chunks' values 1/(K + 1)^2,
  # within 3 binomial standard deviations.
  for values, p in ((k.ravel(), 1 / (K + 1)),
                    ((k[:, :-1] * (K + 1) + k[:, 1:]).ravel(), 1 / (K + 1) ** 2)):
    n = values.size
    counts = np.bincount(values, minlength=round(1 / p))
    assert len(counts) == round(1 / p)
    np.testing.assert_array_less(np.abs(counts - n * p), 3 * np.sqrt(n * p * (1 - p)))


def test_student_is_causal_over_chunks_and_trains(model_and_params):
  model, params = model_and_params
  times = ode_regression.state_times(K, SHIFT)
  states = jax.random.normal(jax.random.key(8), (2, FRAMES, K + 1) + SHAPE)
  k_bf = jnp.repeat(jnp.array([[0, 2, 1], [3, 4, 0]]), CHUNK, axis=1)
  cond = {"labels_b": jnp.array([0, 1])}
  predict = jax.jit(lambda states: ode_regression.predict_data(
      model, params, *ode_regression.student_inputs(states, k_bf, times), cond, chunk=CHUNK))
  x0 = predict(states)
  for j in range(1, FRAMES // CHUNK):
    frames = slice(j * CHUNK, (j + 1) * CHUNK)
    perturbed = predict(states.at[:, frames].add(1.0))
    np.testing.assert_allclose(perturbed[:, :j * CHUNK], x0[:, :j * CHUNK], atol=1e-6)
    assert not np.allclose(perturbed[:, frames], x0[:, frames], atol=1e-3)
  batch = {"video": states[:, :, K], "ode_states": states, "label": cond["labels_b"]}
  loss, grads = jax.jit(jax.value_and_grad(lambda p: PARADIGMS["ode_regression"](
      model, p, batch, jax.random.key(9), step=0, chunk=CHUNK, num_steps=K,
      warp_shift=SHIFT)[0]))(params)
  assert np.isfinite(loss) and loss > 0
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_pairs_round_trip_through_array_record_with_states_aligned(model_and_params, tmp_path):
  model, params = model_and_params
  batches = [{"video": np.zeros((2, FRAMES) + SHAPE, np.float32), "label": np.array(labels)}
             for labels in ([0, 2], [1, 1], [2, 0])]
  options = dict(num_sequences=3, num_steps=K, solver_steps=M, shift=SHIFT, guidance_scale=2.0)
  rng = jax.random.key(10)
  expected = list(ode_pairs.pair_sequences(model, params, iter(batches), rng, **options))
  path = str(tmp_path)
  assert ode_pairs.write_pairs(path, model, params, iter(batches), rng, num_shards=2,
                               teacher_step=12, **options) == 3
  with open(os.path.join(path, ode_pairs.METADATA)) as f:
    metadata = json.load(f)
  np.testing.assert_allclose(metadata["times"], ode_regression.state_times(K, SHIFT))
  assert metadata["teacher_step"] == 12
  assert [s["label"] for s in expected] == [0, 2, 1]
  source = pipeline.make_source("array_record", path=path, eval_fraction=0.0)
  # Whole clips, as the student trains on them: every clip is one of the sequences written.
  batch = pipeline.train_batches(source, batch_size=3, num_frames=FRAMES, seed=0)[0]
  assert set(batch) == {"video", "ode_states", "label"}
  assert batch["ode_states"].shape == (3, FRAMES, K + 1) + SHAPE
  np.testing.assert_array_equal(batch["ode_states"][:, :, K], batch["video"])
  found = set()
  for video, states, label in zip(batch["video"], batch["ode_states"], batch["label"]):
    (s,) = [i for i, seq in enumerate(expected) if np.array_equal(seq["video"], video)]
    np.testing.assert_array_equal(states, expected[s]["ode_states"])
    assert label == expected[s]["label"]
    found.add(s)
  assert found == {0, 1, 2}
  # Shorter windows keep each frame's states with it.
  windows = FRAMES - 4 + 1
  for index in range(source.num_clips(4)):
    s, start = divmod(index, windows)
    clip = source.clip(0, index, 4)
    np.testing.assert_array_equal(clip["ode_states"],
                                  expected[s]["ode_states"][start:start + 4])
    np.testing.assert_array_equal(clip["video"], expected[s]["video"][start:start + 4])


def test_pairs_of_each_batch_start_from_that_batchs_own_noise(model_and_params):
  """Guards against drawing every batch's noise from one key: two identical batches must give
  pairs from different noise, batch i's being normal(fold_in(rng, i)) (its first state)."""
  model, params = model_and_params
  batch = {"video": np.zeros((1, FRAMES) + SHAPE, np.float32), "label": np.array([1])}
  rng = jax.random.key(3)
  first, second = ode_pairs.pair_sequences(model, params, iter([batch, batch]), rng,
                                           num_sequences=2, num_steps=K, solver_steps=M,
                                           shift=SHIFT, guidance_scale=1.0)
  for i, pair in enumerate((first, second)):
    noise = jax.random.normal(jax.random.fold_in(rng, i), (1, FRAMES) + SHAPE, jnp.float32)
    np.testing.assert_allclose(pair["ode_states"][:, 0], noise[0], atol=1e-6)
  assert not np.allclose(first["ode_states"][:, 0], second["ode_states"][:, 0])
  assert not np.allclose(first["video"], second["video"])


def test_a_teacher_workdir_of_a_causal_run_is_one_line_naming_the_flag(trained_stage, tmp_path):
  """The o03 probe: a causal run's workdir as --teacher_workdir was a checkpoint mismatch whose
  advice was to use a new --workdir, a flag this tool does not have; nothing is written."""
  teacher = trained_stage("causal", bouncing_rf.get_config("test"))
  result = subprocess.run(
      [sys.executable, "-m", "videoar.ode_pairs", "--config=configs/bouncing_sf.py:teacher,test",
       f"--teacher_workdir={teacher}", f"--output={tmp_path / 'pairs'}", "--num_sequences=2",
       "--solver_steps=8"], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --teacher_workdir={teacher!r} is invalid: the run in it is of"
      " forcing.paradigm='resampling': it must be the workdir of the bidirectional teacher"
      " (configs/bouncing_sf.py:teacher), trained first")
  assert sorted(os.listdir(tmp_path)) == ["causal"]


def _pairs_set(path, num_steps=K, metadata=True, **made):
  """A set of 2 sequences of 4 frames of configs/bouncing_sf.py:ode,test's 32x32x3 frames at
  `path`, as videoar/ode_pairs.py writes one (zeros: nothing here reads their values), with
  ode_states of num_steps + 1 states; with `metadata`, its ode_pairs.json of num_steps and
  `made` (warp_shift: default SHIFT). Returns `path` as a str."""
  frames = np.zeros((4, 32, 32, 3), np.float32)
  states = np.zeros((4, num_steps + 1, 32, 32, 3), np.float32)
  array_record.write_sequences(str(path), [{"video": frames, "ode_states": states}] * 2)
  if metadata:
    made = dict(num_steps=num_steps, solver_steps=8, warp_shift=SHIFT, guidance_scale=1.0) | made
    made["times"] = ode_regression.state_times(made["num_steps"], made["warp_shift"]).tolist()
    with open(os.path.join(path, ode_pairs.METADATA), "w") as f:
      json.dump(made, f)
  return str(path)


def _student(data_path):
  config = bouncing_sf.get_config("ode,test")
  config.data.path = data_path
  return config


def test_the_ode_students_step_traces_from_shapes_alone():
  """build_for_shapes (the AOT tool's --frame_shape, the benchmarks) gave the ODE student's batch
  no ode_states, a KeyError while its step was traced."""
  config = bouncing_sf.get_config("ode,test")
  exp = experiment.build_for_shapes(config, (32, 32, 3))
  assert exp.clip_spec["ode_states"].shape == (config.data.num_frames,
                                               config.forcing.num_steps + 1, 32, 32, 3)
  train_step = experiment.make_train_step(exp)
  state = jax.eval_shape(train_step.init, jax.random.key(0))
  _, metrics = jax.eval_shape(train_step.step, state, experiment.example_batch(exp),
                              jax.random.key(1))
  assert metrics["loss"].shape == ()


def test_pairs_of_the_students_levels_build(tmp_path):
  experiment.build(_student(_pairs_set(tmp_path / "pairs")))
  # Sampled and evaluated on the world, which holds no pairs: nothing to check.
  experiment.build(bouncing_sf.get_config("ode,world,test"))


# (the probe, the pairs' num_steps, what their ode_pairs.json says, the line's key and values)
OTHER_PAIRS = [
    ("pairs of K=2 (was a ValueError traceback while tracing, after the workdir was made)",
     2, {}, "num_steps", 4, 2),
    ("pairs of another warp shift (trained silently on states at the wrong times)",
     K, {"warp_shift": 3.0}, "warp_shift", 5.0, 3.0),
]


@pytest.mark.parametrize("states,made,key,ours,theirs", [row[1:] for row in OTHER_PAIRS],
                         ids=[row[0] for row in OTHER_PAIRS])
def test_pairs_made_for_other_levels_are_one_line_naming_the_key_and_the_file(
    tmp_path, states, made, key, ours, theirs):
  path = _pairs_set(tmp_path / "pairs", num_steps=states, **made)
  with pytest.raises(ConfigError) as error:
    experiment.build(_student(path))
  assert str(error.value) == (
      f"config.forcing.{key}={ours!r} is invalid: the ODE pairs in data.path={path!r} were made"
      f" with {key}={theirs!r} ({path}/ode_pairs.json): make pairs with python -m"
      f" videoar.ode_pairs --{key}={ours!r}, or train with forcing.{key}={theirs!r}")


NO_PAIRS = ("is invalid: it holds no ODE pairs (no ode_pairs.json), which"
            " forcing.paradigm='ode_regression' trains on: write them from the teacher with"
            " python -m videoar.ode_pairs --output=DIR and pass that DIR")


def test_a_data_path_of_clips_without_ode_states_is_one_line_naming_the_tool(tmp_path):
  """The q07 probe: an array_record set of the world's clips (write_array_record), no pairs,
  was `KeyError: 'ode_states'` while the loss was traced."""
  path = str(tmp_path / "clips")
  array_record.write_sequences(path, [{"video": np.zeros((4, 32, 32, 3), np.float32)}] * 2)
  with pytest.raises(ConfigError) as error:
    experiment.build(_student(path))
  assert str(error.value) == f"config.data.path={path!r} {NO_PAIRS}"


def test_training_on_pairs_of_another_k_stops_before_making_the_workdir(tmp_path):
  """The probe's command line: one line, exit status 2, no workdir."""
  path = _pairs_set(tmp_path / "pairs", num_steps=2)
  workdir = tmp_path / "ode"
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/bouncing_sf.py:ode,test",
       f"--workdir={workdir}", "--mode=train", "--config.train.num_steps=2",
       f"--config.data.path={path}"], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: config.forcing.num_steps=4 is invalid: the ODE pairs in data.path=")
  assert not workdir.exists()


def test_training_the_ode_student_on_the_world_stops_before_making_the_workdir(tmp_path):
  """`ode,world` samples and evaluates the student on the world, which holds no pairs: training
  with it was a KeyError ('ode_states') while the loss was traced."""
  workdir = tmp_path / "ode"
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/bouncing_sf.py:ode,world,test",
       f"--workdir={workdir}", "--mode=train", "--config.train.num_steps=2"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.data.source='bouncing' is invalid: forcing.paradigm='ode_regression' trains"
      " on ODE pairs (data.source='array_record' with data.path made by python -m"
      " videoar.ode_pairs); this data can sample and evaluate the student, not train it")
  assert "Traceback" not in result.stderr and not workdir.exists()


# (the probe, the flags, the line): each was accepted, or failed after the teacher was read.
BAD_FLAGS = [
    ("a warp shift of 0 (wrote NaN times, exit 0)", ["--warp_shift=0"],
     "flag --warp_shift=0.0: must be a finite number > 0 (the student's forcing.warp_shift; 1"
     " leaves the times unwarped)"),
    ("a negative warp shift", ["--warp_shift=-2"],
     "flag --warp_shift=-2.0: must be a finite number > 0 (the student's forcing.warp_shift; 1"
     " leaves the times unwarped)"),
    ("no solver steps (accepted)", ["--solver_steps=0"],
     "flag --solver_steps=0: 0 is not a positive integer"),
    ("no shards (ZeroDivisionError after a batch was solved)", ["--num_shards=0"],
     "flag --num_shards=0: 0 is not a positive integer"),
    ("no batch (ValueError traceback)", ["--batch_size=0"],
     "flag --batch_size=0: 0 is not a positive integer"),
    ("K=0 (blamed --solver_steps)", ["--num_steps=0"],
     "flag --num_steps=0: 0 is not a positive integer"),
    ("M not a multiple of K", ["--num_steps=3"],
     "flags solver_steps=8, num_steps=3: --solver_steps must be a multiple of --num_steps: only"
     " then does the solver grid hold the student's levels"),
    ("an --output that is a file (FileExistsError traceback)", ["--output={file}"],
     "--output='{file}' is invalid: {file} is a file, not a directory to write the pairs into"),
    ("an --output holding a dataset", ["--output={dataset}"],
     "{dataset} already holds a dataset (index.json): write to a new folder, or move that one"
     " away"),
]


@pytest.mark.parametrize("args,line", [row[1:] for row in BAD_FLAGS],
                         ids=[row[0] for row in BAD_FLAGS])
def test_a_bad_ode_pairs_flag_is_one_line_naming_it_before_the_teacher_is_read(
    trained_stage, tmp_path, args, line):
  teacher = trained_stage("teacher", bouncing_sf.get_config("teacher,test"))
  paths = {"file": str(tmp_path / "file"), "dataset": str(tmp_path / "dataset")}
  (tmp_path / "file").write_text("")
  os.makedirs(paths["dataset"])
  (tmp_path / "dataset" / "index.json").write_text("{}")
  before = sorted(os.listdir(tmp_path))
  result = subprocess.run(
      [sys.executable, "-m", "videoar.ode_pairs", "--config=configs/bouncing_sf.py:teacher,test",
       f"--teacher_workdir={teacher}", f"--output={tmp_path / 'pairs'}", "--num_sequences=2",
       "--solver_steps=8", *(arg.format(**paths) for arg in args)],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == f"error: {line.format(**paths)}"
  assert sorted(os.listdir(tmp_path)) == before
  assert os.listdir(tmp_path / "dataset") == ["index.json"]


def test_ode_pairs_json_is_whole_or_absent(model_and_params, tmp_path, monkeypatch):
  """The launch script takes ode_pairs.json for finished pairs: a write that fails part way
  (a full disk, a kill) leaves none, not part of one."""
  model, params = model_and_params
  batches = [{"video": np.zeros((2, FRAMES) + SHAPE, np.float32), "label": np.array([0, 2])}]

  def dump_part(value, f):
    f.write(json.dumps(value)[:10])
    raise OSError(28, "No space left on device")

  # ode_pairs' own json only: array_record writes index.json with json.dump too.
  monkeypatch.setattr(ode_pairs, "json", types.SimpleNamespace(dump=dump_part))
  with pytest.raises(OSError):
    ode_pairs.write_pairs(str(tmp_path), model, params, iter(batches), jax.random.key(10),
                          num_sequences=2, num_steps=K, solver_steps=M, shift=SHIFT,
                          guidance_scale=2.0, num_shards=2, teacher_step=1)
  assert "index.json" in os.listdir(tmp_path)
  assert not [name for name in os.listdir(tmp_path) if "ode_pairs" in name]


def test_a_sigterm_stops_ode_pairs_in_one_line_and_leaves_no_pairs(tmp_path):
  """The probe: a SIGTERM part way was exit status 143 without a word, leaving 320 MB of shards
  (a Ctrl-C: a 58-line traceback). Neither index.json nor ode_pairs.json is written: nothing
  takes the shards for a dataset or for pairs, and the same command writes them whole."""
  teacher, output = tmp_path / "teacher", tmp_path / "pairs"
  trained = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/bouncing_sf.py:teacher,test",
       f"--workdir={teacher}", "--mode=train", "--config.train.num_steps=1"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert trained.returncode == 0, trained.stderr[-2000:]
  status, stderr = stop_once_writing(
      [sys.executable, "-m", "videoar.ode_pairs", "--config=configs/bouncing_sf.py:teacher,test",
       f"--teacher_workdir={teacher}", f"--output={output}", "--num_sequences=3000",
       "--solver_steps=16"], output, signal.SIGTERM)
  assert status == 143, stderr[-2000:]
  assert "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == (
      f"error: stopped by SIGTERM part way through writing {output}; it holds no index.json, so"
      " nothing reads it as a dataset: rerun the same command to write it whole")
  assert "frames-00000-of-00004.array_record" in os.listdir(output)
  assert not {"index.json", ode_pairs.METADATA} & set(os.listdir(output))


def test_a_signal_while_index_json_is_written_waits_for_ode_pairs_json(model_and_params, tmp_path,
                                                                    monkeypatch):
  """index.json without ode_pairs.json is a dataset that a rerun refuses to write over, and no
  pairs to the launch script: a signal that comes as index.json is written stops the command
  only once ode_pairs.json is written too."""
  model, params = model_and_params
  batches = [{"video": np.zeros((2, FRAMES) + SHAPE, np.float32), "label": np.array([0, 2])}]

  def dump_signalled(value, f):
    os.kill(os.getpid(), signal.SIGTERM)
    json.dump(value, f)

  monkeypatch.setattr(array_record, "json", types.SimpleNamespace(
      dump=dump_signalled, dumps=json.dumps, loads=json.loads))
  # The handler errors.run(main, stopped=...) gives SIGTERM.
  previous = signal.signal(signal.SIGTERM, errors._stop)
  try:
    with pytest.raises(errors.Stopped):
      ode_pairs.write_pairs(str(tmp_path), model, params, iter(batches), jax.random.key(10),
                            num_sequences=2, num_steps=K, solver_steps=M, shift=SHIFT,
                            guidance_scale=2.0, num_shards=2, teacher_step=1)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert {"index.json", ode_pairs.METADATA} <= set(os.listdir(tmp_path))
  assert array_record.stopped_line("SIGTERM", str(tmp_path)) == (
      f"stopped by SIGTERM: {tmp_path} holds a whole dataset (index.json), kept as it is")


def test_pairs_are_stale_unless_made_from_the_teachers_newest_checkpoint(tmp_path):
  """stale_problem, which launch/self_forcing.sh runs before the ODE stage: pairs of the teacher's
  newest step pass; of another step (earlier or later: guards against `made < newest`), or
  recording none and older than that step, are named; METADATA that cannot be read is one
  line."""
  teacher, pairs = tmp_path / "teacher", tmp_path / "pairs"
  (teacher / "checkpoints" / "5").mkdir(parents=True)
  pairs.mkdir()
  metadata = pairs / ode_pairs.METADATA
  assert ode_pairs.stale_problem(str(pairs), str(tmp_path / "untrained")) is None
  metadata.write_text(json.dumps({"teacher_step": 5}))
  assert ode_pairs.stale_problem(str(pairs), str(teacher)) is None
  metadata.write_text(json.dumps({"teacher_step": 3}))
  assert ode_pairs.stale_problem(str(pairs), str(teacher)) == (
      f"the ODE pairs in {pairs} were made from step 3 of the teacher in {teacher}, whose"
      " newest checkpoint is step 5")
  # Pairs recording a later step than the newest checkpoint (the teacher's workdir was replaced,
  # or its later checkpoints deleted) are no more the newest checkpoint's than an earlier one's.
  metadata.write_text(json.dumps({"teacher_step": 7}))
  assert ode_pairs.stale_problem(str(pairs), str(teacher)) == (
      f"the ODE pairs in {pairs} were made from step 7 of the teacher in {teacher}, whose"
      " newest checkpoint is step 5")
  metadata.write_text("{}")  # made before teacher_step was recorded, after the teacher's step 5
  assert ode_pairs.stale_problem(str(pairs), str(teacher)) is None
  os.utime(metadata, (0, 0))
  assert "record no teacher step" in ode_pairs.stale_problem(str(pairs), str(teacher))
  for damaged in ("[1, 2]", "{not json"):
    metadata.write_text(damaged)
    with pytest.raises(errors.UserError, match="cannot be read as ODE pairs' metadata"):
      ode_pairs.stale_problem(str(pairs), str(teacher))
