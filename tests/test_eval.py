import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from videoar.data.bouncing import BouncingWorld
from videoar.eval import perceptual, run
from videoar.eval.long_horizon import baselines, format_table, segment_table
from videoar.eval.metrics import psnr, ssim
from videoar.eval.objects import (compare_objects, detect_objects, object_speed,
                                  overlapped_before, overlapping)

PALETTE = np.array(
    [
        [1.0, -1.0, -1.0],  # red
        [-1.0, 1.0, -1.0],  # green
        [-1.0, -1.0, 1.0],  # blue
        [1.0, 1.0, -1.0],  # yellow
        [1.0, -1.0, 1.0],  # magenta
        [-1.0, 1.0, 1.0],  # cyan
    ]
)
SIZE = 32
HALF_EXTENT = 3.5


def draw_frame(objects, size=SIZE):
    """objects: (centre_row, centre_col, rgb, shape) with shape "square" or "disc"."""
    frame = np.full((size, size, 3), -1.0)
    rows, cols = np.mgrid[0:size, 0:size]
    for row, col, rgb, shape in objects:
        if shape == "square":
            inside = (np.abs(rows - row) <= HALF_EXTENT) & (np.abs(cols - col) <= HALF_EXTENT)
        else:
            inside = (rows - row) ** 2 + (cols - col) ** 2 <= HALF_EXTENT**2
        frame[inside] = rgb
    return frame


def moving_clip(num_frames, color_ids):
    """One clip of two objects in straight-line motion: frames [F, H, W, 3], positions [F, 2, 2]."""
    t = np.arange(num_frames, dtype=np.float64)
    positions = np.stack(
        [np.stack([8.0 + 0.5 * t, 10.0 + 0.3 * t], -1), np.stack([22.0 - 0.2 * t, 24.0 - 0.4 * t], -1)],
        axis=1,
    )
    frames = np.stack(
        [
            draw_frame([(*positions[f, k], PALETTE[color_ids[k]], ("square", "disc")[k]) for k in range(2)])
            for f in range(num_frames)
        ]
    )
    return frames, positions


def reference_ssim(x, y, data_range):
    """Straightforward per-pixel SSIM: every valid window position and channel, one at a time."""
    size, sigma = 7, 1.5
    offsets = np.arange(size) - (size - 1) / 2
    taps = np.exp(-(offsets**2) / (2 * sigma**2))
    window = np.outer(taps, taps) / np.outer(taps, taps).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for channel in range(x.shape[-1]):
        for i in range(x.shape[0] - size + 1):
            for j in range(x.shape[1] - size + 1):
                a = x[i : i + size, j : j + size, channel]
                b = y[i : i + size, j : j + size, channel]
                mu_a, mu_b = np.sum(window * a), np.sum(window * b)
                var_a = np.sum(window * (a - mu_a) ** 2)
                var_b = np.sum(window * (b - mu_b) ** 2)
                cov = np.sum(window * (a - mu_a) * (b - mu_b))
                values.append(
                    (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
                )
    return np.mean(values)


def test_psnr_is_infinite_for_identical_frames_and_falls_with_noise():
    rng = np.random.default_rng(0)
    frames = rng.uniform(-1, 1, (2, 3, 8, 8, 3))
    assert psnr(frames, frames).shape == (2, 3)
    assert np.all(psnr(frames, frames) == np.inf)
    noise = rng.normal(size=frames.shape)
    scores = [psnr(frames + scale * noise, frames).mean() for scale in (0.01, 0.1, 0.5)]
    assert scores[0] > scores[1] > scores[2]
    # A constant error of 0.1 on a range of 2: 10 log10(4 / 0.01).
    np.testing.assert_allclose(psnr(frames + 0.1, frames), 10 * np.log10(400.0))


def test_ssim_is_one_for_identical_frames_and_falls_with_noise():
    frames, _ = moving_clip(4, [0, 2])
    np.testing.assert_allclose(ssim(frames, frames), 1.0, atol=1e-12)
    noise = np.random.default_rng(1).normal(size=frames.shape)
    scores = [ssim(frames + scale * noise, frames) for scale in (0.05, 0.2, 0.8)]
    assert scores[0].shape == (4,)
    assert np.all(scores[0] < 1.0)
    assert np.all(scores[0] > scores[1]) and np.all(scores[1] > scores[2])


def test_ssim_matches_per_pixel_loop():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (11, 12, 2))
    y = np.clip(x + 0.3 * rng.normal(size=x.shape), -1, 1)
    assert abs(ssim(x, y) - reference_ssim(x, y, 2.0)) < 1e-6
    assert abs(ssim(x, y, data_range=1.0) - reference_ssim(x, y, 1.0)) < 1e-6


def test_detect_objects_finds_centroids_and_nothing_else():
    red_centre, blue_centre = (8.2, 9.7), (22.0, 20.5)
    frame = draw_frame([(*red_centre, PALETTE[0], "square"), (*blue_centre, PALETTE[2], "disc")])
    frame[30, 1] = PALETTE[1]  # a stray pixel, below min_pixels
    frame[0, 30] = [0.0, 0.0, 0.0]  # far from every colour: belongs to none
    detected = detect_objects(np.stack([frame, frame])[None], PALETTE)

    assert detected["present"].shape == (1, 2, 6)
    assert detected["centroid"].shape == (1, 2, 6, 2)
    assert detected["mean_color"].shape == (1, 2, 6, 3)
    present = detected["present"][0, 0]
    assert present.tolist() == [True, False, True, False, False, False]
    centroid = detected["centroid"][0, 0]
    assert np.linalg.norm(centroid[0] - red_centre) < 0.5
    assert np.linalg.norm(centroid[2] - blue_centre) < 0.5
    assert np.all(np.isnan(centroid[~present]))
    blue_pixels = int(np.all(frame == PALETTE[2], axis=-1).sum())
    assert detected["pixel_count"][0, 0].tolist() == [49, 1, blue_pixels, 0, 0, 0]
    np.testing.assert_allclose(detected["mean_color"][0, 0, [0, 2]], PALETTE[[0, 2]])


def test_compare_objects_counts_lost_invented_and_drift():
    red, blue, green = (8.0, 9.0), (22.0, 20.0), (15.0, 26.0)
    frames = np.stack(
        [
            draw_frame([(*red, PALETTE[0], "square"), (*blue, PALETTE[2], "disc")]),
            draw_frame([(*red, PALETTE[0], "square")]),  # blue lost
            draw_frame(
                [(*red, PALETTE[0], "square"), (*blue, PALETTE[2], "disc"), (*green, PALETTE[1], "square")]
            ),  # green invented
            draw_frame([]),  # everything lost
            draw_frame([(*red, PALETTE[0] + [0, 0.2, 0], "square"), (*blue, PALETTE[2], "disc")]),  # red drifted
        ]
    )[None]
    positions = np.broadcast_to(np.array([red, blue]), (1, 5, 2, 2))
    result = compare_objects(detect_objects(frames, PALETTE), positions, np.array([[0, 2]]), PALETTE)

    assert result["lost"].tolist() == [[0, 1, 0, 2, 0]]
    assert result["invented"].tolist() == [[0, 0, 1, 0, 0]]
    errors = result["position_error"][0]
    assert np.all(errors[[0, 1, 2, 4]] < 0.5) and np.isnan(errors[3])
    drift = result["color_drift"][0]
    np.testing.assert_allclose(drift[[0, 1, 2]], 0.0, atol=1e-12)
    np.testing.assert_allclose(drift[4], 0.1)  # mean over the two found objects of 0.2 and 0
    assert np.isnan(drift[3])


def test_compare_objects_aligns_per_clip_color_ids_with_the_clip_axis():
    # B == F == 2, so aligning per-clip ids [B, K] with the frame axis would silently be wrong.
    color_ids = np.array([[0, 2], [1, 3]])
    clips = [moving_clip(2, ids) for ids in color_ids]
    frames = np.stack([frames for frames, _ in clips])
    positions = np.stack([positions for _, positions in clips])
    result = compare_objects(detect_objects(frames, PALETTE), positions, color_ids, PALETTE)
    assert result["lost"].tolist() == [[0, 0], [0, 0]]
    assert result["invented"].tolist() == [[0, 0], [0, 0]]
    assert np.all(result["position_error"] < 0.5)

    with pytest.raises(ValueError, match="true_color_ids"):
        compare_objects(detect_objects(frames, PALETTE), positions, color_ids[:, :1], PALETTE)


def test_segment_table_splits_and_localises_a_late_perturbation():
    truth = np.stack([moving_clip(24, ids)[0] for ids in ([0, 2], [3, 5])])
    rng = np.random.default_rng(3)
    generated = truth + 0.01 * rng.normal(size=truth.shape)
    generated[:, 16:] += 0.3 * rng.normal(size=generated[:, 16:].shape)
    rows = segment_table(generated, truth, segment_len=8)

    assert [row["segment"] for row in rows] == ["0-7", "8-15", "16-23"]
    assert [row["frames"] for row in rows] == [8, 8, 8]
    assert set(rows[0]) == {"segment", "frames", "psnr", "ssim"}
    assert abs(rows[0]["psnr"] - rows[1]["psnr"]) < 0.5
    assert rows[2]["psnr"] < rows[1]["psnr"] - 10
    assert rows[2]["ssim"] < rows[1]["ssim"]


def test_segment_table_keeps_a_partial_last_segment_and_reports_objects():
    color_ids = np.array([[0, 2], [3, 5]])
    clips = [moving_clip(20, ids) for ids in color_ids]
    truth = np.stack([frames for frames, _ in clips])
    positions = np.stack([positions for _, positions in clips])
    generated = truth.copy()
    generated[:, 16:] = -1.0  # the model loses everything in the last segment
    rows = segment_table(generated, truth, segment_len=8, positions=positions, color_ids=color_ids, palette=PALETTE)

    assert [(row["segment"], row["frames"]) for row in rows] == [("0-7", 8), ("8-15", 8), ("16-19", 4)]
    for row in rows[:2]:
        assert row["psnr"] == np.inf and row["ssim"] == pytest.approx(1.0)
        assert row["position_error"] < 0.5
        assert row["lost"] == 0 and row["invented"] == 0 and row["color_drift"] == pytest.approx(0.0)
    assert rows[2]["lost"] == 2 and rows[2]["invented"] == 0
    assert np.isnan(rows[2]["position_error"]) and np.isnan(rows[2]["color_drift"])

    with pytest.raises(ValueError, match="together"):
        segment_table(generated, truth, segment_len=8, positions=positions)


def test_object_speed_is_the_true_speed_on_true_frames_and_zero_for_a_frozen_copy():
    """Whole-pixel steps keep the drawn centroids exact: the truth moves sqrt(5) and 1 px a frame;
    a continuation that freezes after frame 3 (as copying does) moves 0 from frame 4 on; an object
    missing from a frame is left out of the two steps it would take part in."""
    color_ids = np.array([1, 4])
    steps = np.array([[1.0, 2.0], [0.0, -1.0]])
    positions = np.array([8.0, 6.0]), np.array([22.0, 25.0])
    positions = np.stack([np.stack([positions[k] + f * steps[k] for k in range(2)]) for f in range(6)])
    truth = np.stack([draw_frame([(*positions[f, k], PALETTE[color_ids[k]], "square") for k in range(2)])
                      for f in range(6)])[None]
    speed = object_speed(detect_objects(truth, PALETTE), color_ids)
    assert speed.shape == (1, 6) and np.isnan(speed[0, 0])
    np.testing.assert_allclose(speed[0, 1:], (np.sqrt(5.0) + 1.0) / 2, rtol=1e-9)

    frozen = truth.copy()
    frozen[:, 4:] = truth[:, 3:4]
    np.testing.assert_allclose(object_speed(detect_objects(frozen, PALETTE), color_ids)[0, 4:], 0.0)

    one_gone = truth.copy()
    one_gone[0, 2] = draw_frame([(*positions[2, 1], PALETTE[4], "square")])  # object 0 missing
    speed = object_speed(detect_objects(one_gone, PALETTE), color_ids)
    np.testing.assert_allclose(speed[0, [2, 3]], 1.0, rtol=1e-9)
    np.testing.assert_allclose(speed[0, [1, 4, 5]], (np.sqrt(5.0) + 1.0) / 2, rtol=1e-9)

    rows = segment_table(frozen, truth, segment_len=3, positions=positions[None], color_ids=color_ids,
                         palette=PALETTE)
    assert rows[0]["speed"] == pytest.approx((np.sqrt(5.0) + 1.0) / 2)  # frames 1-2; 0 has no step
    assert rows[1]["speed"] == pytest.approx(0.0)  # frames 4-5: the frozen copy


def test_baselines_shapes_and_values():
    context = np.random.default_rng(4).uniform(-1, 1, (2, 3, 32, 32, 3)).astype(np.float32)
    result = baselines(context, 10)
    assert set(result) == {"copy_last", "background"}
    for frames in result.values():
        assert frames.shape == (2, 10, 32, 32, 3) and frames.dtype == np.float32
    np.testing.assert_array_equal(result["copy_last"], np.broadcast_to(context[:, -1:], (2, 10, 32, 32, 3)))
    assert np.all(result["background"] == -1.0)


def test_format_table_names_every_method_segment_and_metric():
    truth = np.stack([moving_clip(12, [0, 2])[0]])
    context = truth[:, :1]
    continuation = truth[:, 1:]
    tables = {"model": segment_table(continuation + 0.05, continuation, segment_len=4)}
    for name, frames in baselines(context, continuation.shape[1]).items():
        tables[name] = segment_table(frames, continuation, segment_len=4)
    text = format_table(tables)

    for word in ("model", "copy_last", "background", "0-3", "4-7", "8-10", "PSNR", "SSIM"):
        assert word in text
    psnr_block = text.split("\n\n")[0].splitlines()
    assert len(psnr_block) == 3 + len(tables)  # title, header, rule, one line per method
    model_line = next(line for line in psnr_block if line.startswith("model"))
    assert f"{tables['model'][0]['psnr']:.2f}" in model_line


def test_learning_curve_reads_the_evaluations_and_the_training_minutes(tmp_path):
    from videoar.eval import learning_curve

    lines = [
        {"step": 50, "loss": 0.3, "steps_per_s": 1.0},
        {"step": 100, "loss": 0.2, "steps_per_s": 0.5},
        {"step": 100, "eval/lost/0-7": 1.5, "eval/lost/8-15": 2.0, "eval/invented/0-7": 0.1},
        {"step": 150, "loss": 0.1, "steps_per_s": 2.0},
        {"step": 150, "eval/lost/0-7": 0.5, "eval/lost/8-15": None},
    ]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    evals, minutes = learning_curve.read(str(tmp_path))
    assert evals[100] == {"lost/0-7": 1.5, "lost/8-15": 2.0, "invented/0-7": 0.1}
    # 50 steps at 1/s, then 50 at 0.5/s, then 50 at 2/s: 50 + 100 = 150 s, then 175 s.
    assert minutes == {100: pytest.approx(2.5), 150: pytest.approx(175 / 60)}
    text = learning_curve.tables(evals, minutes, ["lost"])
    assert "| 100 | 2.5 | 1.5 | 2 |" in text and "| 150 | 2.9 | 0.5 | - |" in text


def test_learning_curve_orders_the_segment_columns_by_their_first_frame():
    """Guards against columns sorted as strings (0-7, 16-23, 24-31, 8-15): the segments run
    0-7, 8-15, 16-23, 24-31 left to right, each cell under its own segment."""
    from videoar.eval import learning_curve

    segments = ["16-23", "0-7", "24-31", "8-15"]  # as a dict of a record may hold them
    evals = {100: {f"lost/{segment}": float(segment.split("-")[0]) for segment in segments}}
    text = learning_curve.tables(evals, {100: 1.0}, ["lost"])
    assert "| step | minutes | 0-7 | 8-15 | 16-23 | 24-31 |" in text, text
    assert "| 100 | 1.0 | 0 | 8 | 16 | 24 |" in text, text


def test_learning_curve_over_runs_is_mean_and_sd_at_the_common_steps(tmp_path):
    from videoar.eval import learning_curve

    runs = [({100: {"lost/0-7": 1.0, "lost/8-15": 2.0}, 200: {"lost/0-7": 0.5}}, {100: 1.0, 200: 2.0}),
            ({100: {"lost/0-7": 3.0, "lost/8-15": None}}, {100: 3.0})]
    mean, sd, minutes = learning_curve.over_runs(runs)
    # Step 200 only one run evaluated; lost/8-15 only one run has.
    assert mean == {100: {"lost/0-7": 2.0}} and sd == {100: {"lost/0-7": pytest.approx(2**0.5)}}
    assert minutes == {100: 2.0}
    assert "| 100 | 2.0 | 2.00 ± 1.41 |" in learning_curve.tables(mean, minutes, ["lost"], sd)


def test_learning_curve_refuses_runs_of_different_worlds(tmp_path):
    """Two workdirs whose run.json name other data are not averaged as seeds of one arm."""
    def run_on(name, source, options):
        workdir = tmp_path / name
        workdir.mkdir()
        evaluation = {"step": 100, "eval/lost/0-7": 1.0}
        (workdir / "metrics.jsonl").write_text(json.dumps(evaluation) + "\n")
        record = {"config": {"data": {"source": source, "options": options}}, "dataset": {}}
        (workdir / "run.json").write_text(json.dumps(record))
        return str(workdir)

    bouncing = run_on("bouncing", "bouncing", {"num_objects": 2})
    seed1 = run_on("seed1", "bouncing", {"num_objects": 2})
    mnist = run_on("mnist", "moving_mnist", {"num_digits": 2})
    fewer = run_on("fewer", "bouncing", {"num_objects": 1})

    def curve(*workdirs):
        return subprocess.run(
            [sys.executable, "-m", "videoar.eval.learning_curve", f"--workdir={','.join(workdirs)}",
             "--metrics=lost"],
            capture_output=True, text=True, cwd=os.path.join(os.path.dirname(__file__), ".."))

    for other, difference in ((mnist, "data.source bouncing -> moving_mnist"),
                              (fewer, "data.options.num_objects 2 -> 1")):
        refused = curve(bouncing, other)
        assert refused.returncode == 2 and refused.stderr == (
            f"error: {bouncing} and {other} were made on different data: {difference}; combine and"
            " compare runs of one world only\n"), refused.stderr[-2000:]
    same = curve(bouncing, seed1)
    assert same.returncode == 0, same.stderr[-2000:]
    assert "| 100 | 0.0 | 1.00 ± 0.00 |" in same.stdout
    # A run.json that is not a record: a reader's advice, not training's "use a new --workdir".
    (tmp_path / "seed1" / "run.json").write_text("[1, 2]")
    damaged = curve(bouncing, seed1)
    assert damaged.returncode == 2 and damaged.stderr == (
        f"error: {seed1}/run.json is not a run record (a JSON object of 'config' and 'dataset'"
        " objects): restore it from a copy\n"), damaged.stderr[-2000:]


# score (videoar.eval.run) on bouncing-world clips, against answers known without it.
SCORE_CONTEXT, SCORE_GENERATED, SCORE_SEGMENT = 4, 8, 4


def score_experiment():
    """The little of an Experiment that score reads: the context, segment length and world."""
    config = SimpleNamespace(sample=SimpleNamespace(context_frames=SCORE_CONTEXT),
                             eval=SimpleNamespace(segment_len=SCORE_SEGMENT))
    return SimpleNamespace(config=config, source=BouncingWorld())


def bouncing_clips(world, indices=(1, 10)):
    """Clips of `world` (seed 0; these overlap nowhere), context and continuation, stacked."""
    num_frames = SCORE_CONTEXT + SCORE_GENERATED
    clips = [world.clip(0, index, num_frames) for index in indices]
    return {key: np.stack([clip[key] for clip in clips]) for key in clips[0]}


def run_score(monkeypatch, exp, clips, generated, **kwargs):
    """run.score without LPIPS (its network is slow and not what these tests check)."""
    monkeypatch.setattr(perceptual, "is_pixels", lambda frames: False)
    return run.score(exp, clips, generated, **kwargs)


def test_score_of_the_true_continuation_finds_every_object_where_it_is(monkeypatch):
    """The model row of generated == truth: nothing lost or invented, positions within 0.5 px."""
    exp = score_experiment()
    clips = bouncing_clips(exp.source)
    assert not overlapping(clips["positions"], exp.source.radius).any()  # none hidden
    truth = clips["video"][:, SCORE_CONTEXT:]
    rows = run_score(monkeypatch, exp, clips, truth.copy(), baselines=False)["model"]
    assert [row["segment"] for row in rows] == ["0-3", "4-7"]
    for row in rows:
        assert row["lost"] == 0 and row["invented"] == 0
        assert row["position_error"] < 0.5


def test_score_copy_last_repeats_the_last_context_frame(monkeypatch):
    """copy_last's rows equal segment_table's of a hand-built repeat of truth[:, context - 1]."""
    exp = score_experiment()
    clips = bouncing_clips(exp.source)
    truth = clips["video"][:, SCORE_CONTEXT:]
    tables = run_score(monkeypatch, exp, clips, truth.copy())
    copy = np.repeat(clips["video"][:, SCORE_CONTEXT - 1 : SCORE_CONTEXT], SCORE_GENERATED, axis=1)
    expected = segment_table(copy, truth, segment_len=SCORE_SEGMENT,
                             positions=clips["positions"][:, SCORE_CONTEXT:],
                             color_ids=clips["color_ids"], palette=exp.source.palette_array())
    for row, want in zip(tables["copy_last"], expected, strict=True):
        for name in ("psnr", "ssim", "position_error", "lost", "invented"):
            assert row[name] == pytest.approx(want[name], nan_ok=True), name
    assert np.isfinite(tables["copy_last"][0]["psnr"])  # no true future frame copied


def test_score_counts_overlaps_of_the_context_in_the_continuation(monkeypatch):
    """Overlap mask and figures equal the whole-clip overlapped_before, sliced after the context."""
    # Objects overlapping only in the context have overlapped in every generated frame: the
    # all-background baseline loses them all "after overlap", none "never overlapped".
    exp = score_experiment()
    world = exp.source
    t = np.arange(SCORE_CONTEXT + SCORE_GENERATED, dtype=np.float64)[:, None]
    # One object still at (5, 5), the other leaving it diagonally at 2 px a frame: the centres are
    # 2t apart on both axes, within 2 * radius = 7 (overlapping) only at t <= 3, the context.
    positions = np.stack([np.full((len(t), 2), 5.0), 5.0 + 2.0 * t + np.zeros(2)], axis=1)
    color_ids, shapes = np.array([0, 2]), np.array([0, 0])
    video, visible = world._render(positions, color_ids, shapes)
    clips = {"video": video[None], "positions": positions[None].astype(np.float32),
             "color_ids": color_ids[None], "shapes": shapes[None], "visible": visible[None]}
    touching = overlapping(clips["positions"], world.radius)[0]
    assert touching[:SCORE_CONTEXT].all() and not touching[SCORE_CONTEXT:].any()

    [scorer] = run.frame_scorers(exp, clips)
    whole = overlapped_before(clips["positions"], world.radius)[:, SCORE_CONTEXT:]
    np.testing.assert_array_equal(scorer.overlapped, whole)
    assert scorer.overlapped.all()

    truth = clips["video"][:, SCORE_CONTEXT:]
    tables = run_score(monkeypatch, exp, clips, truth.copy())
    for row in tables["background"]:
        assert row["lost_after_overlap"] == 1.0 and np.isnan(row["lost_never_overlapped"])
    for row in tables["model"]:
        assert row["lost_after_overlap"] == 0.0 and np.isnan(row["lost_never_overlapped"])
