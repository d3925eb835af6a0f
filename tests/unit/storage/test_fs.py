"""Storage locations: local paths, file:// and memory:// URIs, listing and atomic publish."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from regionrank.storage.fs import Location, resolve_location


def _write(loc: Location, path: str, data: bytes) -> None:
    with loc.fs.open_output_stream(path) as out:
        out.write(data)


def _read(loc: Location, path: str) -> bytes:
    with loc.fs.open_input_stream(path) as src:
        return src.read()


def test_relative_and_home_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    loc = resolve_location("shards/regions")
    assert loc.is_local and loc.root == str(tmp_path / "shards" / "regions") and loc.uri == loc.root
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_location("~/store").root == str(tmp_path / "home" / "store")
    assert resolve_location(tmp_path / "p").root == str(tmp_path / "p")  # os.PathLike
    assert resolve_location(loc) is loc


def test_file_uri_is_local(tmp_path: Path) -> None:
    loc = resolve_location(f"file://{tmp_path}/store")
    assert loc.is_local and isinstance(loc.fs, pafs.LocalFileSystem)
    assert loc.root == f"{tmp_path}/store" and loc.uri == f"file://{tmp_path}/store"


def test_local_listing_join_and_atomic_publish(tmp_path: Path) -> None:
    loc = resolve_location(tmp_path / "store")
    assert loc.list_files() == [] and not loc.exists(loc.root)  # absent root lists as empty
    loc.makedirs()
    assert loc.exists(loc.root)
    assert resolve_location(str(tmp_path / "store") + "/").join("a", "b.parquet") == f"{tmp_path}/store/a/b.parquet"
    (tmp_path / "store" / "sub").mkdir()  # folders are not listed
    for name in ("regions-00001.parquet", "regions-00000.parquet", ".write.lock"):
        (tmp_path / "store" / name).write_bytes(b"x")
    assert loc.list_files() == [".write.lock", "regions-00000.parquet", "regions-00001.parquet"]
    _write(loc, loc.join("s.parquet.tmp"), b"new")
    loc.publish(loc.join("s.parquet.tmp"), loc.join("regions-00000.parquet"))  # replaces an existing file
    assert (tmp_path / "store" / "regions-00000.parquet").read_bytes() == b"new"
    assert not loc.exists(loc.join("s.parquet.tmp"))


@pytest.fixture
def memory_uri() -> Iterator[str]:
    fsspec = pytest.importorskip("fsspec")
    name = f"regionrank-fs-test-{uuid.uuid4().hex}"
    yield f"memory://{name}/store"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def test_memory_uri_goes_through_fsspec(memory_uri: str) -> None:
    loc = resolve_location(memory_uri)
    assert not loc.is_local and isinstance(loc.fs, pafs.PyFileSystem) and loc.uri == memory_uri
    assert loc.root.endswith("/store") and "://" not in loc.root
    assert loc.list_files() == []
    loc.makedirs()
    _write(loc, loc.join("b.parquet.tmp"), b"bytes")
    _write(loc, loc.join("a.parquet"), b"a")
    assert loc.list_files() == ["a.parquet", "b.parquet.tmp"]
    loc.publish(loc.join("b.parquet.tmp"), loc.join("b.parquet"))
    assert loc.list_files() == ["a.parquet", "b.parquet"] and _read(loc, loc.join("b.parquet")) == b"bytes"
    again = resolve_location(memory_uri)  # the same in-memory filesystem, seen from a new Location
    assert again.list_files() == ["a.parquet", "b.parquet"]


def test_unknown_scheme_names_the_uri() -> None:
    with pytest.raises(ValueError, match=r"cannot resolve storage location 'nosuchscheme://bucket/x'.*local path"):
        resolve_location("nosuchscheme://bucket/x")
