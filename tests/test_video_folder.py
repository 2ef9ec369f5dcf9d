"""video_folder: files decoded as a player shows them, whole videos held out for evaluation, the
check of held-out clips before training, and a folder of short clips that trains and evaluates
with the default config."""

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import av
import imageio_ffmpeg
import numpy as np
import pytest

from test_data_sources import NumberedFrames, tiny_video
from videoar.data import pipeline, video_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_KEYS = ("data.options.eval_fraction", "eval.num_clips", "sample.num_videos",
             "sample.length_multiple", "sample.context_frames", "data.options.stride")


def ffmpeg(*args: str) -> bytes:
  """Runs imageio-ffmpeg's ffmpeg (a player's reference) and returns its stdout."""
  return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error",
                         "-y", *args], check=True, capture_output=True).stdout


def shown_by_ffmpeg(path, height: int, width: int) -> np.ndarray:
  """The frames ffmpeg shows (it turns them by the display matrix), uint8 [T, height, width, 3]."""
  raw = ffmpeg("-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-")
  return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def write_video(path, frames: np.ndarray, codec: str = "libx264", crf: int = 12,
                **container_options) -> None:
  """Encodes uint8 [T, H, W, 3] frames at 25 fps (libx264 at quality `crf`, 0: lossless)."""
  with av.open(str(path), "w", options=container_options) as container:
    stream = container.add_stream(codec, rate=25)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
      stream.options = {"crf": str(crf)}
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def gradients(height: int, width: int) -> np.ndarray:
  """Red rises left to right, green top to bottom: every turn and mirror of it differs."""
  rgb = np.full((height, width, 3), 128.0)
  rgb[..., 0] = np.linspace(0, 255, width)[None, :]
  rgb[..., 1] = np.linspace(0, 255, height)[:, None]
  return rgb.astype(np.uint8)


def centre(picture: np.ndarray, size: int) -> np.ndarray:
  top, left = (picture.shape[0] - size) // 2, (picture.shape[1] - size) // 2
  return picture[top:top + size, left:left + size]


def error(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.abs(a.astype(np.float64) - b).mean())


def turned(picture: np.ndarray, rotation: int, hflip: bool) -> np.ndarray:
  """`picture` turned `rotation` degrees counter-clockwise, then mirrored left-right."""
  picture = np.rot90(picture, rotation // 90)
  return picture[:, ::-1] if hflip else picture


@pytest.fixture(scope="module")
def landscape(tmp_path_factory):
  """Three frames of gradients, coded 48 wide and 32 high, with no display matrix."""
  path = tmp_path_factory.mktemp("landscape") / "landscape.mp4"
  write_video(path, np.stack([gradients(32, 48)] * 3))
  return path


@pytest.mark.parametrize("rotation,hflip", itertools.product((0, 90, 180, 270), (False, True)))
def test_display_matrix_turns_frames_as_a_player_shows_them(landscape, tmp_path, rotation,
                                                            hflip):
  """All eight turns and mirrors (a vertical flip is 180 degrees and a mirror), flagged the way
  ffmpeg flags them: the decoded frame is the centre of the turned picture, which for 90 and 270
  degrees is 32 wide and 48 high, so the crop must come from its rows, not its columns."""
  path = tmp_path / "flagged.mp4"
  ffmpeg("-display_rotation", str(rotation), *(["-display_hflip"] if hflip else []),
         "-i", str(landscape), "-c", "copy", str(path))
  frames = video_folder.decode(str(path), 32, "crop")
  assert frames.shape == (3, 32, 32, 3)
  shown = turned(gradients(32, 48), rotation, hflip)
  assert shown.shape[:2] == ((48, 32) if rotation in (90, 270) else (32, 48))
  assert error(frames[0], centre(shown, 32)) < 4
  player = shown_by_ffmpeg(path, *shown.shape[:2])
  assert len(player) == 3 and error(frames[0], centre(player[0], 32)) < 2
  # The pattern tells every orientation apart: the expected one is by far the nearest.
  errors = {(r, f): error(frames[0], centre(turned(gradients(32, 48), r, f), 32))
            for r, f in itertools.product((0, 90, 180, 270), (False, True))}
  assert min(errors, key=errors.get) == (rotation, hflip)
  assert sorted(errors.values())[1] > 5 * errors[rotation, hflip]


def test_anamorphic_pixels_are_stretched_before_the_crop(tmp_path):
  """32x32 coded pixels with a 2:1 sample aspect ratio show as 64x32: the square crop keeps the
  middle half of the coded columns, stretched."""
  coded = tmp_path / "coded.mp4"
  write_video(coded, np.stack([gradients(32, 32)] * 2))
  path = tmp_path / "anamorphic.mp4"
  ffmpeg("-i", str(coded), "-c", "copy", "-aspect", "2:1", str(path))
  with av.open(str(path)) as container:
    assert container.streams.video[0].sample_aspect_ratio == 2
  frames = video_folder.decode(str(path), 32, "crop")
  shown = np.repeat(gradients(32, 32), 2, axis=1)
  assert error(frames[0], centre(shown, 32)) < 4
  # Red runs over coded columns 8 to 23 of 32, not over all of them as the square pixels would.
  np.testing.assert_allclose(frames[0, :, [0, -1], 0].mean(axis=1), [66, 189], atol=8)


@pytest.fixture
def trimmed(tmp_path):
  """60 frames, frame t white in its first t + 1 of 64 columns, cut without re-encoding to start
  at frame 8: an mp4 whose edit list hides the 8 pre-roll frames it still holds."""
  columns = np.arange(64)[None, :] <= np.arange(60)[:, None]
  frames = np.broadcast_to(columns[:, None, :, None] * 255, (60, 64, 64, 3)).astype(np.uint8)
  whole = tmp_path / "whole" / "whole.mp4"
  whole.parent.mkdir()
  write_video(whole, frames, crf=0)
  folder = tmp_path / "videos"
  folder.mkdir()
  ffmpeg("-ss", "0.32", "-i", str(whole), "-c", "copy", str(folder / "trimmed.mp4"))
  return folder


def shown_frame_numbers(frames: np.ndarray) -> np.ndarray:
  return (frames.mean(axis=(1, 3)) > 128).sum(axis=1) - 1


def test_trimmed_mp4_shows_its_frames_and_is_not_skipped(trimmed):
  path = trimmed / "trimmed.mp4"
  with av.open(str(path)) as container:
    assert container.streams.video[0].frames == 60  # the container still counts the pre-roll
  player = shown_by_ffmpeg(path, 64, 64)
  np.testing.assert_array_equal(shown_frame_numbers(player), np.arange(8, 60))
  frames = video_folder.decode(str(path), 64, "crop")
  np.testing.assert_array_equal(shown_frame_numbers(frames), np.arange(8, 60))
  folder = video_folder.VideoFolder(path=str(trimmed), size=16)
  assert folder.lengths().tolist() == [52] and folder.skipped() == {}


def test_index_of_an_older_decoder_is_decoded_again(trimmed):
  """A cache that the previous decoder wrote, which called the trimmed file truncated, is redone
  rather than trusted."""
  folder = video_folder.VideoFolder(path=str(trimmed), size=16)
  index_path = os.path.join(folder.cache_directory, "index.json")
  stat = os.stat(trimmed / "trimmed.mp4")
  os.makedirs(folder.cache_directory)
  with open(index_path, "w") as f:
    json.dump({"trimmed.mp4": {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                               "error": "truncated: 52 of 60 frames"}}, f)
  assert folder.lengths().tolist() == [52] and folder.skipped() == {}
  with open(index_path) as f:
    assert json.load(f)["trimmed.mp4"]["decoder"] == video_folder.DECODER


@pytest.mark.parametrize("name,codec,options", [
    ("cut.mp4", "libx264", {"movflags": "faststart"}), ("cut.mkv", "libx264", {}),
    ("cut.webm", "libvpx", {}), ("cut.avi", "mpeg4", {})])
def test_file_cut_short_is_skipped_with_the_reason(tmp_path, name, codec, options):
  noise = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
  whole = tmp_path / ("whole" + os.path.splitext(name)[1])
  write_video(whole, noise, codec, **options)
  data = whole.read_bytes()
  (tmp_path / name).write_bytes(data[:len(data) // 2])
  folder = video_folder.VideoFolder(path=str(tmp_path), size=8)
  assert folder.lengths().tolist() == [30]
  assert list(folder.skipped()) == [name]
  assert folder.skipped()[name].startswith("truncated")


def test_videos_in_hidden_subfolders_are_not_listed(tmp_path):
  """Guards against os.walk descending into hidden folders: DIR/.cache/x.mp4 (an editor's or a
  tool's cache, or .videoar_cache itself) is no training video, though DIR/sub/y.mp4 is."""
  for name in ("a.mp4", os.path.join("sub", "b.mp4"), os.path.join(".cache", "x.mp4"),
               os.path.join("sub", ".hidden", "y.mp4")):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  assert video_folder.video_files(str(tmp_path)) == ["a.mp4", os.path.join("sub", "b.mp4")]


@pytest.mark.parametrize("intervals,whole", [(1.5, True), (2.5, False)])
def test_a_declared_end_within_the_tolerated_shortfall_is_not_truncation(tmp_path, monkeypatch,
                                                                         intervals, whole):
  """Guards against tolerating no shortfall at all: a container that declares its stream ends
  up to MAX_SHORTFALL_FRAMES frame intervals after the last decoded frame (containers round
  timestamps and durations) is decoded whole; one that declares more is truncated."""
  path = str(tmp_path / "v.mp4")
  tiny_video(path)  # 6 frames at 25 fps
  declared_end = video_folder._declared_end
  monkeypatch.setattr(video_folder, "_declared_end",
                      lambda container, stream: declared_end(container, stream) + intervals / 25)
  if whole:
    assert video_folder.decode(path, 8, "crop").shape == (6, 8, 8, 3)
  else:
    with pytest.raises(video_folder.UndecodableVideo, match="^truncated: frames end at"):
      video_folder.decode(path, 8, "crop")


def test_a_subfolder_holding_only_an_undecodable_video_is_no_class(tmp_path):
  """Guards against counting every subfolder with a video file as a class: one whose only video
  cannot be decoded gives no clip, so it must not take a label (nor count in id_counts)."""
  for name in ("cats", "dogs"):
    (tmp_path / name).mkdir()
    tiny_video(str(tmp_path / name / "v.mp4"))
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "bad.mp4").write_bytes(b"")
  folder = video_folder.VideoFolder(path=str(tmp_path), size=8, labels=True)
  assert list(folder.skipped()) == [os.path.join("broken", "bad.mp4")]
  assert folder.class_names() == ["cats", "dogs"]
  assert folder.id_counts() == {"label": 2}
  assert [int(folder.read(i, np.arange(2))["label"]) for i in range(2)] == [0, 1]


def test_video_folder_holds_out_whole_videos():
  source = pipeline.RecordedClips(NumberedFrames((48,) * 16), eval_fraction=0.1,
                                  hold_out="sequences")
  held = source.held_out_sequences()
  assert len(held) == 2  # round(0.1 x 16)
  # Training clips of every other video, from its first frame to its last.
  count = source.num_clips(5)
  assert count == 14 * 44
  trained = {int(f) for i in range(count) for f in source.clip(0, i, 5)["frame_ids"]}
  assert {f // 100 for f in trained} == set(range(16)) - set(held.tolist())
  assert trained == {s * 100 + t for s in range(16) if s not in held for t in range(48)}
  # One non-overlapping 26-frame window in each held-out video, the same whatever the run's seed.
  assert source.num_clips(26, held_out=True) == 2
  clips = pipeline.eval_clips(source, num_clips=2, num_frames=26, seed=0)
  np.testing.assert_array_equal(
      clips["frame_ids"], pipeline.eval_clips(source, num_clips=2, num_frames=26, seed=7)[
          "frame_ids"])
  assert sorted(clips["frame_ids"][:, 0] // 100) == sorted(held)
  assert not trained & set(clips["frame_ids"].ravel().tolist())
  # At least one video, unless nothing is held out; never all of them.
  few = pipeline.RecordedClips(NumberedFrames((48,) * 16), eval_fraction=0.01,
                               hold_out="sequences")
  assert len(few.held_out_sequences()) == 1
  none = pipeline.RecordedClips(NumberedFrames((48,) * 16), eval_fraction=0.0,
                                hold_out="sequences")
  assert len(none.held_out_sequences()) == 0 and none.num_clips(5) == 16 * 44
  alone = pipeline.RecordedClips(NumberedFrames((48,)), eval_fraction=0.1, hold_out="sequences")
  # One line that says what to do (was: "... or set eval_fraction=0", which the held-out clips'
  # check then refused, naming eval_fraction again).
  with pytest.raises(ValueError, match=r"has 1 sequence, and whole sequences are held out for"
                     r" evaluation \(data.options.eval_fraction=0.1\): add a second, one to"
                     " train on and one to evaluate on"):
    alone.num_clips(5)
  most = pipeline.RecordedClips(NumberedFrames((48,) * 2), eval_fraction=0.9, hold_out="sequences")
  with pytest.raises(ValueError, match=r"holds out 2 of the 2 sequences .* leaving none to train"
                     " on: add sequences, or lower eval_fraction"):
    most.num_clips(5)
  with pytest.raises(ValueError, match="RecordedClips.hold_out='videos' is unknown"):
    pipeline.RecordedClips(NumberedFrames((48,)), hold_out="videos")


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory):
  """16 videos of 48 frames, 64 wide and 48 high: a square moving across each."""
  folder = tmp_path_factory.mktemp("short_clips")
  for i in range(16):
    frames = np.zeros((48, 48, 64, 3), np.uint8)
    for t in range(48):
      x = (3 * t + 5 * i) % 56
      frames[t, 20:28, x:x + 8] = (255, 200, 0)
    write_video(folder / f"clip_{i:02d}.mp4", frames)
  return folder


def test_make_source_holds_out_whole_files_only_for_video_folder(short_clips):
  assert pipeline.HOLD_OUT == {"atari": "tail", "video_folder": "sequences",
                               "array_record": "tail"}
  source = pipeline.make_source("video_folder", path=str(short_clips))
  assert source.hold_out == "sequences" and len(source.held_out_sequences()) == 2
  assert source.num_clips(26, held_out=True) == 2
  assert pipeline.frame_shape(source) == (64, 64, 3)


def test_check_eval_clips_says_in_one_line_what_is_missing_and_what_to_change():
  videos = NumberedFrames((48,) * 16)
  source = pipeline.RecordedClips(videos, stride=2, hold_out="sequences")
  with pytest.raises(ValueError) as raised:
    pipeline.check_eval_clips(source, num_clips=2, num_frames=26)
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(
      f"{videos} holds out only 0 clips of 26 frames at stride 2 (51 frames each) in 2 whole"
      " sequences of its 16 (48 frames), fewer than the 2 asked for: ")
  assert all(key in message for key in EVAL_KEYS)
  with pytest.raises(ValueError, match="holds out only 0 clips of 26 frames"):
    pipeline.eval_clips(source, num_clips=2, num_frames=26, seed=0)
  tail = pipeline.RecordedClips(videos, eval_fraction=0.25)
  with pytest.raises(ValueError, match=r"only 16 clips of 10 frames at stride 1 \(10 frames"
                     r" each\) in the last 0.25 of each of its 16 sequences, fewer than the 17"):
    pipeline.check_eval_clips(tail, num_clips=17, num_frames=10)
  pipeline.check_eval_clips(dataclasses.replace(source, stride=1), num_clips=2, num_frames=26)
  pipeline.check_eval_clips(pipeline.make_source("bouncing"), num_clips=10**6, num_frames=10**3)
  with pytest.raises(ValueError, match="num_clips=0 must be at least 1"):
    pipeline.check_eval_clips(source, num_clips=0, num_frames=26)


def test_frame_shape_is_read_from_the_source():
  assert pipeline.frame_shape(pipeline.make_source("bouncing", size=16)) == (16, 16, 3)
  assert pipeline.frame_shape(pipeline.RecordedClips(NumberedFrames((3,)))) == (2, 2, 1)


def test_folder_of_short_clips_trains_and_evaluates_with_the_default_config(short_clips,
                                                                             tmp_path):
  workdir = tmp_path / "workdir"
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/video_folder.py",
       f"--config.data.path={short_clips}", f"--workdir={workdir}",
       "--config.train.num_steps=2", "--config.train.log_every=1",
       "--config.train.checkpoint_every=2", "--config.eval.num_clips=2",
       "--config.sample.num_videos=2"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "eval.json").exists()
