"""Shared helpers for the reliability sweep: run the real CLI in a child, kill it, fill a disk.

Everything here drives real processes (SIGKILL is a real signal to a real pid) and real file systems; nothing
is mocked, so a passing test says something about the shipped code paths.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "OMP_NUM_THREADS": "1"}


def fournil(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """`fournil ARGS` in a fresh interpreter, as a user runs it; stdout/stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "fournil", *args], capture_output=True, text=True,
                          env=CHILD_ENV, timeout=timeout, **kwargs)


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> None:
    """Non-zero exit, a one-line `error:` message containing every needle, and never a traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    if code is not None:
        assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "unexpected " not in result.stderr, result.stderr[-3000:]
    assert "error:" in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in result.stderr, result.stderr[-2000:]


def can_mount_tmpfs() -> bool:
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as probe:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", probe], check=False)
        return ok


@contextlib.contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    """A real, tiny file system (ENOSPC when full); needs root and a container that allows mounts."""
    with tempfile.TemporaryDirectory() as mountpoint:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mountpoint], check=True)
        try:
            yield Path(mountpoint)
        finally:
            subprocess.run(["umount", "-l", mountpoint], check=False)


TMPFS = pytest.mark.skipif(not can_mount_tmpfs(), reason="cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN)")


def fsize_limited(limit_bytes: int):
    """preexec_fn for a child whose writes fail with EFBIG past `limit_bytes` (RLIMIT_FSIZE; SIGXFSZ ignored)."""
    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def tree_files(root: Path) -> dict[str, bytes]:
    """Every regular file under root, relative path → bytes (to compare two outputs exactly)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
