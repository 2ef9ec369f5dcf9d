"""Whether a Pong world model keeps the ball and the agent's paddle where the game has them.

The ball and the paddle are found the same way in generated and true frames
(atari.pong_ball_positions, atari.pong_paddle_rows) and compared frame by frame.
"""

import numpy as np

from videoar.data.atari import pong_ball_positions, pong_paddle_rows


def pong_frame_scores(
    generated: np.ndarray, truth: np.ndarray, frames: slice | None = None
) -> dict[str, np.ndarray]:
    """Per-frame ball and paddle errors of generated Pong frames; a long_horizon.FrameScorer.

    Args:
      generated, truth: [B, F, H, W, 3] Pong frames, uint8 or in [-1, 1].
      frames: which frames of the continuation these are; unused, everything is in the frames.

    Returns float64 [B, F] arrays, NaN where a frame does not count:
      ball_position_error: distance in pixels between the generated and the true ball, where
        both are visible.
      ball_missed: 1 where the true ball is visible and the generated frame has none, else 0;
        NaN where no true ball is visible (a ball off the field after a point).
      paddle_row_error: |generated - true| row of the agent's paddle in pixels, where both are
        visible.
    Raises ValueError on shapes that differ or are not [B, F, H, W, 3].
    """
    del frames
    generated, truth = np.asarray(generated), np.asarray(truth)
    if generated.shape != truth.shape or generated.ndim != 5 or generated.shape[-1] != 3:
        raise ValueError(
            f"generated and truth must both be [B, F, H, W, 3], got {generated.shape} and {truth.shape}"
        )
    true_ball = pong_ball_positions(truth)
    generated_ball = pong_ball_positions(generated)
    true_visible = ~np.isnan(true_ball[..., 0])
    generated_visible = ~np.isnan(generated_ball[..., 0])
    frames_first = (-1,) + generated.shape[2:]  # pong_paddle_rows takes [F, H, W, 3]
    true_paddle = pong_paddle_rows(truth.reshape(frames_first)).reshape(truth.shape[:2])
    generated_paddle = pong_paddle_rows(generated.reshape(frames_first)).reshape(generated.shape[:2])
    return {
        "ball_position_error": np.linalg.norm(generated_ball - true_ball, axis=-1),
        "ball_missed": np.where(true_visible, (~generated_visible).astype(np.float64), np.nan),
        "paddle_row_error": np.abs(generated_paddle - true_paddle),
    }
