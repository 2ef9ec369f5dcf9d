"""The bouncing world with occluders (data.options.occluders), the score of objects recovered
after an occlusion, and objects lost split by whether they overlapped another (eval/objects.py)."""

import os
import sys

import numpy as np
import pytest

from videoar import experiment
from videoar.data import pipeline
from videoar.data.bouncing import BACKGROUND, OCCLUDER_COLOR, BouncingWorld
from videoar.eval import long_horizon, objects, run

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import bouncing_rf  # noqa: E402

BAR = ((0, 11, 32, 10),)  # configs/bouncing_rf.py:occluded


def test_occluders_cover_their_pixels_and_change_nothing_else():
  plain, occluded = BouncingWorld(), BouncingWorld(occluders=BAR)
  mask = occluded.occluder_mask()
  assert mask.sum() == 32 * 10 and mask[:, 11:21].all()
  for index in range(5):
    a, b = plain.clip(0, index, 12), occluded.clip(0, index, 12)
    np.testing.assert_array_equal(b["video"][:, mask], np.broadcast_to(OCCLUDER_COLOR, (12, 320, 3)))
    np.testing.assert_array_equal(b["video"][:, ~mask], a["video"][:, ~mask])
    for key in ("positions", "color_ids", "shapes"):
      np.testing.assert_array_equal(a[key], b[key])


def test_visible_is_the_share_of_the_object_left_outside_the_occluder():
  """One object: its coverage, read back from the unoccluded frame, times 1 - mask."""
  plain = BouncingWorld(num_objects=1)
  occluded = BouncingWorld(num_objects=1, occluders=BAR)
  mask = occluded.occluder_mask()
  for index in range(10):
    a, b = plain.clip(1, index, 20), occluded.clip(1, index, 20)
    colour = plain.palette_array()[a["color_ids"][0]]
    channel = int(np.argmax(np.abs(colour - BACKGROUND)))
    alpha = (a["video"][..., channel] - BACKGROUND) / (colour[channel] - BACKGROUND)
    expected = (alpha * ~mask).sum(axis=(1, 2)) / alpha.sum(axis=(1, 2))
    np.testing.assert_allclose(b["visible"][:, 0], expected, atol=1e-5)
    np.testing.assert_array_equal(a["visible"], np.ones((20, 1), np.float32))


def test_an_object_inside_the_bar_is_hidden_and_the_truth_says_so():
  world = BouncingWorld(occluders=BAR)
  inside = 0
  for index in range(20):
    clip = world.clip(0, index, 30)
    # Both shapes' extent (centre +- 3.5) lies within columns 10.5-20.5 for centres 14-17.
    within = (clip["positions"][..., 1] >= 14) & (clip["positions"][..., 1] <= 17)
    assert np.all(clip["visible"][within] == 0)
    inside += within.sum()
    for frame, k in zip(*np.nonzero(within)):
      colour = world.palette_array()[clip["color_ids"][k]]
      assert not np.any(np.all(clip["video"][frame] == colour, axis=-1))
  assert inside > 10


def test_returned_after_hiding_needs_seen_then_hidden_then_seen():
  visible = np.array([[1.0, 1.0, 0.0, 0.05, 0.5, 1.0, 0.95],  # seen, hidden, back at frame 5
                      [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # hidden first: never seen before
                      [1.0, 0.5, 0.2, 0.5, 1.0, 1.0, 1.0]]).T  # never under HIDDEN_BELOW
  returned = objects.returned_after_hiding(visible)
  np.testing.assert_array_equal(returned[:, 0], [0, 0, 0, 0, 0, 1, 1])
  assert not returned[:, 1:].any()


def _held_out(num_clips=32, context=2, frames=24):
  world = BouncingWorld(occluders=BAR)
  clips = pipeline.eval_clips(world, num_clips=num_clips, num_frames=context + frames, seed=0)
  returned = objects.returned_after_hiding(clips["visible"])[:, context:]
  scorer = objects.RecoveryScorer(clips["positions"][:, context:], clips["color_ids"], returned,
                                  world.palette_array())
  return clips, scorer, returned


def test_recovered_is_one_for_the_truth_and_low_for_copying_the_last_frame():
  clips, scorer, returned = _held_out()
  truth = clips["video"][:, 2:]
  copies = long_horizon.baselines(clips["video"][:, :2], truth.shape[1])
  assert returned[:, 8:].sum() > 20  # objects come back in the second and third segments
  rows = {name: long_horizon.segment_table(video, truth, segment_len=8, scorers=[scorer])
          for name, video in [("truth", truth), ("copy_last", copies["copy_last"]),
                              ("background", copies["background"])]}
  assert np.isnan(rows["truth"][0]["recovered"])  # nothing has come back yet
  for segment in (1, 2):
    assert rows["truth"][segment]["recovered"] == 1.0
    assert rows["copy_last"][segment]["recovered"] <= 0.2
    assert rows["background"][segment]["recovered"] == 0.0


def test_recovered_wants_the_right_place():
  clips, _, returned = _held_out(num_clips=8)
  truth = clips["video"][:, 2:]
  detected = objects.detect_objects(truth, BouncingWorld().palette_array())
  positions = clips["positions"][:, 2:]
  exact = objects.recovered(detected, positions, clips["color_ids"], returned)
  moved = objects.recovered(detected, positions + np.array([0.0, 4.0]), clips["color_ids"],
                            returned)
  assert np.all(exact[returned.any(-1)] == 1) and np.all(np.isnan(exact[~returned.any(-1)]))
  assert np.all(moved[returned.any(-1)] == 0)


def test_evaluation_scores_recovery_only_in_the_occluded_world_and_overlaps_in_both():
  for variant, expected in (("test", False), ("test,occluded", True)):
    exp = experiment.build(bouncing_rf.get_config(variant))
    clips = pipeline.eval_clips(exp.source, num_clips=2, num_frames=26, seed=0)
    scorers = run.frame_scorers(exp, clips)
    assert any(isinstance(s, objects.RecoveryScorer) for s in scorers) is expected
    assert any(isinstance(s, objects.OverlapScorer) for s in scorers)


def test_overlapped_before_matches_a_loop_over_frames_and_pairs():
  rng = np.random.default_rng(0)
  positions = rng.uniform(3.5, 28.5, size=(4, 30, 3, 2))
  radius = 3.5
  got = objects.overlapped_before(positions, radius)
  for b in range(4):
    for k in range(3):
      since = False
      for f in range(30):
        since |= any(max(abs(positions[b, f, k] - positions[b, f, j])) < 2 * radius
                     for j in range(3) if j != k)
        assert got[b, f, k] == since
  assert got.any() and not got.all()


def test_overlap_scorer_counts_erased_overlapped_objects_as_lost_and_the_rest_as_kept():
  """The truth with every object erased from the frame it first overlaps on: all of those are
  lost, none of the others."""
  world = BouncingWorld()
  palette = world.palette_array()
  clips = pipeline.eval_clips(world, num_clips=16, num_frames=26, seed=0)
  overlapped = objects.overlapped_before(clips["positions"], world.radius)[:, 2:]
  truth = clips["video"][:, 2:]
  generated = truth.copy()
  for b, f, k in zip(*np.nonzero(overlapped)):
    colour = palette[clips["color_ids"][b, k]]
    near = np.linalg.norm(generated[b, f] - colour, axis=-1) <= 0.5  # what detection could count
    generated[b, f][near] = BACKGROUND
  scorer = objects.OverlapScorer(clips["color_ids"], overlapped, palette)
  scores = scorer(generated, truth, slice(0, 24))
  after, never = scores["lost_after_overlap"], scores["lost_never_overlapped"]
  assert overlapped.any(-1).any() and (~overlapped).any(-1).any()
  np.testing.assert_array_equal(np.isnan(after), ~overlapped.any(-1))
  np.testing.assert_array_equal(np.isnan(never), ~(~overlapped).any(-1))
  assert np.all(after[overlapped.any(-1)] == 1) and np.all(never[(~overlapped).any(-1)] == 0)
  # The scorer reads the frames it is given: the second half alone gives the second half.
  half = scorer(generated[:, 12:], truth[:, 12:], slice(12, 24))
  np.testing.assert_array_equal(half["lost_after_overlap"], after[:, 12:])


@pytest.mark.parametrize("occluders", [((0, 0, 0, 4),), ((0, 30, 32, 4),), ((0, 1.5, 4, 4),),
                                       ((1, 2, 3),), 5])
def test_bad_occluders_raise_naming_the_field(occluders):
  with pytest.raises(ValueError, match=r"BouncingWorld.occluders=.* must be \(top, left, height, width\)"):
    BouncingWorld(occluders=occluders)
