"""The training side: overfitting, checkpoints, resume, config validation, the CLI."""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ml_collections

from videoar import errors, experiment, media, trainer, validate
from videoar.data import array_record, pipeline
from videoar.eval import long_horizon, run
from videoar.diffusion import flow
from videoar.forcing import common, teacher
from videoar.models import dit
from videoar.train import checkpoint as checkpoint_lib
from videoar.train import state as state_lib
from videoar.train import step as step_lib
from videoar.train import workdir as workdir_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import bouncing_tiny  # noqa: E402


def tiny_config(**overrides):
  config = bouncing_tiny.get_config("test")
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_tiny_model_overfits_one_batch():
  config = tiny_config(**{"model.width": 64, "model.depth": 2, "optim.learning_rate": 3e-3,
                          "optim.warmup_steps": 10, "optim.weight_decay": 0.0,
                          "train.num_steps": 300})
  exp = experiment.build(config)
  batch = experiment.model_inputs(pipeline.train_batches(
      exp.source, batch_size=2, num_frames=4, seed=0)[0])
  fixed = jax.random.key(7)

  def loss_fn(params, batch, rng, step):
    del rng, step  # the same noise and times every step: the batch can be memorised
    return teacher.loss_fn(exp.model, params, batch, fixed, chunk=1, time_shift=1.0,
                           cond_drop_prob=0.0)

  optimizer = state_lib.make_optimizer(config)
  state = state_lib.create(experiment.init_params(exp, jax.random.key(0)), optimizer)
  train_step = jax.jit(functools.partial(
      step_lib.train_step, loss_fn=loss_fn, optimizer=optimizer,
      schedule=state_lib.learning_rate_schedule(config), ema_decay=0.9), donate_argnums=0)
  losses = []
  for _ in range(300):
    state, metrics = train_step(state, batch, fixed)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_ema_follows_its_ramped_recurrence_and_each_step_draws_from_its_own_key():
  """Three steps of step_lib.train_step: the EMA is e <- d_s e + (1 - d_s) p_{s+1} with
  d_s = min(decay, (1 + s) / (10 + s)), from e = p_0; step s's randomness is fold_in(rng, s)
  (a resumed run draws what an uninterrupted one would, and no two steps draw alike)."""
  optimizer, decay, rng = optax.sgd(0.1), 0.95, jax.random.key(7)
  state = state_lib.create({"w": jnp.array([1.0, -2.0, 0.5])}, optimizer)
  loss_fn = lambda params, batch, rng, step: (
      jnp.sum(jnp.square(params["w"])), {"draw": jax.random.uniform(rng)})
  step = jax.jit(lambda state: step_lib.train_step(
      state, None, rng, loss_fn=loss_fn, optimizer=optimizer, schedule=lambda s: 0.1,
      ema_decay=decay))
  ema = np.asarray(state.params["w"])
  draws = []
  for s in range(3):
    state, metrics = step(state)
    d = min(decay, (1 + s) / (10 + s))
    ema = d * ema + (1 - d) * np.asarray(state.params["w"])
    np.testing.assert_allclose(state.ema_params["w"], ema, rtol=1e-6)
    draws.append(float(metrics["draw"]))
    assert draws[-1] == float(jax.random.uniform(jax.random.fold_in(rng, s)))
  assert len(set(draws)) == 3


def test_checkpoint_round_trips(tmp_path):
  config = tiny_config()
  exp = experiment.build(config)
  optimizer = state_lib.make_optimizer(config)
  state = state_lib.create(experiment.init_params(exp, jax.random.key(3)), optimizer)
  state = state.replace(step=jnp.asarray(5, jnp.int32),
                        ema_params=jax.tree.map(lambda p: p + 1.0, state.ema_params))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), keep=2)
  ckpt.save(state)
  ckpt.close()
  fresh = state_lib.create(experiment.init_params(exp, jax.random.key(4)), optimizer)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), keep=2)
  restored = ckpt.restore_latest(fresh)
  ckpt.close()
  assert int(restored.step) == 5
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resumed_run_logs_the_same_losses_as_an_uninterrupted_run(tmp_path):
  config = tiny_config(**{"train.num_steps": 4, "train.log_every": 1, "train.checkpoint_every": 2})
  trainer.train(experiment.build(config), str(tmp_path / "straight"))
  half = tiny_config(**{"train.num_steps": 2, "train.log_every": 1, "train.checkpoint_every": 2})
  trainer.train(experiment.build(half), str(tmp_path / "resumed"))
  trainer.train(experiment.build(config), str(tmp_path / "resumed"))

  def losses(run):
    with open(tmp_path / run / "metrics.jsonl") as f:
      return {r["step"]: r["loss"] for r in map(json.loads, f)}

  assert losses("straight") == losses("resumed")
  assert sorted(losses("resumed")) == [1, 2, 3, 4]


def test_training_on_a_damaged_run_record_is_one_line_with_the_trainers_advice(tmp_path):
  """RunRecord.load's line is a reader's ("restore it from a copy"); training, which would write
  the workdir, adds its own way on."""
  (tmp_path / "run.json").write_text('{"config": ')
  with pytest.raises(workdir_lib.RunRefused) as refused:
    trainer.train(experiment.build(tiny_config()), str(tmp_path))
  assert str(refused.value).startswith(f"{tmp_path}/run.json is not valid JSON (")
  assert str(refused.value).endswith("): restore it from a copy, or use a new --workdir")
  assert (tmp_path / "run.json").read_text() == '{"config": '
  assert sorted(os.listdir(tmp_path)) == [".lock", "run.json"]  # the lock file, emptied


def test_evaluation_while_training_logs_the_ema_weights_segment_metrics(tmp_path, monkeypatch):
  """eval.every: metrics.jsonl gets the segment metrics at those steps and the last, computed on
  the weights the checkpoint's EMA holds (the same figures as evaluating it afterwards), and
  tensorboard gets the strip. The logged steps_per_s is the training's rate
  (eval.learning_curve adds it up to minutes of training): the log window after an evaluation
  does not count the evaluation's seconds."""
  evaluation_seconds, evaluate = 3.0, run.DuringTraining.__call__

  def slow_evaluate(self, params):
    time.sleep(evaluation_seconds)
    return evaluate(self, params)

  monkeypatch.setattr(run.DuringTraining, "__call__", slow_evaluate)
  config = tiny_config(**{"train.num_steps": 4, "train.log_every": 1, "eval.every": 3,
                          "eval.during_training_clips": 2})
  exp = experiment.build(config)
  trainer.train(exp, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  logged = {r["step"]: r for r in records if "eval/lost/0-7" in r}
  assert sorted(logged) == [3, 4]
  rate = {r["step"]: r["steps_per_s"] for r in records if "steps_per_s" in r}
  assert 1.0 / rate[4] < evaluation_seconds / 2, rate  # the window after step 3's evaluation
  monkeypatch.undo()
  scalars, strip, videos = run.DuringTraining(exp)(
      experiment.restore_params(exp, str(tmp_path), True))
  assert set(scalars) == {key[len("eval/"):] for key in logged[4] if key != "step"}
  for key, value in scalars.items():
    expected = None if np.isnan(value) else pytest.approx(value, rel=1e-5)  # strict JSON: null
    assert logged[4][f"eval/{key}"] == expected, key
  assert strip.ndim == 3 and strip.shape[-1] == 3
  assert videos.shape == (2, 2 + 3 * 8, 32, 64, 3)  # clips, context + 3x8 frames, truth | model
  events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").iterdir())
  assert b"eval/strip" in events and b"eval/videos" in events and b"eval/lost/16-23" in events


BAD_CONFIGS = [
    ({"model.patch": 12}, "config.model.patch=12"),
    ({"forcing.chunk": 3}, "config.forcing.chunk=3"),
    ({"forcing.paradigm": "magic"}, "config.forcing.paradigm='magic'"),
    ({"data.source": "nowhere"}, "config.data.source='nowhere'"),
    ({"model.num_heads": 3}, "config.model.num_heads=3"),
    ({"sample.context_frames": 9}, "config.sample.context_frames=9"),
    ({"train.num_steps": 0}, "config.train.num_steps=0"),
    ({"model.attention_impl": "fast"}, "config.model.attention_impl='fast'"),
    ({"model.text_dim": -1}, "config.model.text_dim=-1"),
    ({"model.prediction": "residual", "model.previous_frame_input": False},
     "config.model.prediction='residual'"),
    ({"model.prediction": "warp", "model.previous_frame_input": False},
     "config.model.prediction='warp'"),
    ({"model.prediction": "warp", "model.warp_sigma": -1.0}, "config.model.warp_sigma=-1.0"),
    ({"model.prediction": "residual", "model.warp_residual": False},
     "config.model.warp_residual=False"),
    ({"forcing.loss_weighting": "snr"}, "config.forcing.loss_weighting='snr'"),
    ({"eval.every": -1}, "config.eval.every=-1"),
    ({"forcing.resample_mode": "parallel", "forcing.history_time_input": True},
     "config.forcing.history_time_input=True"),
    ({"sample.history_time": 0.2}, "config.sample.history_time=0.2"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_config_raises_naming_the_key(overrides, message):
  with pytest.raises(errors.ConfigError) as error:
    experiment.build(tiny_config(**overrides))
  assert str(error.value).startswith(message)
  assert "\n" not in str(error.value)


# Values at the edge of an allowed range, each refused with the line its own check writes (a
# later check naming the same key would hide a range that admits the edge).
EDGE_CONFIGS = [
    ({"sample.context_frames": 8}, "config.sample.context_frames=8",
     "must be in [0, data.num_frames=8)"),
    ({"sample.history_time": 1.0, "forcing.history_time_input": True},
     "config.sample.history_time=1.0", "must be in [0, 1)"),
    ({"sample.guidance_interval": (0.5, 0.5)}, "config.sample.guidance_interval=(0.5, 0.5)",
     "0 <= low < high <= 1"),
    ({"model.num_heads": 8}, "config.model.num_heads=8", "fewer than 8 channels a head"),
    ({"sample.guidance_interval": (float("nan"), 1.0)},
     "config.sample.guidance_interval=(nan, 1.0)", "must be finite"),
]


@pytest.mark.parametrize("overrides,key,allowed", EDGE_CONFIGS, ids=[k for _, k, _ in EDGE_CONFIGS])
def test_values_at_the_edge_of_their_range_are_refused_by_their_own_check(overrides, key, allowed):
  """Guards against a range check that admits its edge: context_frames equal to
  data.num_frames (no frame left to generate), history_time 1 (a history of pure noise), a
  guidance interval (t, t) (guiding nothing), width / num_heads = 4 at width 32 and 8 heads (too
  few channels for the 3D rotary embedding), and against a finite check that looks at a
  tuple-valued key as a whole rather than at its elements (a NaN inside the interval)."""
  config = tiny_config(**overrides)
  assert config.model.width == 32  # the head-dim case: 32 / 8 heads = 4 channels a head
  with pytest.raises(errors.ConfigError) as error:
    validate.validate(config)
  message = str(error.value)
  assert message.startswith(f"{key} is invalid: ") and allowed in message, message
  validate.validate(tiny_config())  # the test config itself passes


def test_cli_rejects_a_bad_config_in_one_line_before_compiling(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/bouncing_tiny.py:test",
       f"--workdir={tmp_path}", "--config.model.patch=12"],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert result.returncode != 0
  assert "error: config.model.patch=12 is invalid: must divide the frame size" in result.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_cli_main_job_writes_every_output(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/bouncing_tiny.py:test",
       f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=300,
      cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert result.returncode == 0, result.stderr[-2000:]
  for path in ("metrics.jsonl", "eval.json", "samples/strip.png", "samples/sample_0.mp4"):
    assert os.path.getsize(tmp_path / path) > 0, path
  assert os.listdir(tmp_path / "checkpoints")
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))
  with open(tmp_path / "eval.json") as f:
    tables = json.load(f, parse_constant=pytest.fail)["tables"]  # strict JSON: no NaN, Infinity
  assert set(tables) >= {"model", "model_on_true_history", "copy_last", "background"}
  for method in ("model", "model_on_true_history"):
    assert [row["segment"] for row in tables[method]] == ["0-7", "8-15", "16-23"]
  assert tables["truth"][0]["psnr"] is None  # identical frames: infinite PSNR, no figure
  # Nothing a user would worry about: no traceback, no warning (the progress bar is all).
  for worry in ("Traceback", "Warning", "warning", "Exception", "Event loop is closed"):
    assert worry not in result.stderr, result.stderr[-3000:]


def test_build_rejects_latents_the_patch_does_not_divide(tmp_path):
  """12x12 latents with 8x8 patches: one line before building the model, not a reshape error."""
  rng = np.random.default_rng(0)
  sequences = [{"video": rng.normal(size=(40, 12, 12, 4)).astype(np.float32)} for _ in range(2)]
  array_record.write_sequences(str(tmp_path / "data"), sequences)
  config = tiny_config(**{"data.source": "array_record", "data.path": str(tmp_path / "data"),
                          "data.options": ml_collections.ConfigDict(dict(eval_fraction=0.5))})
  with pytest.raises(errors.ConfigError) as error:
    experiment.build(config)
  assert str(error.value) == ("config.model.patch=8 is invalid: must divide the frame size 12x12"
                              " of data.source='array_record'")


def test_build_rejects_conditioning_that_the_source_does_not_give():
  with pytest.raises(errors.ConfigError) as error:
    experiment.build(tiny_config(**{"model.text_dim": 4}))
  assert str(error.value).startswith("config.model.text_dim=4 is invalid: data.source='bouncing'"
                                     " gives no 'text'")


@pytest.mark.parametrize("prediction", ["velocity", "data"])
def test_data_loss_weighting_is_the_clean_frame_error(prediction):
  """flow_loss(..., "data") is the squared error of the clean frame x_t - t v that the network's
  velocity implies, for either output, and "velocity" the plain velocity error."""
  keys = jax.random.split(jax.random.key(0), 3)
  video, eps = (jax.random.normal(k, (2, 3, 4, 4, 3)) for k in keys[:2])
  t_bf = jnp.array([[0.05, 0.3, 0.9], [0.5, 0.7, 1.0]])  # at or above the data floor
  x_t = flow.interpolate(video, eps, t_bf)
  clean_guess = video + 0.1 * jax.random.normal(keys[2], video.shape)
  velocity = flow.velocity_from_prediction(prediction, clean_guess, x_t, t_bf) if (
      prediction == "data") else eps - clean_guess
  implied = flow.data_from_velocity(prediction, velocity, x_t, t_bf)
  np.testing.assert_allclose(common.flow_loss(velocity, video, eps, t_bf, "data"),
                             jnp.mean(jnp.square(implied - video)), rtol=1e-5)
  np.testing.assert_allclose(common.flow_loss(velocity, video, eps, t_bf, "velocity"),
                             jnp.mean(jnp.square(velocity - (eps - video))), rtol=1e-5)


def test_conditioning_dropout_replaces_whole_entries_with_their_null():
  """Per video for labels and text, per frame for actions; nothing else changes."""
  model = dit.CausalDiT(num_classes=3, num_actions=4, text_dim=5)
  rng = np.random.default_rng(0)
  batch = {"label": jnp.asarray(rng.integers(0, 3, 64)),
           "actions": jnp.asarray(rng.integers(0, 4, (64, 6))),
           "text": jnp.asarray(rng.normal(size=(64, 3, 5)) + 10.0)}
  kept = common.conditioning(model, batch, jax.random.key(0), 0.0)
  for key, value in model.conditioning(batch).items():
    np.testing.assert_array_equal(kept[key], value)
  dropped = common.conditioning(model, batch, jax.random.key(0), 0.5)
  labels_null = np.asarray(dropped["labels_b"]) == 3
  actions_null = np.asarray(dropped["actions_bf"]) == 4
  text_null = np.all(np.asarray(dropped["text_bld"]) == 0.0, axis=(1, 2))
  text_kept = np.all(np.asarray(dropped["text_bld"]) == np.asarray(batch["text"]), axis=(1, 2))
  assert np.all(text_null | text_kept), "text is dropped for a whole video or not at all"
  for null in (labels_null, text_null, actions_null.ravel()):
    assert 0.3 < null.mean() < 0.7
  assert 0 < actions_null.all(axis=1).sum() < actions_null.any(axis=1).sum(), "per frame"
  np.testing.assert_array_equal(np.asarray(dropped["labels_b"])[~labels_null],
                                np.asarray(batch["label"])[~labels_null])


def test_trains_and_samples_with_text_embeddings_from_array_record(tmp_path):
  """Text embeddings written with the frames reach the model's cross-attention in training,
  and sampling conditions on them."""
  rng = np.random.default_rng(0)
  bouncing = pipeline.make_source("bouncing", size=32, num_objects=2)
  sequences = [{"video": bouncing.clip(0, i, 40)["video"],
                "text": rng.normal(size=(3, 6)).astype(np.float32)} for i in range(3)]
  array_record.write_sequences(str(tmp_path / "data"), sequences)
  config = tiny_config(**{
      "data.source": "array_record", "data.path": str(tmp_path / "data"),
      "data.options": ml_collections.ConfigDict(dict(eval_fraction=0.5)),
      "model.text_dim": 6, "sample.length_multiple": 1, "train.num_steps": 4,
      "optim.warmup_steps": 1})
  # Zero-initialised output layers pass no gradient to the blocks until they have moved: four
  # steps with a one-step warmup reach the cross-attention.
  state = trainer.train(experiment.build(config), str(tmp_path / "run"))
  cross_out = state.params["params"]["block_0"]["cross_attn"]["out"]["kernel"]
  assert float(jnp.abs(cross_out).max()) > 0, "no gradient reached the text cross-attention"
  exp = experiment.build(config)
  clips, generated = run.continue_clips(exp, state.params, 2, jax.random.key(0))
  assert clips["text"].shape == (2, 3, 6)
  assert generated.shape == (2, 8, 32, 32, 3) and np.isfinite(generated).all()


def test_samples_of_latents_are_written_as_arrays_not_videos(tmp_path):
  """Frames of 4 channels (VAE latents) have no picture here: `sample` writes them to an .npz,
  where mp4 and PNG would fail."""
  rng = np.random.default_rng(0)
  sequences = [{"video": rng.normal(size=(24, 8, 8, 4)).astype(np.float32)} for _ in range(3)]
  array_record.write_sequences(str(tmp_path / "data"), sequences)
  config = tiny_config(**{
      "data.source": "array_record", "data.path": str(tmp_path / "data"),
      "data.options": ml_collections.ConfigDict(dict(eval_fraction=0.5)),
      "sample.length_multiple": 1, "sample.num_videos": 2})
  exp = experiment.build(config)
  path = run.sample(exp, experiment.init_params(exp, jax.random.key(0)), str(tmp_path))
  assert path.endswith("samples.npz")
  arrays = np.load(path)
  n = config.sample.context_frames + config.data.num_frames
  assert arrays["model"].shape == arrays["truth"].shape == (2, n, 8, 8, 4)
  assert not any(name.endswith((".mp4", ".png")) for name in os.listdir(tmp_path / "samples"))


def contents(folder) -> dict[str, bytes]:
  """{name: bytes} of the files in `folder`."""
  return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_interrupted_sampling_leaves_the_earlier_samples_whole_and_a_finished_one_moves_them(
    tmp_path, monkeypatch):
  """Ctrl-C among the mp4s had left samples/ with some of them and no strip.png, the earlier
  samples already moved to previous/: now the new ones are written beside samples/ and the
  earlier ones move only when the new ones are complete."""
  exp = experiment.build(tiny_config(**{"sample.num_videos": 4}))
  params = experiment.init_params(exp, jax.random.key(0))
  samples = tmp_path / "samples"
  assert run.sample(exp, params, str(tmp_path)) == str(samples / "strip.png")
  earlier = contents(samples)
  assert sorted(earlier) == [f"sample_{i}.mp4" for i in range(4)] + ["strip.png"]

  write_mp4, written = media.write_mp4, []

  def interrupted_after_two(path, frames):
    if len(written) == 2:
      raise KeyboardInterrupt
    written.append(path)
    write_mp4(path, frames)

  monkeypatch.setattr(media, "write_mp4", interrupted_after_two)
  with pytest.raises(KeyboardInterrupt):
    run.sample(exp, params, str(tmp_path))
  assert len(written) == 2
  assert contents(samples) == earlier
  assert os.listdir(tmp_path) == ["samples"]  # nothing moved aside, no partial folder left

  monkeypatch.undo()
  run.sample(exp, params, str(tmp_path))
  (aside,) = os.listdir(tmp_path / "previous")
  assert contents(tmp_path / "previous" / aside / "samples") == earlier
  assert sorted(os.listdir(samples)) == sorted(earlier)
  assert sorted(os.listdir(tmp_path)) == ["previous", "samples"]


def test_evaluation_records_its_checkpoint_and_an_interrupted_one_leaves_the_earlier_whole(
    tmp_path, monkeypatch):
  """eval.json names the step it is given (the checkpoint the weights came from). An evaluation
  interrupted while writing its files had left a new eval.txt beside no eval.json, the earlier
  evaluation moved away: now it leaves the earlier one in place."""
  exp = experiment.build(tiny_config())
  params = experiment.init_params(exp, jax.random.key(0))
  run.evaluate(exp, params, str(tmp_path), checkpoint_step=7)
  assert json.loads((tmp_path / "eval.json").read_text())["checkpoint_step"] == 7
  names = sorted(workdir_lib.EVAL_OUTPUTS)
  earlier = {name: (tmp_path / name).read_bytes() for name in names}

  def interrupted(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(long_horizon, "plot_per_frame", interrupted)
  with pytest.raises(KeyboardInterrupt):
    run.evaluate(exp, params, str(tmp_path), checkpoint_step=9)
  assert {name: (tmp_path / name).read_bytes() for name in names} == earlier
  assert sorted(os.listdir(tmp_path)) == names

  monkeypatch.undo()
  run.evaluate(exp, params, str(tmp_path), checkpoint_step=9)
  (aside,) = os.listdir(tmp_path / "previous")
  assert contents(tmp_path / "previous" / aside) == earlier
  assert json.loads((tmp_path / "eval.json").read_text())["checkpoint_step"] == 9
  assert sorted(os.listdir(tmp_path)) == [*names, "previous"]


def test_evaluation_names_the_checkpoint_it_restored_not_the_newest_in_the_folder(tmp_path):
  """`--mode=evaluate` names the step its weights were read from: restore_trained's. It listed
  the newest finished step in the folder after the restore, so a save by a run training in the
  same workdir meanwhile was named, though its weights were never read."""
  config = tiny_config()
  exp = experiment.build(config)
  optimizer = state_lib.make_optimizer(config)
  state = state_lib.create(experiment.init_params(exp, jax.random.key(0)), optimizer)
  saved = {}
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=3)
  for step in (3, 7):
    saved[step] = state.replace(step=jnp.asarray(step, jnp.int32),
                                ema_params=jax.tree.map(lambda p, s=step: p + s, state.ema_params))
    checkpointer.save(saved[step])
  checkpointer.close()
  trained = experiment.restore_trained(exp, str(tmp_path), use_ema=True)
  assert trained.step == 7
  for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(saved[7].ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # videoar.main, as `--mode=evaluate` runs it, with a run saving step 9 in the same workdir
  # while the weights are read (in a subprocess: importing videoar.main defines flags that other
  # test modules define too).
  code = f"""
import os, runpy, sys
from videoar.train import checkpoint
restore = checkpoint.Checkpointer.restore_latest
def restore_while_a_run_saves(self, like):
  restored = restore(self, like)
  os.mkdir(os.path.join(self.directory, "9"))  # a finished step, by the folder's listing
  return restored
checkpoint.Checkpointer.restore_latest = restore_while_a_run_saves
sys.argv = ["videoar.main", "--config=configs/bouncing_tiny.py:test", "--workdir={tmp_path}",
            "--mode=evaluate"]
runpy.run_module("videoar.main", run_name="__main__")
"""
  # hugetlb named: videoar.main does not re-execute itself (which would drop the patch).
  env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / "checkpoints" / "9").is_dir()
  assert json.loads((tmp_path / "eval.json").read_text())["checkpoint_step"] == 7


def test_a_run_read_with_data_of_other_frames_names_the_data_not_the_model(tmp_path):
  """A run trained on 3-channel frames, sampled with a config of grey ones and the same model
  keys: the checkpoint's restore said "written for another model or optimizer ... use a new
  --workdir, or restore the config the run was started with"; the run.json says what differs."""
  config = tiny_config()
  exp = experiment.build(config)
  state = state_lib.create(experiment.init_params(exp, jax.random.key(0)),
                           state_lib.make_optimizer(config))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=1)
  checkpointer.save(state)
  checkpointer.close()
  grey = tiny_config(**{"data.source": "moving_mnist"})
  grey.data.options = ml_collections.ConfigDict()
  with pytest.raises(checkpoint_lib.CheckpointMismatch, match="written for another model"):
    experiment.restore_trained(experiment.build(grey), str(tmp_path), use_ema=True)  # no record
  workdir_lib.RunRecord(config.to_dict(), {}).save(str(tmp_path))
  with pytest.raises(checkpoint_lib.CheckpointMismatch) as error:
    experiment.restore_trained(experiment.build(grey), str(tmp_path), use_ema=True)
  assert str(error.value) == (
      f"{tmp_path} was trained on other data (data.source bouncing -> moving_mnist: its run.json"
      " -> this config), whose frames its weights do not fit: pass the data it was trained with")

def test_a_step_that_does_not_fit_in_memory_is_one_line_naming_the_keys(tmp_path, monkeypatch):
  # Was a 25-line JaxRuntimeError traceback from block_until_ready. Steps run asynchronously, so
  # the allocation fails where a step's result is awaited: the fake step's metrics raise there.
  config = tiny_config(**{"train.num_steps": 3, "eval.every": 0})
  exp = experiment.build(config)
  make = experiment.make_train_step

  def failing(exp, layout=None):
    real = make(exp, layout)

    def step(state, batch, rng):
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 38004632912"
                                       " bytes.")
    return dataclasses.replace(real, step=step)

  monkeypatch.setattr(experiment, "make_train_step", failing)
  with pytest.raises(errors.UserError) as raised:
    trainer.train(exp, str(tmp_path / "run"))
  assert str(raised.value) == (
      "the train step does not fit in this machine's memory (JaxRuntimeError: RESOURCE_EXHAUSTED:"
      " Out of memory allocating 38004632912 bytes.); lower data.batch_size or data.num_frames,"
      " or the model's size (model.width, model.depth), or shard it (mesh); the newest checkpoint"
      " is none")


@pytest.mark.slow
def test_a_step_larger_than_the_memory_limit_is_one_line_from_the_cli(tmp_path):
  # The real allocation failure, under an address-space limit (about 45 s on 2 cores).
  import resource
  limit = 3 * 10**9
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/bouncing_tiny.py:test",
       f"--workdir={tmp_path / 'run'}", "--mode=train", "--config.data.num_frames=512",
       "--config.model.fine_patch=0"],
      capture_output=True, text=True, timeout=600,
      cwd=os.path.join(os.path.dirname(__file__), ".."),
      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: the train step does not fit in this machine's memory (JaxRuntimeError:"
      " RESOURCE_EXHAUSTED: Out of memory allocating")
