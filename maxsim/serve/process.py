"""The service's process: ``maxsim serve --workers N``'s worker factory, its allocator tuning, and
the lock that lets one writing server serve an index."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fastapi import FastAPI

from maxsim.errors import LockedError
from maxsim.files import atomic_write_text, exclusive_lock
from maxsim.serve.app import create_app
from maxsim.serve.batching import load_retriever

#: how ``maxsim serve --workers N`` tells each worker process what to serve
ENV_INDEX, ENV_API_KEY, ENV_READ_ONLY = "MAXSIM_SERVE_INDEX", "MAXSIM_SERVE_API_KEY", "MAXSIM_SERVE_READ_ONLY"
ENV_DEVICE, ENV_ALLOW_MISMATCH = "MAXSIM_SERVE_DEVICE", "MAXSIM_SERVE_ALLOW_MODEL_MISMATCH"
ENV_QUERY_PRECISION = "MAXSIM_SERVE_QUERY_PRECISION"


#: glibc's largest mmap threshold (64-bit), and a trim threshold far above what a search frees
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 * 1024 * 1024, 1 << 30


def keep_freed_memory() -> bool:
    """Let this process reuse the memory its searches free instead of handing it back to the
    system after each one (glibc's malloc maps every block over 128 KiB afresh until its dynamic
    threshold has grown, and a new mapping is zeroed page by page): one query's search on 2
    cores goes from about 30 to 23 ms. Called by ``maxsim serve`` for its own process, never by
    the library. Returns whether it applied (glibc only)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(-3, MMAP_THRESHOLD) and libc.mallopt(-1, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


def app_from_environment() -> FastAPI:
    """The app of one worker of ``maxsim serve --workers N`` (uvicorn's factory): the index in
    ``MAXSIM_SERVE_INDEX``. Workers share the index on disk: a write takes the index's writer
    lock and every search picks up the newest version first."""
    keep_freed_memory()
    retriever = load_retriever(os.environ[ENV_INDEX], os.environ.get(ENV_DEVICE) or None,
                               os.environ.get(ENV_ALLOW_MISMATCH) == "1",
                               os.environ.get(ENV_QUERY_PRECISION) or "auto")
    return create_app(retriever, api_key=os.environ.get(ENV_API_KEY) or None,
                      read_only=os.environ.get(ENV_READ_ONLY) == "1")


@contextlib.contextmanager
def writer_lock(index: Path):
    """One writing server per index: ``<index>.serve.lock`` held while it runs, and its pid in
    ``<index>.serve.pid`` so that a second one can say which process holds it. Released by the
    operating system if the server dies."""
    lock, pid_file = index.with_name(index.name + ".serve.lock"), index.with_name(index.name + ".serve.pid")
    try:
        with exclusive_lock(lock, f"the index {index}", timeout=0):
            atomic_write_text(pid_file, f"{os.getpid()}\n")
            yield
    except LockedError:
        holder = pid_file.read_text().strip() if pid_file.is_file() else "unknown"
        raise LockedError(f"another maxsim serve (pid {holder}) serves {index} as its writer: stop it, or start "
                          "this one with --read-only (several read-only servers can share an index)") from None
