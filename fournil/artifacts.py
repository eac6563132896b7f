"""Artifacts: atomic file writes and the `fournil.json` manifest every stage's output directory carries.

Nothing is ever half-written: data goes to a temporary file in the same directory, is flushed and fsynced, then
renamed over the target (atomic on POSIX). The manifest is written last, so `complete: true` is never a lie.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fournil
from fournil.console import FournilError

MANIFEST = "fournil.json"
NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # disk full, file-size limit (RLIMIT_FSIZE), quota
_UMASK = os.umask(0)
os.umask(_UMASK)
# atomic_path's temporary files and scratch_dir's directories: .<name>.<host>.<writer pid>.<random>.tmp. The host
# is in the name because a directory on a shared filesystem may have live writers on other machines, whose pids
# mean nothing here.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^\..+\.([A-Za-z0-9-]+)\.(\d+)\.[^.]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(directory: Path) -> int:
    """Delete the temporary files and scratch directories that writers killed mid-write (SIGKILL, power loss) left
    in `directory`.

    Such a writer never reached its cleanup, so its `.name.HOST.PID.xxx.tmp` stays and would pollute the output of
    the rerun. One is removed only when the process named in it, on this machine, is gone: a live writer's, or
    another machine's, is left alone.
    """
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            match = _TEMP.match(entry.name)
            if match and match.group(1) == _HOST and not _alive(int(match.group(2))):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                removed += 1
    return removed


@contextlib.contextmanager
def scratch_dir(parent: str | Path, name: str) -> Iterator[Path]:
    """A private working directory inside `parent` (on the same filesystem as the outputs it helps build), removed
    afterwards; one that a killed run left there is removed by the next write into `parent`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parent)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=parent))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts should be as readable as any file
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE:  # a full disk is the user's to fix, not a bug: say which file and why
            raise FournilError(f"cannot write {target}: {exc.strerror}; free some space and rerun "
                               "(the previous version of the file, if any, is untouched)") from exc
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_manifest(directory: str | Path, producer: str, **fields: Any) -> dict[str, Any]:
    """Mark `directory` complete. Call after every other file of the artifact is in place."""
    manifest = {
        "producer": producer,
        "fournil_version": fournil.__version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **fields,
        "complete": True,
    }
    write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    """A stable hash of JSON-able data (a resolved recipe, say): keys sorted, no whitespace."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
