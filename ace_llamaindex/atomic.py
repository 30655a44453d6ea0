"""Write files and directories so that a reader never sees half of them.

A file is written beside its target and moved over it with ``os.replace`` (atomic on POSIX and Windows).
A directory is built beside its target and swapped in with two renames; the previous version stays intact
until the new one is complete, so an interrupted run never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Called with the target before a finished directory is swapped in; one that raises abandons the write (the scratch
# directory is removed). A data-parallel worker adds one: no writing once its launcher is gone (train.distributed).
BEFORE_SWAP: list[Callable[[Path], None]] = []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path, directory: bool = False) -> None:
    """``mkstemp``/``mkdtemp`` create private (0600/0700) entries; give them the mode a plain ``open``/``mkdir``
    would, so a model written by one user can be served by another (e.g. a container user) under umask 022."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def folder_bytes(path: str | Path) -> int:
    """The bytes the files under ``path`` take (0 when it does not exist: an HF id, say)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def ensure_free_space(target: str | Path, needed: int, what: str) -> None:
    """Refuse, before a long job, a write of ``needed`` bytes that the filesystem of ``target`` cannot hold."""
    from .errors import OptionError

    target = Path(target)
    where = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(where).free
    if free < needed:
        raise OptionError(f"{target}: {what} needs about {needed / 1e6:.0f} MB and the filesystem has {free / 1e6:.0f} MB "
                          "free; free some space or write elsewhere (nothing was changed)")


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or quota: ENOSPC/EDQUOT, Rust's "os error 28"
    (safetensors, Qdrant Edge), SQLite's "database or disk is full" (qdrant-client's local mode)."""
    import errno

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text or "database or disk is full" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` to ``path`` (UTF-8), creating parent folders."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        honour_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a scratch directory; on success it replaces ``target``, on any exception it is deleted.

    >>> with atomic_directory("models/ft") as tmp:
    ...     model.save(str(tmp))
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    honour_umask(scratch, directory=True)
    try:
        yield scratch
        for check in BEFORE_SWAP:
            check(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for entry in scratch.rglob("*"):  # libraries write some files privately (safetensors: 0600)
        honour_umask(entry, directory=entry.is_dir())
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(scratch, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _recover(target: Path) -> None:
    """A kill between the two renames of a swap leaves the previous version at ``.<name>.old-<pid>``: put it back.
    Half-built scratch folders of killed runs are removed."""
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        os.replace(olds.pop(), target)
    for stale in olds + list(target.parent.glob(f".{target.name}.partial-*")):
        pid = stale.name.rsplit(".old-", 1)[-1] if ".old-" in stale.name else stale.name.split(".partial-", 1)[1].split("-")[0]
        if not _alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: str) -> bool:
    """Whether the process that owns a scratch/old folder (its pid is in the name) still runs."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def check_output(path: str | Path, kind: str = "file") -> Path:
    """Before hours of work: can ``path`` be written? ``kind`` is ``file`` or ``dir``. Raises :class:`OptionError`
    naming the path and the problem (a directory where a file goes, or the reverse; no write permission)."""
    from .errors import OptionError

    path = Path(path)
    if path.exists():
        if kind == "file" and path.is_dir():
            raise OptionError(f"{path}: is a directory; expected a file path to write")
        if kind == "dir" and not path.is_dir():
            raise OptionError(f"{path}: is a file; expected a directory to write into")
    parent = path if kind == "dir" and path.is_dir() else path.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(f"{path}: {existing} is a file, so {parent} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError(f"{path}: no permission to write in {existing}")
    return path
