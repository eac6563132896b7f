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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fournil
from fournil.console import FournilError, UsageError

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


def write_png(fig: Any, target: str | Path, dpi: int = 100) -> Path:
    """Lay out a matplotlib figure, write it as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(target)


def read_json(path: str | Path) -> Any:
    """An input JSON file; one that is not JSON (or not UTF-8) is a UsageError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UsageError(f"{path}: not valid JSON: {exc}") from exc


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


def mark_incomplete(directory: str | Path, producer: str) -> None:
    """Say that `producer` is writing `directory` and has not finished: a kill from here on leaves a directory
    that its verb recognises as its own (and `complete: false` keeps every reader away from it)."""
    write_json(Path(directory) / MANIFEST, {"producer": producer, "fournil_version": fournil.__version__,
                                            "complete": False})


def claim_output(out: str | Path, producer: str, *, inputs: Iterable[str | Path | None] = (), force: bool = False,
                 resume: bool | None = None, option: str = "--out", signature: tuple[str, ...] = (),
                 magic: bytes | None = None) -> Path:
    """Check, before any work, that a verb may write its output at `out`; nothing is written. Every verb that
    writes an artifact calls this first; its writer then marks the directory (`mark_incomplete`) before its first
    file, so a killed run leaves an output the verb recognises as its own.

    Refused with a UsageError naming the rule and the paths (symlinks and `..` resolved first):
    - `out` is one of `inputs`, lies inside one, or contains one: the verb would overwrite or read its own output;
    - `out` holds another producer's artifact (its fournil.json says so), or is a non-empty directory without a
      manifest: files the verb did not write are never overwritten nor deleted, `force` or not;
    - `out` holds this producer's output and the verb was not told what to do with it: `resume=None` (a verb that
      cannot continue) replaces only an unfinished one, a finished one needs `force`; `resume=False` (a verb that
      can continue, not asked to) keeps it unless `force`; `resume=True` continues it.
    `signature`: paths whose presence marks this producer's output in a directory written without a manifest (by
    an older fournil, or by the library below the CLI). `magic`: the output is one file, whose leading bytes say it
    is of this kind (a GGUF file starts with b"GGUF").
    """
    given = Path(out)
    target = given.expanduser().resolve()
    shown = f"{option} {given}" + (f" (= {target})" if str(target) != str(given) else "")
    for source in inputs:
        if source is None or not (Path(source).exists() or Path(source).is_symlink()):
            continue  # a hub id, or an input the verb itself will report missing
        resolved = Path(source).expanduser().resolve()
        rule = ("is the input" if target == resolved else "lies inside the input" if resolved in target.parents
                else "contains the input" if target in resolved.parents else None)
        if rule:
            where = f" (= {resolved})" if str(resolved) != str(source) else ""
            raise UsageError(f"{shown}: {rule} {source}{where}; writing there would overwrite or reread what the "
                             "verb reads: choose an output outside its inputs")
    if magic is not None:
        if target.is_dir():
            raise UsageError(f"{shown}: is a directory; give the path of the {producer} file to write")
        if target.exists():
            with open(target, "rb") as f:
                if f.read(len(magic)) != magic:
                    raise UsageError(f"{shown}: exists and is not a {producer} file; it is never overwritten: "
                                     "choose a new path")
            if not force:
                raise UsageError(f"{shown}: a {producer} file already exists there; --force replaces it")
        return target
    if target.exists() and not target.is_dir():
        raise UsageError(f"{shown}: is a file, not a directory; it is never overwritten: choose a new path")
    entries = sorted(e for e in os.listdir(target) if not _TEMP.match(e)) if target.is_dir() else []
    manifest = None
    if MANIFEST in entries:
        try:
            manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            manifest = {}
        owner = manifest.get("producer") if isinstance(manifest, dict) else None
        if owner != producer:
            what = f"a {owner} artifact" if isinstance(owner, str) else f"an unreadable {MANIFEST}"
            raise UsageError(f"{shown}: holds {what}, not a {producer} output; it is never overwritten nor "
                             "deleted (--force included): choose another path")
    elif entries and not any((target / mark).exists() for mark in signature):
        raise UsageError(f"{shown}: is not empty and has no {MANIFEST}, so it is not a {producer} output; files "
                         f"the verb did not write are never overwritten nor deleted: choose a new or empty directory")
    finished = bool(manifest and manifest.get("complete"))
    if (entries and entries != [MANIFEST]) or finished:  # our own output, more than an unused claim
        if resume is False and not force:
            raise UsageError(f"{shown}: already holds a {producer} output; --resume continues it, a new path "
                             "starts over")
        if resume is None and finished and not force:
            raise UsageError(f"{shown}: already holds a finished {producer} output; --force replaces it")
    return target


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
