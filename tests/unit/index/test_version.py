"""Versioned directories: atomic publication, CURRENT, rollback, pruning, the publisher lock."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from index_testdata import lock_held_elsewhere

from regionrank.index.version import IndexBusyError, VersionedDir


def publish(vd: VersionedDir, text: str) -> int:
    with vd.lock(), vd.stage() as tmp:
        (tmp / "payload.txt").write_text(text)
        return vd.publish(tmp)


def test_publish_rollback_and_prune(tmp_path: Path) -> None:
    vd = VersionedDir(tmp_path / "idx", keep=3)
    assert vd.current() is None and vd.versions() == []
    with pytest.raises(FileNotFoundError, match="no index has been published"):
        vd.path()
    for n in range(1, 5):
        assert publish(vd, f"v{n}") == n
    assert vd.current() == 4 and vd.versions() == [2, 3, 4]  # v1 pruned
    assert (vd.path() / "payload.txt").read_text() == "v4"
    with vd.lock():
        assert vd.rollback() == 3
    assert (vd.path() / "payload.txt").read_text() == "v3"
    assert publish(vd, "v5") == 5  # numbering never reuses a number after a rollback
    assert vd.current() == 5
    with pytest.raises(FileNotFoundError, match="available"):
        vd.path(1)
    assert not list((tmp_path / "idx" / "versions").glob(".tmp-*"))


def test_a_failed_write_publishes_nothing(tmp_path: Path) -> None:
    vd = VersionedDir(tmp_path)
    publish(vd, "good")
    with pytest.raises(RuntimeError, match="boom"), vd.lock(), vd.stage() as tmp:
        (tmp / "payload.txt").write_text("half")
        raise RuntimeError("boom")
    assert vd.versions() == [1] and (vd.path() / "payload.txt").read_text() == "good"
    assert not list((tmp_path / "versions").glob(".tmp-*"))


def test_rollback_without_an_older_version(tmp_path: Path) -> None:
    vd = VersionedDir(tmp_path)
    publish(vd, "only")
    with vd.lock(), pytest.raises(FileNotFoundError, match="no version older"):
        vd.rollback()


def test_second_publisher_times_out_with_a_clear_message(tmp_path: Path) -> None:
    with lock_held_elsewhere(tmp_path), pytest.raises(IndexBusyError, match=r"locked by another publisher \(pid \d+"):
        with VersionedDir(tmp_path).lock(timeout=0.2):
            pass
    with VersionedDir(tmp_path).lock(timeout=5):  # free again
        pass


def test_a_waiting_publisher_gets_the_lock_when_released(tmp_path: Path) -> None:
    vd = VersionedDir(tmp_path)
    holding, release, order = threading.Event(), threading.Event(), []

    def hold() -> None:
        with vd.lock():
            holding.set()
            release.wait(30)
            order.append("first")

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(30)
    threading.Timer(0.2, release.set).start()
    with VersionedDir(tmp_path).lock(timeout=30):
        order.append("second")
    t.join(30)
    assert order == ["first", "second"]


def test_corrupt_current_pointer_is_reported(tmp_path: Path) -> None:
    (tmp_path / "CURRENT").write_text("garbage")
    with pytest.raises(ValueError, match="garbage"):
        VersionedDir(tmp_path).current()
