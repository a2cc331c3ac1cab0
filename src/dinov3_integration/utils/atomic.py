"""Atomic file output: the one place that writes files and folders under their final names.

Every writer of the package goes through :func:`atomic_path` (files) or :func:`atomic_dir` (folders): the data is
written to a temporary name beside the destination and renamed onto it only when complete, so a killed process
never leaves a half-written file under the final name. Temporary names are short (``.<hash>.<random>.tmp``) so a
destination name near the file-system limit still works, and are matched literally when stale ones are removed
(no glob: ``photo[1].png`` never matches ``photo1.png``'s temporary). Outputs get the permissions a plain
``open(path, "w")`` would give (``0o666``/``0o777`` filtered by the umask), never ``mkstemp``'s owner-only ``0o600``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "PARTIAL_SUFFIX",
    "TEMP_SUFFIX",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "commit_temp",
    "current_umask",
    "fsync_dir",
    "new_temp_path",
    "partial_path",
    "remove_stale_temps",
    "temp_prefix",
]

TEMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".part"


def current_umask() -> int:
    """The process umask (read without changing it for long: set and restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_prefix(dst: str | os.PathLike[str]) -> str:
    """The literal prefix of every temporary name for ``dst``: ``.<12 hex digits of the name's hash>.``."""
    return "." + hashlib.sha256(Path(dst).name.encode("utf-8", "surrogateescape")).hexdigest()[:12] + "."


def _new_temp(dst: Path, *, folder: bool = False) -> Path:
    prefix = temp_prefix(dst)
    for _ in range(100):
        candidate = dst.parent / f"{prefix}{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            if folder:
                os.mkdir(candidate, 0o777)  # filtered by the umask, like mkdir
            else:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise OSError(f"could not create a temporary {'folder' if folder else 'file'} in {dst.parent}")


def new_temp_path(dst: str | os.PathLike[str]) -> Path:
    """Create and return an empty, uniquely named temporary file beside ``dst`` (plain-``open`` permissions).

    For writers that cannot use :func:`atomic_path`'s ``with`` block; commit it with :func:`commit_temp`.
    """
    return _new_temp(Path(dst))


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entry table so a rename survives a crash (no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fix_mode(path: Path, *, folder: bool) -> None:
    """Give ``path`` the permissions a plain create would (writers such as safetensors' may use 0o600)."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def partial_path(dst: str | os.PathLike[str]) -> Path:
    """The one stable temporary name for ``dst`` (``.<hash>.part``), created empty if missing, for resumable writers.

    Unlike :func:`atomic_path`'s random names, a killed writer's partial file is found again by the next one (a
    download resumes it with an HTTP ``Range`` request, or removes it). Only one writer may use it at a time: hold
    a lock on ``dst``. Commit it with :func:`commit_temp`. It is never matched by :func:`remove_stale_temps`.
    """
    target = Path(dst)
    path = target.parent / (temp_prefix(target) + PARTIAL_SUFFIX[1:])  # .<hash>.part
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))  # 0o666 filtered by the umask, like open(..., "w")
    return path


def commit_temp(tmp: str | os.PathLike[str], dst: str | os.PathLike[str], *, fsync: bool = True) -> None:
    """Give ``tmp`` plain-``open`` permissions, flush it and rename it onto ``dst`` (same folder)."""
    tmp, target = Path(tmp), Path(dst)
    _fix_mode(tmp, folder=False)
    if fsync:
        _fsync_file(tmp)
    os.replace(tmp, target)
    if fsync:
        fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield an empty temporary file path beside ``dst``; on success it is renamed onto ``dst``.

    The caller may write the temporary path with any writer (``safetensors.torch.save_file``, ``torch.save``,
    PIL...). On any exception the temporary is removed and ``dst`` is left as it was. The parent folder is created.
    """
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(target)
    try:
        yield tmp
        commit_temp(tmp, target, fsync=fsync)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dst``; on success it replaces ``dst`` (which must not be a file).

    An existing folder ``dst`` is replaced as a whole. On any exception the temporary folder is removed.
    """
    target = Path(dst)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; remove it or choose another destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(target, folder=True)
    try:
        yield tmp
        _fix_mode(tmp, folder=True)
        for child in tmp.rglob("*"):
            _fix_mode(child, folder=child.is_dir())
        if target.is_dir():
            old = _new_temp(target, folder=True)
            old.rmdir()
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(dst: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dst: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_temps(dst: str | os.PathLike[str]) -> int:
    """Remove temporaries a killed writer of ``dst`` left beside it; return how many were removed.

    Names are compared literally (prefix and suffix), never as a glob pattern.
    """
    target = Path(dst)
    prefix = temp_prefix(target)
    removed = 0
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
    return removed
