"""The entry point's re-execution onto transparent huge pages (videoar/host_memory.py)."""

import os
import subprocess
import sys

import pytest

from videoar import host_memory

MADVISE = "always [madvise] never\n"


@pytest.mark.parametrize("environ, thp, libc, expected", [
    ({}, MADVISE, "glibc 2.36", host_memory.TUNABLE),
    ({}, "[always] madvise never\n", "glibc 2.35", host_memory.TUNABLE),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, MADVISE, "glibc 2.39",
     "glibc.malloc.arena_max=2:" + host_memory.TUNABLE),
    # A user's own setting is kept, and it is also what stops a second re-execution.
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, MADVISE, "glibc 2.36", None),
    ({"GLIBC_TUNABLES": host_memory.TUNABLE}, MADVISE, "glibc 2.36", None),
    ({}, MADVISE, "glibc 2.31", None),      # before the tunable existed
    ({}, MADVISE, None, None),              # not glibc (musl, macOS)
    ({}, MADVISE, "glibc unknown", None),
    ({}, "always madvise [never]\n", "glibc 2.36", None),
    ({}, None, "glibc 2.36", None),         # no THP setting to read
])
def test_huge_page_environment(environ, thp, libc, expected):
  result = host_memory.huge_page_environment({"PATH": "/bin", **environ}, thp, libc)
  if expected is None:
    assert result is None
  else:
    assert result == {"PATH": "/bin", **environ, "GLIBC_TUNABLES": expected}


@pytest.mark.parametrize("environ, thp, libc, expected", [
    ({"GLIBC_TUNABLES": host_memory.TUNABLE}, MADVISE, "glibc 2.36",
     "host memory: large blocks on huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"}, MADVISE, "glibc 2.36",
     "host memory: regular pages; GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"),
    # Where the entry point would have re-executed, this process is the one it did not replace.
    ({}, MADVISE, "glibc 2.36", "host memory: regular pages; the re-execution with"
     " GLIBC_TUNABLES=glibc.malloc.hugetlb=1 did not happen"),
    ({"GLIBC_TUNABLES": host_memory.TUNABLE}, "always madvise [never]\n", "glibc 2.36",
     "host memory: regular pages; transparent huge pages are off"
     " (/sys/kernel/mm/transparent_hugepage/enabled: always madvise [never])"),
    ({}, MADVISE, "glibc 2.31",
     "host memory: regular pages; the C library (glibc 2.31) has no glibc.malloc.hugetlb"),
    ({}, None, None,
     "host memory: regular pages; the C library (not glibc) has no glibc.malloc.hugetlb"),
])
def test_memory_line_says_which_pages_and_why(environ, thp, libc, expected):
  assert host_memory.memory_line(environ, thp, libc) == expected


def _would_reexec() -> bool:
  environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  return host_memory.huge_page_environment(environ, *host_memory.host_settings()) is not None


@pytest.mark.skipif(not _would_reexec(), reason="this host has no glibc >= 2.35 with THP on")
def test_reexec_keeps_pid_and_command_and_runs_once():
  script = ("import os, sys\n"
            "print('start', os.getpid(), flush=True)\n"
            "from videoar import host_memory\n"
            "host_memory.reexec_with_huge_pages()\n"
            "print('after', os.getpid(), os.environ['GLIBC_TUNABLES'], sys.argv[1:])\n"
            "print(host_memory.memory_line(dict(os.environ), *host_memory.host_settings()))\n")
  environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  proc = subprocess.Popen([sys.executable, "-c", script, "--flag=1"], env=environ,
                          stdout=subprocess.PIPE, text=True)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0
  # Once before the exec, once after it; then the tunable stops a second exec.
  assert out.splitlines() == [f"start {proc.pid}", f"start {proc.pid}",
                              f"after {proc.pid} {host_memory.TUNABLE} ['--flag=1']",
                              f"host memory: large blocks on huge pages"
                              f" (GLIBC_TUNABLES={host_memory.TUNABLE})"]


@pytest.mark.skipif(not _would_reexec(), reason="this host has no glibc >= 2.35 with THP on")
def test_reexec_returns_where_the_interpreter_cannot_find_its_binary(tmp_path):
  # Started by a bare name that PATH does not hold, Python leaves sys.executable empty: the job
  # must run on without the re-execution, not stop in execve.
  script = ("import sys\n"
            "print('start', repr(sys.executable), flush=True)\n"
            "from videoar import host_memory\n"
            "host_memory.reexec_with_huge_pages()\n"
            "print('after')\n")
  environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  environ["PATH"] = str(tmp_path)
  environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
  proc = subprocess.run(["python", "-c", script], executable=sys.executable, env=environ,
                        capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == ["start ''", "after"]
