"""Every video file under a folder, recursively, as frame sequences for training.

The first use decodes every file once with PyAV, fits each frame to size x size RGB ("crop":
scale the short side to `size` and keep the centre; "resize": scale both sides to `size`, which
distorts the aspect ratio), and caches the frames as uint8 .npy files under
PATH/.videoar_cache/SIZE_FIT/, with an index.json of every file's size, modification time and
frame count. Later uses decode only files that are new or changed, and a clip is a memory-mapped
slice, so reading costs no decoding: the cache takes size * size * 3 bytes a frame (12 KiB at
64x64).

A file that cannot be decoded (corrupt, empty, truncated) is skipped with a warning naming it,
on every run, and the total skipped is logged; a folder with no decodable video is an error.
With labels=True, a video's class is its top-level subfolder (classes sorted by name).
"""

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import tempfile
import threading

import numpy as np
from absl import logging

VIDEO_EXTENSIONS = frozenset({
    ".avi", ".flv", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ogv", ".webm",
    ".wmv"})
FITS = ("crop", "resize")
CACHE_DIR = ".videoar_cache"


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
    return os.path.join(self.path, CACHE_DIR, f"{self.size}_{self.fit}")

  def lengths(self) -> np.ndarray:
    return np.asarray([video["frames"] for video in _videos(self)], np.int64)

  def class_names(self) -> list[str]:
    """The label names, in label order: the top-level subfolders holding a decodable video."""
    return _class_names(self)

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
  for directory, subdirectories, files in os.walk(path):
    subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
    found += [os.path.relpath(os.path.join(directory, name), path) for name in files
              if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS]
  return sorted(found)


def decode(path: str, size: int, fit: str) -> np.ndarray:
  """All frames of the first video stream, fitted: uint8 [T, size, size, 3]; raises
  UndecodableVideo saying why if the file cannot be decoded completely."""
  import av  # only building the cache decodes

  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise UndecodableVideo("no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      frames = [_fit(frame, size, fit) for frame in container.decode(stream)]
      declared = stream.frames
  except av.FFmpegError as e:
    raise UndecodableVideo(e.strerror) from e
  except OSError as e:
    raise UndecodableVideo(str(e)) from e
  if not frames:
    raise UndecodableVideo("no frame")
  # A file cut short after its header decodes without error but ends early.
  if declared and len(frames) < declared:
    raise UndecodableVideo(f"truncated: {len(frames)} of {declared} frames")
  return np.stack(frames)


def _fit(frame, size: int, fit: str) -> np.ndarray:
  if fit == "resize":
    return frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="AREA")
  scale = size / min(frame.width, frame.height)
  width = max(size, round(frame.width * scale))
  height = max(size, round(frame.height * scale))
  rgb = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
  top, left = (height - size) // 2, (width - size) // 2
  return rgb[top:top + size, left:left + size]


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
  """{file: {bytes, mtime_ns, frames, cache} or {bytes, mtime_ns, error}} for every video file,
  decoding the files the cached index lacks or holds at another size or time; logs the
  skipped files every time."""
  index_path = os.path.join(folder.cache_directory, "index.json")
  cached = {}
  if os.path.exists(index_path):
    with open(index_path) as f:
      cached = json.load(f)
  files = video_files(folder.path)
  index, changed = {}, False
  for file in files:
    stat = os.stat(os.path.join(folder.path, file))
    entry = cached.get(file)
    if entry is None or (entry["bytes"], entry["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
      entry = _decode_to_cache(folder, file, stat)
      changed = True
    index[file] = entry
  if changed or set(cached) != set(index):
    _atomic_write(index_path, json.dumps(index, indent=1))
  skipped = {file: entry["error"] for file, entry in index.items() if "error" in entry}
  decoded = [entry for entry in index.values() if "error" not in entry]
  if not decoded:
    reason = f"all {len(files)} video files failed to decode" if files else "no video file"
    raise ValueError(f"data.path={folder.path!r}: {reason} (extensions:"
                     f" {', '.join(sorted(VIDEO_EXTENSIONS))})")
  # Process-prefetch workers load the same index; the main process has reported it.
  if multiprocessing.parent_process() is None:
    for file, error in skipped.items():
      logging.warning("video_folder: skipped %s (%s)", os.path.join(folder.path, file), error)
    logging.warning("video_folder: %s: %d videos, %d frames, %d files skipped", folder.path,
                    len(decoded), sum(entry["frames"] for entry in decoded), len(skipped))
  return index


def _decode_to_cache(folder: VideoFolder, file: str, stat: os.stat_result) -> dict:
  entry = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
  try:
    frames = decode(os.path.join(folder.path, file), folder.size, folder.fit)
  except UndecodableVideo as e:
    return entry | {"error": str(e)}
  cache = hashlib.sha1(file.encode()).hexdigest()[:16] + ".npy"
  os.makedirs(folder.cache_directory, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=folder.cache_directory, suffix=".npy", delete=False) as f:
    np.save(f, frames)
  os.replace(f.name, os.path.join(folder.cache_directory, cache))
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


def _atomic_write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False) as f:
    f.write(text)
  os.replace(f.name, path)
