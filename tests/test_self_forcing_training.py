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

from videoar import base_config, experiment, trainer
from videoar.eval import run

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
    keys = ("step", "loss", "critic_loss", "grad_norm")
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
