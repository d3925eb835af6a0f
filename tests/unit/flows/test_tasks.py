"""Tasks are thin: each passes its arguments to one stage of flows/stages.py and returns what it returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from regionrank.flows import stages, tasks
from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, Workspace


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    for name in ("expand_inputs", "extract_regions", "encode_regions", "update_index"):
        def stage(*args: Any, _name: str = name, **kwargs: Any) -> dict[str, str]:
            calls.append((_name, args, kwargs))
            return {"from": _name}

        monkeypatch.setattr(stages, name, stage)
    return calls


def test_each_task_calls_its_stage_once(recorded: list, tmp_path: Path) -> None:
    ws, ext, enc, idx = Workspace(root=tmp_path), ExtractConfig(), EncodeConfig(), IndexConfig()
    assert tasks.expand_inputs_task.fn([tmp_path]) == {"from": "expand_inputs"}
    assert tasks.extract_shard_task.fn(["a.png"], ws, ext) == {"from": "extract_regions"}
    assert tasks.encode_shard_task.fn(["id"], ws, enc, "butd-r101-c4") == {"from": "encode_regions"}
    assert tasks.update_index_task.fn(ws, ["id"], idx) == {"from": "update_index"}
    assert tasks.update_index_task.fn(ws, None, idx, rebuild=True) == {"from": "update_index"}
    assert recorded == [
        ("expand_inputs", ([tmp_path],), {}),
        ("extract_regions", (["a.png"], ws, ext), {}),
        ("encode_regions", (["id"], ws, enc, "butd-r101-c4"), {}),
        ("update_index", (ws, ["id"], idx), {"rebuild": False, "dask_address": None}),
        ("update_index", (ws, None, idx), {"rebuild": True, "dask_address": None}),
    ]


def test_task_names_are_kebab_case() -> None:
    names = {t.name for t in (tasks.expand_inputs_task, tasks.extract_shard_task, tasks.encode_shard_task, tasks.update_index_task)}
    assert names == {"expand-inputs", "extract-shard", "encode-shard", "update-index"}


def test_chunks() -> None:
    assert tasks.chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert tasks.chunks([], 3) == []


def test_device_slot_outside_a_run_acquires_nothing() -> None:
    with tasks.device_slot(1), tasks.device_slot(1):  # nested: no semaphore was taken
        pass


def test_the_import_task_is_one_importer_call(tmp_path: Path) -> None:
    from regionrank.flows.import_features import import_feature_file, import_task

    with pytest.raises(ValueError, match="unknown format 'csv'"):
        import_feature_file("csv", str(tmp_path), Workspace(root=tmp_path), "test", "coco")
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        import_task.fn("csv", str(tmp_path), Workspace(root=tmp_path), "test", "coco")


def test_update_index_stage_builds_then_adds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import regionrank.index as index

    seen: list[dict[str, Any]] = []

    class _Manifest:
        def to_json(self) -> str:
            return '{"version": 4}'

    def update_or_build(out_dir: Path, embeddings: Path, image_ids: Any, **kw: Any) -> _Manifest:
        seen.append({"out_dir": out_dir, "embeddings": embeddings, "image_ids": image_ids, **kw})
        return _Manifest()

    monkeypatch.setattr(index, "update_or_build", update_or_build)
    ws = Workspace(root=tmp_path)
    assert stages.update_index(ws, ["a"], IndexConfig(ngpu=0, memory_budget="1G"), rebuild=True) == {"version": 4}
    (call,) = seen
    assert (call["out_dir"], call["embeddings"], call["image_ids"], call["rebuild"]) == (ws.index_dir, ws.image_embeddings, ["a"], True)
    assert (call["ngpu"], call["memory_budget"], call["kind"]) == (0, "1G", ("global", "region"))
    assert call["executor"] is None  # no --dask: the library builds in this process


def test_update_index_stage_hands_the_dask_client_to_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    import regionrank.index as index

    seen: list[Any] = []

    class _Manifest:
        def to_json(self) -> str:
            return '{"version": 1}'

    def update_or_build(out_dir: Path, embeddings: Path, image_ids: Any, *, executor: Any, **kw: Any) -> _Manifest:
        seen.append((executor, executor.submit(lambda: 6 * 7).result(timeout=60)))  # the client reaches the workers
        return _Manifest()

    monkeypatch.setattr(index, "update_or_build", update_or_build)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=50) as cluster:
        out = tasks.update_index_task.fn(Workspace(root=tmp_path), None, IndexConfig(ngpu=0), rebuild=True,
                                         dask_address=cluster.scheduler_address)
    assert out == {"version": 1}
    ((client, answer),) = seen
    assert isinstance(client, distributed.Client) and answer == 42
    assert client.status == "closed"  # the stage closes its client; the cluster is the caller's
