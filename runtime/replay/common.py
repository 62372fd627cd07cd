"""What every replay shares: engine loading, percentiles, rounding, CSV/JSON writing, batch embedding."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np

from tiles.io import atomic_path


def load_engine_or_use(bundle_or_engine, precision="auto", backend="auto", threads=None):
    if hasattr(bundle_or_engine, "embed_prepared"):
        return bundle_or_engine
    from runtime.engines.engine import load_engine

    return load_engine(bundle_or_engine, precision=precision, backend=backend, threads=threads)


def bundle_path(bundle_or_engine):
    """The bundle folder of a bundle path or a loaded engine (for the commands an error suggests)."""
    b = getattr(bundle_or_engine, "bundle", None)
    return b.path if b is not None else bundle_or_engine


def pct(values, q) -> float | None:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    return float(np.percentile(v, q)) if v.size else None


def rnd(v, nd=2):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), nd)


def write_csv(path: Path, rows: list[dict], fields) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow(row)
    return path


def embed_images(engine, paths, batch_size: int = 32) -> tuple[np.ndarray, dict]:
    """Embed image files in batches; returns (N, D) float32 and timings (decode, embed seconds)."""
    from runtime.replay.flights import read_rgb

    out, t_decode, t_embed = [], 0.0, 0.0
    paths = list(paths)
    for s in range(0, len(paths), batch_size):
        t0 = time.perf_counter()
        imgs = [read_rgb(p) for p in paths[s:s + batch_size]]
        t1 = time.perf_counter()
        out.append(engine.embed(imgs))
        t_embed += time.perf_counter() - t1
        t_decode += t1 - t0
    emb = np.concatenate(out) if out else np.zeros((0, engine.embedding_dim), np.float32)
    return emb, {"decode_s": t_decode, "embed_s": t_embed, "n": len(paths)}


def batch1_latency(engine, images, repeat: int = 1) -> dict:
    """Median and p95 latency (ms) of the batch-1 path, prepare and inference separately."""
    prep, inf = [], []
    for _ in range(repeat):
        for im in images:
            t0 = time.perf_counter()
            x = engine.prepare([im])
            t1 = time.perf_counter()
            engine.embed_prepared(x)
            t2 = time.perf_counter()
            prep.append(1e3 * (t1 - t0))
            inf.append(1e3 * (t2 - t1))
    tot = [a + b for a, b in zip(prep, inf)]
    return {"n": len(tot), "preprocess_ms_median": rnd(pct(prep, 50), 3),
            "inference_ms_median": rnd(pct(inf, 50), 3), "total_ms_median": rnd(pct(tot, 50), 3),
            "total_ms_p95": rnd(pct(tot, 95), 3),
            "fps_batch1": rnd(1e3 / pct(tot, 50), 2) if tot else None}



def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj

