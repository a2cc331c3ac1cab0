"""An inter-process lock per cache file that leaves no file behind and says when it waits.

:func:`file_lock` holds ``.<hash>.lock`` beside the target (the short name of :func:`utils.atomic.temp_prefix`, so
names near the file-system limit still work). On POSIX it is an ``flock`` on that file, which the holder deletes
before it lets go: a waiter that then gets the lock on the deleted file sees that the path is gone (or is another
file) and tries again, so removing the file is safe. The holder writes its process id into the file; a waiter
that has waited ``notice_after`` seconds logs one WARNING (and prints one line when ``announce`` is true) naming
the lock file and that process, so a hung holder is visible. Elsewhere ``filelock`` is used (its file may stay).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dinov3_integration._logging import get_logger
from dinov3_integration.utils.atomic import temp_prefix

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = get_logger("hub")

__all__ = ["NOTICE_AFTER", "file_lock", "lock_path"]

NOTICE_AFTER = 5.0
"""Seconds of waiting for a lock before saying so."""
_POLL = 0.05


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of ``target``: ``.<hash of the name>.lock`` in the same folder."""
    path = Path(target)
    return path.parent / (temp_prefix(path) + "lock")


@contextlib.contextmanager
def file_lock(
    target: str | os.PathLike[str], *, notice_after: float | None = None, announce: bool = False
) -> Iterator[None]:
    """Hold the lock of ``target`` (its folder must exist); the lock file is removed on release.

    ``notice_after`` (default :data:`NOTICE_AFTER`): seconds of waiting before one WARNING names the lock file and
    its holder; ``announce`` also prints that line on stderr.
    """
    notice_after = NOTICE_AFTER if notice_after is None else notice_after
    path = lock_path(target)
    if fcntl is None:
        with _filelock(path, notice_after, announce):
            yield
        return
    fd = _acquire(path, notice_after, announce)
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # before unlocking: whoever waits on this inode will see it is gone and retry
        os.close(fd)  # releases the flock


def _acquire(path: Path, notice_after: float, announce: bool) -> int:
    start = time.monotonic()
    noticed = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not noticed and time.monotonic() - start >= notice_after:
                _notice(path, announce)
                noticed = True
            time.sleep(_POLL)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            if noticed:
                log.info("got the lock %s after %.1f s", path, time.monotonic() - start)
            return fd
        os.close(fd)  # the holder removed the file after we opened it: lock the new one


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return "another process"
    return f"process {pid}" if pid.isdigit() else "another process"


def _notice(path: Path, announce: bool) -> None:
    message = (
        f"waiting for the lock {path}, held by {_holder(path)} that is downloading the same file; if no such "
        "process is running any more, something else holds the lock: stop it (the lock is freed when it ends)."
    )
    log.warning(message)
    if announce:
        print(f"dinov3: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _filelock(path: Path, notice_after: float, announce: bool) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=notice_after)
    except Timeout:
        _notice(path, announce)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            os.unlink(path)
