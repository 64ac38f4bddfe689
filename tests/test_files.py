"""Atomic writes keep ordinary file modes; folders we did not write are refused; locks exclude."""

import os
import subprocess
import sys
import time

import pytest

from maxsim.files import LockedError, atomic_directory, atomic_write_text, check_replaceable, exclusive_lock


def test_atomic_files_and_folders_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644  # was 0600 (mkstemp's)
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a.txt").read_text() == "x"


def test_check_replaceable(tmp_path):
    check_replaceable(tmp_path / "new", lambda p: False, "thing")  # absent: fine
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", lambda p: False, "thing")  # empty: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        check_replaceable(tmp_path / "file", lambda p: True, "thing")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a thing"):
        check_replaceable(tmp_path / "theirs", lambda p: False, "thing", overwrite=True)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        check_replaceable(tmp_path / "theirs", lambda p: True, "thing", overwrite=False)
    check_replaceable(tmp_path / "theirs", lambda p: True, "thing", overwrite=True)


def test_exclusive_lock_is_held_across_processes_and_released_by_death(tmp_path):
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from maxsim.files import exclusive_lock
with exclusive_lock({str(lock)!r}, "x"):
    print("held", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LockedError, match="another process is writing the thing"):
            with exclusive_lock(lock, "the thing", timeout=0.3):
                pass
        assert time.monotonic() - started >= 0.3  # it waited before giving up
    finally:
        holder.kill()
        holder.wait()
    with exclusive_lock(lock, "the thing", timeout=5):  # a dead holder's lock is free
        pass
