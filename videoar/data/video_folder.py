"""Every video file under a folder, recursively, as frame sequences for training.

The first use decodes every file once with PyAV, as a player shows it (`decode`: turned by its
display matrix, anamorphic pixels stretched, frames hidden by an edit list left out), fits each
frame to size x size RGB ("crop": scale the short side to `size` and keep the centre; "resize":
scale both sides to `size`, which distorts the aspect ratio), and caches the frames as uint8 .npy
files under PATH/.videoar_cache/SIZE_FIT/, with an index.json of every file's size, modification
time, frame count and DECODER version. Later uses decode only files that are new or changed, or
were decoded by another DECODER, and a clip is a memory-mapped slice, so reading costs no
decoding: the cache takes size * size * 3 bytes a frame (12 KiB at 64x64). A folder this process
cannot write (a read-only dataset mount) keeps its cache in $VIDEOAR_CACHE/video_folder/ instead
(default ~/.cache/videoar/video_folder/, where the evaluation keeps its caches), one folder per
data.path. The cache is derived data: an index.json that cannot be read, or a cached file that
is missing or cut, is decoded again with a warning.

A file that cannot be decoded (corrupt, empty, truncated: decoding fails or reports errors
part-way, or the frames end early of the duration the file declares; a frame count that differs
from the container's is no sign of it), or a symlink to nothing or in a loop, is skipped with a
warning naming it and why, on every run, and the total skipped is logged; a folder with no
decodable video is an error. With labels=True, a video's class is its top-level subfolder
(classes sorted by name). The pipeline holds out whole videos for evaluation
(pipeline.RecordedClips, hold_out="sequences").
"""

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import multiprocessing
import os
import re
import threading

import numpy as np
from absl import logging

from videoar import files

VIDEO_EXTENSIONS = frozenset({
    ".avi", ".flv", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ogv", ".webm",
    ".wmv"})
FITS = ("crop", "resize")
CACHE_DIR = ".videoar_cache"
# Raised whenever decode() shows files differently, so that a cache of an older decode is redone
# (2: display matrix, aspect ratio, edit lists, truncation by time).
DECODER = 2
# Frame intervals that the last frame may end short of the declared duration in a whole file:
# containers round timestamps and durations.
MAX_SHORTFALL_FRAMES = 2
_MATROSKA_DURATION = re.compile(r"(\d+):(\d+):(\d+(?:\.\d*)?)")


class UndecodableVideo(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class VideoFolder:
  """The videos under `path`, at size x size RGB.

  Attributes:
    path: the folder, searched recursively (hidden folders, the cache among them, excepted).
    size: frame side after fitting.
    fit: "crop" keeps the aspect ratio and the centre; "resize" keeps the whole picture.
    labels: give every clip a `label`, the index of its top-level subfolder's name.
  """

  path: str
  size: int = 64
  fit: str = "crop"
  labels: bool = False

  def __post_init__(self):
    if not isinstance(self.size, int) or self.size < 1:
      raise ValueError(f"VideoFolder.size={self.size!r} must be an integer >= 1")
    if self.fit not in FITS:
      raise ValueError(f"VideoFolder.fit={self.fit!r} is unknown; allowed: {', '.join(FITS)}")

  @property
  def cache_directory(self) -> str:
    """PATH/.videoar_cache/SIZE_FIT, or under $VIDEOAR_CACHE when PATH is not writable."""
    return os.path.join(_cache_root(self.path), f"{self.size}_{self.fit}")

  def lengths(self) -> np.ndarray:
    return np.asarray([video["frames"] for video in _videos(self)], np.int64)

  def class_names(self) -> list[str]:
    """The label names, in label order: the top-level subfolders holding a decodable video."""
    return _class_names(self)

  def id_counts(self) -> dict[str, int]:
    """{"label": the number of classes} with labels, else {}: every label is below it."""
    return {"label": len(self.class_names())} if self.labels else {}

  def skipped(self) -> dict[str, str]:
    """Each video file that could not be decoded, and why."""
    return {file: entry["error"] for file, entry in _index(self).items() if "error" in entry}

  def read(self, sequence: int, frames: np.ndarray) -> dict[str, np.ndarray]:
    video = _videos(self)[sequence]
    clip = {"video": _frames(os.path.join(self.cache_directory, video["cache"]))[frames]}
    if self.labels:
      clip["label"] = np.int32(video["label"])
    return clip


def video_files(path: str) -> list[str]:
  """Paths relative to `path` of the files with a video extension under it, sorted."""
  found = []
  for directory, subdirectories, names in os.walk(path):
    subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
    found += [os.path.relpath(os.path.join(directory, name), path) for name in names
              if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS]
  return sorted(found)


def caches_in_place(path: str) -> bool:
  """Whether the frames of the folder `path` are cached in PATH/.videoar_cache, which this
  process can write (or make); if not (a shared, read-only dataset mount), they go under
  $VIDEOAR_CACHE (_cache_root)."""
  root = os.path.join(path, CACHE_DIR)
  # access() says no for a read-only file system too, root or not.
  return os.access(root if os.path.isdir(root) else path, os.W_OK)


@functools.cache
def _cache_root(path: str) -> str:
  """PATH/.videoar_cache when this process can write it (or make it); else, for a folder it
  cannot write (a shared, read-only dataset mount), $VIDEOAR_CACHE/video_folder/NAME-HASH, HASH
  of the folder's real path, so that every such folder has its own."""
  if caches_in_place(path):
    return os.path.join(path, CACHE_DIR)
  real = os.path.realpath(path)
  key = hashlib.sha1(os.fsencode(real)).hexdigest()[:16]
  return os.path.join(files.cache_directory(), "video_folder", f"{os.path.basename(real)}-{key}")


@contextlib.contextmanager
def _writing_cache(folder: "VideoFolder"):
  """Turns an OSError of writing the cache (a full disk, no permission, a file in the way) into
  a ValueError naming the cache directory and what to do."""
  try:
    yield
  except OSError as e:
    directory = folder.cache_directory
    blocking = files.blocking_file(directory)
    if blocking:
      remedy = (f"{blocking} is a file where the cache's folder goes: move it away (the cache is"
                " made again by decoding)")
    elif _cache_root(folder.path) == os.path.join(folder.path, CACHE_DIR):
      remedy = "free space there or fix its permissions (deleting it costs only decoding again)"
    else:
      remedy = (f"data.path is not writable, so the cache goes under ${files.CACHE_ENV}"
                f" (default ~/.cache/videoar): set ${files.CACHE_ENV} to a folder this run can"
                " write")
    raise ValueError(f"data.path={folder.path!r}: the decoded-frame cache {directory} cannot be"
                     f" written ({e.strerror or e}): {remedy}") from e


def decode(path: str, size: int, fit: str) -> np.ndarray:
  """All frames of the first video stream as a player shows them, fitted: uint8 [T, size, size, 3].

  Frames are turned as the display matrix says (rotations by multiples of 90 degrees, mirrors),
  and pixels are stretched by the sample aspect ratio before fitting. Frames that an edit list
  hides (the pre-roll of an mp4 cut without re-encoding) are not shown: FFmpeg's demuxer drops
  them, so T can be fewer than the frames the container counts. Raises UndecodableVideo saying
  why if the file cannot be opened, has no video stream or no frame, fails to decode part-way or
  decodes a frame with errors, ends early (its last frame ends over MAX_SHORTFALL_FRAMES frame
  intervals before the duration the file declares for the stream), or is turned by an angle
  that is not a multiple of 90 degrees.
  """
  import av  # only building the cache decodes

  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise UndecodableVideo("no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      aspect = stream.sample_aspect_ratio or 1
      frames, last = [], None
      try:
        for frame in container.decode(stream):
          if frame.is_corrupt:  # concealed damage, such as a last packet cut in half
            raise UndecodableVideo(
                f"truncated or corrupt: frame {len(frames)} decoded with errors")
          frames.append(_fit(frame, aspect, size, fit))
          last = frame
      except av.FFmpegError as e:
        raise UndecodableVideo(
            f"truncated or corrupt: decoding failed after {len(frames)} frames ({e.strerror})"
        ) from e
      if last is None:
        raise UndecodableVideo("no frame")
      shortfall = _shortfall(container, stream, last)
  except av.FFmpegError as e:
    raise UndecodableVideo(e.strerror) from e
  except OSError as e:
    raise UndecodableVideo(str(e)) from e
  if shortfall:
    raise UndecodableVideo(shortfall)
  return np.stack(frames)


def _shortfall(container, stream, last) -> str | None:
  """Why the stream ended early (the last frame `last` ends well before the duration the file
  declares), or None; None too when the file declares no duration or `last` has no time."""
  declared = _declared_end(container, stream)
  rate = stream.guessed_rate
  if declared is None or last.time is None or not rate:
    return None
  interval = 1.0 / float(rate)
  shown = last.time + (float(last.duration * last.time_base) if last.duration else interval)
  if declared - shown <= MAX_SHORTFALL_FRAMES * interval:
    return None
  return f"truncated: frames end at {shown:.2f} s of the {declared:.2f} s the file declares"


def _declared_end(container, stream) -> float | None:
  """When the file says the video stream ends, in seconds: from the stream's duration, a
  Matroska/WebM per-stream DURATION tag, or the file's duration when it holds no other stream."""
  start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
  if stream.duration:
    return start + float(stream.duration * stream.time_base)
  match = _MATROSKA_DURATION.fullmatch(stream.metadata.get("DURATION", ""))
  if match:
    hours, minutes, seconds = match.groups()
    return start + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
  if container.duration and len(container.streams) == 1:
    return (container.start_time or 0) / 1e6 + container.duration / 1e6
  return None


def _fit(frame, aspect, size: int, fit: str) -> np.ndarray:
  """The frame as shown (pixels `aspect` times as wide as high, turned by its display matrix),
  fitted to uint8 [size, size, 3]."""
  transpose, flip_rows, flip_columns = _orientation(frame)
  if fit == "resize":
    width = height = size
  else:
    # Scale in the decoded orientation, where the aspect ratio applies; turning keeps the scale.
    shown_width, shown_height = frame.width * aspect, frame.height
    scale = size / min(shown_width, shown_height)
    width = max(size, round(shown_width * scale))
    height = max(size, round(shown_height * scale))
  rgb = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
  if transpose:
    rgb = rgb.transpose(1, 0, 2)
  if flip_rows:
    rgb = rgb[::-1]
  if flip_columns:
    rgb = rgb[:, ::-1]
  top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
  return rgb[top:top + size, left:left + size]


def _orientation(frame) -> tuple[bool, bool, bool]:
  """(transpose, then flip rows, then flip columns) that turn the decoded picture into the one
  the frame's display matrix shows; raises UndecodableVideo for an angle that is not a multiple
  of 90 degrees."""
  matrix = frame.side_data.get("DISPLAYMATRIX")
  if matrix is None:
    return False, False, False
  # FFmpeg's display matrix maps a decoded pixel (x, y) to (a x + c y, b x + d y) on the display
  # (16.16 fixed point, y down), up to a translation.
  a, b, _, c, d = np.frombuffer(bytes(matrix), np.int32)[:5].astype(np.float64)
  tolerance = 1e-3 * max(abs(a), abs(b), abs(c), abs(d))
  if abs(b) <= tolerance and abs(c) <= tolerance and min(abs(a), abs(d)) > tolerance:
    return False, d < 0, a < 0
  if abs(a) <= tolerance and abs(d) <= tolerance and min(abs(b), abs(c)) > tolerance:
    return True, b < 0, c < 0
  raise UndecodableVideo(
      f"display matrix turns frames by {frame.rotation} degrees; only multiples of 90 are shown")


def _class_name(folder: VideoFolder, file: str) -> str:
  if os.sep not in file:
    raise ValueError(f"VideoFolder.labels=True, but {os.path.join(folder.path, file)} is in no"
                     " subfolder to name its class")
  return file.split(os.sep)[0]


@functools.cache
def _class_names(folder: VideoFolder) -> list[str]:
  return sorted({_class_name(folder, file) for file, entry in _index(folder).items()
                 if "error" not in entry})


@functools.cache
def _index(folder: VideoFolder) -> dict[str, dict]:
  """{file: {bytes, mtime_ns, decoder, frames, cache} or {bytes, mtime_ns, decoder, error}} for
  every video file ({error} alone for a symlink to nothing or in a loop), decoding the files the
  cached index lacks, holds at another size or time or from another DECODER, or whose cached
  frames are gone; logs the skipped files every time. Raises ValueError naming data.path when
  it is missing, a file, or holds no decodable video, or when the cache cannot be written."""
  # os.walk finds no video in either, which would read as an empty folder.
  if not os.path.exists(folder.path):
    raise ValueError(
        f"data.path={folder.path!r} does not exist; data.path names a folder of videos")
  if not os.path.isdir(folder.path):
    raise ValueError(f"data.path={folder.path!r} is a file; data.path names a folder of videos")
  index_path = os.path.join(folder.cache_directory, "index.json")
  # Process-prefetch workers load the same index; the main process has reported it.
  report = multiprocessing.parent_process() is None
  if report and _cache_root(folder.path) != os.path.join(folder.path, CACHE_DIR):
    logging.warning("video_folder: data.path=%s is not writable: its decoded frames are cached"
                    " in %s", folder.path, folder.cache_directory)
  cached = _cached_index(index_path)
  paths = video_files(folder.path)
  index, changed = {}, False
  for file in paths:
    try:
      stat = os.stat(os.path.join(folder.path, file))
    except OSError as e:  # os.walk lists a symlink to nothing, or in a loop, as a file
      index[file] = {"error": _unreadable(os.path.join(folder.path, file), e)}
      continue
    entry = cached.get(file)
    if entry is None or not _current(folder, file, entry, stat):
      entry = _decode_to_cache(folder, file, stat)
      changed = True
    index[file] = entry
  if changed or set(cached) != set(index):
    with _writing_cache(folder):
      os.makedirs(folder.cache_directory, exist_ok=True)
      with files.replaced(index_path) as f:
        json.dump(index, f, indent=1)
  skipped = {file: entry["error"] for file, entry in index.items() if "error" in entry}
  decoded = [entry for entry in index.values() if "error" not in entry]
  if not decoded:
    reason = f"all {len(paths)} video files failed to decode" if paths else "no video file"
    raise ValueError(f"data.path={folder.path!r}: {reason} (extensions:"
                     f" {', '.join(sorted(VIDEO_EXTENSIONS))})")
  if report:
    for file, error in skipped.items():
      logging.warning("video_folder: skipped %s (%s)", os.path.join(folder.path, file), error)
    logging.warning("video_folder: %s: %d videos, %d frames, %d files skipped", folder.path,
                    len(decoded), sum(entry["frames"] for entry in decoded), len(skipped))
  return index


def _cached_index(index_path: str) -> dict[str, dict]:
  """The index.json an earlier run wrote; {} when there is none, or when it cannot be read (cut
  by a crash, edited, not an index): the cache is derived data, so every video is decoded again
  (with a warning), and the new index replaces it."""
  try:
    with open(index_path) as f:
      cached = json.load(f)
  except (FileNotFoundError, NotADirectoryError):  # no cache yet (the latter: a file in the way)
    return {}
  except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
    problem = str(e)
  else:
    if isinstance(cached, dict) and all(isinstance(entry, dict) for entry in cached.values()):
      return cached
    problem = "not a video_folder index"
  logging.warning("video_folder: the cache index %s cannot be read (%s): decoding every video"
                  " again", index_path, problem)
  return {}


def _current(folder: VideoFolder, file: str, entry: dict, stat: os.stat_result) -> bool:
  """Whether the cached `entry` is of `file` as it is now (its size and modification time),
  decoded by this DECODER, and its frames are in the cache: a cached .npy that is missing or
  shorter than its frames (deleted, cut) is decoded again, with a warning."""
  # Indexes written before DECODER existed have no "decoder".
  if (entry.get("bytes"), entry.get("mtime_ns"), entry.get("decoder")) != (
      stat.st_size, stat.st_mtime_ns, DECODER):
    return False
  if "error" in entry:
    return True
  try:
    cache = os.path.join(folder.cache_directory, entry["cache"])
    frame_bytes = int(entry["frames"]) * folder.size * folder.size * 3
  except (KeyError, TypeError, ValueError):
    return False
  try:
    whole = os.stat(cache).st_size >= frame_bytes
  except OSError:
    whole = False
  if not whole:
    logging.warning("video_folder: the cached frames %s of %s are missing or cut: decoding it"
                    " again", cache, os.path.join(folder.path, file))
  return whole


def _unreadable(path: str, error: OSError) -> str:
  """Why the video file `path` could not be looked at (os.stat raised `error`)."""
  if error.errno == errno.ELOOP:
    return "a symlink loop"
  if os.path.islink(path):
    return f"a symlink to {os.readlink(path)}, which does not exist"
  return error.strerror or str(error)


def _decode_to_cache(folder: VideoFolder, file: str, stat: os.stat_result) -> dict:
  entry = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "decoder": DECODER}
  try:
    frames = decode(os.path.join(folder.path, file), folder.size, folder.fit)
  except UndecodableVideo as e:
    return entry | {"error": str(e)}
  # fsencode: a file name that is not UTF-8 holds surrogates, which str.encode() refuses.
  cache = hashlib.sha1(os.fsencode(file)).hexdigest()[:16] + ".npy"
  with _writing_cache(folder):
    os.makedirs(folder.cache_directory, exist_ok=True)
    with files.replaced(os.path.join(folder.cache_directory, cache), "wb") as f:
      np.save(f, frames)
  return entry | {"frames": len(frames), "cache": cache}


@functools.cache
def _videos(folder: VideoFolder) -> list[dict]:
  """The decodable videos in file order, each {file, frames, cache} and, with labels, label."""
  videos = [{"file": file, "frames": entry["frames"], "cache": entry["cache"]}
            for file, entry in _index(folder).items() if "error" not in entry]
  if folder.labels:
    for video in videos:
      video["label"] = _class_names(folder).index(_class_name(folder, video["file"]))
  return videos


# np.load parses the .npy header with ast.literal_eval, which CPython 3.11 can crash ("AST
# constructor recursion depth mismatch") when prefetch threads call it at once.
_NPY_HEADER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1024)
def _frames(cache_path: str) -> np.ndarray:
  with _NPY_HEADER_LOCK:
    return np.load(cache_path, mmap_mode="r")
