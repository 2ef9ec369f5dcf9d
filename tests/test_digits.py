"""The Moving-MNIST digit-identity metric: the classifier, the crops, the cache and the table rows."""

import os
import types

import numpy as np
import pytest
from scipy import ndimage

from videoar import files
from videoar.data.moving_mnist import MovingMnist, mnist_digits
from videoar.eval import digits, run
from videoar.eval.long_horizon import METRIC_TITLES, baselines, format_table, segment_table

DIGIT_SIZE = 16


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def classifier(cache):
    """Trained once for the module (a few seconds), into a fresh cache directory."""
    return digits.load_or_train(DIGIT_SIZE, cache)


@pytest.fixture(scope="module")
def clips():
    """30 clips of 16 frames of the default source: video [B, F, 32, 32, 1], positions, labels."""
    source = MovingMnist(digit_size=DIGIT_SIZE)
    clips = [source.clip(0, index, 16) for index in range(30)]
    return {key: np.stack([clip[key] for clip in clips]) for key in clips[0]}


def separated(positions):
    """[B, F]: the two digits' centres are at least 10 px apart along some axis."""
    return np.abs(positions[..., 0, :] - positions[..., 1, :]).max(axis=-1) >= 10


def test_classifier_reads_held_out_digits(classifier):
    images, labels = mnist_digits(DIGIT_SIZE)
    train, held_out = digits.held_out_split(labels)
    assert len(held_out) == digits.HELD_OUT and not set(train) & set(held_out)
    np.testing.assert_array_equal(np.bincount(labels[held_out]), np.full(10, digits.HELD_OUT // 10))
    accuracy = np.mean(classifier.predict(images[held_out]) == labels[held_out])
    assert accuracy == pytest.approx(classifier.held_out_accuracy)
    assert accuracy > 0.95
    # The moved training copies make a digit drawn a pixel off still read right.
    moved = digits._moved(images[held_out], np.tile([[1, -1]], (len(held_out), 1)))
    assert np.mean(classifier.predict(moved) == labels[held_out]) > 0.9


def test_true_frames_read_near_the_classifier_and_background_near_chance(classifier, clips):
    accuracy = digits.digit_accuracy(clips["video"], clips["positions"], clips["labels"], classifier)
    assert accuracy.shape == (30, 16)
    apart = separated(clips["positions"])
    assert 0.2 < apart.mean() < 0.8  # both kinds of frame are there
    assert accuracy[apart].mean() > classifier.held_out_accuracy - 0.03
    # Frames where the digits overlap count no digit: NaN, not a miss.
    clear = np.abs(clips["positions"][..., 0, :] - clips["positions"][..., 1, :]).max(-1) >= (
        digits.CLEAR_SEPARATION * DIGIT_SIZE)
    np.testing.assert_array_equal(np.isnan(accuracy), ~clear)

    background = np.full_like(clips["video"], -1.0)
    chance = digits.digit_accuracy(background, clips["positions"], clips["labels"], classifier)
    # A black crop reads as one fixed digit: right for about one label in ten.
    assert np.nanmean(chance) < 0.25


def test_crops_at_the_wrong_place_read_worse(classifier, clips):
    video, positions, labels = clips["video"], clips["positions"], clips["labels"]
    apart = separated(positions)
    right = digits.digit_accuracy(video, positions, labels, classifier)[apart].mean()
    # Each digit read at the other one's place: right only where both have the same label.
    swapped = digits.digit_accuracy(video, positions[..., ::-1, :], labels, classifier)[apart].mean()
    same_label = np.mean(labels[:, 0] == labels[:, 1])
    assert swapped < same_label + 0.15 < right
    off = digits.digit_accuracy(video, positions + 4.0, labels, classifier)[apart].mean()
    assert off < right - 0.3


def test_crop_rounds_the_centre_and_stays_inside_the_frame():
    size = 16
    values = np.arange(32 * 32, dtype=np.float64).reshape(32, 32)
    frame = (values / values.max() * 2.0 - 1.0)[None, None, :, :, None]  # [1, 1, 32, 32, 1]
    centres = np.array([[7.5, 7.5], [8.4, 9.1], [-3.0, 40.0], [30.0, 2.0]])
    crops = digits.crop_digits(frame, centres[None, None], size)[0, 0]
    assert crops.shape == (4, size, size)
    expected_top_left = [(0, 0), (1, 2), (0, 16), (16, 0)]
    for crop, (top, left) in zip(crops, expected_top_left):
        np.testing.assert_allclose(crop, values[top:top + size, left:left + size] / values.max())
    with pytest.raises(ValueError, match="does not fit"):
        digits.crop_digits(frame[:, :, :8, :8], centres[None, None], size)
    with pytest.raises(ValueError, match="labels must be"):
        digits.digit_accuracy(frame, centres[None, None, :2], np.zeros((1, 3), int), None)


def test_cache_round_trips_and_replaces_an_unreadable_file(classifier, cache, clips, monkeypatch, capsys):
    (path,) = [os.path.join(cache, name) for name in os.listdir(cache)]  # no temporary file left
    assert path.endswith(".joblib") and f"_{DIGIT_SIZE}px_" in path
    crops = digits.crop_digits(clips["video"], clips["positions"], DIGIT_SIZE)

    def fail(*args):
        raise AssertionError("trained again")

    with monkeypatch.context() as patch:
        patch.setattr(digits, "_train", fail)
        loaded = digits.load_or_train(DIGIT_SIZE, cache)
    assert "loaded from" in capsys.readouterr().out
    assert loaded.held_out_accuracy == classifier.held_out_accuracy
    np.testing.assert_array_equal(loaded.predict(crops), classifier.predict(crops))

    with open(path, "wb") as f:
        f.write(b"not a pickle")
    trained = []
    with monkeypatch.context() as patch:  # trained again, here without the seconds that takes
        patch.setattr(digits, "_train", lambda *args: trained.append(args) or classifier)
        assert digits.load_or_train(DIGIT_SIZE, cache) is classifier
    assert len(trained) == 1 and "unreadable" in capsys.readouterr().out
    with monkeypatch.context() as patch:
        patch.setattr(digits, "_train", fail)
        replaced = digits.load_or_train(DIGIT_SIZE, cache)
    np.testing.assert_array_equal(replaced.predict(crops), classifier.predict(crops))
    assert os.listdir(cache) == [os.path.basename(path)]


def test_cache_directory_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path))
    assert files.cache_directory() == str(tmp_path)
    monkeypatch.delenv(files.CACHE_ENV)
    assert files.cache_directory() == os.path.join(os.path.expanduser("~"), ".cache", "videoar")


def test_ink_ratio_is_one_for_the_truth_above_it_for_swollen_digits_below_for_thinned(clips):
    video = clips["video"]
    np.testing.assert_array_equal(digits.ink_ratio(video, video), 1.0)
    np.testing.assert_array_equal(digits.ink_ratio(np.full_like(video, -1.0), video), 0.0)
    grown = ndimage.grey_dilation(video, size=(1, 1, 3, 3, 1))
    thinned = ndimage.grey_erosion(video, size=(1, 1, 2, 2, 1))
    assert (digits.ink_ratio(grown, video) > 1.2).all()
    assert (digits.ink_ratio(thinned, video) < 0.9).all()
    empty = np.full_like(video[:1, :1], -1.0)
    assert np.isnan(digits.ink_ratio(empty, empty)).all()
    with pytest.raises(ValueError, match="one shape"):
        digits.ink_ratio(video[:, :3], video)


def test_evaluation_reports_digit_accuracy_for_every_method(classifier, clips, monkeypatch):
    num_context = 2
    monkeypatch.setattr(digits, "digit_classifier", lambda digit_size: classifier)
    exp = types.SimpleNamespace(
        source=MovingMnist(digit_size=DIGIT_SIZE),
        config=types.SimpleNamespace(sample=types.SimpleNamespace(context_frames=num_context)),
    )
    (scorer,) = run.frame_scorers(exp, clips)
    truth = clips["video"][:, num_context:]
    methods = dict(baselines(clips["video"][:, :num_context], truth.shape[1]), truth=truth)
    tables = {
        name: segment_table(video, truth, segment_len=8, scorers=[scorer]) for name, video in methods.items()
    }

    expected = digits.digit_accuracy(truth, clips["positions"][:, num_context:], clips["labels"], classifier)
    assert [row["digit_accuracy"] for row in tables["truth"]] == pytest.approx(
        [np.nanmean(expected[:, :8]), np.nanmean(expected[:, 8:])]
    )
    for name in ("copy_last", "background"):
        for row, ceiling in zip(tables[name], tables["truth"]):
            assert row["digit_accuracy"] < ceiling["digit_accuracy"]
    # Of the digits the context showed clear, digit by digit: copying the last context frame
    # keeps a seen digit where it was, so in the first frames it reads right more often there.
    copied = methods["copy_last"]
    positions = clips["positions"][:, num_context:]
    per_frame = np.full(copied.shape[:2], np.nan)
    for b in range(copied.shape[0]):
        # With two digits, both are clear or neither.
        if not separated(clips["positions"][b, :num_context]).any():
            continue
        for f in range(copied.shape[1]):
            if not separated(positions[b, f]):
                continue
            crops = digits.crop_digits(copied[b:b + 1, f:f + 1], positions[b:b + 1, f:f + 1], DIGIT_SIZE)
            read = classifier.predict(crops)[0, 0]
            per_frame[b, f] = np.mean(read == clips["labels"][b])
    assert [row["digit_accuracy_seen"] for row in tables["copy_last"]] == pytest.approx(
        [np.nanmean(per_frame[:, :8]), np.nanmean(per_frame[:, 8:])])
    assert tables["copy_last"][0]["digit_accuracy_seen"] > tables["copy_last"][0]["digit_accuracy"]
    assert [row["ink_ratio"] for row in tables["truth"]] == [1.0, 1.0]
    assert [row["ink_ratio"] for row in tables["background"]] == [0.0, 0.0]
    assert METRIC_TITLES["digit_accuracy"] in format_table(tables)
    assert METRIC_TITLES["ink_ratio"] in format_table(tables)
    assert METRIC_TITLES["digit_accuracy_seen"] in format_table(tables)

    bouncing = types.SimpleNamespace(source=object(), config=exp.config)
    assert run.frame_scorers(bouncing, clips) == []


def test_seen_in_context_counts_a_digit_clear_in_one_context_frame_of_two():
    """seen_in_context against digits clear in frame 0 only, and clear in neither frame."""
    apart, overlapping = [[8.0, 8.0], [24.0, 24.0]], [[12.0, 12.0], [14.0, 14.0]]
    clear_first = np.array([[apart, overlapping]])  # [B=1, C=2, K=2, 2]
    np.testing.assert_array_equal(digits.seen_in_context(clear_first, DIGIT_SIZE), [[True, True]])
    never_clear = np.array([[overlapping, overlapping]])
    np.testing.assert_array_equal(digits.seen_in_context(never_clear, DIGIT_SIZE), [[False, False]])


def test_ink_ratio_counts_only_pixels_brighter_than_mid_grey():
    """ink_ratio of a frame with -0.4 and 0.2 pixels against a truth with only the 0.2 pixel."""
    truth = np.full((1, 1, 4, 4, 1), -1.0)
    truth[0, 0, 1, 1] = 0.2
    frames = np.full_like(truth, -0.4)
    frames[0, 0, 1, 1] = 0.2
    np.testing.assert_array_equal(digits.ink_ratio(frames, truth), [[1.0]])
