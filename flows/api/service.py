"""Running the search service: ``run_api`` (uvicorn in this process, for ``regionrank api``),
``start_api_process`` (a child process, for ``regionrank serve``), and the service file through which
``regionrank search`` finds a running service in the workspace."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI's client path imports this module: config (and with it faiss) loads when a service runs
    from regionrank.flows.config import SearchConfig, Workspace

__all__ = ["SERVICE_FILE", "TOKEN_ENV", "is_loopback", "run_api", "start_api_process", "write_service_file"]

log = logging.getLogger(__name__)

SERVICE_FILE = "api.json"
TOKEN_ENV = "REGIONRANK_API_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_service_file(ws: Workspace, url: str, *, token_required: bool) -> Path:
    """Announce a running service in the workspace (atomically); the token itself is never written."""
    path = ws.root / SERVICE_FILE
    tmp = path.with_name(f".{SERVICE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "token_required": token_required,
                               "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    tmp.replace(path)
    return path


def _remove_service_file(ws: Workspace) -> None:
    path = ws.root / SERVICE_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():  # never remove another service's file
            path.unlink()
    except (FileNotFoundError, ValueError):
        pass


def query_threads(workers: int, cpus: int | None = None) -> int:
    """Threads one query may use so that ``workers`` queries at once fill the cores and no more:
    ``max(1, cpus // workers)``. A query costs about the same CPU time single-threaded as spread over
    threads (torch and faiss spin on tiny operations), so a service answering several queries at once
    gets its throughput from the queries, not from threads inside each."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, workers))


def limit_query_threads(n: int) -> None:
    """Cap the threads of queries run by the calling thread: torch's and faiss's OpenMP threads (per
    thread: call it in every query thread) and the BLAS libraries' (numpy's and faiss's OpenBLAS, process
    wide). Idle BLAS and OpenMP threads spin after every small operation: at one query a core, the spinning
    costs more than the parallelism gives (measured: QPS under load 13.7 -> 20.8 on 2 cores)."""
    import torch
    from threadpoolctl import threadpool_limits

    from regionrank.index import faiss_module

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    faiss_module().omp_set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")


def bind_socket(host: str, port: int) -> socket.socket:
    """The service's listening socket. Its protocol is IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on
    accepted connections only when the socket says it is TCP, and without it every keep-alive response
    waited ~40 ms for the client's delayed ACK (Nagle): /healthz took 44 ms, a search 92 ms instead of 38."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections wait in the backlog until the server accepts: the service file is never early
    return sock


@dataclass(frozen=True)
class ServiceSpec:
    """Everything one service process needs to build its application: picklable, so that with
    ``processes > 1`` each spawned process builds its own from it (the token travels in the pickle,
    never in the environment)."""

    root: Path
    token: str | None = None
    workers: int = 1
    threads_per_query: int = 1
    queue_limit: int = 64
    poll_interval: float = 0.5
    cors_origins: tuple[str, ...] = ()
    search: Any = None
    prefect_ui_url: str | None = None
    prefect_api_url: str | None = None

    def build(self, on_shutdown: Any = None) -> tuple[Any, Any]:
        """``(app, engine)``: the engine is not started."""
        from regionrank.flows.api.app import ApiSettings, create_app
        from regionrank.flows.api.backend import OpenedVersion, current_version
        from regionrank.flows.api.engine import SearchEngine
        from regionrank.flows.config import SearchConfig, Workspace

        ws = Workspace(root=self.root)
        default = self.search or SearchConfig()
        engine = SearchEngine(lambda: OpenedVersion(ws, default), lambda: current_version(ws.index_dir),
                              workers=self.workers, queue_limit=self.queue_limit, poll_interval=self.poll_interval,
                              worker_init=functools.partial(limit_query_threads, self.threads_per_query))

        def shutdown() -> None:
            if on_shutdown is not None:
                on_shutdown()
            engine.stop()

        app = create_app(engine, ApiSettings(token=self.token, cors_origins=self.cors_origins, search=default,
                                             prefect_ui_url=self.prefect_ui_url, prefect_api_url=self.prefect_api_url),
                         on_shutdown=shutdown)
        return app, engine


@dataclass(frozen=True)
class _ProcessApp:
    """The application factory each process of a multi-process service calls (uvicorn ``factory=True``):
    it loads and warms the index before returning, so a process accepts no connection before it can
    answer (the others take them meanwhile)."""

    spec: ServiceSpec
    ready_timeout: float = 600.0

    def __call__(self) -> Any:
        app, engine = self.spec.build()
        engine.start()
        if not engine.wait_ready(self.ready_timeout):
            log.error("service process %d is not ready: %s", os.getpid(), engine.state.load_error or "no index yet")
        return app


def run_api(ws: Workspace, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
            workers: int | None = None, threads_per_query: int | None = None, processes: int = 1,
            queue_limit: int = 64, poll_interval: float = 0.5,
            cors_origins: tuple[str, ...] = (), search: SearchConfig | None = None,
            prefect_ui_url: str | None = None, prefect_api_url: str | None = None,
            on_listening: Any = None, wait_for_index: bool = False) -> None:
    """Serve the workspace's index over HTTP until interrupted (SIGINT/SIGTERM).

    Args:
        ws: the workspace (its index must be published).
        host / port: where to listen (``port=0``: a free port); a non-loopback ``host`` needs ``token``.
        token: the API token every request must carry, or ``None``.
        workers: queries answered at once by one process (default: the CPU count over ``processes``,
            at least 2, at most 8).
        threads_per_query: torch/faiss threads of one query (default :func:`query_threads`: the cores
            shared out between the queries answered at once, so 1 with the default workers).
        processes: service processes sharing the socket. Python runs one thread's bytecode at a time,
            and a query spends much of its time in the interpreter (tokenising, the first stage's
            bookkeeping, building hits): threads in one process do not add up to the cores, processes
            do. Each loads its own models and follows new index versions by itself; ``/metrics`` and
            ``/info`` describe the process that answers them.
        queue_limit: queries that may wait for a worker before the service answers 503.
        poll_interval: seconds between two looks at the index's ``CURRENT`` pointer.
        cors_origins: origins allowed to call the API from a browser (none by default).
        search: the default search options.
        prefect_ui_url / prefect_api_url: the Prefect server, for the page's link to the indexing run.
        on_listening: called with the service URL once the socket is bound.
        wait_for_index: start even when nothing is published yet (not ready until the first version).

    Raises:
        ValueError: a non-loopback host without a token, no index in the workspace, or a count below 1.
    """
    import uvicorn

    from regionrank.flows.api.backend import current_version

    if not is_loopback(host) and not token:
        raise ValueError(f"binding {host} exposes the service beyond this machine: pass --token TOKEN "
                         f"(or set {TOKEN_ENV}), or bind 127.0.0.1")
    if not wait_for_index and not current_version(ws.index_dir):
        raise ValueError(f"no index is published in {ws.index_dir}: run `regionrank index DIR -w {ws.root}` first")
    for name, value in (("processes", processes), ("workers", workers), ("threads per query", threads_per_query)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    cpus = os.cpu_count() or 1
    # two at least: connections land on a process at random, and a second query thread lets a process that
    # drew more of them use the core a sibling leaves idle (threads per query stay at one a core)
    workers = workers or max(2, min(8, cpus // processes))
    spec = ServiceSpec(root=ws.root, token=token, workers=workers,
                       threads_per_query=threads_per_query or query_threads(workers * processes, cpus),
                       queue_limit=queue_limit, poll_interval=poll_interval, cors_origins=cors_origins, search=search,
                       prefect_ui_url=prefect_ui_url, prefect_api_url=prefect_api_url)
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    url = f"http://{url_host}:{bound}"
    common = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 10}
    if processes == 1:
        app, engine = spec.build(on_shutdown=lambda: _remove_service_file(ws))
        server = uvicorn.Server(uvicorn.Config(app, **common))
        engine.start()  # loads and warms the index in the background; /readyz says when
        write_service_file(ws, url, token_required=token is not None)
        if on_listening is not None:
            on_listening(url)
        try:
            server.run(sockets=[sock])
        finally:  # reached on a start-up failure; a signal ends the process after the app's shutdown
            _remove_service_file(ws)
            engine.stop()
            sock.close()
        return
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(_ProcessApp(spec), factory=True, workers=processes, **common)
    write_service_file(ws, url, token_required=token is not None)
    if on_listening is not None:
        on_listening(url)
    try:
        Multiprocess(config, sockets=[sock]).run()  # SIGINT/SIGTERM stop every process, then return here
    finally:
        _remove_service_file(ws)
        sock.close()


def start_api_process(ws: Workspace, *, port: int, log_path: Path, prefect_ui_url: str | None = None,
                      prefect_api_url: str | None = None) -> subprocess.Popen:
    """Start ``regionrank api`` on 127.0.0.1 as a child process in its own session (stop it by its pid)."""
    cmd = [sys.executable, "-m", "regionrank.flows.cli", "api", "-w", str(ws.root), "--port", str(port), "--wait-for-index"]
    if prefect_ui_url:
        cmd += ["--prefect-ui", prefect_ui_url]
    if prefect_api_url:
        cmd += ["--prefect-api", prefect_api_url]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
