"""The errors a user can act on, and how every command line reports them: one line naming what
is wrong and what is allowed, `error: ...` on stderr, exit status 2, no traceback.

`UserError` is the base of every such error in the library (ConfigError and MissingInput here;
the checkpoint and workdir errors in videoar/train). A command runs its `main` through `run`,
which parses the flags with `parse_flags` (a bad flag, config file, variant or override in one
line) and reports the USER_ERRORS that `main` raises; a command on argparse uses `ArgumentParser`
here. Anything else is a bug and keeps its traceback. `files.blocking_file` finds the file that
keeps a path (a workdir, a sweep's root, a data cache) from being a directory, for such a line.

A command that writes something a signal must not leave half-made (a dataset) runs with
`run(main, stopped=...)`: a SIGTERM or Ctrl-C then ends it with one line saying what is on
disk, and `held_signals` keeps one from landing between files that must appear together.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import gc
import os
import re
import signal
import sys
import threading
from typing import Callable, Iterator, NoReturn

from absl import app, flags
import ml_collections

from videoar import files


def run_directory_problem(flag: str, path: str, what: str) -> str | None:
  """The line for a FLAG=PATH that cannot be a directory runs keep their checkpoints under, or
  None: empty (WHAT names what it is for, e.g. "the run's directory"), '[' or ']' in it (orbax
  matches checkpoint paths as glob patterns: every good checkpoint under such a path read as
  damaged and was moved aside), or a file where it or a parent should be (files.blocking_file)."""
  if not path:
    return f"{flag} is empty: name {what}"
  if set("[]") & set(path):
    return (f"{flag}={path}: '[' and ']' in the path are not supported (checkpoint paths are read"
            " as glob patterns); rename it")
  blocking = files.blocking_file(path)
  if blocking:
    return f"{flag}={path}: not a directory ({blocking} is a file)"
  return None


class UserError(Exception):
  """Bad input, or a state on disk, that the user can act on; the message is one line."""


class ConfigError(UserError, ValueError):
  """A config value, data option or input that cannot run; raised before anything compiles."""


class MissingInput(UserError, FileNotFoundError):
  """A file or directory the user named that is not there (a workdir without checkpoints); a
  FileNotFoundError too, so that code catching that catches it."""


# A FileNotFoundError that is not a MissingInput is the library's own, a bug: its traceback stays.
USER_ERRORS = (UserError,)


def fail(key: str, value, allowed: str):
  """Raises ConfigError("config.KEY=VALUE is invalid: ALLOWED")."""
  raise ConfigError(f"config.{key}={value!r} is invalid: {allowed}")


def exit_with_error(message: str) -> NoReturn:
  """Prints `error: MESSAGE` to stderr and exits with status 2 (a usage error)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser for the commands that use argparse (the sweep, compare): a bad flag is
  `error: ...` in one line and exit status 2, as `exit_with_error`, not argparse's usage block
  first (`--help` still prints the usage)."""

  def error(self, message: str) -> NoReturn:
    exit_with_error(message)


# Python's and absl's words for a config override of the wrong type, said plainly.
_CONVERSION_ERRORS = (
    (re.compile(r"invalid literal for int\(\) with base 10: ('.*')$"), r"\1 is not an integer"),
    (re.compile(r"could not convert string to float: ('.*')$"), r"\1 is not a number"),
    (re.compile(r"\('Non-boolean argument to boolean flag', ('.*')\)$"),
     r"\1 is not a boolean (true or false)"),
)


# absl's and ml_collections' words for a value that is not one of a flag's choices, and for a
# value given to a group of config keys.
_CHOICE_ERROR = re.compile(r"^(flag --\w+=(.*): value should be one of) <(.*)>$")
_GROUP_ERROR = re.compile(r"^flag --config\.([\w.]+)=(.*): Failed to parse .* as a ConfigDict.*$")


def flag_error_line(error: flags.Error) -> str:
  """The first line of absl's error for a bad flag or config override, with Python's conversion
  message said plainly: "flag --config.model.width=wide: 'wide' is not an integer"; a choice
  that is not one of a flag's with the nearest one: "flag --mode=eval: value should be one of
  all, train, sample, evaluate (did you mean evaluate?)"; and a value given to a group of keys
  ("--config.model=3") said as that."""
  line = str(error).strip().splitlines()[0]
  for pattern, plain in _CONVERSION_ERRORS:
    line = pattern.sub(plain, line)
  choice = _CHOICE_ERROR.match(line)
  if choice:
    prefix, value, options = choice[1], choice[2], choice[3].split("|")
    near = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
    line = f"{prefix} {', '.join(options)}" + (f" (did you mean {near[0]}?)" if near else "")
  group = _GROUP_ERROR.match(line)
  if group:
    key, value = group[1], group[2]
    line = (f"flag --config.{key}={value}: config.{key} is a group of keys, not a value: set one"
            f" of them, --config.{key}.KEY=VALUE (every key is in videoar/base_config.py)")
  return line


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, for `app.run(..., flags_parser=parse_flags)`, with a bad flag or config
  override (an unknown key, a value of the wrong type), or a config file that cannot give a
  config (missing, a syntax error, an error in its get_config, no get_config, something other
  than a ConfigDict returned), or an argument that is not a flag, reported in one line; the
  program name, which is all absl leaves."""
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    # A config file that raised comes wrapped with its traceback: its last line says why.
    first, *rest = str(e).strip().splitlines()
    exit_with_error(f"{first.split(': Error whilst')[0]}: {rest[-1]}" if rest
                    else flag_error_line(e))
  except SyntaxError as e:
    exit_with_error(syntax_error_line(e))
  except OSError as e:  # a config file that cannot be read: the last line names it
    exit_with_error(f"--config: {str(e).strip().splitlines()[-1].strip()}")
  except (AttributeError, KeyError) as e:
    if "get_config" in str(e):
      exit_with_error("--config: the file defines no get_config(variant='') returning its config")
    exit_with_error(_unknown_key(argv, e) or config_file_error(argv, e))
  except (NameError, ImportError) as e:  # raised by the config file's own code
    exit_with_error(config_file_error(argv, e))
  if remaining[1:]:
    # absl leaves what is not a flag, and no command here reads it: `--restart_from_weights
    # false` set the flag and dropped the `false` the user meant.
    exit_with_error(f"unexpected argument {remaining[1]!r} (flags are --name=value; a bool flag"
                    " is --name or --noname)")
  # Some commands take no config: their --config defaults to None.
  config = flags.FLAGS.config if "config" in flags.FLAGS else None
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    try:
      config.keys()  # a file that could not be read raises its error on first use (config_flags)
    except OSError as e:
      exit_with_error(f"--config: {str(e).strip().splitlines()[-1].strip()}")
    except AttributeError:
      pass  # not a ConfigDict: said below
    exit_with_error(f"--config: get_config() returned a {type(config).__name__}; it must"
                    " return an ml_collections.ConfigDict (e.g. base_config.get_config())")
  return remaining


def syntax_error_line(error: SyntaxError) -> str:
  """The one line for a config file that is not valid Python: where, and what Python says."""
  return f"--config: {error.filename}, line {error.lineno}: SyntaxError: {error.msg}"


def config_file_error(argv: list[str], error: Exception) -> str:
  """One line for an error the config file raised while it built its config."""
  files = [arg.split("=", 1)[1].split(":", 1)[0] for arg in argv[1:]
           if arg.startswith("--config=")]
  where = f" {files[-1]}:" if files else ""
  # A config file is loaded by its path, so a module beside it is not importable by its name.
  hint = (" (a config file's own folder is not on the import path: import a module of this"
          " repository by its package, e.g. from configs import bouncing_tiny, from the"
          " repository's root)" if isinstance(error, ModuleNotFoundError) else "")
  return f"--config:{where} {type(error).__name__}: {error}{hint}"


def _unknown_key(argv: list[str], error: Exception) -> str | None:
  """One line for an override (--config.KEY=VALUE) of a key the config does not have; None
  when no override names the key (the error came from the config file itself)."""
  names = re.findall(r"[\w]+", str(error).replace("\\n", " "))
  key = names[0] if names else str(error)
  for arg in argv[1:]:
    name = arg.split("=", 1)[0].removeprefix("--")
    if name.startswith("config.") and name.rsplit(".", 1)[-1] == key:
      key = name
      break
  else:
    return None
  hint = re.search(r'Did you mean "(\w+)"', str(error))
  suggestion = f"; did you mean {key.rsplit('.', 1)[0]}.{hint.group(1)}?" if hint else ""
  return (f"--{key}: the config has no such key{suggestion} (every key is in"
          " videoar/base_config.py; data.options holds the data source's options)")


class Stopped(BaseException):
  """A SIGTERM or SIGINT that stops a command run with `run(main, stopped=...)`. A
  BaseException, as KeyboardInterrupt is, so that no `except Exception` on its way out takes it
  for an error of its own.

  Attributes:
    signal: the signal (signal.SIGTERM or signal.SIGINT).
  """

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signal = signal.Signals(signum)


# The signals that came inside held_signals, raised as Stopped when it ends; None outside it.
_held: list[int] | None = None


def raise_from_signal(signum: int, frame, error: BaseException) -> None:
  """Raises `error` from the handler of signal `signum`, whose `frame` is where the program was:
  unless that is inside a garbage-collection callback (jax registers one) or a __del__, where
  Python prints an exception as "Exception ignored" and drops it, so that the command went on as
  if no signal had come (a Ctrl-C while sampling wrote the samples and exited 0). Then the same
  signal is sent again 10 ms later, by when the callback has returned, and returns."""
  callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
  while frame is not None:
    if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
      threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
      return
    frame = frame.f_back
  raise error


def interrupt(signum: int, frame) -> None:
  """Python's own SIGINT handler (a KeyboardInterrupt), but for a Ctrl-C that comes in a
  garbage-collection callback, sent again (raise_from_signal)."""
  raise_from_signal(signum, frame, KeyboardInterrupt())


def _stop(signum, frame):
  if _held is None:
    raise_from_signal(signum, frame, Stopped(signum))
    return
  _held.append(signum)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
  """A block that a SIGTERM or SIGINT, under `run(main, stopped=...)`, does not cut: files that
  must be on disk together (a dataset's index.json and its ode_pairs.json) are written whole or
  not at all. A signal that came meanwhile is raised as Stopped when the block ends, unless it
  raised something else."""
  global _held
  _held = []
  try:
    yield
  finally:
    held, _held = _held, None
  if held:
    raise Stopped(held[0])


def run(main: Callable[[list[str]], None],
        stopped: Callable[[str], str] | None = None) -> None:
  """absl's app.run(main) for a command of this project: flags parsed by `parse_flags`, and a
  USER_ERRORS raised by `main` printed as one line (exit status 2).

  With `stopped`, a SIGTERM or SIGINT while `main` runs (one not ignored, as a background job's
  SIGINT is) raises Stopped, and ends the command with `error: STOPPED(the signal's name)`,
  saying what it left, on stderr, no traceback, and exit status 128 + the signal (143 for
  SIGTERM, 130 for SIGINT): the shell's status for a command a signal ended, so that a script's
  `&&` or `set -e` does not go on to use what was not finished."""

  @functools.wraps(main)
  def reported(argv):
    if stopped:
      for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) != signal.SIG_IGN:
          signal.signal(signum, _stop)
    try:
      return main(argv)
    except USER_ERRORS as e:
      exit_with_error(str(e))
    except Stopped as e:
      signum = e.signal
    # Outside the except block, whose traceback holds the frames of a progress bar that would
    # draw itself again below the line when they go. A second signal cannot cut the line.
    for other in (signal.SIGTERM, signal.SIGINT):
      signal.signal(other, signal.SIG_IGN)
    print(f"error: {stopped(signum.name)}", file=sys.stderr, flush=True)
    sys.exit(128 + signum)

  app.run(reported, flags_parser=parse_flags)
