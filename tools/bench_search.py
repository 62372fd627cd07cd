"""Benchmark of search at country scale: exact, local (spatial grid) and approximate (FAISS IVF-PQ).

For each size (default 10k, 100k, 1M rows) a synthetic database with the real layout is written by
``tiles.db.write_database`` (one 150 m layer, hfov 60: 173 m tiles every 87 m on a square grid in
EPSG:26914, entries with labels, windows and WGS84 centres; spatial grid; IVF-PQ index), then a fresh
process opens it memory-mapped and measures, one query at a time:

- latency p50/p95 of ``Searcher.search`` over the layer (exact), of the local search around a point
  (``rows_within`` radius 3 footprints + ``score_rows``, and ``search(centre_xy, radius_m)``), and of
  ``search_global`` (approximate);
- recall@5 of the approximate top-5 against the exact top-5;
- resident memory (VmRSS) after the local and approximate queries, and after exact queries (which read
  every row); database and index sizes on disk; build times.

Descriptors are not random noise (on which no index works and no map looks like): a smooth random field
over the ground (random Fourier features, wavelengths 150 m to 20 km) plus per-tile detail, so nearby
tiles look alike as real ones do; a query is a tile's descriptor with noise (cosine ~0.8 to its tile).

    nice -n 10 python -m tools.bench_search --work runs/bench_search --sizes 10000 100000 1000000 \\
        --dim 256 --out docs/results/search_bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import validate
from common.cli import options_parser, parse_options
from common.options import option, shared

REPO = Path(__file__).resolve().parents[1]
FOOTPRINT_M = 2 * 150.0 * math.tan(math.radians(30.0))  # 150 m, hfov 60 deg
STRIDE_M = FOOTPRINT_M / 2


def synthetic_field(xy: np.ndarray, dim: int, seed: int = 0, detail: float = 0.35,
                    chunk: int = 65536) -> np.ndarray:
    """(N, dim) float16 L2-normalised descriptors varying smoothly over ground positions ``xy`` (metres)."""
    rng = np.random.default_rng(seed)
    n_feat = 2 * dim
    wavelength = np.exp(rng.uniform(np.log(150.0), np.log(20_000.0), n_feat))
    angle = rng.uniform(0, 2 * np.pi, n_feat)
    omega = (2 * np.pi / wavelength)[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    phase = rng.uniform(0, 2 * np.pi, n_feat)
    mix = (rng.standard_normal((n_feat, dim)) / np.sqrt(n_feat)).astype(np.float32)
    out = np.empty((len(xy), dim), np.float16)
    for s in range(0, len(xy), chunk):
        feats = np.cos(xy[s:s + chunk] @ omega.T + phase).astype(np.float32)
        e = feats @ mix * np.sqrt(2.0)
        e += detail * rng.standard_normal(e.shape).astype(np.float32)
        out[s:s + chunk] = e / np.linalg.norm(e, axis=1, keepdims=True)
    return out


def synthetic_entries(rows: int, x0: float = 500_000.0, y0: float = 5_200_000.0):
    """Entries of one 150 m layer on a square grid of ``rows`` tiles (UTM 14N metres)."""
    from tiles.db import empty_entries

    side = int(math.ceil(math.sqrt(rows)))
    r, c = np.divmod(np.arange(rows), side)
    e = empty_entries(rows)
    e["label"] = [f"r{a:05d}_c{b:05d}_150m" for a, b in zip(r, c)]
    e["layer"] = 0
    e["has_geo"] = True
    e["x"] = x0 + (c + 0.5) * STRIDE_M
    e["y"] = y0 - (r + 0.5) * STRIDE_M
    e["lat"] = 46.9 - (r + 0.5) * STRIDE_M / 111_320.0  # approximate; not used by the search
    e["lon"] = -99.0 + (c + 0.5) * STRIDE_M / 76_000.0
    e["footprint_m"] = FOOTPRINT_M
    e["altitude_m"] = 150.0
    px = round(FOOTPRINT_M / 5.0)
    e["col_off"], e["row_off"], e["width"], e["height"] = c * px // 2, r * px // 2, px, px
    e["source"] = 0
    return e


def synthetic_database(path, rows: int, dim: int = 256, seed: int = 0, ann: bool = True,
                       ann_min_rows: int = 5000, overwrite: bool = True) -> dict:
    """Write a synthetic database; return build times (s)."""
    from export.ann_build import ivfpq_builder
    from tiles.db import write_database

    t0 = time.perf_counter()
    entries = synthetic_entries(rows)
    emb = synthetic_field(np.stack([entries["x"], entries["y"]], 1), dim, seed)
    t1 = time.perf_counter()
    times = {}
    builder = ivfpq_builder(min_rows=ann_min_rows)

    def timed_builder(folder, e, layers):
        ta = time.perf_counter()
        out = builder(folder, e, layers)
        times["ann_build_s"] = time.perf_counter() - ta
        return out

    write_database(path, emb, entries, layers=[{"name": "150m", "altitude_m": 150.0, "hfov_deg": 60.0,
                                                  "footprint_m": FOOTPRINT_M, "stride_m": STRIDE_M}],
                   model={"fingerprint": f"synthetic{seed}", "name": "synthetic", "embedding_dim": dim},
                   preprocess={}, crs="EPSG:26914", indexes=(timed_builder,) if ann else (),
                   overwrite=overwrite)
    t2 = time.perf_counter()
    times["generate_s"] = t1 - t0
    times["write_s"] = t2 - t1 - times.get("ann_build_s", 0.0)
    return times


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_parts_mb() -> dict:
    """VmRSS split: anonymous memory (the process's own) and file pages mapped from the database and index
    files (clean page cache, including the kernel's fault-around neighbours; reclaimable under pressure)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def _pct(times: list[float]) -> dict:
    a = np.asarray(times) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "n": len(a)}


def _timed(fn, args_list) -> tuple[list, list[float]]:
    out, times = [], []
    for a in args_list:
        t0 = time.perf_counter()
        out.append(fn(*a))
        times.append(time.perf_counter() - t0)
    return out, times


def measure(path, n_queries: int = 200, n_exact: int = 10, seed: int = 1, nprobe: int | None = None,
            rerank: int | None = None) -> dict:
    """Open the database in this (fresh) process and measure the three searches."""
    from runtime.search.searcher import Searcher
    from tiles.db import TileDatabase

    rss0 = _rss_mb()
    res0 = _rss_parts_mb()
    t0 = time.perf_counter()
    db = TileDatabase.open(path)
    s = Searcher(db)
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    n = len(db)
    truth = rng.choice(n, n_queries, replace=False)
    e = np.asarray(db.embeddings[np.sort(truth)], np.float32)[np.argsort(np.argsort(truth))]
    noise = rng.standard_normal(e.shape).astype(np.float32)
    q = e + 0.75 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    xy = np.stack([db.entries["x"][truth], db.entries["y"][truth]], 1)
    xy += rng.uniform(-100, 100, xy.shape)
    radius = 3 * FOOTPRINT_M
    ann = s.ann(nprobe=nprobe, rerank=rerank)
    res: dict = {"rows": n, "dim": db.embedding_dim, "open_s": open_s, "radius_m": radius, "rss_parts_start_mb": res0}
    # local: rows around the point, scored (what the map filter calls), and search() with a radius
    _, t_rows = _timed(lambda c: s.rows_within(c, radius, 0), [(c,) for c in xy])
    loc, t_local = _timed(lambda qi, c: s.score_rows(qi, s.rows_within(c, radius, 0)), zip(q, xy))
    _, t_radius = _timed(lambda qi, c: s.search(qi, 5, 0, c, radius), zip(q, xy))
    res["local_rows"] = float(np.mean([len(x) for x in loc]))
    res["rows_within"], res["local_score"], res["local_search"] = _pct(t_rows), _pct(t_local), _pct(t_radius)
    if ann is not None:
        approx, t_ann = _timed(lambda qi: s.search_global(qi, 5, 0), [(qi,) for qi in q])
        res["approx"] = _pct(t_ann)
        res["ann"] = {"nprobe": ann.nprobe, "rerank": ann.rerank, **db.manifest["ann"]["layers"][0]}
    res["rss_local_approx_mb"] = _rss_mb() - rss0
    res["rss_parts_local_approx_mb"] = _rss_parts_mb()
    t0 = time.perf_counter()
    ref = s.search(q, 5, 0)  # exact, batched: the reference
    res["exact_batch_s"] = time.perf_counter() - t0
    _, t_exact = _timed(lambda qi: s.search(qi, 5, 0), [(qi,) for qi in q[:n_exact]])
    res["exact"] = _pct(t_exact)
    res["rss_after_exact_mb"] = _rss_mb() - rss0
    res["rss_parts_after_exact_mb"] = _rss_parts_mb()
    res["exact_top1_is_truth"] = float(np.mean(ref.indices[:, 0] == truth))
    res["query_cosine_to_tile"] = float(np.mean(np.sum(q * e, axis=1)))
    if ann is not None:
        got = np.concatenate([m.indices for m in approx])
        res["recall_at_5"] = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, ref.indices)]))
        res["top1_agrees"] = float(np.mean(got[:, 0] == ref.indices[:, 0]))
        # harder queries (cosine ~0.55 to their tile: a poor frame), same index and settings
        qh = e + 1.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
        qh /= np.linalg.norm(qh, axis=1, keepdims=True)
        hard, t_hard = _timed(lambda qi: s.search_global(qi, 5, 0), [(qi,) for qi in qh])
        ref_h = s.search(qh, 5, 0)
        got_h = np.concatenate([m.indices for m in hard])
        res["hard"] = {"query_cosine_to_tile": float(np.mean(np.sum(qh * e, axis=1))), "approx": _pct(t_hard),
                       "recall_at_5": float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got_h, ref_h.indices)])),
                       "exact_top1_is_truth": float(np.mean(ref_h.indices[:, 0] == truth))}
    files = db.manifest["files"]
    res["disk_mb"] = {k: v["bytes"] / 2**20 for k, v in files.items()}
    return res


@dataclass
class Options:
    work: str | None = shared("work")
    sizes: list[int] = option([10_000, 100_000, 1_000_000], "rows of the synthetic databases",
                              check=validate.int_rule(1))
    dim: int = option(256, "descriptor size", check=validate.int_rule(1))
    queries: int = option(200, "queries timed per database", check=validate.int_rule(1))
    nprobe: list[int] | None = option(None, "ANN nprobe settings to measure (default: the index's own)",
                                      check=validate.int_rule(1))
    rerank: int | None = option(None, "ANN re-rank depth (default: the index's own)", check=validate.int_rule(1))
    measure: str | None = option(None, "child mode: measure one database (internal)", hidden=True)
    out: str | None = option(None, "results JSON")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options, work="runs/bench_search", nprobe=[None])
    args.work, args.out = Path(args.work), args.out and Path(args.out)
    args.measure = args.measure and Path(args.measure)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before FAISS loads: on 2 shared cores threads only contend
    if args.measure:
        print(json.dumps([measure(args.measure, args.queries, nprobe=p, rerank=args.rerank) for p in args.nprobe]))
        return 0
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    results = []
    for rows in args.sizes:
        path = args.work / f"db_{rows}_{args.dim}"
        build = synthetic_database(path, rows, args.dim)
        cmd = [sys.executable, "-m", "tools.bench_search", "--measure", str(path), "--queries", str(args.queries),
               "--nprobe", *[str(p) for p in args.nprobe if p is not None]]
        cmd = cmd if any(p is not None for p in args.nprobe) else cmd[:-1]
        if args.rerank:
            cmd += ["--rerank", str(args.rerank)]
        out = subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
        for r in json.loads(out):
            results.append({"build": build, **r})
            print(json.dumps(results[-1]), flush=True)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_avg": os.getloadavg()},
              "command": " ".join(sys.argv), "results": results}
    if args.out:
        from tiles.io import atomic_write_json

        atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
