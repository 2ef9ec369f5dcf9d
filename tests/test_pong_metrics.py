"""The Pong ball detector and the ball and paddle errors of the evaluation."""

import types

import numpy as np
import pytest

from videoar.data import atari, pipeline
from videoar.eval import run
from videoar.eval.long_horizon import METRIC_TITLES, format_table, segment_table
from videoar.eval.pong import pong_frame_scores

SIZE = 64
WHITE = atari.PONG_BALL_RGB
SCREEN_ROWS, SCREEN_COLS = atari.ATARI_SCREEN


def screen(ball=None, paddle_row=100, opponent_row=80):
    """A 210x160 Pong screen as the game draws it: walls, both scores, both paddles (16 rows
    centred at the given rows) and, at `ball` = (top row, left col), the 4x2 ball."""
    frame = np.empty((SCREEN_ROWS, SCREEN_COLS, 3), np.uint8)
    frame[:] = atari.PONG_BACKGROUND_RGB
    frame[24:34] = WHITE
    frame[194:] = WHITE
    frame[1:20, 36:52] = atari.PONG_OPPONENT_RGB  # the opponent's score
    frame[1:20, 112:128] = atari.PONG_PADDLE_RGB  # ours
    frame[paddle_row - 8:paddle_row + 8, 140:144] = atari.PONG_PADDLE_RGB
    frame[opponent_row - 8:opponent_row + 8, 16:20] = atari.PONG_OPPONENT_RGB
    if ball is not None:
        frame[ball[0]:ball[0] + 4, ball[1]:ball[1] + 2] = WHITE
    return frame


def resized(screens):
    return np.stack([atari.area_resize(frame, SIZE) for frame in screens])


def ball_centre(top, left):
    """The centre of the ball at screen (top, left) in pixels of the 64x64 frame."""
    return np.array([(top + 2.0) * SIZE / SCREEN_ROWS - 0.5, (left + 1.0) * SIZE / SCREEN_COLS - 0.5])


@pytest.mark.parametrize(
    "top, left",
    [(100, 80), (117, 61), (96, 138), (70, 20), (34, 50), (190, 101), (150, 0), (60, 158)],
    ids=["mid-field", "odd-offset", "at-our-paddle", "at-their-paddle", "top-wall", "bottom-wall",
         "left-edge", "right-edge"],
)
def test_ball_is_found_within_a_fraction_of_a_pixel(top, left):
    frames = resized([screen((top, left))])
    found = atari.pong_ball_positions(frames)
    assert found.shape == (1, 2)
    assert np.abs(found[0] - ball_centre(top, left)).max() < 0.3
    # Frames in [-1, 1], as the evaluation has them, read the same.
    np.testing.assert_allclose(atari.pong_ball_positions(frames / 127.5 - 1.0), found, atol=1e-3)


def test_no_ball_is_nan_whatever_else_is_on_screen():
    frames = np.concatenate([
        resized([screen(None, paddle_row=row, opponent_row=200 - row) for row in (45, 100, 182)]),
        np.zeros((1, SIZE, SIZE, 3), np.uint8),
        np.full((1, SIZE, SIZE, 3), atari.PONG_BACKGROUND_RGB, np.uint8),
    ])
    assert np.all(np.isnan(atari.pong_ball_positions(frames)))
    assert np.all(np.isnan(atari.pong_ball_positions(np.full((2, 3, SIZE, SIZE, 3), -1.0))))


def test_ball_is_found_in_a_played_episode(tmp_path, monkeypatch):
    """The game's own screens, recorded while play_episode resizes them, give the truth."""
    screens = []
    resize = atari.area_resize

    def recording_resize(frame, size):
        screens.append(frame.copy())
        return resize(frame, size)

    monkeypatch.setattr(atari, "area_resize", recording_resize)
    episodes = atari.AtariEpisodes(path=str(tmp_path), num_episodes=1, max_frames=300)
    frames, _, _ = atari.play_episode(episodes, 0)
    # Frame 0, the reset screen, is the cartridge's start-up picture in other colours, not a field.
    found = atari.pong_ball_positions(frames[1:])

    white = np.all(np.stack(screens[1:])[:, 34:194] == WHITE, axis=-1)  # the playfield's white: the ball
    whole = white.sum(axis=(1, 2)) == 8
    absent = ~white.any(axis=(1, 2))
    assert whole.sum() > 100 and absent.sum() > 20  # the ball leaves the field after each point
    assert np.mean(~np.isnan(found[whole, 0])) > 0.98
    truth = np.array([ball_centre(rows.min() + 34, cols.min())
                      for rows, cols in (np.nonzero(frame) for frame in white[whole])])
    assert np.nanmax(np.abs(found[whole] - truth)) < 0.3
    assert np.all(np.isnan(found[absent]))


def clip(ball_tops, ball_lefts, paddle_rows):
    """One clip [1, F, 64, 64, 3] in [-1, 1]; a ball top of None draws no ball."""
    screens = [screen(None if top is None else (top, left), paddle_row=row)
               for top, left, row in zip(ball_tops, ball_lefts, paddle_rows)]
    return resized(screens)[None].astype(np.float32) / 127.5 - 1.0


def test_frame_scores_are_zero_on_the_truth_and_the_shift_when_moved():
    tops, lefts, rows = [60, 70, 80, None, 100], [40, 50, 60, 70, 80], [90, 94, 98, 102, 106]
    truth = clip(tops, lefts, rows)
    same = pong_frame_scores(truth, truth)
    assert set(same) == {"ball_position_error", "ball_missed", "paddle_row_error"}
    for values in same.values():
        assert values.shape == (1, 5)
    np.testing.assert_allclose(same["ball_position_error"][0, [0, 1, 2, 4]], 0.0, atol=1e-9)
    np.testing.assert_array_equal(same["ball_missed"][0, [0, 1, 2, 4]], 0.0)
    assert np.isnan(same["ball_position_error"][0, 3]) and np.isnan(same["ball_missed"][0, 3])
    np.testing.assert_allclose(same["paddle_row_error"], 0.0, atol=1e-9)

    moved = clip([None if top is None else top + 10 for top in tops], [left + 5 for left in lefts],
                 [row + 20 for row in rows])
    scores = pong_frame_scores(moved, truth)
    shift = np.hypot(10 * SIZE / SCREEN_ROWS, 5 * SIZE / SCREEN_COLS)
    np.testing.assert_allclose(scores["ball_position_error"][0, [0, 1, 2, 4]], shift, atol=0.2)
    np.testing.assert_allclose(scores["paddle_row_error"], 20 * SIZE / SCREEN_ROWS, atol=0.3)

    lost = pong_frame_scores(clip([None] * 5, lefts, rows), truth)
    np.testing.assert_array_equal(lost["ball_missed"][0, [0, 1, 2, 4]], 1.0)
    assert np.all(np.isnan(lost["ball_position_error"]))

    with pytest.raises(ValueError, match="B, F, H, W, 3"):
        pong_frame_scores(truth[0], truth[0])


def test_frame_scores_refuse_more_generated_clips_than_true_ones():
    """Guards against shapes that numpy broadcasts: generated [2, F, ...] against truth [1, F, ...]
    was scored as if the one true clip were the truth of both."""
    truth = clip([60, 70, 80], [40, 50, 60], [90, 94, 98])
    with pytest.raises(ValueError, match="must both be"):
        pong_frame_scores(np.concatenate([truth, truth]), truth)


def test_evaluation_reports_ball_and_paddle_for_every_method(tmp_path):
    truth = clip([60, 70, 80, 90, 100, 110], [40, 50, 60, 70, 80, 90], [90, 94, 98, 102, 106, 110])
    methods = {"truth": truth, "copy_last": np.repeat(truth[:, :1], 6, axis=1),
               "background": np.full_like(truth, -1.0)}
    source = pipeline.make_source("atari", path=str(tmp_path), game="pong")
    exp = types.SimpleNamespace(source=source)
    scorers = run.frame_scorers(exp, {"video": truth})
    assert scorers == [pong_frame_scores]
    tables = {name: segment_table(video, truth, segment_len=3, scorers=scorers)
              for name, video in methods.items()}

    for row in tables["truth"]:
        assert row["ball_position_error"] == pytest.approx(0.0, abs=1e-9)
        assert row["ball_missed"] == 0.0 and row["paddle_row_error"] == pytest.approx(0.0, abs=1e-9)
    first, second = tables["copy_last"]
    assert 0.0 < first["ball_position_error"] < second["ball_position_error"]
    assert first["paddle_row_error"] < second["paddle_row_error"]
    for row in tables["background"]:
        assert row["ball_missed"] == 1.0 and np.isnan(row["ball_position_error"])
        assert np.isnan(row["paddle_row_error"])
    text = format_table(tables)
    for name in ("ball_position_error", "ball_missed", "paddle_row_error"):
        assert METRIC_TITLES[name] in text

    breakout = pipeline.make_source("atari", path=str(tmp_path), game="breakout")
    assert run.frame_scorers(types.SimpleNamespace(source=breakout), {"video": truth}) == []
    assert not list(tmp_path.iterdir())  # deciding reads no episodes
