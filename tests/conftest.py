"""Shared test setup: offline defaults, markers, seeded fixtures, GPU auto-skip.

The environment defaults below are the one deliberate import-time side effect:
transformers, huggingface_hub and prefect read them when they are imported.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="regionrank-prefect-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# as `regionrank` sets it: library loggers are attached to flow-run logs
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "regionrank.extractors,regionrank.encoders,regionrank.index,regionrank.storage")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

import numpy as np
import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "no tests collected" (e.g. `-m gpu` on a CPU-only machine) is not a failure.
    if exitstatus == 5:
        session.exitstatus = 0


@pytest.fixture(autouse=True)
def _prevent_leaking_rng():
    """Restore the numpy and torch global RNG state after each test."""
    np_state = np.random.get_state()
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    torch_state = torch.get_rng_state() if torch is not None else None
    yield
    np.random.set_state(np_state)
    if torch is not None and torch_state is not None:
        torch.set_rng_state(torch_state)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def torch_gen():
    import torch

    return torch.Generator().manual_seed(0)


def cpu_and_cuda() -> list:
    """Parameter list for device-parametrised tests: the CUDA case carries the ``gpu`` marker."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
