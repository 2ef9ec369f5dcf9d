"""Every bad input at the CLI stops before training with one line naming what is wrong, and
leaves the workdir as it was: the rows of docs/reliability.md (the other rows are tests of the
library entry points, named there)."""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = "--config=configs/bouncing_tiny.py:test"


def run_cli(workdir, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", "videoar.main", f"--workdir={workdir}", *args],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def last_line(result) -> str:
  return result.stderr.strip().splitlines()[-1]


# (what the user did, the arguments, the line the CLI prints)
BAD_INPUTS = [
    ("override of a key the config lacks", [TINY, "--config.data.pth=/tmp/videos"],
     "error: --config.data.pth: the config has no such key; did you mean config.data.path?"
     " (every key is in videoar/base_config.py; data.options holds the data source's options)"),
    ("a data option the source lacks", [TINY, "--config.data.options.sizee=3"],
     "error: --config.data.options.sizee: the config has no such key; did you mean"
     " config.data.options.size? (every key is in videoar/base_config.py; data.options holds the"
     " data source's options)"),
    ("a file path on a procedural source", [TINY, "--config.data.path=/tmp/videos"],
     "error: config.data.path='/tmp/videos' is invalid: data.source='bouncing' reads no files:"
     " leave data.path unset"),
    ("options of another source", [TINY, "--config.data.source=moving_mnist"],
     "error: config.data.options.num_objects=2 is invalid: data.source='moving_mnist' takes only:"
     " digit_size, max_speed, min_speed, num_digits, size"),
    ("a value of the wrong type", [TINY, "--config.model.width=wide"],
     "error: flag --config.model.width=wide: 'wide' is not an integer"),
    ("a mode that is not one (no did-you-mean before)", [TINY, "--mode=eval"],
     "error: flag --mode=eval: value should be one of all, train, sample, evaluate (did you mean"
     " evaluate?)"),
    ("a value for a group of keys (was ml_collections' 'Failed to parse ... as a ConfigDict')",
     [TINY, "--config.model=3"],
     "error: flag --config.model=3: config.model is a group of keys, not a value: set one of"
     " them, --config.model.KEY=VALUE (every key is in videoar/base_config.py)"),
    ("a number of the wrong type", [TINY, "--config.sample.guidance_scale=high"],
     "error: flag --config.sample.guidance_scale=high: 'high' is not a number"),
    ("a boolean of the wrong type", [TINY, "--config.eval.fvd=maybe"],
     "error: flag --config.eval.fvd=maybe: 'maybe' is not a boolean (true or false)"),
    ("an unknown config variant", ["--config=configs/bouncing_tiny.py:huge"],
     "error: flag --config=configs/bouncing_tiny.py:huge: ValueError: config variant 'huge' is"
     " unknown; allowed: patch4, test"),
    ("a misspelt config variant", ["--config=configs/bouncing_rf.py:moving_mnsit,test"],
     "error: flag --config=configs/bouncing_rf.py:moving_mnsit,test: ValueError: config variant"
     " 'moving_mnsit' is unknown (did you mean moving_mnist?); allowed: noise_augmentation,"
     " parallel, autoregressive, teacher_forcing, routed, window, default_model, occluded,"
     " moving_mnist, test"),
    ("two worlds' variants", ["--config=configs/bouncing_rf.py:occluded,moving_mnist,test"],
     "error: flag --config=configs/bouncing_rf.py:occluded,moving_mnist,test: ValueError: config"
     " variants occluded and moving_mnist are two worlds; name one"),
    ("a config file that does not exist", ["--config=configs/bouncing_tinny.py"],
     "error: --config: [Errno 2] No such file or directory: 'configs/bouncing_tinny.py'"),
    ("a patch that does not divide the source's frames", [TINY, "--config.data.options.size=36"],
     "error: config.model.patch=8 is invalid: must divide the frame size 36x36 of"
     " data.source='bouncing'"),
    ("a source option out of range", [TINY, "--config.data.options.num_objects=0"],
     "error: config.data: BouncingWorld.num_objects=0 must be in [1, len(palette)=6] so every"
     " object gets its own colour"),
    ("an unknown rematerialisation policy", [TINY, "--config.model.remat_policy=dots"],
     "error: config.model.remat_policy='dots' is invalid: allowed: none, nothing_saveable,"
     " everything_saveable, dots_saveable, dots_with_no_batch_dims_saveable"),
    ("the Pallas kernel with routing", [TINY, "--config.model.attention_impl=pallas",
                                        "--config.model.routing_top_k=2"],
     "error: config.model.attention_impl='pallas' is invalid: has no routed kernel: with"
     " model.routing_top_k > 0 use auto or blocked"),
    ("a fine decoder patch that does not divide the patch", [TINY, "--config.model.fine_patch=3"],
     "error: config.model.fine_patch=3 is invalid: must be 0 (off) or a divisor of"
     " model.patch=8"),
    ("a chunk that does not divide the clip", [TINY, "--config.forcing.chunk=3"],
     "error: config.forcing.chunk=3 is invalid: must divide data.num_frames=8"),
    ("a restart without weights", [TINY, "--restart_from_weights"],
     "error: --restart_from_weights: {w}/checkpoints holds no finished checkpoint to take the"
     " weights from; without the flag the run trains from scratch"),
    ("a key the paradigm does not read", [TINY, "--config.forcing.paradigm=teacher_forcing"],
     "error: config.forcing.resample_mode='noise_augmentation' is invalid: paradigm"
     " 'teacher_forcing' does not"
     " read it (it reads chunk, cond_drop_prob, history_drop_prob, history_window,"
     " loss_weighting, sink_frames, time_shift)"),
    ("history guidance on a model that never learnt the null history",
     [TINY, "--config.forcing.history_drop_prob=0.0"],
     "error: config.sample.guide_history=True is invalid: needs a model trained without history"
     " some of the time: forcing.history_drop_prob > 0"),
    ("a guidance interval outside the times",
     [TINY, "--config.sample.guidance_interval=(0.5, 2.0)"],
     "error: config.sample.guidance_interval=(0.5, 2.0) is invalid: must be (low, high) with"
     " 0 <= low < high <= 1"),
    ("a guidance interval of three times",
     [TINY, "--config.sample.guidance_interval=(0.1, 0.5, 1.0)"],
     "error: config.sample.guidance_interval=(0.1, 0.5, 1.0) is invalid: must be (low, high) with"
     " 0 <= low < high <= 1"),
    ("a sink without a sliding window", [TINY, "--config.forcing.sink_frames=2"],
     "error: config.forcing.sink_frames=2 is invalid: needs forcing.history_window > 0 (a sink is"
     " what a sliding window keeps besides the recent frames)"),
    ("Adam's b2 = 1 (bias correction 0/0 at step 1)", [TINY, "--config.optim.b2=1.0"],
     "error: config.optim.b2=1.0 is invalid: must be in [0, 1)"),
    ("a retention that would delete every checkpoint", [TINY, "--config.train.keep_checkpoints=0"],
     "error: config.train.keep_checkpoints=0 is invalid: must be an integer >= 1"),
    ("a negative seed (was an error naming config.data, not the seed)", [TINY, "--config.seed=-1"],
     "error: config.seed=-1 is invalid: must be an integer in [0, 2**32)"),
    ("a seed of 2**63 (was a 35-line OverflowError from jax.random.key after the workdir and its"
     " lock were made)", [TINY, "--config.seed=9223372036854775808"],
     "error: config.seed=9223372036854775808 is invalid: must be an integer in [0, 2**32)"),
    ("a seed of 2**32 (jax.random.key keeps its low 32 bits: it trained as seed 0; grain's"
     " shuffle of a recorded source refuses it)", [TINY, "--config.seed=4294967296"],
     "error: config.seed=4294967296 is invalid: must be an integer in [0, 2**32)"),
    ("a bool flag's value as a word of its own (was the flag set and the word ignored: the run"
     " restarted from its weights)", [TINY, "--restart_from_weights", "false"],
     "error: unexpected argument 'false' (flags are --name=value; a bool flag is --name or"
     " --noname)"),
    ("a stray word (was ignored)", [TINY, "extra"],
     "error: unexpected argument 'extra' (flags are --name=value; a bool flag is --name or"
     " --noname)"),
    ("an Atari game ale-py does not ship (was a traceback from the emulator)",
     ["--config=configs/atari_pong.py:test", "--config.data.options.game=pongg"],
     "error: config.data: AtariEpisodes.game='pongg' is not a ROM ale-py ships (pong, breakout,"
     " ...: ale_py.roms.get_all_rom_ids())"),
    ("a negative retention", [TINY, "--config.train.keep_checkpoints=-1"],
     "error: config.train.keep_checkpoints=-1 is invalid: must be an integer >= 1"),
    ("an MLP of no width (was a ZeroDivisionError after the model was built)",
     [TINY, "--config.model.mlp_ratio=0.01"],
     "error: config.model.mlp_ratio=0.01 is invalid: leaves the MLP of a block of width 32 no"
     " unit: int(width x mlp_ratio) must be >= 1"),
    ("a sampling time shift of 0 (was NaN samples and exit status 0)",
     [TINY, "--config.sample.time_shift=0"],
     "error: config.sample.time_shift=0.0 is invalid: must be > 0"),
    ("a negative guidance scale", [TINY, "--config.sample.guidance_scale=-2"],
     "error: config.sample.guidance_scale=-2.0 is invalid: must be >= 0 (1 is no guidance)"),
    ("guidance with nothing to guide on (the sampler ran unguided without a word)",
     [TINY, "--config.sample.guide_history=False"],
     "error: config.sample.guidance_scale=3.0 is invalid: guides nothing: the model is conditioned"
     " on nothing (model.num_classes, num_actions and text_dim are 0) and sample.guide_history is"
     " off; set 1, or guide on the history"),
    ("a width the heads leave the decoder no head dim for (named only fine_width before)",
     [TINY, "--config.model.width=30"],
     "error: config.model.fine_width=32 is invalid: must be a multiple of the trunk's head dim 15"
     " (model.width=30 / model.num_heads=2)"),
    ("an infinite learning rate (was a traceback from the run record, after the model was built)",
     [TINY, "--config.optim.learning_rate=inf"],
     "error: config.optim.learning_rate=inf is invalid: must be finite"),
    ("a NaN MLP ratio (was a ValueError from int() in validation)",
     [TINY, "--config.model.mlp_ratio=nan"], "error: config.model.mlp_ratio=nan is invalid: must be"
     " finite"),
    # Validated before the stages are looked for: no trained teacher or generator needed.
    ("a Self Forcing warp shift of 0 (was 'step 1 is not finite' after an 11 s compile, the"
     " workdir made)", ["--config=configs/bouncing_sf.py:test", "--config.forcing.warp_shift=0.0"],
     "error: config.forcing.warp_shift=0.0 is invalid: must be > 0 (1 leaves the times"
     " unwarped)"),
    ("a Self Forcing score shift of 0 (was every score time at the clamp)",
     ["--config=configs/bouncing_sf.py:test", "--config.forcing.score_shift=0.0"],
     "error: config.forcing.score_shift=0.0 is invalid: must be > 0 (1 leaves the times"
     " unwarped)"),
    ("a negative guidance of Self Forcing's real score (was accepted)",
     ["--config=configs/bouncing_sf.py:test", "--config.forcing.real_guidance=-5.0"],
     "error: config.forcing.real_guidance=-5.0 is invalid: must be >= 0 (0 is no guidance: the"
     " teacher's x0 is cond + g (cond - uncond))"),
    ("a score clamp of one time (was a ValueError unpacking it)",
     ["--config=configs/bouncing_sf.py:test", "--config.forcing.score_clamp=(0.5,)"],
     "error: config.forcing.score_clamp=(0.5,) is invalid: must be (low, high) with 0 <= low <"
     " high <= 1"),
    ("--distributed with no cluster to join (was a ValueError from jax.distributed)",
     [TINY, "--distributed"],
     "error: --distributed: coordinator_address should be defined: run under Cloud TPU, Slurm,"
     " Open MPI or Kubernetes, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and"
     " JAX_PROCESS_ID"),
    ("--restart_from_weights with a mode that does not train (was silently ignored)",
     [TINY, "--mode=sample", "--restart_from_weights"],
     "error: --restart_from_weights starts a training run: with --mode=sample it would do nothing;"
     " use --mode=train or --mode=all"),
    # Checked by validate against the mesh axes of a fixed size, before the devices are asked for:
    # the same line on 1 device as on the 2 or 4 the axes want.
    ("heads the tensor axis cannot split (was an IndivisibleError traceback after the workdir"
     " and its lock were made)",
     [TINY, "--config.mesh.data=1", "--config.mesh.tensor=2", "--config.model.num_heads=1"],
     "error: config.mesh.tensor=2 is invalid: must divide model.num_heads=1 (the rule ('heads',"
     " 'tensor') splits it)"),
    ("an MLP width the tensor axis cannot split (was an IndivisibleError traceback)",
     [TINY, "--config.mesh.data=1", "--config.mesh.tensor=2", "--config.model.mlp_ratio=1.1"],
     "error: config.mesh.tensor=2 is invalid: must divide the MLP width int(model.width x"
     " model.mlp_ratio)=35 (the rule ('mlp', 'tensor') splits it)"),
    ("a width the fsdp axis cannot split (was an IndivisibleError traceback)",
     [TINY, "--config.mesh.fsdp=4", "--config.model.width=42", "--config.model.num_heads=3",
      "--config.model.fine_width=42"],
     "error: config.mesh.fsdp=4 is invalid: must divide model.width=42 (the rule ('embed',"
     " ('fsdp', 'sequence')) splits it)"),
    ("an odd head dim (was a 63-line TypeError from the rotary embedding)",
     [TINY, "--config.model.width=33", "--config.model.num_heads=3", "--config.model.fine_patch=0"],
     "error: config.model.num_heads=3 is invalid: leaves an odd head dim model.width=33 /"
     " model.num_heads=3 = 11: the rotary embedding turns pairs of channels"),
    ("a mesh axis of size 0 (was said after the workdir and its lock were made)",
     [TINY, "--config.mesh.data=0"],
     "error: config.mesh.data=0 is invalid: must be an integer >= 1, or -1 for the devices left"
     " over"),
    ("a negative mesh axis (was said after the workdir was made)",
     [TINY, "--config.mesh.tensor=-2"],
     "error: config.mesh.tensor=-2 is invalid: must be an integer >= 1, or -1 for the devices"
     " left over"),
    ("a rule naming no mesh axis (was said after the workdir was made)",
     [TINY, "--config.mesh.rules=(('batch', 'model'),)"],
     "error: config.mesh.rules=('batch', 'model') is invalid: names model; the mesh axes are data,"
     " fsdp, sequence, tensor"),
    ("a batch the data axis cannot split (was said after the workdir was made)",
     [TINY, "--config.mesh.data=2", "--config.data.batch_size=3"],
     "error: config.data.batch_size=3 is invalid: must split evenly over the 2 batch shards of the"
     " mesh (mesh.data=2)"),
    ("a misspelt logical name in a rule (was silently ignored)",
     [TINY, "--config.mesh.rules=(('mlpp', 'tensor'),)"],
     "error: config.mesh.rules=('mlpp', 'tensor') is invalid: the model has no logical axis"
     " 'mlpp' (did you mean 'mlp'?); its logical axes are batch, frame, token, activation_embed,"
     " embed, mlp, modulation, heads, head_dim, qkv, kv, patch, time_features, cond, vocab,"
     " text_features, fine, layers, register, register_embed, logit"),
    ("a second rule for a logical name (was silently ignored)",
     [TINY, "--config.mesh.rules=(('batch', 'data'), ('batch', 'fsdp'))"],
     "error: config.mesh.rules=('batch', 'fsdp') is invalid: a second rule for 'batch', which"
     " flax would ignore: give each logical name one rule"),
    ("a mesh axis twice in a rule (was a 34-line DuplicateSpecError)",
     [TINY, "--config.mesh.rules=(('batch', ('data', 'data')),)"],
     "error: config.mesh.rules=('batch', ('data', 'data')) is invalid: names mesh axis data twice:"
     " an axis splits a dimension once"),
    ("a rule without its outer tuple (was a 31-line ValueError)",
     [TINY, "--config.mesh.rules=('batch', 'data')"],
     "error: config.mesh.rules=('batch', 'data') is invalid: must be a tuple of (logical name,"
     " mesh axes) pairs, the mesh axes one axis, a tuple of axes or None: e.g. (('batch',"
     " ('data', 'fsdp')), ('mlp', 'tensor'))"),
    ("no rule splitting the batch over a data axis (was silently replicated)",
     [TINY, "--config.mesh.data=2", "--config.mesh.rules=()"],
     "error: config.mesh.data=2 is invalid: must split 'batch', which mesh.rules do not give it"
     " (e.g. ('batch', ('data', 'fsdp'))): every data shard would compute the same step"),
]


@pytest.mark.parametrize("args,line", [row[1:] for row in BAD_INPUTS],
                         ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_one_line_and_touches_nothing(tmp_path, args, line):
  workdir = tmp_path / "run"
  result = run_cli(workdir, "--mode=train", *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == line.format(w=workdir)
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_a_sample_longer_than_host_memory_can_hold_is_one_line_before_anything_runs(tmp_path):
  # Was killed for memory without a word, after the run had trained (--mode=all).
  workdir = tmp_path / "run"
  result = run_cli(workdir, TINY, "--mode=all", "--config.sample.length_multiple=10000000")
  assert result.returncode == 2, result.stderr[-2000:]
  # 2 clips x (2 context + 2 x 80,000,000) frames x 32x32x3 x 4 bytes.
  assert re.fullmatch(
      r"error: config.sample.length_multiple=10000000 is invalid: 2 held-out clips continued by"
      r" 80000000 frames of 32x32x3 need at least 3662.1 GiB \(float32: the clips, the start"
      r" noise and the continuation\), more than this host's \d+\.\d GiB of memory: lower"
      r" sample.length_multiple, or sample.num_videos and eval.num_clips", last_line(result))
  assert not workdir.exists()


def test_the_memory_check_refuses_exactly_what_its_three_arrays_cannot_fit_in():
  from videoar import base_config, validate
  from videoar.errors import ConfigError
  config = base_config.get_config()
  config.data.num_frames, config.sample.length_multiple, config.sample.context_frames = 8, 3, 2
  needed = 4 * (2 + 2 * 24) * (32 * 32 * 3) * 4
  validate._check_held_out_memory(config, 4, (32, 32, 3), memory_bytes=needed)
  with pytest.raises(ConfigError, match="4 held-out clips continued by 24 frames of 32x32x3"):
    validate._check_held_out_memory(config, 4, (32, 32, 3), memory_bytes=needed - 1)


def test_a_workdir_inside_the_data_folder_is_refused(tmp_path):
  """A video folder source reads every video under data.path: a workdir there trained its
  evaluation on the run's own samples, then refused to resume as "a different run" (the
  dataset had grown)."""
  workdir = tmp_path / "videos" / "run"
  (tmp_path / "videos").mkdir()
  result = run_cli(workdir, "--config=configs/video_folder.py:test",
                   f"--config.data.path={tmp_path}/videos/.", "--mode=train")
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == (
      f"error: --workdir={workdir} is inside config.data.path={tmp_path}/videos/.: the run would"
      " write into the folder it reads its data from; choose a workdir outside it")
  assert not workdir.exists()


# (what the config file holds, the line); the file is written to {f}
BAD_CONFIG_FILES = [
    ("from videoar import base_config\ndef get_config():\n  c = base_config.get_config(\n",
     "error: --config: {f}, line 3: SyntaxError: '(' was never closed"),
    ("def get_config():\n  return {'seed': 0}\n",
     "error: --config: get_config() returned a dict; it must return an ml_collections.ConfigDict"
     " (e.g. base_config.get_config())"),
    ("SEED = 0\n", "error: --config: the file defines no get_config(variant='') returning its"
     " config"),
    ("def get_config():\n  return [0]\n",
     "error: --config: get_config() returned a list; it must return an ml_collections.ConfigDict"
     " (e.g. base_config.get_config())"),
    ("def get_config():\n  return base_config.get_config()\n",
     "error: --config: {f}: NameError: name 'base_config' is not defined"),
    # A module beside the config file (was the line without the hint).
    ("import mybase\ndef get_config():\n  return mybase.get_config()\n",
     "error: --config: {f}: ModuleNotFoundError: No module named 'mybase'"
     " (a config file's own folder is not on the import path: import a module of this"
     " repository by its package, e.g. from configs import bouncing_tiny, from the"
     " repository's root)"),
]


@pytest.mark.parametrize("text,line", BAD_CONFIG_FILES,
                         ids=["syntax error", "a dict", "no get_config", "a list", "a NameError",
                              "a module beside it"])
def test_a_config_file_that_cannot_give_a_config_is_one_line(tmp_path, text, line):
  config_file = tmp_path / "my_config.py"
  config_file.write_text(text)
  result = run_cli(tmp_path / "run", f"--config={config_file}", "--mode=train")
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert last_line(result) == line.format(f=config_file)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workdir,line", [
    ("/proc/videoar_test_run", "error: cannot create the workdir /proc/videoar_test_run: No such"
     " file or directory"),
    ("", "error: --workdir is empty: name the run's directory"),
], ids=["cannot be created", "empty"])
def test_a_workdir_that_cannot_be_made_is_one_line(workdir, line):
  result = run_cli(workdir, TINY, "--mode=train")
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert last_line(result) == line


@pytest.mark.parametrize("inside", [False, True], ids=["a file", "under a file"])
def test_a_workdir_that_is_a_file_is_one_line_and_the_file_is_kept(tmp_path, inside):
  existing = tmp_path / "notes.txt"
  existing.write_text("kept")
  workdir = existing / "run" if inside else existing
  result = run_cli(workdir, TINY, "--mode=train")
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == f"error: --workdir={workdir}: not a directory ({existing} is a file)"
  assert "Traceback" not in result.stderr
  assert existing.read_text() == "kept"


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN runs there")
def test_cudnn_attention_off_a_gpu_is_one_line(tmp_path):
  # Was a traceback from ops.attention while the step traced.
  result = run_cli(tmp_path / "run", TINY, "--mode=train", "--config.model.attention_impl=cudnn")
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == (
      f"error: config.model.attention_impl='cudnn' is invalid: needs a GPU and this host runs on"
      f" {jax.default_backend()!r}: use auto, which picks cuDNN on a GPU")
  assert not (tmp_path / "run").exists()


def test_validating_a_config_starts_no_jax_backend(monkeypatch):
  # A sweep validates its arms in its own process: a JAX backend started there would hold the
  # GPU memory its runs need. The platform check is validate_platform's, in the job itself.
  monkeypatch.syspath_prepend(os.path.join(ROOT, "configs"))
  import bouncing_tiny  # pylint: disable=import-outside-toplevel
  from videoar import validate  # pylint: disable=import-outside-toplevel

  def no_backend():
    raise AssertionError("validate started a JAX backend")

  monkeypatch.setattr(jax, "default_backend", no_backend)
  monkeypatch.setattr(jax, "devices", no_backend)
  config = bouncing_tiny.get_config("test")
  config.model.attention_impl = "cudnn"
  validate.validate(config)
  with pytest.raises(validate.ConfigError, match="needs a GPU and this host runs on 'cpu'"):
    validate.validate_platform(config, "cpu")


@pytest.mark.parametrize("name", ["checkpoints", "tensorboard"])
def test_a_file_where_the_run_writes_a_directory_is_one_line_and_kept(tmp_path, name):
  # A file at W/checkpoints was a traceback from orbax's thread after the first step, then
  # advice to rerun; at W/tensorboard a traceback from tensorboardX.
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / name).write_text("kept")
  result = run_cli(workdir, TINY, "--mode=train")
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert last_line(result) == (f"error: --workdir={workdir}: {workdir / name} is a file where the"
                               f" run keeps its {name}; move it")
  assert os.listdir(workdir) == [name] and (workdir / name).read_text() == "kept"


def test_a_cache_directory_that_is_a_file_is_one_line_before_anything_runs(tmp_path):
  # Was a FileExistsError from the digit classifier's cache after sampling (Moving-MNIST's: a
  # run that never uses the cache is not refused for it, tests/test_unwritable.py).
  cache = tmp_path / "cache"
  cache.write_text("kept")
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", f"--workdir={tmp_path / 'run'}",
       "--config=configs/mnist_small.py:test", "--mode=train"],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
      env={**os.environ, "VIDEOAR_CACHE": str(cache)})
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == (f"error: the cache directory {cache} ($VIDEOAR_CACHE, default"
                               f" ~/.cache/videoar) cannot be made: {cache} is a file")
  assert cache.read_text() == "kept" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["evaluate", "sample"])
def test_sampling_a_workdir_without_checkpoints_is_one_line_and_writes_nothing(tmp_path, mode):
  workdir = tmp_path / "run"
  workdir.mkdir()
  result = run_cli(workdir, TINY, f"--mode={mode}")
  assert result.returncode == 2, result.stderr[-2000:]
  # The whole of stderr: orbax's cleanup thread printed a traceback after this line.
  assert result.stderr.strip() == (f"error: no checkpoint in {workdir}/checkpoints: train first"
                                   " (--mode=train or --mode=all)")
  assert os.listdir(workdir) == []


# (what the user did, the command after `python`, the start of the one line it prints); {w} is
# an empty directory
TOOLS_BAD_INPUTS = [
    ("routing figure of a workdir without checkpoints",
     ["-m", "videoar.eval.routing_figure", "--config=configs/bouncing_rf.py:routed,test",
      "--workdir={w}", "--out={w}/figure.png"],
     "error: no checkpoint in {w}/checkpoints: train first (--mode=train or --mode=all)"),
    ("routing figure of a model without routing",
     ["-m", "videoar.eval.routing_figure", "--config=configs/bouncing_rf.py:test",
      "--workdir={w}", "--out={w}/figure.png"],
     "error: config.model.routing_top_k=0: this figure is of a routed model (e.g."
     " configs/bouncing_rf.py:routed)"),
    ("Pong action figure of a workdir without checkpoints",
     ["docs/pong_actions.py", "--config=configs/atari_pong.py", "--workdir={w}", "--out={w}/a.png"],
     "error: no checkpoint in {w}/checkpoints: train first (--mode=train or --mode=all)"),
    ("ODE pairs from a teacher config that is not bidirectional",
     ["-m", "videoar.ode_pairs", "--config=configs/bouncing_tiny.py:test", "--teacher_workdir={w}",
      "--output={w}/pairs", "--num_sequences=2"],
     "error: --config has forcing.paradigm='resampling': the ODE teacher is a bidirectional"
     " model; pass the config it was trained with"),
    ("FVD check of an unknown source",
     ["-m", "videoar.eval.fvd_check", "--config=configs/bouncing_tiny.py:test",
      "--config.data.source=bogus"],
     "error: config.data.source='bogus' is invalid: allowed: "),
    ("AOT compile for a topology libtpu does not know",
     ["launch/aot_compile.py", "--config=configs/wan_1p3b.py:tiny", "--topology=bogus"],
     "error: --topology=bogus: "),
    ("sampler benchmark of a config file that does not exist",
     ["benchmarks/sampler.py", "--config=configs/nope.py"],
     "error: --config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    ("sampler benchmark of a routed arm with no history frames",
     ["benchmarks/sampler.py", "--arms=routed@0"],
     "error: --arms=routed@0: @K needs an arm in ['routed', 'window'] and a whole number of"
     " frames K >= 1"),
    ("attention benchmark at the Wan shape on a CPU",
     ["benchmarks/attention.py", "--shape=wan"],
     "error: --shape=wan is a GPU benchmark: its dense reference is 100s of GFLOP; on a CPU"
     " leave --shape at cpu"),
    ("learning curve of a workdir without metrics",
     ["-m", "videoar.eval.learning_curve", "--workdir={w}"],
     "error: --workdir={w} holds no metrics.jsonl"),
    ("Atari episodes generated into a file (was a ValueError traceback)",
     ["-m", "videoar.data.generate_atari", "--config=configs/atari_pong.py:test",
      "--config.data.path=README.md"],
     "error: config.data: data.path='README.md': "),
    ("Atari episodes of a config of another source (was a usage message, exit 1)",
     ["-m", "videoar.data.generate_atari", "--config=configs/bouncing_tiny.py"],
     "error: config.data.source='bouncing': this generates 'atari'"),
    ("learning curve of a file (was a NotADirectoryError)",
     ["-m", "videoar.eval.learning_curve", "--workdir=README.md"],
     "error: --workdir=README.md is a file; name the run's workdir"),
    ("train step benchmark with an unknown attention implementation (was found after the"
     " first implementation's step compiled)",
     ["benchmarks/train_step.py", "--impls=dense,bogus", "--steps=1"],
     "error: flag --impls=['dense', 'bogus']: allowed: auto, dense, "),
    ("train step benchmark of no steps (was a ZeroDivisionError after compiling)",
     ["benchmarks/train_step.py", "--steps=0"],
     "error: flag --steps=0: 0 is not a positive integer"),
    ("attention benchmark of no rounds (was a table of inf and nan)",
     ["benchmarks/attention.py", "--repeats=0"],
     "error: flag --repeats=0: 0 is not a positive integer"),
    ("sampler benchmark with a frame shape of two numbers",
     ["benchmarks/sampler.py", "--frame_shape=32,32"],
     "error: flag --frame_shape=['32', '32']: must be three positive integers H,W,C"),
    ("Pong action figure of a model without actions",
     ["docs/pong_actions.py", "--config=configs/bouncing_tiny.py:test", "--workdir={w}",
      "--out={w}/a.png"],
     "error: --config: data.source='bouncing' has no actions; this figure is of an Atari model"),
    ("a sweep over a negative seed (was one failed run per arm)",
     ["-m", "videoar.sweep", "--config=configs/bouncing_rf.py", "--arms=test", "--seeds=0,-1",
      "--root={w}/sweep"],
     "error: --seeds='0,-1': a seed is an integer in [0, 2**32)"),
    ("a sweep over a seed of 2**32 (was a run that trained as seed 0)",
     ["-m", "videoar.sweep", "--config=configs/bouncing_rf.py", "--arms=test",
      "--seeds=0,4294967296", "--root={w}/sweep"],
     "error: --seeds='0,4294967296': a seed is an integer in [0, 2**32)"),
    ("a sweep whose --set misspells a key (named no close key)",
     ["-m", "videoar.sweep", "--config=configs/bouncing_rf.py", "--arms=test",
      "--set=model.routing_topk=1", "--root={w}/sweep"],
     "error: --set=model.routing_topk=1: the config of arm test has no such key; did you mean"
     " model.routing_top_k?"),
    ("a sweep whose --set names the seed (every run would have had that seed)",
     ["-m", "videoar.sweep", "--config=configs/bouncing_rf.py", "--arms=test", "--seeds=0,1",
      "--set=seed=5", "--root={w}/sweep"],
     "error: --set=seed=5: each run's seed comes from --seeds"),
    ("AOT compile with a frame shape of two numbers (was a ValueError after reading the data)",
     ["launch/aot_compile.py", TINY, "--topology=v5e:2x2", "--frame_shape=32,32"],
     "error: flag --frame_shape=['32', '32']: must be three positive integers H,W,C"),
    ("sampler benchmark of one chunk (was a ZeroDivisionError after streaming)",
     ["benchmarks/sampler.py", TINY, "--chunks=1"],
     "error: flag --chunks=1: 1 is not integer >= 2"),
    ("input pipeline benchmark of an unknown prefetch (was a ValueError after making the data)",
     ["benchmarks/input_pipeline.py", "--prefetch=threads,bogus"],
     "error: flag --prefetch=['threads', 'bogus']: allowed: threads, processes"),
    ("input pipeline benchmark of empty batches (was a ValueError after making the data)",
     ["benchmarks/input_pipeline.py", "--batch_size=0"],
     "error: flag --batch_size=0: 0 is not a positive integer"),
    ("scan benchmark of no blocks (was a ConfigError's traceback)",
     ["benchmarks/scan_layers.py", "--depth=0"],
     "error: flag --depth=0: 0 is not a positive integer"),
    ("forcing cost benchmark of no rounds (was a table of inf and nan after compiling)",
     ["benchmarks/forcing_cost.py", "--repeats=0"],
     "error: flag --repeats=0: 0 is not a positive integer"),
    ("benchmark JSON at a directory (was an IsADirectoryError at the end of the run)",
     ["benchmarks/attention.py", "--json={w}", "--repeats=1"],
     "error: flag --json={w}: is a directory; name the JSON file to write"),
    ("benchmark JSON under a file (was a FileExistsError at the end of the run)",
     ["benchmarks/sampler.py", TINY, "--json=README.md/sampler.json"],
     "error: flag --json=README.md/sampler.json: "),
    ("rollout paths of a workdir without checkpoints (was a MissingInput's traceback)",
     ["docs/rollout_paths.py", TINY, "--workdir={w}"],
     "error: no checkpoint in {w}/checkpoints: train first (--mode=train or --mode=all)"),
    ("rollout paths of an unknown metric (was an empty table, exit 0)",
     ["docs/rollout_paths.py", TINY, "--workdir={w}", "--metrics=lost,bogus"],
     "error: flag --metrics=['lost', 'bogus']: allowed: psnr, ssim, "),
    ("rollout paths of a model without the previous-frame input (was exit 1 without error:)",
     ["docs/rollout_paths.py", TINY, "--workdir={w}", "--config.model.previous_frame_input=False"],
     "error: config.model.previous_frame_input=False: the model reads its history through the"
     " KV cache alone"),
    ("FVD check of one clip a set (was a ValueError traceback)",
     ["-m", "videoar.eval.fvd_check", TINY, "--num_clips=1"],
     "error: flag --num_clips=1: 1 is not integer >= 2"),
    ("ArrayRecord shards: none (was a ZeroDivisionError after writing)",
     ["-m", "videoar.data.write_array_record", TINY, "--output={w}/out", "--num_sequences=2",
      "--sequence_frames=8", "--num_shards=0"],
     "error: flag --num_shards=0: 0 is not a positive integer"),
    ("ArrayRecord shards of a negative number of clips (was a ValueError after writing)",
     ["-m", "videoar.data.write_array_record", TINY, "--output={w}/out", "--num_sequences=-1",
      "--sequence_frames=8"],
     "error: flag --num_sequences=-1: -1 is not a positive integer"),
    ("Pong action figure of a workdir without checkpoints (generated the episodes first)",
     ["docs/pong_actions.py", "--config=configs/atari_pong.py:test", "--workdir={w}",
      "--config.data.path={w}/atari", "--out={w}/a.png"],
     "error: no checkpoint in {w}/checkpoints: train first (--mode=train or --mode=all)"),
    ("benchmark JSON in a folder that cannot be made (was a FileNotFoundError after the run)",
     ["benchmarks/scan_layers.py", "--depth=1", "--steps=1", "--json=/proc/videoar_nope/x.json"],
     "error: flag --json=/proc/videoar_nope/x.json: cannot write into /proc/videoar_nope: No such"
     " file or directory"),
    ("AOT compile for an empty topology (was compiled for libtpu's default, 8 TPU v2 devices)",
     ["launch/aot_compile.py", "--config=configs/wan_1p3b.py:tiny", "--topology=",
      "--frame_shape=8,8,4"],
     "error: --topology is empty: name the TPU slice to compile for, e.g. --topology=v5p:2x4x4"),
    ("input pipeline benchmark of one prefetch twice (was two columns of one name)",
     ["benchmarks/input_pipeline.py", "--prefetch=threads,threads"],
     "error: flag --prefetch=['threads', 'threads']: names threads twice; allowed: threads,"
     " processes, each once"),
    ("a stray word after a tool's flags (was ignored: the benchmark ran)",
     ["benchmarks/train_step.py", "--steps=1", "extra"],
     "error: unexpected argument 'extra' (flags are --name=value; a bool flag is --name or"
     " --noname)"),
    ("a stray word after the learning curve's flags (was ignored)",
     ["-m", "videoar.eval.learning_curve", "--workdir={w}", "lost"],
     "error: unexpected argument 'lost' (flags are --name=value; a bool flag is --name or"
     " --noname)"),
    ("train step benchmark of an empty reference matmul (was a ZeroDivisionError)",
     ["benchmarks/train_step.py", "--matmul_size=0"],
     "error: flag --matmul_size=0: 0 is not a positive integer"),
    ("train step benchmark of a negative reference matmul (was a JAX traceback)",
     ["benchmarks/train_step.py", "--matmul_size=-5"],
     "error: flag --matmul_size=-5: -5 is not a positive integer"),
    ("sampler benchmark of negative video frames a frame (was frames/s -24.9 in its JSON, exit 0)",
     ["benchmarks/sampler.py", "--video_frames_per_frame=-1"],
     "error: flag --video_frames_per_frame=-1: -1 is not a positive integer"),
    ("sampler benchmark of no video frames a frame (was 0 frames/s, exit 0)",
     ["benchmarks/sampler.py", "--video_frames_per_frame=0"],
     "error: flag --video_frames_per_frame=0: 0 is not a positive integer"),
    ("overlap denoising figure of a workdir without checkpoints (was a MissingInput's traceback)",
     ["docs/overlap_denoising.py", TINY, "--workdir={w}"],
     "error: no checkpoint in {w}/checkpoints: train first (--mode=train or --mode=all)"),
    ("overlap denoising figure of no cases (was a traceback after the evaluation)",
     ["docs/overlap_denoising.py", TINY, "--workdir={w}", "--cases=0"],
     "error: flag --cases=0: 0 is not a positive integer"),
    ("overlap denoising figure at a noise level that is not a number (was a traceback after the"
     " evaluation)", ["docs/overlap_denoising.py", TINY, "--workdir={w}", "--times=abc"],
     "error: flag --times=['abc']: must be one or more noise levels t, each a number in (0, 1]"),
    ("overlap denoising figure at noise levels outside (0, 1] (was accepted)",
     ["docs/overlap_denoising.py", TINY, "--workdir={w}", "--times=1.5,-1"],
     "error: flag --times=['1.5', '-1']: must be one or more noise levels t, each a number in"
     " (0, 1]"),
    ("overlap strip of a workdir without checkpoints (was a MissingInput's traceback)",
     ["docs/overlap_strip.py", TINY, "--workdir={w}"],
     "error: no checkpoint in {w}/checkpoints: train first (--mode=train or --mode=all)"),
    ("overlap strip of no clips a kind (was a traceback after every clip was continued)",
     ["docs/overlap_strip.py", TINY, "--workdir={w}", "--per_kind=0"],
     "error: flag --per_kind=0: 0 is not a positive integer"),
]


@pytest.mark.parametrize("args,line", [row[1:] for row in TOOLS_BAD_INPUTS],
                         ids=[row[0] for row in TOOLS_BAD_INPUTS])
def test_every_tool_reports_bad_input_in_one_line(tmp_path, args, line):
  result = subprocess.run([sys.executable, *(a.format(w=tmp_path) for a in args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  # The line is the last one, not the only one: libtpu logs its own warnings before it.
  assert "Traceback" not in result.stderr
  assert last_line(result).startswith(line.format(w=tmp_path))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("raised,status,stderr_has", [
    ("errors.MissingInput('no checkpoint in W/checkpoints')", 2,
     "error: no checkpoint in W/checkpoints"),
    # The library's own missing file is a bug, not bad input: it keeps its traceback.
    ("FileNotFoundError('a file the library itself lost')", 1, "Traceback"),
])
def test_a_command_reports_a_missing_input_and_keeps_other_missing_files_tracebacks(
    raised, status, stderr_has):
  program = ("from videoar import errors\n"
             f"def main(argv):\n  raise {raised}\n"
             "errors.run(main)\n")
  result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
  assert result.returncode == status, result.stderr[-2000:]
  assert stderr_has in result.stderr
  if status == 2:
    assert result.stderr.strip() == stderr_has


# --- a workdir that already holds a run ------------------------------------------------------

SHORT = [TINY, "--mode=train", "--config.train.num_steps=2", "--config.train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A workdir holding a finished 2-step run of the tiny config."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = run_cli(workdir, *SHORT)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def listing(workdir) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), workdir)
                for d, _, files in os.walk(workdir) for f in files)


@pytest.mark.parametrize("args,line", [
    (["--config.data.batch_size=2", "--config.train.num_steps=4"],
     "{w} was started with a different run: data.batch_size 4 -> 2; to go on use a new --workdir,"
     " or pass --restart_from_weights to start a new run from its weights"),
    (["--config.seed=1", "--config.train.num_steps=4"],
     "{w} was started with a different run: seed 0 -> 1; to go on use a new --workdir, or pass"
     " --restart_from_weights to start a new run from its weights"),
    (["--config.data.source=moving_mnist", "--config.data.options={'size': 32, 'num_digits': 2}",
      "--config.train.num_steps=4"],
     "{w} was started with a different run: data.options.max_speed 2.0 -> (absent),"
     " data.options.min_speed 1.0 -> (absent), data.options.num_digits (absent) -> 2 (and 6"
     " more); to go on use a new --workdir, or pass --restart_from_weights to start a new run"
     " from its weights"),
    ([], "{w} already reached step 2 >= train.num_steps=2: nothing to train; raise"
         " --config.train.num_steps or use --mode=sample or --mode=evaluate"),
    (["--config.train.num_steps=1"],
     "{w} already reached step 2 >= train.num_steps=1: nothing to train; raise"
     " --config.train.num_steps or use --mode=sample or --mode=evaluate"),
    (["--config.model.width=64", "--config.train.num_steps=4"],
     "{w} was started with a different run: model.width 32 -> 64; its weights do not fit this"
     " model: to go on use a new --workdir"),
    (["--config.model.previous_frame_input=False", "--config.train.num_steps=4"],
     "{w} was started with a different run: model.previous_frame_input True -> False; its"
     " weights do not fit this model: to go on use a new --workdir"),
    # Another run is said before its step count (raising train.num_steps would not help), and
    # its model first.
    (["--config.data.batch_size=2", "--config.model.depth=2"],
     "{w} was started with a different run: model.depth 1 -> 2, data.batch_size 4 -> 2; its"
     " weights do not fit this model: to go on use a new --workdir"),
], ids=["batch_size", "seed", "source", "num_steps equal", "num_steps below", "model",
        "previous frame input", "another model at the same step"])
def test_a_different_run_on_a_workdir_refuses_in_one_line(finished_run, args, line):
  before = listing(finished_run)
  result = run_cli(finished_run, *SHORT, *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == "error: " + line.format(w=finished_run)
  assert "Traceback" not in result.stderr
  # The refusal is the run's one line: the model's banner came first on stdout.
  assert "CausalDiT" not in result.stdout
  assert listing(finished_run) == before


def test_each_line_reaches_a_pipe_when_it_is_printed(tmp_path):
  """Into a file or pipe, Python buffered stdout: a followed log (tail -f) showed "samples: ..."
  and "evaluating: ..." only with the job's last line (during training the progress bar
  flushed it). The job's work is stood in for by a line and a wait far longer than the test's."""
  code = ("import sys, time; from absl import app; from videoar import main; "
          "main._run = lambda *args: (print('sampling'), time.sleep(600)); "
          "app.run(main.main, flags_parser=main._parse_flags)")
  process = subprocess.Popen(
      [sys.executable, "-c", code, f"--workdir={tmp_path / 'run'}", TINY],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
      env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"})
  try:
    ready, _, _ = select.select([process.stdout], [], [], 120)
    assert ready, "the line did not reach the pipe within 120 s"
    assert process.stdout.readline() == "sampling\n"
  finally:
    process.kill()
    process.wait()


def test_rollout_paths_of_metrics_the_source_lacks_refuse_before_generating(finished_run):
  """The bouncing world has no digits: asked for digit_accuracy alone, the figure script
  printed a header and nothing else after generating the four ways; now it says so first."""
  result = subprocess.run(
      [sys.executable, "docs/rollout_paths.py", TINY, f"--workdir={finished_run}",
       "--metrics=digit_accuracy,ink_ratio"], capture_output=True, text=True, timeout=300,
      cwd=ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result).startswith(
      "error: --metrics=digit_accuracy,ink_ratio: data.source='bouncing' scores none of them;"
      " it scores psnr, ssim, ")
  assert "lost" in last_line(result) and "Traceback" not in result.stderr


def test_harmless_changes_resume_and_are_listed(finished_run, tmp_path):
  workdir = tmp_path / "run"
  subprocess.run(["cp", "-r", str(finished_run), str(workdir)], check=True)
  result = run_cli(workdir, *SHORT, "--config.train.num_steps=3", "--config.sample.num_steps=5",
                   "--config.eval.every=3")
  assert result.returncode == 0, result.stderr[-2000:]
  assert (f"resuming {workdir}; allowed changes: eval.every 0 -> 3, sample.num_steps 2 -> 5,"
          " train.num_steps 2 -> 3") in result.stdout
  # Its learning curve then mixes two samplers' figures, and says from which step.
  curve = subprocess.run([sys.executable, "-m", "videoar.eval.learning_curve",
                          f"--workdir={workdir}"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
  assert curve.returncode == 0, curve.stderr[-2000:]
  assert curve.stdout.splitlines()[0] == (
      f"note: {workdir} resumed at step 2 with other evaluation settings (sample.num_steps 2 ->"
      " 5): its figures before and after step 2 are not comparable")
  assert "| 3 |" in curve.stdout


def test_restart_from_weights_starts_a_new_run_and_keeps_the_old_one(finished_run, tmp_path):
  workdir = tmp_path / "run"
  subprocess.run(["cp", "-r", str(finished_run), str(workdir)], check=True)
  # The old run's evaluation and samples, which would otherwise pass for the new run's.
  (workdir / "eval.json").write_text("{}")
  (workdir / "samples").mkdir()
  (workdir / "samples" / "strip.png").write_bytes(b"png")
  result = run_cli(workdir, *SHORT, "--config.data.batch_size=2", "--restart_from_weights")
  assert result.returncode == 0, result.stderr[-2000:]
  (aside,) = os.listdir(workdir / "previous")
  assert os.listdir(workdir / "previous" / aside / "checkpoints") == ["2"]
  assert (workdir / "previous" / aside / "eval.json").read_text() == "{}"
  assert os.listdir(workdir / "previous" / aside / "samples") == ["strip.png"]
  assert not (workdir / "eval.json").exists() and not (workdir / "samples").exists()
  assert os.listdir(workdir / "checkpoints") == ["2"]
  assert "a new run from the weights of step 2" in result.stdout


def test_a_run_with_no_checkpoint_left_moves_the_earlier_runs_logs_aside(finished_run, tmp_path):
  # Every checkpoint damaged (moved to checkpoints.damaged/): the next run started over and
  # rewrote the old run's metrics.jsonl and run.json in place (a probe, 2026-12-07).
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  os.rename(workdir / "checkpoints", workdir / "checkpoints.damaged")
  old_metrics = (workdir / "metrics.jsonl").read_text()
  result = run_cli(workdir, *SHORT)
  assert result.returncode == 0, result.stderr[-2000:]
  (aside,) = os.listdir(workdir / "previous")
  assert (f"no checkpoint in {workdir}/checkpoints to resume from: a new run; what an earlier one"
          f" left is in {workdir}/previous/{aside}") in result.stdout.splitlines()
  assert (workdir / "previous" / aside / "metrics.jsonl").read_text() == old_metrics
  assert (workdir / "previous" / aside / "run.json").exists()
  assert os.listdir(workdir / "checkpoints") == ["2"]


def test_a_restart_from_weights_preempted_says_to_resume_without_the_flag(finished_run, tmp_path):
  # "the same command resumes from it" was false: the same command started yet another new run.
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  run = subprocess.Popen(
      [sys.executable, "-m", "videoar.main", f"--workdir={workdir}", TINY, "--mode=train",
       "--config.train.num_steps=100000", "--config.train.log_every=1",
       "--config.data.batch_size=2", "--restart_from_weights"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  deadline = time.monotonic() + 240
  # A step of the new run logged (the old run's log has moved to previous/): the signal
  # handler is in place by then.
  new_log = workdir / "metrics.jsonl"
  while not (workdir / "previous").exists() or not new_log.exists() or not new_log.read_text():
    assert run.poll() is None, run.communicate()[1][-2000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  run.send_signal(signal.SIGTERM)
  stdout, stderr = run.communicate(timeout=120)
  assert run.returncode == 0, stderr[-2000:]
  (line,) = [line for line in stdout.splitlines() if line.startswith("preempted: ")]
  assert line.endswith("; the same command without --restart_from_weights resumes from it")


@pytest.mark.parametrize("mode,signum,status,line", [
    ("evaluate", signal.SIGTERM, 0, "stopped by SIGTERM while evaluating: no evaluation was written"
     " (an earlier one stays where it was); --mode=evaluate makes it"),
    ("sample", signal.SIGINT, 130, "stopped by SIGINT while sampling: no samples were written"
     " (earlier ones stay where they were); --mode=sample writes them"),
])
def test_a_signal_while_sampling_or_evaluating_says_what_was_left(finished_run, tmp_path, mode,
                                                                  signum, status, line,
                                                                  sigint_at_default):
  # A SIGTERM there ended the process with status 143 and no line; a Ctrl-C said "the same
  # command resumes from the newest checkpoint", which for --mode=all refuses a finished run.
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  run = subprocess.Popen(
      [sys.executable, "-m", "videoar.main", f"--workdir={workdir}", TINY, f"--mode={mode}"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  assert run.stdout.readline().startswith("host memory: ")  # the config is checked
  run.send_signal(signum)
  stdout, stderr = run.communicate(timeout=120)
  assert run.returncode == status, stderr[-2000:]
  assert "Traceback" not in stderr
  assert line in (stdout if signum == signal.SIGTERM else stderr).splitlines()
  assert not (workdir / "eval.json").exists() and not (workdir / "samples").exists()


@pytest.mark.parametrize("where", ["workdir", "checkpoints"])
def test_a_symlink_to_nothing_where_a_run_writes_is_one_line(tmp_path, where):
  # A dangling W/checkpoints was a FileExistsError traceback after the model was built; a
  # dangling W said "cannot create the workdir W: File exists".
  workdir = tmp_path / "run"
  if where == "workdir":
    link = workdir
  else:
    workdir.mkdir()
    link = workdir / "checkpoints"
  os.symlink(tmp_path / "nowhere", link)
  result = run_cli(workdir, TINY, "--mode=train")
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == (f"error: --workdir={workdir}: {link} is a symlink to"
                               f" {tmp_path / 'nowhere'}, which does not exist")
  assert not (tmp_path / "nowhere").exists()


def test_a_workdir_with_brackets_is_one_line(tmp_path):
  # Orbax globbed the path: every good checkpoint of a run in r[1] read as damaged and was moved.
  workdir = tmp_path / "r[1]"
  result = run_cli(workdir, TINY, "--mode=train")
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == (f"error: --workdir={workdir}: '[' and ']' in the path are not"
                               " supported (checkpoint paths are read as glob patterns); rename it")
  assert not workdir.exists()


def test_a_second_run_on_a_busy_workdir_refuses_naming_the_holder(tmp_path):
  workdir = tmp_path / "run"
  first = subprocess.Popen(
      [sys.executable, "-m", "videoar.main", f"--workdir={workdir}", TINY, "--mode=train",
       "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000",
       "--config.train.log_every=1"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  try:
    deadline = time.monotonic() + 240
    while not (workdir / "metrics.jsonl").exists():
      assert first.poll() is None, first.communicate()[1][-2000:]
      assert time.monotonic() < deadline
      time.sleep(0.05)
    second = run_cli(workdir, TINY, "--mode=train", "--config.train.num_steps=100000",
                     "--config.train.checkpoint_every=100000")
    assert second.returncode == 2, second.stderr[-2000:]
    line = last_line(second)
    assert line.startswith(f"error: {workdir} is in use by another run (host ")
    assert f", process {first.pid}, started " in line
    assert line.endswith("): wait for it to end, or use another --workdir")
  finally:
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
  assert first.returncode == 0
  steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
  assert steps == sorted(set(steps)), "one run wrote the log, each step once"


def test_sampling_a_run_with_other_training_values_says_so_and_the_routing_figure_refuses(
    finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  sampled = run_cli(workdir, TINY, "--mode=sample", "--config.data.options.num_objects=3")
  assert sampled.returncode == 0, sampled.stderr[-2000:]
  assert (f"note: {workdir} was trained with other values (its run.json -> this command):"
          " data.options.num_objects 2 -> 3; samples and evaluation use this command's"
          in sampled.stderr.splitlines())
  # How it samples is the command's to choose, and the batch and optimizer only train.
  same = run_cli(workdir, TINY, "--mode=sample", "--config.sample.length_multiple=2",
                 "--config.data.batch_size=2", "--config.optim.learning_rate=0.01")
  assert same.returncode == 0, same.stderr[-2000:]
  assert "note:" not in same.stderr
  # Weights of another shape: said from the record, before any checkpoint is read.
  deeper = run_cli(workdir, TINY, "--mode=evaluate", "--config.model.depth=3")
  assert deeper.returncode == 2, deeper.stderr[-2000:]
  assert last_line(deeper).startswith(f"error: {workdir} was trained with another model:"
                                      " model.depth ")
  assert last_line(deeper).endswith("-> 3 (its run.json -> this command); pass the values it"
                                    " was trained with")
  # The previous-frame input changes the weights' shapes too (was a checkpoint error after the
  # note that samples would use this command's value).
  no_previous = run_cli(workdir, TINY, "--mode=evaluate",
                        "--config.model.previous_frame_input=False")
  assert no_previous.returncode == 2, no_previous.stderr[-2000:]
  assert last_line(no_previous) == (
      f"error: {workdir} was trained with another model: model.previous_frame_input True ->"
      " False (its run.json -> this command); pass the values it was trained with")
  # The first command's samples are kept, not overwritten by the second's.
  (aside,) = os.listdir(workdir / "previous")
  assert f"the earlier samples moved to {workdir}/previous/{aside}" in same.stdout
  assert "strip.png" in os.listdir(workdir / "previous" / aside / "samples")
  assert "strip.png" in os.listdir(workdir / "samples")
  # Routing has no parameters, so the dense run's checkpoint would load under routing.
  figure = subprocess.run(
      [sys.executable, "-m", "videoar.eval.routing_figure", TINY,
       "--config.model.routing_top_k=2", f"--workdir={workdir}", f"--out={tmp_path}/f.png"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert figure.returncode == 2, figure.stderr[-2000:]
  assert last_line(figure) == (f"error: {workdir} was trained with another model or history:"
                               " model.routing_top_k 0 -> 2 (its run.json -> --config); pass the"
                               " config it was trained with")
  assert not (tmp_path / "f.png").exists()


def test_the_overlap_figures_say_when_nothing_is_picked_and_write_into_the_workdir(finished_run,
                                                                                  tmp_path):
  """With one object nothing overlaps: the denoising figure printed its errors over zero cases
  (`0.9: 0.0000`), then a ValueError; both tools wrote over a tracked figure in docs/ unless
  told otherwise."""
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  tool = lambda name, *args: subprocess.run(
      [sys.executable, f"docs/{name}.py", TINY, f"--workdir={workdir}", *args],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  one_object = "--config.data.options.num_objects=1"
  for name, line in (
      ("overlap_denoising", "error: no overlap found in 2 clips (eval.num_clips): no object"
       " overlaps another in their continuations; nothing to draw"),
      ("overlap_strip", "error: no overlap found in 2 clips (eval.num_clips) after which the model"
       " loses an object (overlapping in the context frames, or first from continuation frame"
       " 2): nothing to draw; raise --config.eval.num_clips")):
    result = tool(name, one_object, f"--out={tmp_path}/{name}.png")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == line
    assert not (tmp_path / f"{name}.png").exists()
  # As the routing figure's: --out is checked before anything runs.
  result = tool("overlap_denoising", f"--out={tmp_path}/figure")
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == (f"error: --out='{tmp_path}/figure' is invalid: the figure is a"
                                   " PNG; name a file ending in .png")
  docs_strip = os.path.join(ROOT, "docs", "samples_bouncing_tiny_overlaps.png")
  kept = open(docs_strip, "rb").read()
  result = tool("overlap_strip")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"wrote {workdir}/overlap_strip.png" in result.stdout.splitlines()
  assert (workdir / "overlap_strip.png").exists()
  assert open(docs_strip, "rb").read() == kept


# --- files a tool reads that are not what they should be --------------------------------------

def test_a_file_that_is_not_an_evaluation_or_a_config_is_one_line_in_compare_and_the_sweep(
    tmp_path):
  (tmp_path / "garbage.json").write_text("garbage")
  (tmp_path / "garbage.txt").write_text('{"step": 1}\n{"step": 2}\n')
  (tmp_path / "other.json").write_text('{"tables": 5}')
  (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  seed0 = tmp_path / "sweep" / "test" / "seed0"
  seed0.mkdir(parents=True)
  (seed0 / "eval.json").write_text('{"tables": {"model": [')  # an evaluation cut short
  kept = os.path.join(ROOT, "docs", "eval_bouncing_tiny.json")
  shutil.copy(kept, seed0.parent / "kept.json")
  # Rows an evaluation never writes (were a KeyError, a format error, and a table of "-").
  good = json.loads(open(kept).read())
  for name, change in (("nosegment", lambda t: t["model"][1].pop("segment")),
                       ("string", lambda t: t["model"][0].update(lpips="6.1")),
                       ("norows", lambda t: t.update(model=[]))):
    damaged = json.loads(json.dumps(good))
    change(damaged["tables"])
    (tmp_path / f"{name}.json").write_text(json.dumps(damaged))
  compare = ["-m", "videoar.eval.compare"]
  sweep = ["-m", "videoar.sweep", "--arms=test", "--seeds=0", f"--root={tmp_path}/sweep"]
  cases = [
      (compare + [f"a={tmp_path}/garbage.json"],
       f"error: a={tmp_path}/garbage.json: {tmp_path}/garbage.json is not valid JSON ("),
      (compare + [f"a={tmp_path}/other.json"],
       f"error: a={tmp_path}/other.json: {tmp_path}/other.json is not an eval.json (it has no"
       ' "tables" with a "model" table)'),
      (compare + [f"a={tmp_path}/binary.json"],
       f"error: a={tmp_path}/binary.json: {tmp_path}/binary.json is not valid JSON ("),
      (compare + [f"a={tmp_path}/garbage.txt"],  # a file, not a workdir holding eval.json
       f"error: a={tmp_path}/garbage.txt: {tmp_path}/garbage.txt is not valid JSON ("),
      (compare + ["a=docs/eval_bouncing_tiny.json", "--json", f"{tmp_path}/no/out.json"],
       f"error: --json={tmp_path}/no/out.json: no folder {tmp_path}/no"),
      (compare + ["a=docs/eval_bouncing_tiny.json", "a=docs/eval_atari_pong.json"],
       "error: arm 'a' is named twice"),
      (compare + ["a=docs/eval_bouncing_tiny.json", f"--markdown={tmp_path}"],
       f"error: --markdown={tmp_path} is a folder; name the file to write"),
      # An output over an input would destroy the run's evaluation.
      (compare + [f"a={seed0.parent}/kept.json", f"--json={seed0.parent}/kept.json"],
       f"error: --json={seed0.parent}/kept.json is one of the runs' eval.json; name another"
       " file"),
      (compare + ["=docs/eval_bouncing_tiny.json"],
       "error: run '=docs/eval_bouncing_tiny.json' is not NAME=RUN[,RUN...]"),
      (compare + [f"a={tmp_path}/nosegment.json"],
       f"error: a={tmp_path}/nosegment.json: {tmp_path}/nosegment.json is not an eval.json an"
       " evaluation wrote (table model, row 2 has no segment): rerun --mode=evaluate"),
      (compare + [f"a={tmp_path}/string.json"],
       f"error: a={tmp_path}/string.json: {tmp_path}/string.json is not an eval.json an"
       " evaluation wrote (table model, row 1: lpips is '6.1', not a number)"),
      (compare + [f"a={tmp_path}/norows.json"],
       f"error: a={tmp_path}/norows.json: {tmp_path}/norows.json is not an eval.json an"
       " evaluation wrote (its model table has no rows)"),
      (compare + ["a=docs/eval_bouncing_tiny.json", "--paired=a:a"],
       "error: --paired=a:a: needs A:B, two of the arms a"),
      # One run given twice is not two seeds (was averaged as 2 seeds, sd 0.000).
      (compare + [f"a={seed0.parent}/kept.json,{seed0.parent}/../test/kept.json"],
       f"error: a={seed0.parent}/kept.json,{seed0.parent}/../test/kept.json: names one evaluation"
       " twice; each run of an arm is one seed"),
      (sweep + ["--config=configs/bouncing_rf.py", "--executor=print"],
       f"error: {seed0}/eval.json is not valid JSON ("),
      (sweep + [f"--config={tmp_path}/syntax.py"],
       f"error: --config: {tmp_path}/syntax.py, line 1: SyntaxError: "),
  ]
  for args, line in cases:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert result.returncode == 2, (args, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert last_line(result).startswith(line), args
  assert (seed0.parent / "kept.json").read_bytes() == open(kept, "rb").read()


def test_compare_notes_an_arm_whose_runs_differ_in_more_than_the_seed(tmp_path):
  """Runs of other models or methods in one arm were averaged as seeds without a word; each
  seed's own stage paths (Self Forcing's teacher) may differ."""
  good = json.loads(open(os.path.join(ROOT, "docs", "eval_bouncing_tiny.json")).read())
  from videoar import base_config
  config = base_config.get_config().to_dict()
  for seed, depth, teacher in ((0, 1, "t0"), (1, 1, "t1"), (2, 9, "t2")):
    run = dict(good, config=dict(config, seed=seed, model=dict(config["model"], depth=depth),
                                 forcing=dict(config["forcing"], teacher_workdir=teacher)))
    (tmp_path / f"s{seed}.json").write_text(json.dumps(run))
  result = subprocess.run(
      [sys.executable, "-m", "videoar.eval.compare", f"a={tmp_path}/s0.json,{tmp_path}/s1.json",
       f"b={tmp_path}/s0.json,{tmp_path}/s2.json"], capture_output=True, text=True, timeout=120,
      cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  notes = [line for line in result.stdout.splitlines() if line.startswith("note: arm")]
  assert notes == [f"note: arm b: {tmp_path}/s2.json differs from {tmp_path}/s0.json in"
                   " model.depth 1 -> 9: its mean is not one recipe's over seeds"]


def test_the_learning_curve_skips_the_line_a_run_is_writing_and_names_any_other_bad_line(
    tmp_path):
  from videoar import errors
  from videoar.eval import learning_curve
  records = "\n".join(json.dumps(r) for r in [{"step": 100, "steps_per_s": 2.0},
                                              {"step": 100, "eval/lost/0-7": 0.5}])
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text(records + '\n{"step": 200, "los')
  assert learning_curve.read(str(tmp_path))[0] == {100: {"lost/0-7": 0.5}}
  metrics.write_text('{"step": 50, "los\n' + records + "\n")
  with pytest.raises(errors.UserError, match=f"^{metrics} line 1 is not JSON"):
    learning_curve.read(str(tmp_path))
  # JSON that is no record (were a TypeError and a KeyError); a blank line is skipped.
  for line in ("[1, 2]", '{"loss": 0.5}'):
    metrics.write_text(records + "\n\n" + line + "\n")
    with pytest.raises(errors.UserError, match=f"^{metrics} line 4 is not a metrics record"):
      learning_curve.read(str(tmp_path))
  metrics.write_text(records.replace("\n", "\n\n") + "\n")
  assert learning_curve.read(str(tmp_path))[0] == {100: {"lost/0-7": 0.5}}
  metrics.write_text(records + "\n")
  result = subprocess.run([sys.executable, "-m", "videoar.eval.learning_curve",
                           f"--workdir={tmp_path}", "--metrics=lost,lots"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == ("error: --metrics=lost,lots: lots not evaluated in these runs;"
                               " allowed: lost")
