"""The service's per-query plumbing: image details read in one column-pruned batch, and query threads
that share the cores out instead of oversubscribing them."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from regionrank.flows.api import backend
from regionrank.flows.api.engine import SearchEngine
from regionrank.flows.api.service import limit_query_threads, query_threads
from regionrank.storage import ImageEmbeddingRecord, ImageEmbeddingStore


def write_images(root: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    ids = []
    with ImageEmbeddingStore(root).writer(encoder="test", encoder_hash="0", embed_dim=8, rows_per_shard=7) as w:
        for i in range(n):
            r = int(rng.integers(1, 4))
            emb = rng.normal(size=(r, 8)).astype(np.float32)
            w.write(ImageEmbeddingRecord(
                image_id=f"img{i:03d}", uri=f"/photos/{i}.jpg", boxes=np.tile([0, 0, 5, 5], (r, 1)).astype(np.float32),
                region_embeddings=emb / np.linalg.norm(emb, axis=1, keepdims=True), width=100 + i, height=50,
                labels=[f"label{i}-{j}" for j in range(r)]))
            ids.append(f"img{i:03d}")
    return ids


def test_image_details_come_in_one_batch_and_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = write_images(tmp_path / "emb", 20)
    cache = backend._ImageInfoCache(maxsize=8)
    reads: list[tuple[int, tuple[str, ...]]] = []
    real = ImageEmbeddingStore.read_rows

    def counting(self, keys, *, columns=None):  # type: ignore[no-untyped-def]
        reads.append((len(keys), tuple(columns or ())))
        return real(self, keys, columns=columns)

    monkeypatch.setattr(ImageEmbeddingStore, "read_rows", counting)
    wanted = [ids[3], ids[15], ids[3], ids[7], "nope"]
    got = cache.get_many(str(tmp_path / "emb"), wanted)
    assert reads == [(3, backend._INFO_COLUMNS)]  # one read, the three distinct stored ids, no embeddings
    assert set(got) == {ids[3], ids[15], ids[7]}  # an unknown id is simply absent
    info = got[ids[15]]
    assert (info.uri, info.width, info.height) == ("/photos/15.jpg", 115, 50)
    assert info.labels and info.labels[0] == "label15-0"
    assert cache.get_many(str(tmp_path / "emb"), [ids[7], ids[3]]).keys() == {ids[7], ids[3]}
    assert len(reads) == 1  # served from the table
    cache.get_many(str(tmp_path / "emb"), ids)
    assert len(cache._table) == 8  # bounded: the least recently used went
    assert (str(tmp_path / "emb"), ids[-1]) in cache._table and (str(tmp_path / "emb"), ids[0]) not in cache._table


@pytest.mark.parametrize(("workers", "cpus", "threads"), [(2, 2, 1), (1, 2, 2), (8, 2, 1), (2, 8, 4), (3, 8, 2)])
def test_query_threads_share_the_cores_between_workers(workers: int, cpus: int, threads: int) -> None:
    assert query_threads(workers, cpus) == threads


def test_limit_query_threads_applies_to_the_calling_thread() -> None:
    faiss = pytest.importorskip("faiss")
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    seen: dict[str, int] = {}

    from threadpoolctl import threadpool_info, threadpool_limits

    blas_before = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    def worker() -> None:
        limit_query_threads(1)
        seen["faiss"], seen["torch"] = faiss.omp_get_max_threads(), torch.get_num_threads()
        seen["blas"] = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    try:
        t = threading.Thread(target=worker)
        t.start()
        t.join(timeout=30)
        assert seen == {"faiss": 1, "torch": 1, "blas": 1}
    finally:
        torch.set_num_threads(before)
        threadpool_limits(limits=max(blas_before.values(), default=1), user_api="blas")


def test_worker_init_runs_in_every_query_thread_and_where_versions_open() -> None:
    inits: list[str] = []
    lock = threading.Lock()

    def init() -> None:
        with lock:
            inits.append(threading.current_thread().name)

    class Version:
        version, n_images, has_captions = 1, 0, False

        def warm_up(self) -> None:
            pass

        def close(self) -> None:
            pass

    opened = threading.Event()

    def open_version() -> Version:
        opened.set()
        return Version()

    engine = SearchEngine(open_version, lambda: "v000001", workers=2, worker_init=init, poll_interval=0.05)
    try:
        engine.start()
        assert opened.wait(30)
        futures = [engine._pool.submit(threading.current_thread) for _ in range(8)]
        for f in futures:
            f.result(timeout=30)
    finally:
        engine.stop()
    assert "regionrank-index-watch" in inits
    assert any(name.startswith("regionrank-query") for name in inits)
    assert all(inits.count(name) == 1 for name in inits)  # once per thread


def test_each_service_process_builds_its_app_from_a_picklable_spec(tmp_path: Path) -> None:
    import pickle

    from regionrank.flows.api.service import ServiceSpec, _ProcessApp
    from regionrank.flows.config import SearchConfig

    spec = ServiceSpec(root=tmp_path, token="s3cret", workers=1, threads_per_query=1,
                       search=SearchConfig(rerank_k=0, fusion="mrsw"), cors_origins=("http://x",))
    again = pickle.loads(pickle.dumps(_ProcessApp(spec)))  # what a spawned process receives
    assert again.spec == spec and again.spec.search.params.rerank_k == 0
    app, engine = again.spec.build()
    try:
        assert app.state.settings.token == "s3cret" and app.state.engine is engine and engine.workers == 1
    finally:
        engine.stop()


@pytest.mark.parametrize(("kwargs", "named"), [({"processes": 0}, "processes"), ({"workers": 0}, "workers"),
                                               ({"threads_per_query": 0}, "threads per query")])
def test_run_api_refuses_counts_below_one(tmp_path: Path, kwargs: dict, named: str) -> None:
    from regionrank.flows.api.service import run_api
    from regionrank.flows.config import Workspace

    with pytest.raises(ValueError, match=f"{named} must be >= 1, got 0"):
        run_api(Workspace(root=tmp_path), wait_for_index=True, **kwargs)


def test_the_service_socket_gets_tcp_nodelay_on_every_connection() -> None:
    """Without TCP_NODELAY each keep-alive response waits for the client's delayed ACK (~40 ms)."""
    import asyncio
    import socket

    from regionrank.flows.api.service import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    seen: list[int] = []

    class Record(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Record, sock=sock)  # as uvicorn serves it
        async with server:
            for _ in range(2):
                _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
                writer.close()
            for _ in range(200):  # bounded: both connections seen
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert seen == [1, 1]
