"""Transparent huge pages for XLA:CPU's buffers: the entry point re-executes itself once with
glibc's malloc told to use them.

XLA:CPU allocates a step's temporaries with malloc and frees them when the step ends (one block
of 318 MB a step for the default train step). glibc serves blocks that large with mmap and
returns them with munmap, so every step faults its pages in again, 4 KiB at a time: about 82,000
page faults and 130 ms of system time a step on 2 cores. glibc 2.35 and later can ask the kernel
for 2 MiB transparent huge pages for such blocks (the tunable `glibc.malloc.hugetlb=1`:
madvise(MADV_HUGEPAGE)), which cuts the faults about 100x and the default train step by about 9 %
(docs/performance.md, "Transparent huge pages"). glibc reads its tunables only when a process
starts, hence the re-execution. Keeping the freed blocks in malloc's heap instead
(`glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0` and a large trim threshold, with huge pages
or without) avoids the faults too but made the step slower, so it is not done.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _host_lacks(thp_setting: str | None, libc_version: str | None) -> str | None:
  """What keeps malloc's blocks off transparent huge pages whatever GLIBC_TUNABLES says (the
  arguments are huge_page_environment's), or None."""
  name, _, version = (libc_version or "").partition(" ")
  try:
    major_minor = tuple(int(part) for part in version.split(".")[:2])
  except ValueError:
    major_minor = ()
  if name != "glibc" or major_minor < (2, 35):
    return f"the C library ({libc_version or 'not glibc'}) has no glibc.malloc.hugetlb"
  if thp_setting is None or ("[always]" not in thp_setting and "[madvise]" not in thp_setting):
    setting = (thp_setting or "unreadable").strip()
    return f"transparent huge pages are off ({THP_SETTING}: {setting})"
  return None


def _hugetlb_setting(environ: dict[str, str]) -> str | None:
  """The value GLIBC_TUNABLES gives glibc.malloc.hugetlb, or None where it names none."""
  entries = (entry.partition("=") for entry in environ.get("GLIBC_TUNABLES", "").split(":"))
  return {name: value for name, _, value in entries}.get("glibc.malloc.hugetlb")


def huge_page_environment(environ: dict[str, str], thp_setting: str | None,
                          libc_version: str | None) -> dict[str, str] | None:
  """The environment to re-execute with: `environ` with TUNABLE appended to GLIBC_TUNABLES; or
  None where that would change nothing or override a choice: a C library other than glibc 2.35
  or later (`libc_version` as os.confstr("CS_GNU_LIBC_VERSION") gives it, e.g. "glibc 2.36";
  None elsewhere), transparent huge pages off or unknown (`thp_setting`: the contents of
  THP_SETTING, e.g. "always [madvise] never"; None where it cannot be read), or GLIBC_TUNABLES
  already naming glibc.malloc.hugetlb (which also stops a second re-execution)."""
  if _hugetlb_setting(environ) is not None or _host_lacks(thp_setting, libc_version):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def memory_line(environ: dict[str, str], thp_setting: str | None,
                libc_version: str | None) -> str:
  """One line for a job's log: whether this process's malloc puts large blocks on huge pages,
  and why not where it does not (the arguments are huge_page_environment's, for this process)."""
  setting = _hugetlb_setting(environ)
  lacks = _host_lacks(thp_setting, libc_version)
  if setting in (None, "0") or lacks:
    why = lacks or (f"GLIBC_TUNABLES={environ['GLIBC_TUNABLES']}" if setting else
                    f"the re-execution with GLIBC_TUNABLES={TUNABLE} did not happen")
    return f"host memory: regular pages; {why}"
  return f"host memory: large blocks on huge pages (GLIBC_TUNABLES={environ['GLIBC_TUNABLES']})"


def host_settings() -> tuple[str | None, str | None]:
  """This host's (THP_SETTING's contents, os.confstr("CS_GNU_LIBC_VERSION")), the arguments
  huge_page_environment decides on; (None, None) off Linux, and None for either that cannot be
  read."""
  if not sys.platform.startswith("linux"):
    return None, None
  try:
    with open(THP_SETTING) as f:
      thp_setting = f.read()
  except OSError:
    thp_setting = None
  try:
    libc_version = os.confstr("CS_GNU_LIBC_VERSION")
  except (ValueError, OSError):
    libc_version = None
  return thp_setting, libc_version


def reexec_with_huge_pages() -> None:
  """Replaces this process (same pid, same interpreter and arguments, sys.orig_argv) by one whose
  malloc puts large blocks on transparent huge pages, where huge_page_environment says that
  changes something on this host; otherwise returns. Call it first in an entry point, before
  anything starts threads or writes output; an exec that fails, or an interpreter that does not
  know its own binary (sys.executable empty), returns too, and the job runs as it would have;
  `memory_line` then says so."""
  environ = huge_page_environment(dict(os.environ), *host_settings())
  # sys.executable is "" where Python could not find its own binary (started by a bare name
  # that PATH does not hold): nothing to exec, and execve would raise ValueError.
  if environ is None or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    # argv[0] as sys.executable, not as typed: the new interpreter finds its prefix (a venv's)
    # from it, whatever PATH or the launcher said.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
  except OSError:
    return
