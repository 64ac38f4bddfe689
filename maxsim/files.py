"""Safe writes: atomic files and folders, writer locks, and checks before replacing a folder.

A reader sees the old content or the new one, never half of either; a folder is replaced only
when it holds what we wrote; two writers of one thing take turns.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from maxsim.errors import LockedError, OutputExistsError, SettingsError

__all__ = ["LockedError"]  # re-exported: it is raised here


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting and restoring it
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the mode an ordinary ``open(path, "w")`` would give it (0666 less the umask),
    not the private 0600 of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def real_path(path: str | Path) -> Path:
    """``path``, or, when it is a symbolic link, the folder it leads to: a folder reached through
    a link is written (swapped, locked, recovered) where it really is, and the link stays a link
    (swapping the link itself would split the folder in two: a new folder where the link was, the
    old content left in the target). A link that leads round in a loop is an error."""
    path = Path(path)
    if not path.is_symlink():
        return path
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError) as err:  # (a loop: RuntimeError before Python 3.13, OSError since)
        raise SettingsError(f"{path} is a symbolic link that leads round in a loop ({err}): point it at a "
                            "folder, or give the folder itself") from None


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    Callers check first that ``path`` is theirs to replace (:func:`check_replaceable`). If the
    block raises, or the process dies inside it, ``path`` keeps its old content (or stays
    absent) and only a hidden ``.tmp-*`` folder is left behind, which :func:`remove_stale_temps`
    clears. Replacing an existing folder takes two renames; if the process dies between them,
    ``path`` is missing and ``<path>.old`` holds the previous content, which
    :func:`recover_directory` puts back. A ``path`` that is a symbolic link is written in its
    target (:func:`real_path`).
    """
    path = real_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_directory(tmp, path)


def publish_directory(folder: str | Path, path: str | Path) -> None:
    """Move the finished ``folder`` (on the same file system) to ``path``, replacing what is
    there whole, as :func:`atomic_directory` does at its end (two renames; a crash between them
    leaves ``<path>.old``, which :func:`recover_directory` puts back)."""
    path = real_path(path)
    old = old_path(path)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(folder, path)
    shutil.rmtree(old, ignore_errors=True)


def old_path(path: str | Path) -> Path:
    """Where :func:`atomic_directory` keeps the previous content while it swaps: ``<path>.old``."""
    path = real_path(path)
    return path.with_name(path.name + ".old")


def recover_directory(path: str | Path) -> bool:
    """Put back ``<path>.old`` if a replacement by :func:`atomic_directory` was cut short.

    Returns whether anything was put back. Call it only while no writer is swapping ``path``
    (under its :func:`exclusive_lock`, or where nothing else writes).
    """
    path = real_path(path)
    old = old_path(path)
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)
            return True
    return False


def sha256_of(handle: BinaryIO, digest=None):
    """Feed the rest of a binary file to ``digest`` (a new sha256 by default) in 1 MiB blocks;
    returns the digest object."""
    digest = digest if digest is not None else hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest


def file_digest(path: Path) -> str:
    """The sha256 of a file, in hex."""
    with Path(path).open("rb") as handle:
        return sha256_of(handle).hexdigest()


def fsync_file(path: Path) -> None:
    """Flush a written file to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_record(path: Path) -> dict:
    """A written file flushed to the disk, and what a manifest records of it: its size and sha256."""
    fsync_file(path)
    return {"bytes": Path(path).stat().st_size, "sha256": file_digest(path)}


def save_array(path: Path, array) -> dict:
    """Write a numpy array as ``.npy`` (no pickles), flushed to the disk; returns what a manifest
    records of it: dtype, shape, size and sha256."""
    import numpy as np

    array = np.ascontiguousarray(array)
    np.save(path, array, allow_pickle=False)
    return {"dtype": array.dtype.str, "shape": list(array.shape), **file_record(path)}


def open_array(path: Path, recorded: dict):
    """The ``.npy`` file ``path`` memory-mapped, after checking it against what a manifest records
    of it (:func:`save_array`'s size, dtype and shape): the cheap checks, no byte read but the
    header. Raises FileNotFoundError for a missing file, ValueError saying what differs otherwise."""
    import numpy as np

    size = path.stat().st_size
    if size != recorded["bytes"]:
        raise ValueError(f"{path} holds {size} bytes, not the {recorded['bytes']} the manifest records: truncated "
                         "or replaced")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path} is not a readable array ({err})") from None
    if array.dtype.str != recorded["dtype"] or list(array.shape) != recorded["shape"]:
        raise ValueError(f"{path} holds {array.dtype.str} {list(array.shape)}, not the {recorded['dtype']} "
                         f"{recorded['shape']} the manifest records")
    return array


def json_object(text: str | bytes) -> dict:
    """``text`` read as JSON, which must be an object; a ValueError saying why not otherwise.

    >>> json_object('{"a": 1}')
    {'a': 1}
    >>> json_object("[1]")
    Traceback (most recent call last):
    ...
    ValueError: not a JSON object
    """
    import json

    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def checksum_problems(folder: Path, files: dict[str, dict]) -> list[str]:
    """Each of ``files`` ({name: {"sha256": ...}}) in ``folder`` that is missing or whose sha256
    differs, as a sentence."""
    problems = []
    for file_name, recorded in files.items():
        path = Path(folder) / file_name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif file_digest(path) != recorded["sha256"]:
            problems.append(f"{path} is damaged (checksum mismatch)")
    return problems


def remove_stale_temps(folder: str | Path) -> None:
    """Delete temporary folders left in ``folder`` by a process that died mid-write."""
    folder = Path(folder)
    if folder.is_dir():
        for child in folder.glob(".tmp-*"):
            shutil.rmtree(child, ignore_errors=True)


def remove_stale_temps_of(path: str | Path) -> list[Path]:
    """Delete the temporary folders that :func:`atomic_directory` made for ``path`` (beside it)
    and that a writer killed mid-write left behind; others' are not touched. Call it only under
    ``path``'s writer lock, where no writer of ``path`` is at work. Returns what was deleted."""
    path = real_path(path)
    pattern = re.compile(rf"\.tmp-{re.escape(path.name)}-[a-z0-9_]{{8}}")
    stale = [child for child in path.parent.glob(f".tmp-{glob.escape(path.name)}-*")
             if child.is_dir() and not child.is_symlink() and pattern.fullmatch(child.name)]
    for child in stale:
        shutil.rmtree(child, ignore_errors=True)
    return stale


def check_replaceable(path: str | Path, is_ours, what: str, overwrite: bool | None = None,
                      flag: str = "--overwrite") -> None:
    """Refuse to write ``what`` at ``path`` where that would delete something we did not write.

    ``path`` may be absent or an empty folder. A non-empty folder must satisfy ``is_ours(path)``
    and, when ``overwrite`` is not None, ``overwrite`` must be True (``flag`` names the switch
    that says so). A file is always refused.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a folder: choose a folder for the {what}")
    if not any(path.iterdir()):
        return
    if not is_ours(path):
        raise OutputExistsError(f"{path} already holds files that are not a {what}; writing there could "
                              "replace them: choose an empty or new folder")
    if overwrite is False:
        raise OutputExistsError(f"{path} already holds a {what}: pass {flag} to replace it, or choose "
                              "another folder")


def lock_path(path: str | Path) -> Path:
    """The lock file of a folder that is replaced whole when written: ``<path>.lock`` beside it
    (beside the folder a symbolic link leads to, so that every way to the folder takes one lock)."""
    path = real_path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def exclusive_lock(lock_file: str | Path, what: str, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive lock (``filelock``) on ``lock_file`` for the block.

    Waits up to ``timeout`` seconds for another holder (0: do not wait), then raises
    :class:`LockedError` naming ``what`` and the lock file. The operating system releases the
    lock of a process that dies, so a crash never leaves it held.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
        raise LockedError(f"another process is writing {what} (it holds {lock_file}){waited}: wait for it "
                          "to finish, or use another folder") from None
    try:
        yield
    finally:
        lock.release()


def no_space_message(err: OSError) -> str | None:
    """A one-line explanation for a full disk, or None if ``err`` is something else."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {err.filename}" if err.filename else ""
        return (f"no space left on the device{where}. Nothing was replaced: the previous files are "
                "intact. Fix: free some space (or choose an output on another disk) and run it again")
    return None
