"""Flow ``import-features``: region features people already hold (SCAN precomp, bottom-up TSV,
MILVLG npz) -> the workspace's region store, one task per file or folder."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

from regionrank.flows import monitoring
from regionrank.flows.config import Workspace

__all__ = ["import_feature_file", "import_features_flow"]


def import_feature_file(fmt: str, path: str, ws: Workspace, split: str, namespace: str) -> dict[str, Any]:
    """Import one file (or SCAN folder) of ``fmt`` into the workspace's region store, with the matching importer.

    Raises:
        ValueError: an unknown ``fmt``.
    """
    from regionrank.storage import import_bottomup_tsv, import_milvlg_npz, import_scan_precomp

    if fmt == "scan-precomp":
        rep = import_scan_precomp(path, split, ws.regions, namespace=namespace)
    elif fmt in ("tsv", "tsv-airsplay"):
        rep = import_bottomup_tsv(path, ws.regions, variant="airsplay" if fmt == "tsv-airsplay" else "anderson", namespace=namespace)
    elif fmt == "milvlg-npz":
        rep = import_milvlg_npz(path, ws.regions, namespace=namespace)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected scan-precomp, tsv, tsv-airsplay or milvlg-npz")
    return {"format": rep.format, "seen": rep.n_seen, "written": rep.n_written, "skipped": rep.n_skipped_existing,
            "failures": [{"uri": u, "reason": r} for u, r in rep.failures]}


@task(name="import-file", cache_policy=NO_CACHE)
def import_task(fmt: str, path: str, ws: Workspace, split: str, namespace: str) -> dict[str, Any]:
    """Import one file (:func:`import_feature_file`)."""
    return import_feature_file(fmt, path, ws, split, namespace)


@flow(name="import-features")
def import_features_flow(ws: Workspace, fmt: Literal["scan-precomp", "tsv", "tsv-airsplay", "milvlg-npz"], paths: list[str],
                         split: str = "test", namespace: str = "coco") -> dict[str, Any]:
    """Import feature files users already hold into the workspace's region store (one task per file/folder)."""
    logger = get_run_logger()
    results = [f.result() for f in import_task.map(unmapped(fmt), paths, ws=unmapped(ws), split=unmapped(split), namespace=unmapped(namespace))]
    failures = [f for r in results for f in r.pop("failures")]
    monitoring.table("import-files", [{"path": p, **r} for p, r in zip(paths, results)], f"import of {fmt} features")
    monitoring.failures_table("import-failures", failures)
    logger.info("imported %d images (%d already stored, %d failed)", sum(r["written"] for r in results),
                sum(r["skipped"] for r in results), len(failures))
    return {"written": sum(r["written"] for r in results), "skipped": sum(r["skipped"] for r in results), "failed": len(failures)}
