"""History routing inside the DiT: dense equivalence and the frequencies behind Figure 8."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import wan_1p3b
from videoar import experiment, trainer
from videoar.attention import masks
from videoar.data import array_record
from videoar.forcing import teacher
from videoar.models import dit

N = 5


def _params(model, video):
  params = model.init(jax.random.key(0), video, jnp.zeros(video.shape[:2]),
                      frame_pos_f=jnp.arange(N), mask=masks.BlockCausal(N), previous_bfhwc=video)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


def test_model_with_top_k_covering_the_history_equals_the_dense_model():
  video = jax.random.normal(jax.random.key(2), (2, N, 8, 8, 3))
  dense = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, previous_frame_input=True)
  routed = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, previous_frame_input=True,
                         routing_top_k=N)
  params = _params(dense, video)
  sequence = jnp.concatenate([video, video], axis=1)
  t = jnp.concatenate([jnp.zeros((2, N)), jnp.full((2, N), 0.7)], axis=1)
  kwargs = dict(frame_pos_f=jnp.tile(jnp.arange(N), 2), mask=masks.TeacherForcing(N),
                previous_bfhwc=sequence)
  np.testing.assert_allclose(routed.apply(params, sequence, t, **kwargs)[0],
                             dense.apply(params, sequence, t, **kwargs)[0], atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2])
def test_routing_frequencies_pick_exactly_top_k_history_frames(chunk):
  """With chunks of 2 the histogram and the routing figure averaged each history frame over
  every later query frame, the one in its own chunk too, which the mask never lets pick it:
  hidden cells are NaN, apart from a choice of 0."""
  video = jax.random.normal(jax.random.key(3), (2, N, 8, 8, 3))
  k = 2
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, previous_frame_input=True,
                        routing_top_k=k)
  frequencies = np.asarray(teacher.routing_frequencies(model, _params(model, video), video, {},
                                                       chunk=chunk))
  assert frequencies.shape == (2, N, N)
  for i in range(N):
    # Noisy frame i sees the h frames before its chunk and picks min(k, h) of them.
    h = i - i % chunk
    np.testing.assert_allclose(frequencies[:, i, :h].sum(axis=-1), min(k, h), rtol=1e-6)
    assert np.isnan(frequencies[:, i, h:]).all()


def test_the_routing_histogram_averages_each_frame_over_the_query_frames_that_may_pick_it(
    tmp_path):
  from videoar.train import metrics_log
  nan = np.nan
  # Chunks of 2 over 4 frames: frames 2 and 3 may pick 0 and 1; nothing may pick 2 or 3.
  frequencies = np.array([[nan, nan, nan, nan], [nan, nan, nan, nan], [0.2, 0.6, nan, nan],
                          [0.4, 1.0, nan, nan]])
  logged = {}
  log = metrics_log.MetricsLog(str(tmp_path), is_main=True, resume_step=0)
  log.writer.add_histogram_raw = lambda name, **kw: logged.update(kw)
  log.routing_histogram(5, frequencies)
  np.testing.assert_allclose(logged["bucket_counts"], [0.3, 0.8, 0.0, 0.0])


def test_a_routed_model_conditioned_on_text_logs_its_routing_while_training(tmp_path):
  """Every routed model that reads conditioning (text, actions, labels) stopped with a traceback
  at its first logged step, the steps before it lost: the routing histogram ran the model with
  no conditioning (`CausalDiT(text_dim=8) needs text_bld`). configs/wan_1p3b.py:tiny,rf_routed
  is one (text, a sink and a window, which the histogram now masks as training does)."""
  rng = np.random.default_rng(0)
  data = str(tmp_path / "latents")
  array_record.write_sequences(
      data, [{"video": rng.standard_normal((24,) + wan_1p3b.TINY_LATENT_SHAPE).astype(np.float32),
              "text": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(4)],
      num_shards=1)
  config = wan_1p3b.get_config("tiny,rf_routed")
  config.data.path = data
  config.train.num_steps = 2
  config.train.log_every = 1
  trainer.train(experiment.build(config), str(tmp_path / "run"))
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2]


def test_the_routing_figures_out_is_checked_before_computing(tmp_path):
  """`--out` without .png wrote OUT.png and printed OUT, a path that does not exist; one whose
  folder cannot be made was a traceback after the minutes of computing."""
  from videoar import errors
  from videoar.eval import routing_figure

  routing_figure.check_out(str(tmp_path / "new" / "figure.png"))
  assert (tmp_path / "new").is_dir()
  (tmp_path / "notes").write_text("kept")
  for out, why in ((str(tmp_path / "figure"), "the figure is a PNG; name a file ending in .png"),
                   (str(tmp_path / "notes" / "f.png"), f"{tmp_path}/notes is a file, not a folder"),
                   ("/proc/videoar_nope/f.png", "cannot make its folder (")):
    with pytest.raises(errors.UserError) as refused:
      routing_figure.check_out(out)
    assert str(refused.value).startswith(f"--out={out!r} is invalid: {why}")
  assert (tmp_path / "notes").read_text() == "kept"


def test_the_routing_figure_refuses_a_run_trained_with_another_history(tmp_path):
  """The figure of a run trained with a window was computed without it (and the reverse), with
  no word: only the model's keys were compared with the run's record."""
  from configs import bouncing_rf
  from videoar import errors
  from videoar.eval import routing_figure
  from videoar.train import workdir as workdir_lib

  windowed = bouncing_rf.get_config("routed,test")
  windowed.forcing.history_window = 1
  workdir_lib.RunRecord(windowed.to_dict(), {}).save(str(tmp_path))
  routing_figure.check_trained_alike(str(tmp_path), windowed)
  with pytest.raises(errors.UserError) as refused:
    routing_figure.check_trained_alike(str(tmp_path), bouncing_rf.get_config("routed,test"))
  assert str(refused.value) == (
      f"{tmp_path} was trained with another model or history: forcing.history_window 1 -> 0 (its"
      " run.json -> --config); pass the config it was trained with")
