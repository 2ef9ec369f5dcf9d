import os
import signal
import tempfile

# Tests compare float32 results at 1e-5; keep XLA from using reduced-precision shortcuts.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
# The suite is compile-bound: dozens of tests build the same tiny train step, sampler and
# evaluation. JAX's persistent compilation cache (keyed by the program, the XLA flags and the jax
# version) lets the second build load the first one's executable, in this process, the other
# xdist worker and the subprocesses the CLI tests start, which read these variables too.
# The README's test command sets no platform. With libtpu installed (the test extras), a JAX
# program that may pick any platform prints libtpu's own warnings before falling back to the
# CPU, or not, depending on whether another process holds libtpu at that moment. The CLI tests
# compare a subprocess's whole stderr with the one line it should print, so every process the
# suite starts is pinned to the CPU; the TPU tests compile for a topology, which needs no TPU
# platform.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"videoar-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# A bound (1 GB; one run of the suite writes about 45 MB) turns on least-recently-used eviction,
# which also serialises reads and writes with a file lock (filelock), so the two workers never
# read an entry the other is halfway through writing.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2**30))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# In case a plugin imported jax before the variables above were set.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_compilation_cache_max_size",
                  int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))

import pytest  # noqa: E402


@pytest.fixture
def trained_stage(tmp_path):
  """make(name, config) -> the path of tmp_path/NAME made to look like the workdir of a finished
  run of `config` to the checks that read it (validate.stage_problem): a finished checkpoint's
  directory, empty (nothing here reads its arrays), and the run's run.json."""
  from videoar.train import workdir

  def make(name, config):
    path = tmp_path / name
    os.makedirs(path / "checkpoints" / "1")
    workdir.RunRecord(config.to_dict(), {}).save(str(path))
    return str(path)

  return make


@pytest.fixture
def sigint_at_default():
  """Ctrl-C reaches the subprocesses a test starts, as at a terminal. A suite started in the
  background of a script has SIGINT ignored, which its subprocesses would inherit (a Python
  program then never raises KeyboardInterrupt, and a sweep keeps ignoring it, as a background
  job should); a handler of this process's own is reset to the default in each child."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)
