"""The layer order of setup.cfg's import-linter contracts holds; no module imports in a cycle."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_import_contracts_are_kept():
  # Beside this interpreter first: a virtual environment's python run without activating it.
  lint_imports = (shutil.which("lint-imports", path=os.path.dirname(sys.executable))
                  or shutil.which("lint-imports"))
  assert lint_imports, "import-linter is a test dependency: pip install -e '.[test]'"
  result = subprocess.run([lint_imports, "--no-cache"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  assert "0 broken" in result.stdout
