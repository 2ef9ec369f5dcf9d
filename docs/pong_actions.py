"""Drives a trained Pong model with two action sequences from the same contexts.

  python docs/pong_actions.py --config=configs/atari_pong.py --workdir=runs/atari_pong

Contexts: of the first --candidates held-out clips, the --num_contexts whose paddle ends nearest
mid-field (so both UP and DOWN have room), their first sample.context_frames frames and recorded
actions in the KV cache. From each, --num_frames frames are generated twice from the same noise:
pressing UP (RIGHT) for the first half and DOWN (LEFT) for the second, and the reverse. The
agent's paddle is located in every generated frame (atari.pong_paddle_rows). Printed and written
to --out with .json for .png:
  - the paddle's net movement over each half, by the action pressed in it (mean over contexts,
    and the share of halves whose movement has the pressed sign);
  - the share of frames in which it moved the way the pressed action says, next to the same
    count over the recorded held-out episodes (the game's own score, below 100 % because a
    paddle at a wall does not move).
The figure: the agent's half of every frame of the first context's two videos, over the
paddle's row in each generated frame.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags, logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from videoar import errors, experiment, media  # noqa: E402
from videoar.data import atari, pipeline  # noqa: E402

config_flags.DEFINE_config_file("config", None, "The Pong model's config.", lock_config=True)
flags.DEFINE_string("workdir", None, "The trained run's directory.")
flags.DEFINE_integer("num_frames", 16, "Frames generated under each action sequence.")
flags.DEFINE_integer("num_contexts", 8, "Contexts driven with both action sequences.")
flags.DEFINE_integer("candidates", 64, "Held-out clips searched for the contexts.")
flags.DEFINE_string("out", "docs/pong_actions.png", "Where to write the figure.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def followed(rows: np.ndarray, pressed: np.ndarray, up: int, down: int) -> float:
  """Fraction of frames whose paddle moved the way its action says (up: row decreases)."""
  moved = np.diff(rows)
  pressed = pressed[1:]
  ok = np.where(pressed == up, moved < -0.5, np.where(pressed == down, moved > 0.5, False))
  return float(ok[np.isin(pressed, (up, down))].mean())


def recorded_followed(source, up: int, down: int) -> float:
  """`followed` over the held-out recorded episodes: what the game itself scores, below 100 %
  because a paddle pressed against the top or bottom wall cannot move further."""
  recording = source.recording
  shares, weights = [], []
  for episode, length in enumerate(recording.lengths()):
    frames = np.arange(int(length * (1.0 - source.eval_fraction)), length)
    clip = recording.read(episode, frames)
    pressed = clip["actions"]
    shares.append(followed(atari.pong_paddle_rows(clip["video"]), pressed, up, down))
    weights.append(np.isin(pressed[1:], (up, down)).sum())
  return float(np.average(shares, weights=weights))


def rounded(value: float) -> float | None:
  """For the JSON: None where the paddle was not found."""
  return None if np.isnan(value) else round(float(value), 2)


def mid_field_contexts(source, num_frames: int, seed: int) -> dict[str, np.ndarray]:
  """The --num_contexts of the first --candidates held-out clips whose paddle ends nearest the
  middle of the playfield (a random policy leaves it at a wall about a third of the time)."""
  clips = pipeline.eval_clips(source, num_clips=FLAGS.candidates, num_frames=num_frames,
                              seed=seed)
  height = clips["video"].shape[2]
  middle = height * np.mean(atari.PONG_PLAYFIELD_ROWS) / atari.ATARI_SCREEN[0]
  last_rows = np.array([atari.pong_paddle_rows(video[-1:])[0] for video in clips["video"]])
  nearest = np.argsort(np.where(np.isnan(last_rows), np.inf, np.abs(last_rows - middle)))
  chosen = np.sort(nearest[:FLAGS.num_contexts])
  return {key: value[chosen] for key, value in clips.items()}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  if config.data.source != "atari":
    raise errors.UserError(f"--config: data.source={config.data.source!r} has no actions; this"
                           " figure is of an Atari model (configs/atari_pong.py)")
  experiment.require_checkpoint(FLAGS.workdir)
  exp = experiment.build(config)
  params = experiment.restore_params(exp, FLAGS.workdir, use_ema=config.sample.use_ema)
  names = exp.source.recording.action_names()
  up, down = names.index("RIGHT"), names.index("LEFT")
  num_context, half = config.sample.context_frames, FLAGS.num_frames // 2
  clips = mid_field_contexts(exp.source, num_context, config.seed)
  num_contexts = len(clips["video"])
  # Videos 2i and 2i + 1 continue context i: UP then DOWN, DOWN then UP.
  sequences = np.tile(np.array([[up] * half + [down] * half, [down] * half + [up] * half],
                               np.int32), (num_contexts, 1))
  context = np.repeat(clips["video"], 2, axis=0)
  actions = np.concatenate([np.repeat(clips["actions"], 2, axis=0), sequences], axis=1)
  generated = np.asarray(experiment.make_sampler(exp).generate(
      params, jax.random.key(config.seed), 2 * half, config.sample.num_steps,
      config.sample.time_shift, jnp.asarray(context), {"actions_bf": jnp.asarray(actions)}))
  videos = np.concatenate([context, np.clip(generated, -1.0, 1.0)], axis=1)

  paddle_rows = [atari.pong_paddle_rows(video[num_context - 1:]) for video in videos]
  movement = {up: [], down: []}  # net movement over each half, by the action pressed in it
  for rows, row_actions in zip(paddle_rows, sequences):
    movement[row_actions[0]].append(rows[half] - rows[0])
    movement[row_actions[-1]].append(rows[-1] - rows[half])
  summary = {}
  for action, sign in ((up, -1.0), (down, 1.0)):
    moved = np.asarray(movement[action])
    found = moved[~np.isnan(moved)]
    summary[names[action]] = dict(
        mean_px=rounded(found.mean()) if len(found) else None,
        share_with_pressed_sign=float(np.mean(sign * np.nan_to_num(moved) > 0.5)),
        halves=len(moved), paddle_found=len(found))
  shares = [followed(rows, row_actions, up, down)
            for rows, row_actions in zip(paddle_rows, actions[:, num_context - 1:])]
  result = {"actions": [[names[a] for a in row] for row in sequences[:2]],
            "paddle_rows": [[rounded(r) for r in rows] for rows in paddle_rows],
            "movement_per_half": summary, "followed": float(np.mean(shares)),
            "recorded_followed": recorded_followed(exp.source, up, down)}
  write_figure(FLAGS.out, videos[:2], result, num_context)
  with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
    json.dump(result, f)
  print(f"{num_contexts} contexts, each driven UP then DOWN and DOWN then UP for"
        f" {half} + {half} frames; paddle rows grow downwards")
  for name, stats in summary.items():
    print(f"  halves pressing {name}: net movement {stats['mean_px']} px on average"
          f" (paddle found in {stats['paddle_found']} of {stats['halves']}); the pressed way in"
          f" {100 * stats['share_with_pressed_sign']:.0f} % of halves")
  print(f"  frames in which the paddle moved the pressed way: {100 * result['followed']:.0f} %"
        f" (recorded held-out episodes, the same count: {100 * result['recorded_followed']:.0f} %)")
  print(f"wrote {FLAGS.out}")


def write_figure(path: str, videos: np.ndarray, result: dict, num_context: int) -> None:
  """The agent's half of every frame, a row per action sequence, over the paddle's row in
  each generated frame."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  width = videos.shape[3]
  half_frames = videos[:, :, :, width // 2:]
  titles = ("UP (RIGHT) then DOWN (LEFT)", "DOWN (LEFT) then UP (RIGHT)")
  figure, axes = plt.subplots(3, 1, figsize=(12, 7.5), height_ratios=(1, 1, 1.4))
  for ax, strip, title in zip(axes, half_frames, titles):
    ax.imshow(media.to_uint8(media.frame_strip(strip[None])), interpolation="nearest")
    ax.set_title(f"{num_context} context frames, then {title}", fontsize=10)
    ax.set_axis_off()
  plot = axes[2]
  frames = np.arange(len(result["paddle_rows"][0]))
  for rows, title in zip(result["paddle_rows"], titles):
    plot.plot(frames, [np.nan if r is None else r for r in rows], marker="o", label=title)
  plot.axvline(len(frames) // 2, color="grey", linestyle="--", linewidth=1)
  plot.invert_yaxis()
  plot.set_xlabel("frame after the last context frame")
  plot.set_ylabel("agent's paddle row (px, top = 0)")
  plot.legend(fontsize=9)
  figure.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # the JSON goes beside it
  figure.savefig(path, dpi=110)
  plt.close(figure)

if __name__ == "__main__":
  errors.run(main)
