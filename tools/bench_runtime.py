"""Benchmark of the onboard runtime on this machine's CPU with ONNX Runtime.

Measures (medians; results go to stdout as JSON and, with --out, to a file):
1. the engine alone: batch-1 ``embed_prepared`` calls per second;
2. the service fed from a video file (every frame processed): frames per second, per-stage latency
   (decode, preprocess, inference, search, fusion, output) and its throughput as a ratio of the engine alone;
3. exact search latency for one query over databases of 10k, 100k and 1M random L2-normalised float16
   rows (D=1280), on the chunked float16 path and on the cached float32 path where it fits.

    python tools/bench_runtime.py --work runs/bench_runtime --out runs/bench_runtime/result.json

The model is ``tf_efficientnet_lite0`` (random weights: timing only) exported at 224 px by
tools/toy_assets.py; the tile database is cut from the bundled 2020 NAIP image; the video is written from
NAIP crops at --frame-px.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common import validate  # noqa: E402 (after the path above)
from common.cli import options_parser, parse_options  # noqa: E402 (after the path above)
from common.options import option, shared  # noqa: E402 (after the path above)


def bench_engine(engine, n: int) -> dict:
    """Median batch-1 latency of the engine alone (input prepared once)."""
    h, w = engine.preprocess.input_size
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    x = engine.prepare([img])
    for _ in range(5):
        engine.embed_prepared(x)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        engine.embed_prepared(x)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"median_ms": med * 1000, "fps": 1.0 / med, "n": n}


def bench_service(bundle, db, video, spin: bool) -> dict:
    from runtime.config import ServiceConfig
    from runtime.service import Service

    cfg = ServiceConfig(bundle=str(bundle), db=str(db), source=str(video), altitude_m=150.0,
                        jsonl=str(Path(video).with_suffix(".jsonl")), drop_frames=False, health_log_s=1e9,
                        spin=spin)
    svc = Service(cfg)
    t0 = time.perf_counter()
    svc.run()
    wall = time.perf_counter() - t0
    snap = svc.health.snapshot()
    steady = (svc.processed - 1) / (svc.t_last - svc.t_first)  # first frame start to last frame end
    return {"frames": svc.processed, "wall_s": wall, "fps": steady, "fps_incl_startup": svc.processed / wall,
            "spin": spin,
            "latency_ms": snap["latency_ms"], "engine": svc.engine.name}


def bench_search(sizes, dim, queries, chunk_rows) -> list[dict]:
    from runtime.search.searcher import Searcher
    from tiles.db import TileDatabase, empty_entries

    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        emb = np.empty((n, dim), np.float16)
        for s in range(0, n, 50000):
            block = rng.standard_normal((min(50000, n - s), dim), np.float32)
            emb[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        ent = empty_entries(n)
        manifest = {"count": n, "embedding_dim": dim, "layers": [{"name": "all", "start": 0, "stop": n, "count": n}]}
        db = TileDatabase(Path("memory"), manifest, emb, ent)
        q = rng.standard_normal((queries, dim), np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        for mode, cache_mb in (("float16 chunked", 0.0), ("float32 cached", 1024.0)):
            if cache_mb and n * dim * 4 / 2**20 > cache_mb:
                continue
            s = Searcher(db, chunk_rows=chunk_rows, float32_cache_mb=cache_mb)
            s.search(q[:1], k=5, layer=0)  # warm (and fill the cache)
            times = []
            for i in range(queries):
                t0 = time.perf_counter()
                s.search(q[i:i + 1], k=5, layer=0)
                times.append(time.perf_counter() - t0)
            out.append({"rows": n, "dim": dim, "mode": mode, "median_ms": statistics.median(times) * 1000,
                        "queries": queries})
            logging.info("search %s", out[-1])
        del emb, db
    return out


@dataclass
class Options:
    """Defaults of the shared sizes here: --model tf_efficientnet_lite0, --frames 200, --frame-px 480."""

    work: str | None = shared("work")
    model_name: str | None = shared("model_name")
    input_px: int = option(224, "model input side in pixels", check=validate.int_rule(16, 4096))
    frames: int | None = shared("frames")
    frame_px: int | None = shared("frame_px")
    engine_runs: int = option(200, "batch-1 engine calls timed", check=validate.int_rule(1))
    search_sizes: list[int] = option([10_000, 100_000, 1_000_000], "rows of the searched databases",
                                     check=validate.int_rule(1))
    search_queries: int = option(20, "queries timed per database", check=validate.int_rule(1))
    chunk_rows: int = option(65536, "rows per chunk of the float16 search path", check=validate.int_rule(1))
    skip_search: bool = option(False, "skip the search latency")
    skip_service: bool = option(False, "search latency only")
    out: str | None = option(None, "write the results JSON here")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options, work="runs/bench_runtime", model_name="tf_efficientnet_lite0", frames=200, frame_px=480)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from runtime.engines.engine import load_engine
    from tools.toy_assets import make_bundle, make_tile_db, naip_files, write_flight_video

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = work / f"bundle_{args.model_name}_{args.input_px}"
    if not (bundle / "manifest.json").exists():
        make_bundle(bundle, model_name=args.model_name, input_px=args.input_px)
    engine = load_engine(bundle)  # the engine-alone reference runs with ONNX Runtime's default (spinning)
    raster = naip_files()[2020]
    db = work / f"db_{args.model_name}_{args.input_px}"
    if not (db / "manifest.json").exists():
        make_tile_db(engine, db, raster, tile_px=64, stride_px=32, altitudes_m=(150.0,))
    video = work / f"flight_{args.frames}_{args.frame_px}.avi"
    if not video.exists():
        write_flight_video(video, raster, n_frames=args.frames, fps=10, out_px=args.frame_px)

    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "python": platform.python_version(), "cpus": __import__("os").cpu_count()},
              "model": args.model_name, "input_px": args.input_px, "frame_px": args.frame_px}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    if args.skip_service:
        result["search"] = bench_search(args.search_sizes, 1280, args.search_queries, args.chunk_rows)
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return 0
    result["engine_alone"] = bench_engine(engine, args.engine_runs)
    logging.info("engine alone %s", result["engine_alone"])
    result["engine_alone_no_spin"] = bench_engine(load_engine(bundle, spin=False), args.engine_runs)
    logging.info("engine alone, no spin %s", result["engine_alone_no_spin"])
    result["service"] = []
    for spin in (False, True):
        r = bench_service(bundle, db, video, spin)
        r["throughput_ratio_vs_engine"] = r["fps"] / result["engine_alone"]["fps"]
        logging.info("service %s", r)
        result["service"].append(r)
    if not args.skip_search:
        result["search"] = bench_search(args.search_sizes, 1280, args.search_queries, args.chunk_rows)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
