"""Benchmark of the export: torch eager vs ONNX FP32 / FP16 / INT8 on this CPU, R@1 of each on real NAIP,
the float-vs-uint8 graph input choice, and tile-database build speed.

    python tools/bench_export.py --out runs/bench_export [--runs 30] [--db-altitudes 250 300]

Model: ``tf_efficientnet_lite0`` with the offline ImageNet weights (``lite0-offline``), 224 px.
Retrieval: queries are 640 m crops (128 px at 5 m/px) of NAIP 2016 and 2020, gallery the same ground in
NAIP 2018; R@1 is the share of queries whose nearest gallery crop is the right one (gallery by FP32).
Writes ``results.json`` and prints the Markdown tables recorded in docs/results/export.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
from common.options import DEFAULT_HFOV_DEG, option, shared  # noqa: E402 (after the path above)


def naip(year: int) -> Path:
    return next((REPO / "data" / "naip").glob(f"*_{year}*.tif"))


def timed(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@dataclass
class Options:
    """Defaults of the shared sizes here: --runs 30, --calib-n 64."""

    out: str = option(str(REPO / "runs" / "bench_export"), "folder for results.json and the exported bundles")
    runs: int | None = shared("runs")
    calib_n: int | None = shared("calib_n")
    db_altitudes: list[float] = option([250.0, 300.0], "altitudes of the timed tile-database build, metres",
                                       check=validate.altitude_m)
    hfov_deg: float | None = shared("hfov_deg")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options, runs=30, calib_n=64, hfov_deg=DEFAULT_HFOV_DEG)
    args.out = Path(args.out)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import onnxruntime as ort
    import torch

    from train.model import GeoModel, load_checkpoint, save_checkpoint

    torch.set_num_threads(os.cpu_count() or 1)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(args.out / "lite0.pt", GeoModel("tf_efficientnet_lite0", pretrained="lite0-offline"),
                           config={"bench": True}, epoch=0, step=0)
    model, _ = load_checkpoint(ckpt)
    model.eval()
    p = model.preprocess
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "load_avg_start": os.getloadavg()[0], "torch": torch.__version__,
                           "onnxruntime": ort.__version__, "python": platform.python_version()},
               "model": "tf_efficientnet_lite0 (lite0-offline)", "input_size": list(p.input_size)}
    bundles = _export_bundles(args, ckpt, results)
    sessions, references = _sessions(args, p, bundles["float32"])
    rng = np.random.default_rng(0)
    results["latency"] = _latency(args, model, p, sessions, rng)
    results["input_format"] = _input_formats(args, p, bundles, rng)
    r1 = _recall(model, p, sessions, references)
    results["r1"] = {f"{k[0]} {k[1]}": v for k, v in r1.items()}
    results["tiledb"] = _tiledb_speed(args, bundles["float32"])
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    _print_tables(results, r1, [*sessions, *references])
    return 0


def _export_bundles(args, ckpt, results: dict) -> dict:
    """Both bundles (float32 and uint8 graph input) with FP16 and INT8; their export times into ``results``."""
    from export.bundle_export import export_bundle

    bundles = {}
    for fmt in ("float32", "uint8"):
        t = time.perf_counter()
        bundles[fmt] = export_bundle(
            ckpt, args.out / f"bundle_{fmt}", input_format=fmt, fp16=True, int8=True,
            calib_tifs=[naip(2014)], calib_n=args.calib_n, eval_tifs=(naip(2016), naip(2018)),
            cache_dir=args.out / "calib-cache", overwrite=True)
        results[f"export_s_{fmt}"] = time.perf_counter() - t
    return bundles


def _sessions(args, p, b: Path) -> tuple[dict, dict]:
    """ONNX Runtime sessions of each precision of the float32 bundle (plus an INT8 model quantised over the
    full range), and the unfused Q/DQ references of the INT8 ones."""
    from export.bundle_export import calibration_images
    from export.onnx_export import ort_session, prepare
    from export.quantize import quantize_int8

    calib = prepare(calibration_images(calib_tifs=[naip(2014)], n=args.calib_n), p, "float32")
    full = args.out / "model.int8-full.onnx"
    quantize_int8(b / "model.onnx", full, calib, cache_dir=args.out / "calib-cache", reduce_range=False)
    sessions = {prec: ort_session(path) for prec, path in
                (("fp32", b / "model.onnx"), ("fp16", b / "model.fp16.onnx"), ("int8", b / "model.int8.onnx"),
                 ("int8-full-range", full))}
    references = {f"{k} Q/DQ reference": ort_session(path, fuse=False) for k, path in
                  (("int8", b / "model.int8.onnx"), ("int8-full-range", full))}
    return sessions, references


def _latency(args, model, p, sessions: dict, rng) -> list[dict]:
    """Median latency and throughput of torch eager and each session, batches of 1 and 8."""
    import torch

    from export.onnx_export import prepare

    frames = [rng.integers(0, 255, (p.input_size[0], p.input_size[1], 3), dtype=np.uint8) for _ in range(8)]
    lat = {}
    for batch in (1, 8):
        x = prepare(frames[:batch], p, "float32")
        xt = torch.from_numpy(x)
        with torch.no_grad():
            lat[("torch eager fp32", batch)] = timed(lambda xt=xt: model(xt), args.runs)
        for prec, sess in sessions.items():
            lat[(f"onnxruntime {prec}", batch)] = timed(lambda s=sess, x=x: s.run(None, {"image": x}), args.runs)
    return [{"variant": k[0], "batch": k[1], "median_ms": v * 1e3, "images_per_s": k[1] / v} for k, v in lat.items()]


def _input_formats(args, p, bundles: dict, rng) -> dict:
    """Float vs uint8 graph input: preprocessing + inference per frame, from a 512 px camera frame."""
    from export.onnx_export import ort_session

    cam = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    s32, s8 = ort_session(bundles["float32"] / "model.onnx"), ort_session(bundles["uint8"] / "model.onnx")
    pre_float = timed(lambda: p.batch([cam]), args.runs)
    pre_uint8 = timed(lambda: np.stack([p.resize(cam)]), args.runs)
    x32, x8 = p.batch([cam]), np.stack([p.resize(cam)])
    inf_float = timed(lambda: s32.run(None, {"image": x32}), args.runs)
    inf_uint8 = timed(lambda: s8.run(None, {"image": x8}), args.runs)
    return {"float32": {"preprocess_ms": pre_float * 1e3, "inference_ms": inf_float * 1e3,
                        "input_bytes": int(x32.nbytes)},
            "uint8": {"preprocess_ms": pre_uint8 * 1e3, "inference_ms": inf_uint8 * 1e3,
                      "input_bytes": int(x8.nbytes)}}


def _recall(model, p, sessions: dict, references: dict) -> dict:
    """R@1 of each variant on real NAIP queries (2016 and 2020 against 2018), and its mean cosine to FP32."""
    from export.accuracy import held_out_pairs, recall_at_1
    from export.onnx_export import ort_embed, torch_embed

    r1 = {}
    for qyear in (2016, 2020):
        queries, gallery = held_out_pairs(naip(qyear), naip(2018), 128, n_max=64)
        gal = ort_embed(sessions["fp32"], p, "float32", gallery)
        r1[(qyear, "torch eager fp32")] = recall_at_1(torch_embed(model, p, queries), gal)[0]
        q32 = ort_embed(sessions["fp32"], p, "float32", queries)
        for prec, sess in {**sessions, **references}.items():
            emb = ort_embed(sess, p, "float32", queries)
            r1[(qyear, f"onnxruntime {prec}")] = recall_at_1(emb, gal)[0]
            r1[(qyear, f"cos {prec}")] = float(np.mean(np.sum(emb * q32, axis=1)))
        r1[(qyear, "n")] = len(queries)
    return r1


def _tiledb_speed(args, b: Path) -> dict:
    """The tile database of the 2018 map at ``--db-altitudes``, timed."""
    from export.tiledb_build import build_tile_database

    t = time.perf_counter()
    db = build_tile_database(b, [naip(2018)], args.out / "tiledb", altitudes_m=args.db_altitudes,
                             hfov_deg=args.hfov_deg, overwrite=True, work_dir=args.out / "work", progress=False)
    dt = time.perf_counter() - t
    n = json.loads((db / "manifest.json").read_text())["count"]
    return {"tiles": n, "seconds": dt, "tiles_per_s": n / dt, "altitudes_m": args.db_altitudes,
            "hfov_deg": args.hfov_deg}


def _print_tables(results: dict, r1: dict, variants: list[str]) -> None:
    """The Markdown tables of docs/results/export.md."""
    print("\n| variant | batch | median latency (ms) | images/s |\n|---|---|---|---|")
    for row in results["latency"]:
        print(f"| {row['variant']} | {row['batch']} | {row['median_ms']:.1f} | {row['images_per_s']:.1f} |")
    print("\n| variant | R@1 2016->2018 | R@1 2020->2018 | mean cosine to FP32 (2016 / 2020) |\n|---|---|---|---|")
    print(f"| torch eager fp32 | {r1[(2016, 'torch eager fp32')]:.1f} | {r1[(2020, 'torch eager fp32')]:.1f} | |")
    for k in variants:
        v = f"onnxruntime {k}"
        print(f"| {v} | {r1[(2016, v)]:.1f} | {r1[(2020, v)]:.1f} | "
              f"{r1[(2016, 'cos ' + k)]:.4f} / {r1[(2020, 'cos ' + k)]:.4f} |")
    print(f"(queries: {r1[(2016, 'n')]} / {r1[(2020, 'n')]})")
    f, u = results["input_format"]["float32"], results["input_format"]["uint8"]
    print("\n| graph input | preprocess (ms) | inference (ms) | total (ms) | input bytes |\n|---|---|---|---|---|")
    for name, rec in (("float32 NCHW", f), ("uint8 NHWC", u)):
        print(f"| {name} | {rec['preprocess_ms']:.2f} | {rec['inference_ms']:.1f} | "
              f"{rec['preprocess_ms'] + rec['inference_ms']:.1f} | {rec['input_bytes']} |")
    td = results["tiledb"]
    print(f"\ntile DB: {td['tiles']} tiles in {td['seconds']:.1f} s = {td['tiles_per_s']:.1f} tiles/s")
    print(f"export: float32 {results['export_s_float32']:.1f} s, uint8 {results['export_s_uint8']:.1f} s; "
          f"load avg {results['machine']['load_avg_start']:.1f} -> {results['machine']['load_avg_end']:.1f}")

if __name__ == "__main__":
    sys.exit(main())
