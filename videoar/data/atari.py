"""Atari world-model data: episodes of a random policy, with the action behind every frame.

Episodes are played with ale-py (the ROMs ship in its wheel) and cached on disk as uint8 frames
[T, size, size, 3] and int32 actions [T], one pair of .npy files per episode, memory-mapped when
read. The directory's index.json is written last, so a directory without it is an unfinished
generation and is generated again.

Frame t is the screen after actions[t] was held for `frameskip` emulator frames from frame t - 1,
so a model generating frame t is told the action that caused it; actions[0] of an episode is
NOOP (the reset screen has no action behind it). Actions index the game's minimal action set
(`action_names`), whose first entry is always NOOP.

The policy is sticky: each step keeps the previous action with probability `sticky`, otherwise
draws a new one, uniformly, except that games which stall until FIRE is pressed (a new ball in
Breakout) draw FIRE half the time. ALE's own sticky actions are off, so the recorded action is
the one the emulator executed.
"""

import dataclasses
import functools
import json
import os
import threading

import numpy as np

from videoar import files

# Games that wait for FIRE before play (re)starts: a uniform policy would spend most of an
# episode on a frozen screen.
GAMES_NEEDING_FIRE = frozenset({"breakout"})
FIRE_PROBABILITY = 0.5

# Pong's agent paddle: RGB colour, its screen columns at 210x160, and the playfield rows below
# the score (whose digits share the paddle's green).
PONG_PADDLE_RGB = (92, 186, 92)
PONG_BACKGROUND_RGB = (144, 72, 17)
PONG_PADDLE_COLUMNS = (140, 144)
PONG_PLAYFIELD_ROWS = (34, 194)
ATARI_SCREEN = (210, 160)
# Pong's other colours: the opponent's (left) paddle and score, and the ball, which shares its
# white with the walls above and below the playfield. The ball is 4 rows x 2 columns at 210x160.
PONG_OPPONENT_RGB = (213, 130, 74)
PONG_BALL_RGB = (236, 236, 236)
PONG_BALL_SHAPE = (4, 2)


@dataclasses.dataclass(frozen=True)
class AtariEpisodes:
  """`num_episodes` episodes of `game`, at most `max_frames` frames each, cached under `path`.

  Attributes:
    path: the cache root; episodes go to a subdirectory named after every setting below.
    game: an ALE ROM name (pong, breakout, ...).
    size: frames are the whole screen area-resized to size x size RGB.
    num_episodes: episodes to play; episode e uses ALE seed e and policy seed e.
    max_frames: an episode stops after this many frames even if the game goes on.
    frameskip: emulator frames each action is held for, the last of which is recorded.
    sticky: probability that the policy repeats its previous action.
  """

  path: str
  game: str = "pong"
  size: int = 64
  num_episodes: int = 20
  max_frames: int = 1000
  frameskip: int = 4
  sticky: float = 0.75

  def __post_init__(self):
    for name in ("size", "num_episodes", "max_frames", "frameskip"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"AtariEpisodes.{name}={value!r} must be an integer >= 1")
    if not 0.0 <= self.sticky < 1.0:
      raise ValueError(f"AtariEpisodes.sticky={self.sticky!r} must be in [0, 1)")
    # Checked here, not when the emulator loads the ROM: that fails in a traceback, after the
    # cache directory is made.
    from ale_py import roms

    if self.game not in roms.get_all_rom_ids():
      raise ValueError(f"AtariEpisodes.game={self.game!r} is not a ROM ale-py ships (pong,"
                       " breakout, ...: ale_py.roms.get_all_rom_ids())")

  @property
  def directory(self) -> str:
    # repr, not a rounded format: two policies must not share a cache (its index is not checked
    # against the settings that name it).
    return os.path.join(
        self.path, f"{self.game}_{self.size}px_skip{self.frameskip}_sticky{self.sticky!r}"
        f"_{self.num_episodes}x{self.max_frames}")

  def lengths(self) -> np.ndarray:
    return np.asarray(_index(self)["lengths"], np.int64)

  def action_names(self) -> list[str]:
    return _index(self)["action_names"]

  def id_counts(self) -> dict[str, int]:
    """{"actions": the game's minimal action count}: every recorded action id is below it."""
    return {"actions": len(self.action_names())}

  def read(self, sequence: int, frames: np.ndarray) -> dict[str, np.ndarray]:
    return {"video": _episode_array(self.directory, sequence, "frames")[frames],
            "actions": _episode_array(self.directory, sequence, "actions")[frames]}

  def generate(self, progress: bool = False) -> None:
    """Plays and writes every episode, then the index; a finished directory is left alone.

    Raises ValueError when a file stands where the cache directory would be made.
    """
    if os.path.exists(os.path.join(self.directory, "index.json")):
      return
    import tqdm  # only the generation command shows progress

    # os.makedirs would fail in a traceback (NotADirectoryError).
    blocking = files.blocking_file(self.directory)
    if blocking:
      raise ValueError(f"data.path={self.path!r}: {blocking} is a file; data.path names the"
                       " folder the episodes are cached in")
    os.makedirs(self.directory, exist_ok=True)
    lengths = []
    episodes = tqdm.trange(self.num_episodes, desc=f"atari {self.game}", unit="episode",
                           disable=not progress)
    for episode in episodes:
      frames, actions, action_names = play_episode(self, episode)
      for name, array in (("frames", frames), ("actions", actions)):
        with files.replaced(os.path.join(self.directory, f"episode_{episode:05d}_{name}.npy"),
                            "wb") as f:
          np.save(f, array)
      lengths.append(len(frames))
      episodes.set_postfix(frames=sum(lengths))
    index = dict(dataclasses.asdict(self), lengths=lengths, action_names=action_names)
    del index["path"]
    with files.replaced(os.path.join(self.directory, "index.json")) as f:
      json.dump(index, f, indent=1)


def play_episode(episodes: AtariEpisodes, episode: int):
  """(frames uint8 [T, size, size, 3], actions int32 [T], minimal action names) of one episode."""
  from ale_py import ALEInterface, LoggerMode, roms  # only generation needs the emulator

  ALEInterface.setLoggerMode(LoggerMode.Error)
  ale = ALEInterface()
  ale.setInt("random_seed", episode)
  ale.setFloat("repeat_action_probability", 0.0)
  ale.loadROM(roms.get_rom_path(episodes.game))
  action_set = list(ale.getMinimalActionSet())
  names = [action.name for action in action_set]
  weights = np.ones(len(action_set))
  if episodes.game in GAMES_NEEDING_FIRE:
    fire = names.index("FIRE")
    weights[:] = (1.0 - FIRE_PROBABILITY) / (len(weights) - 1)
    weights[fire] = FIRE_PROBABILITY
  weights /= weights.sum()
  rng = np.random.default_rng(episode)
  frames = [area_resize(ale.getScreenRGB(), episodes.size)]
  actions = [0]
  action = int(rng.choice(len(action_set), p=weights))
  while len(frames) < episodes.max_frames and not ale.game_over():
    if rng.random() >= episodes.sticky:
      action = int(rng.choice(len(action_set), p=weights))
    for _ in range(episodes.frameskip):
      ale.act(action_set[action])
    frames.append(area_resize(ale.getScreenRGB(), episodes.size))
    actions.append(action)
  return np.stack(frames), np.asarray(actions, np.int32), names


def area_resize(screen: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [size, size, 3], each output pixel the mean of what it covers."""
  import av  # FFmpeg's scaler: a NumPy area resize is several times slower per frame

  return av.VideoFrame.from_ndarray(screen, format="rgb24").to_ndarray(
      width=size, height=size, format="rgb24", interpolation="AREA")


def pong_paddle_rows(video: np.ndarray) -> np.ndarray:
  """Row of the agent's (right, green) paddle centre in each frame of Pong video [F, H, W, 3]
  (uint8 or in [-1, 1]), in pixels of that video; NaN where no paddle is visible."""
  video = _rgb255(video)
  height, width = video.shape[1:3]
  top, bottom = (round(r * height / ATARI_SCREEN[0]) for r in PONG_PLAYFIELD_ROWS)
  left, right = (round(c * width / ATARI_SCREEN[1]) for c in PONG_PADDLE_COLUMNS)
  # Resizing mixes the paddle with the brown background at its edges: a pixel's paddle share is
  # where its colour falls between the two, and colours off that line (the white ball) are not
  # paddle at all.
  background = np.asarray(PONG_BACKGROUND_RGB, np.float32)
  direction = np.asarray(PONG_PADDLE_RGB, np.float32) - background
  region = video[:, top:bottom, max(left - 1, 0):right + 1] - background
  share = np.clip(region @ direction / (direction @ direction), 0.0, 1.0)
  off_line = np.linalg.norm(region - share[..., None] * direction, axis=-1)
  weight = np.where((share > 0.2) & (off_line < 40.0), share, 0.0).sum(axis=2)  # [F, rows]
  mass = weight.sum(axis=1)
  rows = top + np.arange(weight.shape[1])
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(mass > 0.5, (weight * rows).sum(axis=1) / mass, np.nan)


def pong_ball_positions(video: np.ndarray) -> np.ndarray:
  """Centre (row, col) of the ball in each frame of Pong video [..., H, W, 3] (uint8 or in
  [-1, 1]), in pixels of that video (pixel [i, j] is centred at (i, j)): float64 [..., 2], NaN
  where no ball is visible.

  Every pixel is unmixed into its shares of the ball's white, the two paddles' colours and the
  background (resizing blends them linearly), and only the white share counts, so the paddles
  and their colours are excluded by colour wherever they are. Two things share the ball's colour
  and are excluded by position: the score, above the playfield rows, is never looked at; the
  walls are white stripes across the whole width above and below the playfield, and each row's
  median white share over the columns is subtracted, which removes a stripe (or the part of one
  that a resized row straddling the wall holds) but not a ball a pixel or two wide. The ball is
  then the strongest white spot: the share-weighted centroid of a window the ball's size plus a
  pixel each way around the strongest pixel, visible when that window holds at least half a
  ball's area of white. A ball half hidden in a wall is located from its visible part.
  """
  video = _rgb255(video)
  leading, (height, width) = video.shape[:-3], video.shape[-3:-1]
  video = video.reshape((-1, height, width, 3))
  # Every row that covers any of the playfield, including the two that straddle a wall.
  top = int(np.floor(PONG_PLAYFIELD_ROWS[0] * height / ATARI_SCREEN[0]))
  bottom = int(np.ceil(PONG_PLAYFIELD_ROWS[1] * height / ATARI_SCREEN[0]))
  background = np.asarray(PONG_BACKGROUND_RGB, np.float64)
  colours = np.asarray([PONG_BALL_RGB, PONG_PADDLE_RGB, PONG_OPPONENT_RGB], np.float64)
  unmix = np.linalg.inv((colours - background).T)  # RGB offset from the background -> shares
  white = (video[:, top:bottom] - background) @ unmix[0]  # [N, rows, W]
  white = np.clip(white - np.median(white, axis=2, keepdims=True), 0.0, None)

  ball_rows = PONG_BALL_SHAPE[0] * height / ATARI_SCREEN[0]
  ball_cols = PONG_BALL_SHAPE[1] * width / ATARI_SCREEN[1]
  half_rows, half_cols = int(np.ceil(ball_rows / 2)), int(np.ceil(ball_cols / 2))
  num_frames, num_rows = white.shape[:2]
  peak_row, peak_col = np.unravel_index(white.reshape(num_frames, -1).argmax(axis=1),
                                        (num_rows, width))
  window_rows = peak_row[:, None] + np.arange(-half_rows, half_rows + 1)  # [N, r]
  window_cols = peak_col[:, None] + np.arange(-half_cols, half_cols + 1)  # [N, c]
  # Window pixels off the region read zero share.
  padded = np.pad(white, ((0, 0), (half_rows, half_rows), (half_cols, half_cols)))
  window = padded[np.arange(num_frames)[:, None, None], window_rows[:, :, None] + half_rows,
                  window_cols[:, None, :] + half_cols]  # [N, r, c]
  mass = window.sum(axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    row = top + np.einsum("nrc,nr->n", window, window_rows) / mass
    col = np.einsum("nrc,nc->n", window, window_cols) / mass
  centre = np.stack([row, col], axis=-1)
  centre[mass < 0.5 * ball_rows * ball_cols] = np.nan
  return centre.reshape(leading + (2,))


def _rgb255(video: np.ndarray) -> np.ndarray:
  """Pixels uint8, or of any other dtype in [-1, 1], -> float32 in [0, 255]. Told apart by dtype,
  not by value: a generated frame overshoots 1 here and there, and an all-dark one stays below."""
  video = np.asarray(video)
  if video.dtype == np.uint8:
    return video.astype(np.float32)
  return (np.clip(video.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5


@functools.cache
def _index(episodes: AtariEpisodes) -> dict:
  """The cached episodes' index, generating them first if they are not on disk."""
  episodes.generate(progress=True)
  with open(os.path.join(episodes.directory, "index.json")) as f:
    return json.load(f)


# np.load parses the .npy header with ast.literal_eval, which CPython 3.11 can crash ("AST
# constructor recursion depth mismatch") when prefetch threads call it at once.
_NPY_HEADER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1024)
def _episode_array(directory: str, episode: int, name: str) -> np.ndarray:
  with _NPY_HEADER_LOCK:
    return np.load(os.path.join(directory, f"episode_{episode:05d}_{name}.npy"), mmap_mode="r")
