import dataclasses

import numpy as np
import pytest

from videoar import base_config
from videoar.data.bouncing import SHAPE_NAMES, BouncingWorld, reflect_trajectories
from videoar.data.moving_mnist import MovingMnist, mnist_digits
from videoar.data.pipeline import (
    EVAL_INDEX_OFFSET,
    eval_clips,
    make_source,
    train_batches,
)

SOURCES = [BouncingWorld(), MovingMnist()]
SOURCE_IDS = ["bouncing", "moving_mnist"]


def assert_clips_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def object_alpha(video, color):
    """Per-pixel coverage of one palette colour over black, valid where objects don't overlap."""
    return (video + 1.0) @ (color + 1.0) / ((color + 1.0) @ (color + 1.0))


def centroid(weights):
    """(row, col) weighted mean pixel location of [..., H, W] weights."""
    rows = np.arange(weights.shape[-2])
    cols = np.arange(weights.shape[-1])
    mass = weights.sum(axis=(-2, -1))
    return np.stack(
        [(weights.sum(-1) * rows).sum(-1) / mass, (weights.sum(-2) * cols).sum(-1) / mass], -1
    )


@pytest.mark.parametrize("source", SOURCES, ids=SOURCE_IDS)
def test_clip_shapes_and_range(source):
    clip = source.clip(0, 0, 5)
    channels = 3 if isinstance(source, BouncingWorld) else 1
    assert clip["video"].shape == (5, 32, 32, channels)
    assert clip["video"].dtype == np.float32
    assert clip["positions"].shape == (5, 2, 2)
    assert clip["positions"].dtype == np.float32
    assert clip["video"].min() >= -1.0 and clip["video"].max() <= 1.0
    # Mostly black background with some bright object pixels.
    assert np.median(clip["video"]) == -1.0
    assert clip["video"].max() > 0.5


@pytest.mark.parametrize("source", SOURCES, ids=SOURCE_IDS)
def test_clips_are_deterministic_and_vary_with_index_and_seed(source):
    assert_clips_equal(source.clip(3, 7, 6), source.clip(3, 7, 6))
    assert not np.array_equal(source.clip(3, 7, 6)["video"], source.clip(3, 8, 6)["video"])
    assert not np.array_equal(source.clip(3, 7, 6)["video"], source.clip(4, 7, 6)["video"])


@pytest.mark.parametrize("source", SOURCES, ids=SOURCE_IDS)
def test_clips_are_prefix_consistent(source):
    for index in range(5):
        short, long = source.clip(1, index, 8), source.clip(1, index, 24)
        for key in short:
            if key in ("video", "positions", "visible"):
                np.testing.assert_array_equal(short[key], long[key][:8], err_msg=key)
            else:
                np.testing.assert_array_equal(short[key], long[key], err_msg=key)


@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_bouncing_objects_stay_inside_the_frame(shape):
    world = BouncingWorld(num_objects=1, shapes=(shape,))
    low, high = world.position_bounds
    touched_wall = False
    for index in range(4):
        clip = world.clip(0, index, 64)
        positions = clip["positions"][:, 0]
        assert positions.min() >= low - 1e-4 and positions.max() <= high + 1e-4
        touched_wall |= bool(np.any(np.minimum(positions - low, high - positions) < 1.0))
        # Nothing is cut off at a wall: the drawn area stays the object's full area.
        color = world.palette_array()[clip["color_ids"][0]]
        area = object_alpha(clip["video"], color).sum(axis=(1, 2))
        expected = (2 * world.radius) ** 2 if shape == "square" else np.pi * world.radius**2
        np.testing.assert_allclose(area, expected, rtol=0.03)
    assert touched_wall, "test never exercised a wall bounce"


def test_bouncing_positions_match_rendered_pixels():
    world = BouncingWorld()
    palette = world.palette_array()
    frames_checked = 0
    for index in range(6):
        clip = world.clip(2, index, 24)
        positions = clip["positions"]
        # Both objects fit in a (2 * radius + 1)-pixel box, so this gap means no shared pixel.
        gap = np.abs(positions[:, 0] - positions[:, 1]).max(axis=-1)
        for frame in np.flatnonzero(gap > 2 * world.radius + 2):
            for k, color_id in enumerate(clip["color_ids"]):
                video = clip["video"][frame]
                color = palette[color_id]
                brightness = video + 1.0
                # Keep pixels whose hue is this object's colour (anti-aliased edges included).
                cosine = (brightness @ (color + 1.0)) / (
                    np.linalg.norm(brightness, axis=-1) * np.linalg.norm(color + 1.0) + 1e-9
                )
                weights = np.where(cosine > 0.99, object_alpha(video, color), 0.0)
                assert weights.sum() > 20
                distance = np.abs(centroid(weights) - positions[frame, k]).max()
                assert distance < 0.5, (index, frame, k, distance)
            frames_checked += 1
    assert frames_checked >= 20


def test_bouncing_colours_are_distinct_and_both_shapes_occur():
    shapes_seen = set()
    for num_objects in (2, 6):
        world = BouncingWorld(num_objects=num_objects)
        for index in range(20):
            clip = world.clip(0, index, 1)
            assert len(set(clip["color_ids"].tolist())) == num_objects
            assert clip["color_ids"].dtype == np.int32 and clip["shapes"].dtype == np.int32
            shapes_seen.update(clip["shapes"].tolist())
    assert shapes_seen == {0, 1}


def test_moving_mnist_digits_stay_inside_and_follow_positions():
    source = MovingMnist(num_digits=1)
    low, high = source.position_bounds
    for index in range(4):
        clip = source.clip(0, index, 48)
        positions = clip["positions"][:, 0]
        assert positions.min() >= low - 1e-4 and positions.max() <= high + 1e-4
        intensity = (clip["video"][..., 0] + 1.0) / 2.0
        # The digit is only translated, so its ink is never cut off and its ink centroid
        # sits at a fixed offset from the recorded centre.
        np.testing.assert_allclose(intensity.sum(axis=(1, 2)), intensity[0].sum(), rtol=1e-4)
        offset = centroid(intensity) - positions
        np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape), atol=1e-3)
        assert intensity[0].sum() > 10


def test_moving_mnist_render_takes_the_brighter_digit_where_digits_overlap():
    source = MovingMnist()
    images, _ = mnist_digits(source.digit_size)
    # Two frames, the digits 3 px apart (overlapping) and then apart, at sub-pixel centres.
    positions = np.array([[[15.0, 14.5], [15.0, 17.5]], [[8.25, 8.0], [23.0, 23.75]]])
    both = source.render(positions, images[:2])
    alone = [source.render(positions[:, k:k + 1], images[k:k + 1]) for k in range(2)]
    np.testing.assert_array_equal(both, np.maximum(*alone))
    ink = [image > -1 for image in alone]
    assert (ink[0] & ink[1])[0].any() and not (ink[0] & ink[1])[1].any()


def test_the_base_configs_world_options_are_the_worlds_defaults():
    """Every option of the built-in worlds can be set from the command line (but the palette)."""
    bouncing = {f.name: f.default for f in dataclasses.fields(BouncingWorld)}
    del bouncing["palette"]
    assert base_config.BOUNCING_OPTIONS == bouncing
    assert base_config.MOVING_MNIST_OPTIONS == {
        f.name: f.default for f in dataclasses.fields(MovingMnist)}


def test_moving_mnist_labels():
    labels = np.concatenate([MovingMnist().clip(0, index, 1)["labels"] for index in range(30)])
    assert labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() <= 9
    assert len(np.unique(labels)) >= 5


def test_train_batch_at_step_is_the_global_clip_stream():
    source = BouncingWorld()
    batches = train_batches(source, batch_size=3, num_frames=4, seed=5)
    batch = batches[7]
    assert batch["video"].shape == (3, 4, 32, 32, 3)
    assert batch["color_ids"].shape == (3, 2)
    for j in range(3):
        assert_clips_equal({key: value[j] for key, value in batch.items()}, source.clip(5, 21 + j, 4))


def test_train_batches_are_reproducible_by_step():
    source = BouncingWorld()
    first = train_batches(source, batch_size=4, num_frames=4, seed=0)
    again = train_batches(source, batch_size=4, num_frames=4, seed=0)
    assert_clips_equal(first[3], again[3])
    assert not np.array_equal(first[3]["video"], first[4]["video"])
    other_seed = train_batches(source, batch_size=4, num_frames=4, seed=1)
    assert not np.array_equal(first[3]["video"], other_seed[3]["video"])
    # Resuming from an iterator that starts at step 3 replays the same batches.
    resumed = iter(first[3:].to_iter_dataset())
    assert_clips_equal(next(resumed), first[3])
    assert_clips_equal(next(resumed), first[4])


def test_hosts_split_the_global_batch_disjointly():
    source = BouncingWorld()
    step = 2
    global_batch = train_batches(source, batch_size=4, num_frames=3, seed=0)[step]
    host_batches = [
        train_batches(
            source, batch_size=2, num_frames=3, seed=0, process_index=p, process_count=2
        )[step]
        for p in range(2)
    ]
    host_clips = [h["positions"][b].tobytes() for h in host_batches for b in range(2)]
    global_clips = [global_batch["positions"][j].tobytes() for j in range(4)]
    assert len(set(host_clips)) == 4
    assert sorted(host_clips) == sorted(global_clips)
    for p, host_batch in enumerate(host_batches):
        for b in range(2):
            np.testing.assert_array_equal(
                host_batch["video"][b], global_batch["video"][b * 2 + p]
            )


def test_process_index_out_of_range_raises():
    with pytest.raises(ValueError, match="process_index"):
        train_batches(BouncingWorld(), batch_size=2, num_frames=2, seed=0, process_index=2, process_count=2)


def test_eval_clips_are_held_out():
    source = BouncingWorld()
    held_out = eval_clips(source, num_clips=4, num_frames=6, seed=0)
    assert held_out["video"].shape == (4, 6, 32, 32, 3)
    assert held_out["shapes"].shape == (4, 2)
    assert_clips_equal(
        {key: value[1] for key, value in held_out.items()},
        source.clip(0, EVAL_INDEX_OFFSET + 1, 6),
    )
    batches = train_batches(source, batch_size=8, num_frames=6, seed=0)
    # The last training clip index stays below the held-out range.
    assert len(batches) * 8 <= EVAL_INDEX_OFFSET
    train_positions = {batches[s]["positions"][j].tobytes() for s in range(4) for j in range(8)}
    assert not train_positions & {p.tobytes() for p in held_out["positions"]}


def test_make_source():
    assert make_source("bouncing", num_objects=3) == BouncingWorld(num_objects=3)
    assert make_source("moving_mnist") == MovingMnist()
    with pytest.raises(ValueError, match="data.source='foo' is unknown; allowed: bouncing, moving_mnist"):
        make_source("foo")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_objects": 7}, "num_objects"),
        ({"num_objects": 0}, "num_objects"),
        ({"radius": 16.0}, "radius"),
        ({"radius": 0.0}, "radius"),
        ({"min_speed": 3.0}, "min_speed"),
        ({"palette": ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))}, "palette"),
        ({"shapes": ("triangle",)}, "shapes"),
    ],
)
def test_bad_bouncing_field_raises_naming_it(kwargs, field):
    with pytest.raises(ValueError, match=f"BouncingWorld.{field}"):
        BouncingWorld(**kwargs)


def test_bad_moving_mnist_field_raises_naming_it():
    with pytest.raises(ValueError, match="MovingMnist.digit_size"):
        MovingMnist(digit_size=40)


def test_reflect_trajectories_move_by_at_most_the_velocity_and_reverse_at_the_walls():
    """Per-step moves against |velocity|, positions against [low, high], turns against walls."""
    low, high = 3.0, 28.0
    start = np.array([[5.0, 20.0], [27.0, 4.0]])
    velocity = np.array([[1.7, -2.3], [-0.9, 3.1]])
    positions = reflect_trajectories(start, velocity, low, high, 200)
    assert positions.min() >= low and positions.max() <= high
    steps = np.diff(positions, axis=0)
    assert (np.abs(steps) <= np.abs(velocity) + 1e-9).all()
    turned = np.sign(steps[1:]) != np.sign(steps[:-1])
    t, k, axis = np.nonzero(turned)
    assert len(set(zip(k, axis))) == 4  # every object bounces on both axes
    after = positions[t + 1, k, axis]
    speed = np.abs(velocity[k, axis])
    near_low, near_high = after - low <= speed + 1e-9, high - after <= speed + 1e-9
    assert (near_low | near_high).all()
    # Off the low wall the object moves up, off the high wall down.
    assert (steps[t + 1, k, axis][near_low & ~near_high] > 0).all()
    assert (steps[t + 1, k, axis][near_high & ~near_low] < 0).all()


def test_visible_fraction_of_an_object_counts_what_the_object_drawn_over_it_hides():
    """visible of two squares against their alpha: apart, and object 1 over 4 of its 7 columns."""
    world = BouncingWorld(num_objects=2, shapes=("square",))
    positions = np.array([[[10.0, 10.0], [10.0, 13.0]], [[8.0, 8.0], [22.0, 22.0]]])
    shapes = np.zeros(2, np.int64)
    _, visible = world._render(positions, np.array([0, 1]), shapes)
    # Square 0 covers columns 7..13, square 1 columns 10..16 over it: columns 7..9 show.
    np.testing.assert_allclose(visible, [[3 / 7, 1.0], [1.0, 1.0]], rtol=1e-6)
