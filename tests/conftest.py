import os

# Tests compare float32 results at 1e-5; keep XLA from using reduced-precision shortcuts.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
