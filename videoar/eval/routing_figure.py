"""How often history routing picks each history frame: the paper's Figure 8 for our models.

  python -m videoar.eval.routing_figure --config=configs/bouncing_rf.py:routed --workdir=DIR \\
      --out=docs/routing_frequency.png

Runs the trained (EMA) model on held-out clips in the training layout and reads, from every
layer, the fraction of query tokens x heads of each noisy frame i that routed to history frame j
(forcing/teacher.py's routing_frequencies, which the trainer also logs).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from videoar import errors, experiment, files
from videoar.data import pipeline
from videoar.forcing import teacher
from videoar.train import workdir as workdir_lib


def plot(frequencies: np.ndarray, top_k: int, path: str) -> None:
  """Left: the mean over layers as a query x history heatmap (blank where the mask hides the
  history frame: `frequencies` [depth, N, N] NaN there, teacher.routing_frequencies). Right:
  routing frequency by how far back the history frame is (1 = the frame just before), over the
  query frames that may see it, and for the first frame (the sink)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  mean = frequencies.mean(axis=0)
  n = mean.shape[0]
  fig, (ax_map, ax_dist) = plt.subplots(1, 2, figsize=(10, 4))
  image = ax_map.imshow(mean, vmin=0, vmax=1, cmap="viridis")
  ax_map.set_xlabel("history frame j")
  ax_map.set_ylabel("query (noisy) frame i")
  ax_map.set_title(f"routing frequency, top-{top_k}, mean of {len(frequencies)} layers")
  fig.colorbar(image, ax=ax_map)
  distances = np.arange(1, n)

  def over_seen(values):  # 0 at a distance no query frame may look back (within its chunk)
    seen = [v for v in values if np.isfinite(v)]
    return np.mean(seen) if seen else 0.0

  by_distance = [over_seen([mean[i, i - d] for i in range(d, n)]) for d in distances]
  first = [mean[i, 0] for i in range(1, n)]
  ax_dist.bar(distances, by_distance, label="frame i - d")
  ax_dist.plot(distances, first, "o-", color="tab:red", label="first frame (for query i = d)")
  ax_dist.set_xlabel("distance d back in time")
  ax_dist.set_ylabel("fraction of query tokens x heads")
  ax_dist.set_ylim(0, 1)
  ax_dist.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# The history the figure's mask is built from, beside the model's keys: a run trained with a
# window routed over other frames than a figure without one would show.
_HISTORY_KEYS = ("forcing.chunk", "forcing.history_window", "forcing.sink_frames")


def check_out(out: str) -> None:
  """Raises UserError, before the minutes of computing, when the figure cannot be written to
  `out`: a name without .png (matplotlib would add it, and the path printed would not exist), or
  a folder that cannot be made."""
  if not out.endswith(".png"):
    raise errors.UserError(f"--out={out!r} is invalid: the figure is a PNG; name a file ending in"
                           " .png")
  blocking = files.blocking_file(os.path.dirname(os.path.abspath(out)))
  if blocking:
    raise errors.UserError(f"--out={out!r} is invalid: {blocking} is a file, not a folder")
  try:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  except OSError as e:
    raise errors.UserError(f"--out={out!r} is invalid: cannot make its folder ({e.strerror})")


def check_trained_alike(workdir: str, config) -> None:
  """Raises UserError when the run in `workdir` (its run.json) was trained with another model
  or history than `config`. Routing has no parameters: a checkpoint of a dense model loads, and
  the figure would be of a selection the model never trained with; the chunk, window and sink
  decide which frames it may select."""
  differences = [d for d in workdir_lib.trained_differently(workdir, config.to_dict())
                 if d.path.startswith("model.") or d.path in _HISTORY_KEYS]
  if differences:
    raise errors.UserError(f"{workdir} was trained with another model or history:"
                           f" {', '.join(map(str, differences))} (its run.json -> --config); pass"
                           " the config it was trained with")


def main(argv):
  del argv
  from absl import flags, logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every restore's steps at INFO
  config = flags.FLAGS.config
  if not config.model.routing_top_k:
    raise errors.UserError("config.model.routing_top_k=0: this figure is of a routed model"
                           " (e.g. configs/bouncing_rf.py:routed)")
  out = flags.FLAGS.out or os.path.join(flags.FLAGS.workdir, "routing_frequency.png")
  check_out(out)
  exp = experiment.build(config)
  check_trained_alike(flags.FLAGS.workdir, config)
  params = experiment.restore_params(exp, flags.FLAGS.workdir, use_ema=True)
  clips = pipeline.eval_clips(exp.source, num_clips=16, num_frames=config.data.num_frames,
                              seed=config.seed)
  frequencies = teacher.routing_frequencies(
      exp.model, params, jnp.asarray(clips["video"]), exp.model.conditioning(clips),
      chunk=config.forcing.chunk, history_window=config.forcing.history_window,
      sink_frames=config.forcing.sink_frames)
  frequencies = np.asarray(frequencies)
  plot(frequencies, exp.model.routing_top_k, out)
  np.set_printoptions(precision=2, suppress=True)
  print("mean routing frequency [query frame, history frame]:")
  print(frequencies.mean(axis=0))
  print(f"figure: {out}")


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory with checkpoints.")
  flags.DEFINE_string("out", None, "Where to write the figure (default:"
                      " WORKDIR/routing_frequency.png).")
  flags.mark_flags_as_required(["config", "workdir"])
  errors.run(main)
