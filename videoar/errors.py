"""The errors a user can act on: each is one line naming what is wrong and what is allowed.

The entry point prints them as `error: ...` and exits nonzero, without a traceback.
"""


class ConfigError(ValueError):
  """A config value, data option or input that cannot run; raised before anything compiles."""


def fail(key: str, value, allowed: str):
  """Raises ConfigError("config.KEY=VALUE is invalid: ALLOWED")."""
  raise ConfigError(f"config.{key}={value!r} is invalid: {allowed}")
