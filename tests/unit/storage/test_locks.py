"""The exclusive folder lock: one holder at a time, across threads and processes; waiters wait or fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from regionrank.storage import StoreLockedError, exclusive_lock

HOLD = """
import sys
from regionrank.storage import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock on ``tmp_path/run/.lock`` until a line arrives on its stdin."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run" / ".lock")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_lock_creates_its_folder_and_is_reusable_after_release(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / ".lock"
    with exclusive_lock(path):
        assert path.is_file()
    with exclusive_lock(path, timeout=0):  # released: free again at once
        pass


def test_second_holder_in_another_thread_fails_naming_this_process(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    errors: list[BaseException] = []

    def try_lock() -> None:
        try:
            with exclusive_lock(path, timeout=0):
                pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    with exclusive_lock(path):
        t = threading.Thread(target=try_lock)
        t.start()
        t.join(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], StoreLockedError)
    assert f"pid {os.getpid()} since" in str(errors[0]) and str(tmp_path) in str(errors[0])


def test_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with exclusive_lock(tmp_path / ".lock"):
            raise KeyError("boom")
    with exclusive_lock(tmp_path / ".lock", timeout=0):
        pass


def test_other_process_holding_it_makes_a_short_timeout_fail(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(StoreLockedError, match=rf"another writer holds the lock on {tmp_path / 'run'} \(pid {holder.pid} since"):
        with exclusive_lock(tmp_path / "run" / ".lock", timeout=0.1):
            pass


def test_waiter_gets_the_lock_once_the_other_process_releases_it(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    path = tmp_path / "run" / ".lock"
    acquired = threading.Event()
    errors: list[BaseException] = []

    def wait_for_lock() -> None:
        try:
            with exclusive_lock(path, timeout=60):
                acquired.set()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_lock)
    waiter.start()
    assert not acquired.is_set()  # the holder still has it
    assert holder.stdin is not None
    holder.stdin.write("release\n")
    holder.stdin.flush()
    assert holder.wait(timeout=30) == 0
    waiter.join(timeout=60)
    assert acquired.is_set() and errors == []


def test_lock_dies_with_a_killed_holder(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait(timeout=30)
    with exclusive_lock(tmp_path / "run" / ".lock", timeout=0):
        pass
