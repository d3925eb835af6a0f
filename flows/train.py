"""Flows ``train`` (TERAN/SCAN training on the workspace's region shards) and ``evaluate`` (retrieval metrics)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from regionrank.flows import monitoring
from regionrank.flows.config import Workspace
from regionrank.flows.device import resolve_device

__all__ = ["evaluate_flow", "train_flow"]


@task(name="train-model", cache_policy=NO_CACHE, tags=["device"])
def train_task(model: str, ws: Workspace, captions: str, out_dir: str, epochs: int | None, batch_size: int | None,
               lr: float | None, seed: int, device: str) -> dict[str, Any]:
    from regionrank.encoders.training import train

    rep = train(model, ws.regions, captions, out_dir, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                device=resolve_device(device))
    return {
        "model": rep.model, "checkpoint": str(rep.checkpoint) if rep.checkpoint else None,
        "resumed_from_epoch": rep.resumed_from_epoch, "train_pairs": rep.train_pairs,
        "epochs": [asdict(e) for e in rep.epochs],
    }


@flow(name="train")
def train_flow(ws: Workspace, captions: str, model: str = "teran-coco", out_dir: str | None = None, epochs: int | None = None,
               batch_size: int | None = None, lr: float | None = None, seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """Train TERAN or SCAN on the workspace's region shards and a caption table; resumes after a crash."""
    out = out_dir or str(ws.checkpoints / Path(model).name)  # a checkpoint folder as --model: named after it
    res = train_task(model, ws, captions, out, epochs, batch_size, lr, seed, device)
    monitoring.table("train-epochs", [{k: v for k, v in e.items() if k != "val"} | (e.get("val") or {}) for e in res["epochs"]],
                     f"learning curve of {model}")
    return res


@task(name="evaluate-model", cache_policy=NO_CACHE, tags=["device"])
def evaluate_task(checkpoint: str, ws: Workspace, captions: str, split: str | None, protocol: str | None, device: str,
                  save_sims: str | None = None) -> dict[str, Any]:
    from regionrank.encoders.training import evaluate

    return evaluate(checkpoint, ws.regions, captions, split=split, protocol=protocol, device=resolve_device(device),
                    save_sims=save_sims)


@flow(name="evaluate")
def evaluate_flow(ws: Workspace, checkpoint: str, captions: str, split: str | None = "test", protocol: str | None = None,
                  device: str = "auto", save_sims: str | None = None) -> dict[str, Any]:
    """R@1/5/10, medr, meanr and rsum of a checkpoint on one split (COCO 1K/5K, F30K 1K protocols);
    ``save_sims`` also writes the [images, captions] score matrix (``.npy``)."""
    res = evaluate_task(checkpoint, ws, captions, split, protocol, device, save_sims)
    rows = [{"direction": d, **{k: v for k, v in res[d].items() if k in ("r1", "r5", "r10", "medr", "meanr")}}
            for d in ("i2t", "t2i") if d in res]
    monitoring.table("evaluation", rows, f"{checkpoint} on {split} ({protocol or 'all images'}); rsum {res.get('rsum')}")
    return res
