"""Self Forcing through the trainer: the generator/critic state checkpoints and resumes
bit-identically (generator, critic, EMA, both optimizers; the GAN variant's discriminator head
with the critic), and each stage reads the one before."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from videoar import base_config, experiment, trainer, validate
from videoar.errors import ConfigError
from videoar.eval import run
from videoar.train import workdir as workdir_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import bouncing_rf  # noqa: E402
import bouncing_sf  # noqa: E402


def _self_forcing_config(stage_workdir, num_steps, variant):
  config = bouncing_sf.get_config(variant)
  # The tiny teacher stands in for the ODE-initialised student too: the same architecture, so
  # this generator reads no previous frame (test_a_generator_reading... covers one that does).
  config.model.previous_frame_input = False
  config.forcing.teacher_workdir = config.forcing.generator_workdir = str(stage_workdir)
  config.train.num_steps, config.train.log_every, config.train.checkpoint_every = num_steps, 1, 2
  return config


def _logged(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    # critic_exit_step: the critic's own metrics are logged (they were computed and dropped).
    keys = ("step", "loss", "critic_loss", "critic_exit_step", "grad_norm")
    return [{k: r[k] for k in keys} for r in map(json.loads, f)]


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("stages") / "teacher"
  teacher = bouncing_sf.get_config("teacher,test")
  teacher.train.num_steps = 2
  trainer.train(experiment.build(teacher), str(workdir))
  return workdir


# "gan,test": the GAN variant, whose critic is the discriminator {"backbone", "head"}; about 85 s
# on 2 CPU cores, so kept out of the default run (-m slow runs it).
@pytest.mark.parametrize("variant", ["test", pytest.param("gan,test", marks=pytest.mark.slow)])
def test_a_resumed_self_forcing_run_continues_bit_identically(teacher_workdir, tmp_path,
                                                              variant):
  straight = trainer.train(experiment.build(_self_forcing_config(teacher_workdir, 4, variant)),
                           str(tmp_path / "straight"))
  trainer.train(experiment.build(_self_forcing_config(teacher_workdir, 2, variant)),
                str(tmp_path / "resumed"))
  resumed = trainer.train(experiment.build(_self_forcing_config(teacher_workdir, 4, variant)),
                          str(tmp_path / "resumed"))

  assert _logged(tmp_path / "straight") == _logged(tmp_path / "resumed")
  assert int(resumed.step) == 4
  assert set(resumed.params) == {"generator", "critic", "teacher"}
  assert set(resumed.opt_state) == {"generator", "critic"}
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The teacher is frozen; the critic (the discriminator's backbone) started from it and moved.
  start = experiment.restore_params(experiment.build(bouncing_sf.get_config("teacher,test")),
                                    str(teacher_workdir), use_ema=True)
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(resumed.params["teacher"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  critic = resumed.params["critic"]
  if "gan" in variant:
    assert set(critic) == set(resumed.opt_state["critic"][1][0].mu) == {"backbone", "head"}
    critic = critic["backbone"]
    # Sampling reads the generator's EMA from a checkpoint of the whole state, head included.
    exp = experiment.build(_self_forcing_config(teacher_workdir, 4, variant))
    sampled = experiment.restore_params(exp, str(tmp_path / "resumed"), use_ema=True)
    for a, b in zip(jax.tree.leaves(sampled), jax.tree.leaves(resumed.ema_params["generator"])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(start), jax.tree.leaves(critic)))


def test_a_generator_reading_its_previous_frame_starts_from_its_stages_and_samples(
    teacher_workdir, tmp_path):
  """The generator reads its previous frame, the teacher and critic do not (the config's
  default): the run starts from each stage's weights, trains, and its generator is what
  sampling restores."""
  student = bouncing_sf.get_config("test")
  assert student.model.previous_frame_input
  # A one-step Teacher Forcing run of the student's architecture stands in for the ODE stage.
  chunk, student.forcing = student.forcing.chunk, base_config.get_config().forcing
  student.forcing.chunk, student.train.num_steps = chunk, 1
  student_workdir = str(tmp_path / "student")
  trainer.train(experiment.build(student), student_workdir)
  config = bouncing_sf.get_config("test")
  config.forcing.teacher_workdir, config.forcing.generator_workdir = (str(teacher_workdir),
                                                                     student_workdir)
  config.train.num_steps = 1
  exp = experiment.build(config)
  start = experiment.make_train_step(exp).start(jax.random.key(0))
  teacher = experiment.restore_params(experiment.build(bouncing_sf.get_config("teacher,test")),
                                      str(teacher_workdir), use_ema=True)
  generator = experiment.restore_params(experiment.build(student), student_workdir, use_ema=True)
  for network, expected in (("teacher", teacher), ("critic", teacher), ("generator", generator)):
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(start.params[network])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  trained = trainer.train(exp, str(tmp_path / "self_forcing"))
  sampled = experiment.restore_params(exp, str(tmp_path / "self_forcing"), use_ema=True)
  for a, b in zip(jax.tree.leaves(sampled), jax.tree.leaves(trained.ema_params["generator"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_teacher_samples_as_many_unconditional_clips_as_asked(teacher_workdir):
  """The bidirectional teacher has no context (sample.context_frames = 0) and the bouncing world
  no conditioning: the batch comes from the clip count, not from a context."""
  exp = experiment.build(bouncing_sf.get_config("teacher,test"))
  params = experiment.restore_params(exp, str(teacher_workdir), use_ema=True)
  clips, generated = run.continue_clips(exp, params, 3, jax.random.key(0))
  assert generated.shape == clips["video"].shape == (3, exp.config.data.num_frames) + exp.frame_shape


def test_the_launch_script_runs_a_seed_of_the_pipeline_in_its_own_workdirs(tmp_path):
  """launch/self_forcing.sh with SEED=1 (test shapes): every stage runs with config.seed 1 under
  runs/bouncing_sf_test_seed1/ and reads the stage before from there, not from seed 0's
  workdirs (which the configs name)."""
  root = os.path.join(os.path.dirname(__file__), "..")
  os.symlink(os.path.join(root, "configs"), tmp_path / "configs")
  subprocess.run(["bash", os.path.join(root, "launch", "self_forcing.sh")], cwd=tmp_path,
                 check=True, capture_output=True,
                 env=dict(os.environ, VARIANT="test", SEED="1", PYTHON=sys.executable,
                          JAX_PLATFORMS="cpu"))
  runs = tmp_path / "runs"
  assert sorted(p.name for p in runs.iterdir()) == ["bouncing_sf_test_seed1"]
  seed_runs = "runs/bouncing_sf_test_seed1"
  configs = {}
  for stage in ("teacher", "ode", "self_forcing"):
    with open(runs / "bouncing_sf_test_seed1" / stage / "run.json") as f:
      configs[stage] = json.load(f)["config"]
    assert configs[stage]["seed"] == 1, stage
  assert configs["ode"]["data"]["path"] == f"{seed_runs}/ode_pairs"
  assert (configs["self_forcing"]["forcing"]["teacher_workdir"],
          configs["self_forcing"]["forcing"]["generator_workdir"]) == (
              f"{seed_runs}/teacher", f"{seed_runs}/ode")
  assert (runs / "bouncing_sf_test_seed1" / "self_forcing" / "eval.json").exists()


TEST_RUNS = "runs/bouncing_sf_test"
# Each stage's config variant and the name the launch script's line gives it.
LAUNCH_STAGES = {"teacher": ("teacher,test", "teacher"), "ode": ("ode,test", "ODE"),
                 "self_forcing": ("test", "Self Forcing")}


def _launched_stage(root, stage, step, num_steps=5):
  """ROOT/runs/bouncing_sf_test/STAGE as its run leaves it to the launch script's checks (the
  checkpoints and run.json that videoar.sweep.trained reads): a finished checkpoint of `step`
  (its directory, empty: nothing here reads its arrays) and the run.json of a run of
  train.num_steps=num_steps."""
  workdir = root / TEST_RUNS / stage
  os.makedirs(workdir / "checkpoints" / str(step))
  config = bouncing_sf.get_config(LAUNCH_STAGES[stage][0])
  config.train.num_steps = num_steps
  workdir_lib.RunRecord(config.to_dict(), {}).save(str(workdir))
  return workdir


def _evaluated(workdir, step):
  """Writes WORKDIR/eval.json as an evaluation of the checkpoint of `step` would (the fields
  videoar.sweep.unfinished reads)."""
  (workdir / "eval.json").write_text(json.dumps(
      {"checkpoint_step": step, "tables": {"model": [{"segment": "0-3", "psnr": 6.0}]}}))


def _launch_with_stand_in(tmp_path):
  """Runs launch/self_forcing.sh (VARIANT=test) in tmp_path with a PYTHON that runs the
  script's own checks (python -c) but stands in for every stage's command: it notes it and, as
  videoar.main does after a SIGTERM, prints its line and exits 0 having trained no further.
  Returns (the result, the commands given: (module, --workdir, --mode) each)."""
  root = os.path.join(os.path.dirname(__file__), "..")
  os.symlink(os.path.join(root, "configs"), tmp_path / "configs")
  log = tmp_path / "commands"
  stand_in = tmp_path / "python"
  stand_in.write_text(
      "#!/bin/bash\n"
      f'if [ "$1" = -c ]; then exec {sys.executable} "$@"; fi\n'
      f'printf "%s\\n" "$*" >> {log}\n'
      'echo "preempted: saved step 1; the same command resumes from it"\n')
  stand_in.chmod(0o755)
  result = subprocess.run(["bash", os.path.join(root, "launch", "self_forcing.sh")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, VARIANT="test", PYTHON=str(stand_in),
                                   JAX_PLATFORMS="cpu"))
  commands = []
  for line in log.read_text().splitlines() if log.exists() else []:
    args = dict(arg.removeprefix("--").split("=", 1) for arg in line.split()[2:]
                if arg.startswith("--") and "=" in arg)
    commands.append((line.split()[1], args.get("workdir", args.get("output")),
                     args.get("mode")))
  return result, commands


@pytest.mark.parametrize("stage", LAUNCH_STAGES)
def test_the_launch_script_passes_no_stage_on_that_stopped_before_its_last_step(tmp_path, stage):
  """The third probe's case: videoar.main exits 0 after a planned stop (a SIGTERM: it saves and says
  "preempted"), and the script took that stage for finished: it touched teacher/.trained and
  made the ODE pairs from a half-trained teacher, or evaluated a half-trained ODE student whose
  eval.json then made later runs skip it. Now a stage whose newest checkpoint (step 1) is short
  of its run.json's train.num_steps (5) is trained, and when that stops early again the script
  says so in one line and exits 0; the markers the old script left do not count."""
  order = list(LAUNCH_STAGES)
  for before in order[:order.index(stage)]:
    done = _launched_stage(tmp_path, before, step=5)
    if before == "ode":
      _evaluated(done, step=5)
  if stage != "teacher":
    os.makedirs(tmp_path / TEST_RUNS / "ode_pairs")
    (tmp_path / TEST_RUNS / "ode_pairs" / "ode_pairs.json").write_text("{}")
  stopped = _launched_stage(tmp_path, stage, step=1)
  (stopped / ".trained").touch()
  if stage == "ode":  # an evaluation of the stopped student, as the old script ran it
    (stopped / "eval.json").write_text("{}")
  result, commands = _launch_with_stand_in(tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  mode = "all" if stage == "self_forcing" else "train"
  assert commands == [("videoar.main", f"{TEST_RUNS}/{stage}", mode)]
  assert result.stderr.strip().splitlines()[-1] == (
      f"launch/self_forcing.sh: the {LAUNCH_STAGES[stage][1]} stage stopped before its last"
      f" step (train.num_steps) in {TEST_RUNS}/{stage}; run the script again to resume it")


def test_the_launch_script_evaluates_trained_stages_not_evaluated_at_their_last_step(tmp_path):
  """A trained ODE student whose eval.json is of an earlier step (an evaluation of it stopped
  early, as the old script ran) is evaluated again; a trained Self Forcing run without an
  evaluation is sampled and evaluated, not run with --mode=all, which refuses a workdir at its
  last step ("already reached step N"). Nothing is trained."""
  for stage in LAUNCH_STAGES:
    _launched_stage(tmp_path, stage, step=5)
  (tmp_path / TEST_RUNS / "ode_pairs").mkdir()
  (tmp_path / TEST_RUNS / "ode_pairs" / "ode_pairs.json").write_text("{}")
  _evaluated(tmp_path / TEST_RUNS / "ode", step=1)
  result, commands = _launch_with_stand_in(tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert commands == [("videoar.main", f"{TEST_RUNS}/ode", "evaluate"),
                      ("videoar.main", f"{TEST_RUNS}/self_forcing", "sample"),
                      ("videoar.main", f"{TEST_RUNS}/self_forcing", "evaluate")]


@pytest.mark.parametrize("made", ["at another step", "before the teacher's step, unrecorded"])
def test_the_launch_script_stops_on_pairs_made_from_another_teacher_step(tmp_path, made):
  """An older script made ODE pairs from a teacher stopped part way (a SIGTERM), and the pairs
  stayed when the teacher was trained on: the ODE student then trained on pairs of a half-trained
  teacher, with no word. Now pairs whose recorded teacher step is not the teacher's newest
  checkpoint, or that record none and are older than it, stop the script in one line (status 2)
  before any stage runs; nothing is moved."""
  for stage in LAUNCH_STAGES:
    _launched_stage(tmp_path, stage, step=5)
  pairs = tmp_path / TEST_RUNS / "ode_pairs"
  pairs.mkdir()
  if made == "at another step":
    (pairs / "ode_pairs.json").write_text(json.dumps({"teacher_step": 1}))
    why = (f"the ODE pairs in {TEST_RUNS}/ode_pairs were made from step 1 of the teacher in"
           f" {TEST_RUNS}/teacher, whose newest checkpoint is step 5")
  else:
    (pairs / "ode_pairs.json").write_text("{}")
    os.utime(pairs / "ode_pairs.json", (0, 0))  # written before the teacher's checkpoint
    why = (f"the ODE pairs in {TEST_RUNS}/ode_pairs record no teacher step (an older"
           f" videoar.ode_pairs made them) and were made before step 5 of the teacher in"
           f" {TEST_RUNS}/teacher")
  result, commands = _launch_with_stand_in(tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  assert commands == []
  assert result.stderr.strip().splitlines() == [
      f"error: launch/self_forcing.sh: {why}; move {TEST_RUNS}/ode_pairs aside, and"
      f" {TEST_RUNS}/ode and {TEST_RUNS}/self_forcing if they were trained from it, then run"
      " the script again"]
  assert (pairs / "ode_pairs.json").exists()


@pytest.mark.parametrize("world", ["occluded", "moving_mnist"])
def test_every_stage_on_another_world_reads_the_clips_of_the_resampling_forcing_study(world):
  """The Self Forcing pipeline's world variants: the teacher, the Self Forcing stage and the ODE
  student evaluated with `world` read the same data keys as configs/bouncing_rf.py's variant of
  that name (their rows sit beside its arms), but at the pipeline's batch of 16 on every world;
  the ODE student trains on its teacher's pairs."""
  def clips(config):
    return {k: v for k, v in config.data.to_dict().items() if k != "batch_size"}

  rf_clips = clips(bouncing_rf.get_config(world))
  for stage in ("teacher", "ode,world", ""):
    config = bouncing_sf.get_config(",".join(v for v in (stage, world) if v))
    assert (clips(config), config.data.batch_size) == (rf_clips, 16), stage
  assert bouncing_sf.get_config(f"ode,{world}").data.source == "array_record"
  assert clips(bouncing_sf.get_config("teacher")) != rf_clips
  with pytest.raises(ValueError, match="two worlds"):
    bouncing_sf.get_config("teacher,occluded,moving_mnist")


TEACHER = "it must be the workdir of the bidirectional teacher (configs/bouncing_sf.py:teacher)"
STUDENT = "it must be the workdir of the causal student (configs/bouncing_sf.py:ode)"


def _wide_teacher():
  config = bouncing_sf.get_config("teacher,test")
  config.model.width = 64
  return config


# (what the user named, the stage it is wrong for, what the workdir holds: a config trained in
# it, "empty checkpoints", "no run.json", "bad run.json", None for nothing, or "unset" for no
# workdir named, the reason the line gives)
WRONG_STAGES = [
    ("no workdir", "generator", "unset", f"not set: {STUDENT}, trained first"),
    ("a workdir that does not exist", "teacher", None,
     f"no such directory: {TEACHER}, trained first"),
    ("a teacher whose checkpoints/ is empty (was 'train first (--mode=train)' after the model was"
     " built)", "teacher", "empty checkpoints",
     f"its checkpoints/ holds no finished checkpoint: {TEACHER}, trained first"),
    ("a checkpoint without its run.json", "teacher", "no run.json",
     f"it holds no readable run record (run.json): {TEACHER}, trained first"),
    ("a run.json cut short", "teacher", "bad run.json",
     f"it holds no readable run record (run.json): {TEACHER}, trained first"),
    ("a causal run as the teacher (was 'written for another model ... use a new --workdir')",
     "teacher", lambda: bouncing_rf.get_config("test"),
     f"the run in it is of forcing.paradigm='resampling': {TEACHER}, trained first"),
    ("a teacher of another width", "teacher", _wide_teacher,
     "the run in it trained model.width=64 and this config has 32:"
     f" {TEACHER}, trained first with this config's model"),
    # Was distilled without a word (another world of the same frames), or refused by the
    # checkpoint's restore with advice about --workdir (frames of another channel count).
    ("a teacher of the occluded world", "teacher",
     lambda: bouncing_sf.get_config("teacher,occluded,test"),
     "the run in it trained on other data (data.options.occluders [[0, 11, 32, 10]] -> []: its"
     f" run.json -> this config): {TEACHER}, trained first on this config's data"),
    ("a teacher of Moving-MNIST", "teacher",
     lambda: bouncing_sf.get_config("teacher,moving_mnist,test"),
     "the run in it trained on other data (data.source moving_mnist -> bouncing: its run.json"
     f" -> this config): {TEACHER}, trained first on this config's data"),
    ("a Self Forcing run as the generator", "generator", lambda: bouncing_sf.get_config("test"),
     f"the run in it is of forcing.paradigm='self_forcing': {STUDENT}, trained first"),
    ("the teacher as the generator, which reads its previous frame", "generator",
     lambda: bouncing_sf.get_config("teacher,test"),
     "the run in it trained model.previous_frame_input=False and this config has True:"
     f" {STUDENT}, trained first with this config's model"),
]


@pytest.mark.parametrize("stage,holds,reason", [row[1:] for row in WRONG_STAGES],
                         ids=[row[0] for row in WRONG_STAGES])
def test_a_stage_that_is_not_the_trained_stage_needed_is_one_line_naming_its_key(
    trained_stage, tmp_path, stage, holds, reason):
  """Checked before anything is built, from the stage's checkpoints/ and run.json alone."""
  config = bouncing_sf.get_config("test")
  config.forcing.teacher_workdir = trained_stage("teacher", bouncing_sf.get_config("teacher,test"))
  config.forcing.generator_workdir = trained_stage("ode", bouncing_sf.get_config("ode,test"))
  validate.validate_stages(config)  # the right stages pass
  wrong = str(tmp_path / "wrong")
  if holds == "empty checkpoints":
    os.makedirs(os.path.join(wrong, "checkpoints"))
  elif holds in ("no run.json", "bad run.json"):
    os.makedirs(os.path.join(wrong, "checkpoints", "1"))
    if holds == "bad run.json":
      with open(os.path.join(wrong, "run.json"), "w") as f:
        f.write('{"config": {')
  elif holds == "unset":
    wrong = None
  elif holds is not None:
    trained_stage("wrong", holds())
  config.forcing[f"{stage}_workdir"] = wrong
  with pytest.raises(ConfigError) as error:
    validate.validate_stages(config)
  assert str(error.value) == f"config.forcing.{stage}_workdir={wrong!r} is invalid: {reason}"


def test_self_forcing_from_an_untrained_teacher_stops_before_making_its_workdir(tmp_path):
  """The CLI's line for a teacher stage with an empty checkpoints/, and the new run's workdir is
  not made (it was left with .lock and checkpoints/)."""
  os.makedirs(tmp_path / "teacher" / "checkpoints")
  workdir = tmp_path / "self_forcing"
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/bouncing_sf.py:test",
       "--mode=train", f"--workdir={workdir}",
       f"--config.forcing.teacher_workdir={tmp_path / 'teacher'}"],
      capture_output=True, text=True, timeout=300,
      cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: config.forcing.teacher_workdir='{tmp_path / 'teacher'}' is invalid: its"
      f" checkpoints/ holds no finished checkpoint: {TEACHER}, trained first")
  assert not workdir.exists()
  assert os.listdir(tmp_path / "teacher") == ["checkpoints"]


def test_only_training_needs_the_stages_a_self_forcing_run_starts_from(tmp_path):
  """A trained Self Forcing run is sampled and evaluated from its own checkpoints: with its
  teacher's and student's workdirs moved away (or unset) its experiment still builds. Training
  refuses them in one line before its workdir is made."""
  config = bouncing_sf.get_config("test")
  config.forcing.teacher_workdir = str(tmp_path / "moved_away")
  config.forcing.generator_workdir = None
  exp = experiment.build(config)
  with pytest.raises(ConfigError) as error:
    trainer.train(exp, str(tmp_path / "run"))
  assert str(error.value).startswith(
      f"config.forcing.teacher_workdir='{tmp_path / 'moved_away'}' is invalid: no such directory")
  assert not (tmp_path / "run").exists()

def test_evaluating_the_teacher_says_its_figures_compare_unrelated_videos(tmp_path, capsys):
  """The bidirectional teacher samples from no context and no conditioning: its evaluation's
  per-clip figures compared unrelated videos without a word."""
  exp = experiment.build(bouncing_sf.get_config("teacher,test"))
  run.evaluate(exp, experiment.init_params(exp, jax.random.key(0)), str(tmp_path), None)
  note = ("note: sample.context_frames=0 and the model reads no conditioning: each sample"
          " continues nothing")
  assert note in capsys.readouterr().out
  assert note in (tmp_path / "eval.txt").read_text()

def test_a_routed_generator_trains_against_its_dense_teacher_and_logs_its_routing(
    teacher_workdir, tmp_path):
  """Self Forcing with model.routing_top_k passed validation, then stopped with a traceback
  while tracing its first step: the teacher and critic, which score whole videos
  bidirectionally, were routed as the generator is; and the routing histogram read the
  generator/critic state's whole parameters as one model's."""
  config = _self_forcing_config(teacher_workdir, 1, "test")
  config.model.routing_top_k = 1
  exp = experiment.build(config)
  assert exp.model.routing_top_k == 1 and exp.score_model.routing_top_k == 0
  trainer.train(exp, str(tmp_path / "run"))
  assert [r["step"] for r in _logged(tmp_path / "run")] == [1]
  assert os.listdir(tmp_path / "run" / "tensorboard")
