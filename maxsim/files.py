"""Atomic writes: a reader sees the old content or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    If the block raises, or the process dies inside it, ``path`` keeps its old content (or stays
    absent) and only a hidden ``.tmp-*`` folder is left behind, which :func:`remove_stale_temps`
    clears. Replacing an existing folder takes two renames; if the process dies between them,
    ``path`` is missing and ``<path>.old`` holds the previous content, which
    :func:`recover_directory` puts back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(path: str | Path) -> None:
    """Put back ``<path>.old`` if a replacement by :func:`atomic_directory` was cut short."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)


def remove_stale_temps(folder: str | Path) -> None:
    """Delete temporary folders left in ``folder`` by a process that died mid-write."""
    folder = Path(folder)
    if folder.is_dir():
        for child in folder.glob(".tmp-*"):
            shutil.rmtree(child, ignore_errors=True)
