"""Sampling and the long-horizon evaluation of a trained model, as the CLI runs them.

Both continue held-out clips: the first `sample.context_frames` true frames are written into
the KV cache, then `sample.length_multiple` x the training length is generated and compared,
segment by segment of `eval.segment_len` frames, with the true continuation.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from videoar import experiment, files, media, sampling
from videoar.data import pipeline
from videoar.data.atari import AtariEpisodes
from videoar.data.bouncing import BouncingWorld
from videoar.data.moving_mnist import MovingMnist
from videoar.eval import digits, long_horizon, objects, perceptual, pong
from videoar.train import metrics_log
from videoar.train import workdir as workdir_lib

# FVD fits a 400-d Gaussian to each set of clips: from fewer clips than this the fit is mostly
# sampling noise, not worth I3D's passes (about 1.5 s a clip on one CPU core); tiny smoke runs
# (2 clips) skip it.
FVD_MIN_CLIPS = 16


def held_out_clips(exp: experiment.Experiment, num_clips: int) -> dict:
  """The first `num_clips` held-out clips of `exp`'s source, each `sample.context_frames` plus
  `sample.length_multiple` x the training length frames long: what evaluation continues."""
  c = exp.config
  num_frames = c.sample.context_frames + c.sample.length_multiple * c.data.num_frames
  return pipeline.eval_clips(exp.source, num_clips=num_clips, num_frames=num_frames, seed=c.seed)


def continue_clips(exp: experiment.Experiment, params, num_clips: int, rng: jax.Array,
                   sampler: sampling.Sampler | None = None):
  """Held-out clips (held_out_clips: context + true continuation) and the model's continuation;
  `sampler` defaults to a new experiment.make_sampler(exp) (pass one to reuse its compiled
  steps)."""
  c = exp.config
  num_context = c.sample.context_frames
  num_generated = c.sample.length_multiple * c.data.num_frames
  clips = held_out_clips(exp, num_clips)
  sampler = sampler or experiment.make_sampler(exp)
  cond = {key: jnp.asarray(value) for key, value in exp.model.conditioning(clips).items()}
  context = jnp.asarray(clips["video"][:, :num_context]) if num_context else None
  generated = sampler.generate(params, rng, num_generated, c.sample.num_steps,
                               c.sample.time_shift, context, cond, batch=num_clips)
  return clips, np.asarray(generated)


def continue_on_true_history(exp: experiment.Experiment, params, clips: dict, rng: jax.Array,
                             sampler: sampling.Sampler | None = None, own_cache: bool = False,
                             own_previous_frame: bool = False) -> np.ndarray:
  """The continuation of `clips` (continue_clips) generated each chunk over the TRUE frames
  before it (Sampler.generate_on_true_history) from the start noise continue_clips draws from
  the same `rng`: [B, F, H, W, C] after the context. Set beside the model's own continuation it
  tells what one step gets wrong from what accumulates over its own history; `own_cache` or
  `own_previous_frame` lets the model's own frames back in along one path
  (Sampler.rollout_on_true_history)."""
  c = exp.config
  sampler = sampler or experiment.make_sampler(exp)
  cond = {key: jnp.asarray(value) for key, value in exp.model.conditioning(clips).items()}
  generated = sampler.generate_on_true_history(
      params, rng, jnp.asarray(clips["video"]), c.sample.context_frames, c.sample.num_steps,
      c.sample.time_shift, cond, own_cache=own_cache, own_previous_frame=own_previous_frame)
  return np.asarray(generated)


def frame_scorers(exp: experiment.Experiment, clips: dict) -> list[long_horizon.FrameScorer]:
  """The metrics only some sources have, for the continuation of `clips` (continue_clips):
  whether the digits keep their identities (Moving-MNIST), where the ball and the agent's paddle
  are (Atari Pong played from the emulator; not its frames read back as array_record), which
  objects are lost after overlapping another and which without (the bouncing world), whether
  objects that went behind an occluder come back (the bouncing world with occluders)."""
  source = exp.source
  if isinstance(source, BouncingWorld):
    num_context = exp.config.sample.context_frames
    # Over the whole clip: objects that overlapped, or went out of sight, in the context count.
    overlapped = objects.overlapped_before(clips["positions"], source.radius)[:, num_context:]
    scorers = [objects.OverlapScorer(clips["color_ids"], overlapped, source.palette_array())]
    if source.occluders:
      returned = objects.returned_after_hiding(clips["visible"])[:, num_context:]
      scorers.append(objects.RecoveryScorer(clips["positions"][:, num_context:],
                                            clips["color_ids"], returned, source.palette_array()))
    return scorers
  if isinstance(source, MovingMnist):
    num_context = exp.config.sample.context_frames
    return [digits.DigitScorer(
        positions=clips["positions"][:, num_context:], labels=clips["labels"],
        seen=digits.seen_in_context(clips["positions"][:, :num_context], source.digit_size),
        classifier=digits.digit_classifier(source.digit_size))]
  if (isinstance(source, pipeline.RecordedClips) and isinstance(source.recording, AtariEpisodes)
      and source.recording.game == "pong"):
    return [pong.pong_frame_scores]
  return []


def score(exp: experiment.Experiment, clips: dict, generated: np.ndarray, baselines: bool = True,
          fvd: bool = False, per_frame: bool = False, on_true_history: np.ndarray | None = None):
  """The per-segment tables (long_horizon.segment_table) of the model's continuation
  `generated` [B, F, H, W, C] of `clips` (continue_clips), with `baselines` of
  copy-the-last-frame, all-background and the truth, and with `on_true_history` of the model's
  continuation on the true history (continue_on_true_history; the method
  "model_on_true_history", without FVD): {method: rows}. Pixel frames (1 or 3 channels, not
  latents) get LPIPS per frame, and every source its frame_scorers.

  With `fvd` (pixel frames only; B >= 2), each segment also gets its FVD against the true
  segment over all B clips (perceptual.FvdScorer): I3D costs about 0.5 s of 2 CPU cores per
  distinct clip-segment (perceptual.i3d_features): the default's 32 clips x 3 segments, with
  the truth's and the baselines' (225 clip-segments), take about 2 minutes, so only the final
  evaluation asks. The true segments' features
  are kept in $VIDEOAR_CACHE/i3d (files.cache_directory), so a later run on the same clips
  (another arm of a sweep at the same seed) computes only its own.
  With `per_frame`, returns ({method: rows}, {method: {metric: float64 [F]}}), the second each
  per-frame metric's mean over the clips at every frame."""
  c = exp.config
  num_context = c.sample.context_frames
  truth = clips["video"][:, num_context:]
  object_truth = {}
  if "color_ids" in clips:
    object_truth = dict(positions=clips["positions"][:, num_context:],
                        color_ids=clips["color_ids"], palette=exp.source.palette_array())
  methods = {"model": generated}
  if on_true_history is not None:
    methods["model_on_true_history"] = on_true_history
  if baselines:
    if num_context:
      methods.update(long_horizon.baselines(clips["video"][:, :num_context], truth.shape[1]))
    else:
      methods["background"] = np.full_like(truth, objects.BACKGROUND_VALUE)
    methods["truth"] = truth
  scorers = frame_scorers(exp, clips)
  if perceptual.is_pixels(truth):
    scorers = [perceptual.lpips_frame_scores, *scorers]
  # One scorer for every method, so that I3D sees each true segment once.
  # The I3D features of the true segments are kept on disk for the next run on the same clips.
  segment_scorers = ([perceptual.FvdScorer(cache=os.path.join(files.cache_directory(), "i3d"))]
                     if fvd else [])
  # FVD costs I3D passes over every clip-segment: the model, the baselines and the truth have it,
  # the one-step diagnostic does not.
  results = {name: long_horizon.segment_table(
                 video, truth, segment_len=c.eval.segment_len, scorers=scorers,
                 segment_scorers=segment_scorers if name != "model_on_true_history" else [],
                 per_frame=per_frame, **object_truth)
             for name, video in methods.items()}
  if not per_frame:
    return results
  return ({name: rows for name, (rows, _) in results.items()},
          {name: curves for name, (_, curves) in results.items()})


def with_context(clips: dict, generated: np.ndarray, num_context: int) -> np.ndarray:
  """The model's videos [B, context + generated frames, H, W, C]: each clip's true context
  frames, then what the model generated after them."""
  return np.concatenate([clips["video"][:, :num_context], generated], axis=1)


def strip(clips: dict, generated: np.ndarray, num_context: int) -> np.ndarray:
  """A strip image [H', W', C] whose rows alternate a clip's truth and the model's video
  (context, then generated), every second frame."""
  model_videos = with_context(clips, generated, num_context)
  rows = np.stack([clips["video"], model_videos], axis=1).reshape((-1,) + model_videos.shape[1:])
  return media.frame_strip(rows, every=2)


def side_by_side(clips: dict, generated: np.ndarray, num_context: int) -> np.ndarray:
  """Videos [B, T, H, 2W, C]: each clip's truth on the left and the model's video (the same
  context, then generated) on the right, T = context + generated frames."""
  return np.concatenate([clips["video"], with_context(clips, generated, num_context)], axis=3)


class DuringTraining:
  """Evaluation while training (eval.every): the same continuation of the first
  eval.during_training_clips held-out clips (at most eval.num_clips, which validation checks the
  source holds), with the same noise, each time, so that the figures move only with the
  weights. One sampler, compiled once, serves every call."""

  def __init__(self, exp: experiment.Experiment):
    self.exp = exp
    self.sampler = experiment.make_sampler(exp)
    self.rng = jax.random.key(exp.config.seed + 2)

  def __call__(self, params) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Scalars {"METRIC/SEGMENT": value} of the model's segment table, its strip image
    [H', W', C] and the videos [B, T, H, 2W, C] of side_by_side (truth | model), in [-1, 1]."""
    c = self.exp.config
    num_clips = min(c.eval.during_training_clips, c.eval.num_clips)
    clips, generated = continue_clips(self.exp, params, num_clips, self.rng, self.sampler)
    rows = score(self.exp, clips, generated, baselines=False)["model"]
    scalars = {f"{name}/{row['segment']}": value for row in rows
               for name, value in row.items() if name not in ("segment", "frames")}
    num_context = c.sample.context_frames
    return (scalars, strip(clips, generated, num_context),
            side_by_side(clips, generated, num_context))


def sample(exp: experiment.Experiment, params, workdir: str) -> str:
  """Writes WORKDIR/samples/sample_*.mp4 (context, then generated) and a PNG strip whose rows
  alternate truth and model; returns the strip's path. Frames that are not images (latents:
  neither 1 nor 3 channels, and no decoder here) go to WORKDIR/samples/samples.npz instead, as
  `model` and `truth` [B, F, H, W, C] (context included); returns its path. The folder is
  written whole beside WORKDIR/samples (files.replaced_together) and renamed to it once
  complete, when the earlier samples move to WORKDIR/previous/TIME/ (workdir.move_aside): an
  interrupted run leaves the earlier samples in place, never part of the new ones."""
  c = exp.config
  clips, generated = continue_clips(exp, params, c.sample.num_videos, jax.random.key(c.seed + 1))
  num_context = c.sample.context_frames
  model_videos = with_context(clips, generated, num_context)
  name = workdir_lib.SAMPLES_NAME
  with files.replaced_together(workdir, (name,)) as staging:
    out = os.path.join(staging, name)
    os.mkdir(out)
    if perceptual.is_pixels(model_videos):
      for i, video in enumerate(model_videos):
        media.write_mp4(os.path.join(out, f"sample_{i}.mp4"), video)
      written = "strip.png"
      media.write_png(os.path.join(out, written), strip(clips, generated, num_context))
    else:
      written = "samples.npz"
      np.savez(os.path.join(out, written), model=model_videos, truth=np.asarray(clips["video"]))
    # Last: the earlier samples leave only once the new ones are whole.
    aside = workdir_lib.move_aside(workdir, (name,))
  if aside:
    print(f"the earlier samples moved to {aside}")
  return os.path.join(workdir, name, written)


def why_no_fvd(config, frame_shape: tuple[int, int, int]) -> str | None:
  """Why the final evaluation of `config`'s model, on frames of `frame_shape` (H, W, C), computes
  no FVD, in the words of its eval.txt; None when it computes it. Known before generating, so
  that the line announcing the evaluation promises FVD's minutes only when they are spent (on
  latents with eval.fvd it did, and then nothing said FVD was left out)."""
  if not config.eval.fvd:
    return "not computed (--config.eval.fvd=True computes it)"
  if not perceptual.is_pixels(np.empty((0, *frame_shape))):
    return (f"not computed: the frames are latents of {frame_shape[-1]} channels, and I3D reads"
            " pixel frames (1 or 3 channels)")
  if config.eval.num_clips < FVD_MIN_CLIPS:
    return f"not computed for {config.eval.num_clips} clips (it needs {FVD_MIN_CLIPS})"
  return None


def evaluate(exp: experiment.Experiment, params, workdir: str,
             checkpoint_step: int | None) -> dict:
  """The per-segment table of the model against copy-the-last-frame, all-background and the
  truth, and (Euler solver) of the model on the true history ("model_on_true_history": each
  chunk generated over the true frames before it, from the same start noise; the gap to "model"
  is what accumulates over the model's own history), printed and written to WORKDIR/eval.json
  (strict JSON: a figure that is not finite, such as the PSNR of identical frames, is null) and
  eval.txt; each per-frame metric against the frame index, a line per method, to
  WORKDIR/eval_per_frame.png; eval.json also holds the config it ran with ("config") and the
  step of the checkpoint `params` came from ("checkpoint_step": experiment.restore_trained's
  step; None, written null, for weights from no checkpoint). With eval.fvd, FVD is computed
  here, not while training, over all eval.num_clips clips when there are at least FVD_MIN_CLIPS
  of pixel frames (eval.json's fvd_clips says how many; null without FVD, and eval.txt says why:
  why_no_fvd). The three files are written whole beside the workdir's (files.replaced_together)
  and renamed into it together, eval.json last, when an earlier evaluation's files move to
  WORKDIR/previous/TIME/ (workdir.move_aside): an interrupted run leaves the earlier evaluation
  in place, never part of the new one."""
  c = exp.config
  sampler = experiment.make_sampler(exp)
  rng = jax.random.key(c.seed + 2)
  no_fvd = why_no_fvd(c, exp.frame_shape)
  with_fvd = no_fvd is None
  # Generation and scoring print nothing until the table: say what the minutes are for.
  print(f"evaluating: {c.eval.num_clips} held-out clips continued, then scored"
        f"{' (FVD among them: minutes on a CPU)' if with_fvd else ''}", flush=True)
  clips, generated = continue_clips(exp, params, c.eval.num_clips, rng, sampler)
  on_true_history = (continue_on_true_history(exp, params, clips, rng, sampler)
                     if c.sample.solver == "euler" else None)
  num_context = c.sample.context_frames
  truth = clips["video"][:, num_context:]
  started = time.perf_counter()
  tables, curves = score(exp, clips, generated, fvd=with_fvd, per_frame=True,
                         on_true_history=on_true_history)
  seconds = time.perf_counter() - started
  text = long_horizon.format_table(tables)
  if with_fvd:
    text += (f"\nFVD: over all {c.eval.num_clips} clips of a segment, each resized to"
             f" {perceptual.I3D_SIZE}x{perceptual.I3D_SIZE} and stretched to at least"
             f" {perceptual.I3D_FRAMES} frames; it depends on the clip count.\n")
  else:
    text += f"\nFVD: {no_fvd}.\n"
  if not num_context and not exp.model.conditioning_keys():
    # A bidirectional teacher's evaluation (configs/bouncing_sf.py:teacher): its samples are
    # not continuations, so the per-clip figures compare two unrelated videos.
    text += ("note: sample.context_frames=0 and the model reads no conditioning: each sample"
             " continues nothing, so the figures above compare it with an unrelated held-out"
             " clip; only distribution figures (FVD) say how good the samples are.\n")
  print(text)
  print(f"scored in {seconds:.1f} s")
  result = dict(checkpoint_step=checkpoint_step,
                context_frames=num_context, generated_frames=int(truth.shape[1]),
                training_frames=c.data.num_frames, num_clips=c.eval.num_clips,
                fvd_clips=c.eval.num_clips if with_fvd else None, tables=tables,
                per_frame={method: {name: values.tolist() for name, values in metrics.items()}
                           for method, metrics in curves.items()},
                # What made these figures (sampler included), so that a sweep can tell a result
                # of its command from one of another.
                config=workdir_lib.RunRecord(c.to_dict(), {}).config)
  # eval.json last: it is what marks a run evaluated (videoar.sweep), so it appears only after
  # the rest.
  names = tuple(sorted(workdir_lib.EVAL_OUTPUTS, key=lambda name: name == "eval.json"))
  with files.replaced_together(workdir, names) as staging:
    with open(os.path.join(staging, "eval.txt"), "w") as f:
      f.write(text + "\n")
    long_horizon.plot_per_frame(curves, os.path.join(staging, "eval_per_frame.png"),
                                c.eval.segment_len)
    with open(os.path.join(staging, "eval.json"), "w") as f:
      json.dump(metrics_log.strict(result), f, indent=1, allow_nan=False)
    # Last: the earlier evaluation leaves only once the new one is whole.
    aside = workdir_lib.move_aside(workdir, workdir_lib.EVAL_OUTPUTS)
  if aside:
    print(f"the earlier evaluation moved to {aside}")
  return result
