"""Compare first stages for MrSw (TERAN's sum over query words of the best region cosine, i.e. Chamfer
similarity): regionrank's per-word region search against a MUVERA-style fixed-dimensional encoding (FDE,
Dhulipala et al. 2024: SimHash partitions, per-partition sums of the query's vectors and means of the
image's, an AMS sketch to ``d_proj`` per partition, ``reps`` repetitions; empty image partitions filled
with the region nearest in Hamming distance), one vector per image searched by inner product.

Both are measured by what a first stage must deliver: the exact MrSw top-10 among its candidates. For each
method it reports the candidates needed for recall 0.9 and 1.0 of the exact top-10 (mean over queries), the
bytes each keeps per image, and the first-stage time per query. The region side is given its best case
(exact per-word region neighbours: an index tuned to recall 1), so the comparison is between the two
candidate generators, not between two ANN settings. The data is ``bench.search``'s scene.

    python -m bench.muvera [--quick] [--json] [--n 20000] [--dim 64] [--queries 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from bench.search import BagOfConcepts, Scene

class Fde:
    """MUVERA's fixed-dimensional encoding: ``reps * 2**k_sim * d_proj`` dimensions."""

    def __init__(self, dim: int, *, k_sim: int, d_proj: int, reps: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.k_sim, self.d_proj, self.reps = k_sim, d_proj, reps
        self.planes = rng.standard_normal((reps, dim, k_sim)).astype(np.float32)
        self.sketch = (rng.choice([-1.0, 1.0], (reps, dim, d_proj)) / np.sqrt(d_proj)).astype(np.float32)
        self.dims = reps * (2**k_sim) * d_proj

    def _buckets(self, x: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        bits = (x @ self.planes[r]) > 0
        return bits.astype(np.int64) @ (1 << np.arange(self.k_sim)), bits

    def encode(self, x: np.ndarray, *, query: bool) -> np.ndarray:
        parts = []
        n_b = 2**self.k_sim
        for r in range(self.reps):
            b, bits = self._buckets(x, r)
            proj = x @ self.sketch[r]
            block = np.zeros((n_b, self.d_proj), np.float32)
            np.add.at(block, b, proj)
            if not query:
                counts = np.bincount(b, minlength=n_b)
                block[counts > 0] /= counts[counts > 0, None]
                for empty in np.flatnonzero(counts == 0):  # the region nearest in Hamming distance
                    want = (empty >> np.arange(self.k_sim)) & 1
                    block[empty] = proj[int(np.argmin((bits != want).sum(1)))]
            parts.append(block.ravel())
        return np.concatenate(parts)


def needed(ranked: np.ndarray, truth: set[int], target: float) -> int:
    """Smallest depth of ``ranked`` (candidate ids in order) holding ``target`` of ``truth``."""
    want = int(np.ceil(target * len(truth) - 1e-9))
    found = 0
    for depth, c in enumerate(ranked, 1):
        found += int(c) in truth
        if found >= want:
            return depth
    return len(ranked) + 1  # never: more than every candidate


def region_entry_depth(words: np.ndarray, regions: np.ndarray, owner: np.ndarray, n_images: int) -> np.ndarray:
    """Per image, the smallest per-word search depth at which one of its regions is among some word's
    nearest regions: the union of every word's ``d`` nearest regions holds exactly the images whose
    entry depth is at most ``d`` (the candidates a per-word region search scores)."""
    depth = np.full(n_images, np.iinfo(np.int64).max, np.int64)
    for sims in words @ regions.T:
        rank = np.empty(len(sims), np.int64)
        rank[np.argsort(-sims, kind="stable")] = np.arange(1, len(sims) + 1)
        np.minimum.at(depth, owner, rank)
    return depth


def region_candidates_needed(entry: np.ndarray, truth: set[int], target: float) -> int:
    """Candidate images a per-word region search scores at the smallest depth holding ``target`` of ``truth``."""
    depths = np.sort(entry[list(truth)])
    d = depths[int(np.ceil(target * len(truth) - 1e-9)) - 1]
    return int((entry <= d).sum())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.muvera", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5000 images")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    p.add_argument("--n", type=int, default=None, help="images (default 20000, quick 5000)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=30)
    args = p.parse_args(argv)
    n = args.n or (5000 if args.quick else 20000)
    scene = Scene(max(50, n // 20), args.dim)
    recs = list(scene.images(n, (10, 36)))
    regions = np.concatenate([r.region_embeddings for r in recs]).astype(np.float32)
    counts = np.array([len(r.region_embeddings) for r in recs])
    owner = np.repeat(np.arange(n), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    enc = BagOfConcepts(scene)
    qrng = np.random.default_rng(7)
    texts = [" ".join(f"c{c}" for c in qrng.choice(len(scene.prototypes), int(qrng.integers(2, 5)), replace=False))
             for _ in range(args.queries)]
    words = [enc.encode_query(t).word_embeddings.astype(np.float32) for t in texts]
    truths = []
    for w in words:
        mrsw = np.maximum.reduceat(w @ regions.T, starts, axis=1).sum(0)
        truths.append(set(np.argsort(-mrsw, kind="stable")[:10].tolist()))
    result: dict[str, Any] = {"n_images": n, "dim": args.dim, "regions_per_image": float(counts.mean()),
                              "queries": len(words), "methods": {}}

    # regionrank's first stage, best case: exact per-word region neighbours, images ranked by depth reached
    per_q: dict[str, list[int]] = {"0.9": [], "1.0": []}
    for w, truth in zip(words, truths):
        entry = region_entry_depth(w, regions, owner, n)
        for target in (0.9, 1.0):
            per_q[str(target)].append(region_candidates_needed(entry, truth, target))
    result["methods"]["region_search"] = {
        "bytes_per_image": None, "note": "the region index: bench.scale reports its bytes (54 B a region with codes)",
        "candidates_for_recall_0.9": statistics.mean(per_q["0.9"]), "candidates_for_recall_1.0": statistics.mean(per_q["1.0"]),
        "worst_query_candidates_for_recall_1.0": max(per_q["1.0"])}
    for k_sim, d_proj, reps in ((3, 8, 8), (4, 8, 16), (5, 16, 20)):
        fde = Fde(args.dim, k_sim=k_sim, d_proj=d_proj, reps=reps)
        t = time.perf_counter()
        docs = np.stack([fde.encode(r.region_embeddings.astype(np.float32), query=False) for r in recs])
        enc_s = time.perf_counter() - t
        per_q = {"0.9": [], "1.0": []}
        lat = []
        for w, truth in zip(words, truths):
            ts = time.perf_counter()
            scores = docs @ fde.encode(w, query=True)
            ranked = np.argsort(-scores, kind="stable")
            lat.append(time.perf_counter() - ts)
            for target in (0.9, 1.0):
                per_q[str(target)].append(needed(ranked, truth, target))
        result["methods"][f"fde_ksim{k_sim}_dproj{d_proj}_reps{reps}"] = {
            "dims": fde.dims, "bytes_per_image": 4 * fde.dims, "bytes_per_region": 4 * fde.dims / float(counts.mean()),
            "candidates_for_recall_0.9": statistics.mean(per_q["0.9"]),
            "candidates_for_recall_1.0": statistics.mean(per_q["1.0"]),
            "worst_query_candidates_for_recall_1.0": max(per_q["1.0"]),
            "first_stage_ms": 1e3 * statistics.median(lat), "encode_s": enc_s}
    print(f"{n} images x {args.dim}-d, {counts.mean():.1f} regions an image, {len(words)} queries; "
          "candidates a first stage must hand on for the exact MrSw top-10 (mean over queries):")
    for name, m in result["methods"].items():
        print(f"  {name:28s} recall 0.9: {m['candidates_for_recall_0.9']:9.1f}   recall 1.0: "
              f"{m['candidates_for_recall_1.0']:9.1f}   bytes/image {m['bytes_per_image']}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
