"""INT8 against FP32 for a trained model: the accuracy gate's figures, what helps INT8, and per-frame latency.

    nice -n 10 python tools/bench_gate.py CHECKPOINT --out runs/bench_gate [--eval-n 256] [--runs 40]

1. Exports CHECKPOINT (FP32 ONNX) and INT8 models with the demo's calibration (views rendered from NAIP
   2010/2012/2014, 96 images, MinMax, per-channel 7-bit weights) and with each change the gate's advice
   could suggest: Entropy calibration, 4x more images, per-tensor weights, 8-bit weights.
2. Runs the export's accuracy gate once over all of them: queries are the held-out years 2016 and 2020,
   the gallery the 2018 map, at the footprints of 150/200/250/300 m (hfov 60), tiles every half
   footprint (``eval_n`` queries per altitude); the R@1 drop of each against FP32 with its 95 % interval.
3. Times one frame (256x256 RGB, batch 1) through ``runtime.engines.engine`` (what flies) for FP32 and both INT8
   weight widths, interleaved so all see the same machine load.

Writes ``results.json`` and prints the Markdown recorded in docs/results/export.md.
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
from common.cli import options_parser, parse_options  # noqa: E402 (after the path above)
from common.options import option, shared  # noqa: E402 (after the path above)

ALTITUDES = (150, 200, 250, 300)


def naip(year: int) -> Path:
    return next((REPO / "data" / "naip").glob(f"*_{year}*.tif"))


def int8_variants(bundle: Path, out: Path, p, calib_n: int) -> dict:
    """{name: (onnx path, settings)}: the demo's INT8 and one change at a time."""
    from export.bundle_export import calibration_images
    from export.onnx_export import prepare
    from export.quantize import quantize_int8

    tifs = [naip(y) for y in (2010, 2012, 2014)]
    base = prepare(calibration_images(calib_tifs=tifs, n=calib_n), p, "float32")
    more = prepare(calibration_images(calib_tifs=tifs, n=4 * calib_n, seed=1), p, "float32")
    settings = {"int8": (base, {"method": "minmax"}),
                "int8 entropy": (base, {"method": "entropy"}),
                f"int8 {4 * calib_n} images": (more, {"method": "minmax"}),
                "int8 per-tensor": (base, {"method": "minmax", "per_channel": False}),
                "int8 8-bit weights": (base, {"method": "minmax", "reduce_range": False})}
    out_models = {}
    for name, (calib, kw) in settings.items():
        path = out / f"model.{name.replace(' ', '-')}.onnx"
        t = time.perf_counter()
        quantize_int8(bundle / "model.onnx", path, calib, cache_dir=out / "calib-cache", **kw)
        out_models[name] = (path, {**kw, "n_images": len(calib), "quantize_s": time.perf_counter() - t})
    return out_models


def latency(bundles: dict, runs: int, threads: int) -> dict:
    """Median ms per frame (batch 1) through runtime.engines.engine, {name: (bundle, precision)} in turn."""
    from export.images import rendered_views
    from runtime.engines.engine import load_engine

    frame = rendered_views(naip(2016), 1, size_px=256, seed=7)[0]
    engines = {name: load_engine(b, precision=prec, backend="onnxruntime", threads=threads)
               for name, (b, prec) in bundles.items()}
    times = {prec: [] for prec in engines}
    for eng in engines.values():
        for _ in range(5):
            eng.embed([frame])
    for _ in range(runs):
        for prec, eng in engines.items():
            t = time.perf_counter()
            eng.embed([frame])
            times[prec].append(time.perf_counter() - t)
    return {prec: {"median_ms": 1e3 * statistics.median(v), "p90_ms": 1e3 * float(np.percentile(v, 90)),
                   "engine": f"{engines[prec].name} ({prec})"} for prec, v in times.items()}


@dataclass
class Options:
    """Defaults of the shared sizes here: --calib-n 96, --runs 40, --threads 2."""

    ckpt: str | None = option(None, "the trained checkpoint", positional=True)
    out: str = option(str(REPO / "runs" / "bench_gate"), "folder for results.json and the exported models")
    eval_n: int = shared("eval_n")
    calib_n: int | None = shared("calib_n")
    runs: int | None = shared("runs")
    threads: int | None = shared("threads")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options, calib_n=96, runs=40, threads=2)
    args.ckpt, args.out = Path(args.ckpt), Path(args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import onnxruntime as ort

    from export.accuracy import accuracy_gate, footprint_crops, held_out_sets
    from export.bundle_export import export_bundle
    from runtime.engines.bundle import read_bundle

    args.out.mkdir(parents=True, exist_ok=True)
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "load_avg_start": os.getloadavg()[0], "onnxruntime": ort.__version__},
           "ckpt": str(args.ckpt)}
    bundle = export_bundle(args.ckpt, args.out / "bundle", int8=True, calib_tifs=[naip(y) for y in (2010, 2012, 2014)],
                           calib_n=args.calib_n, cache_dir=args.out / "calib-cache", overwrite=True)
    p = read_bundle(bundle).preprocess
    variants = int8_variants(bundle, args.out, p, args.calib_n)
    sets = held_out_sets([naip(2016), naip(2020)], naip(2018), footprint_crops(naip(2018), ALTITUDES, 60.0),
                         n_max=args.eval_n)
    t = time.perf_counter()
    report = accuracy_gate(bundle / "model.onnx", {k: v[0] for k, v in variants.items()}, p, "float32", sets,
                           max_r1_drop=1.0)
    res["gate_s"] = time.perf_counter() - t
    res["gate"] = report
    res["settings"] = {k: v[1] for k, v in variants.items()}
    full = export_bundle(args.ckpt, args.out / "bundle-int8-8bit", int8=True, int8_reduce_range=False,
                         calib_tifs=[naip(y) for y in (2010, 2012, 2014)], calib_n=args.calib_n,
                         cache_dir=args.out / "calib-cache", overwrite=True)
    res["latency"] = latency({"fp32": (bundle, "fp32"), "int8 7-bit weights": (bundle, "int8"),
                              "int8 8-bit weights": (full, "int8")}, args.runs, args.threads)
    res["machine"]["cpu_flags"] = sorted(set(open("/proc/cpuinfo").read().split()) & {"avx2", "avx512f",
                                         "avx512_vnni", "avx_vnni", "amx_int8"})
    res["machine"]["load_avg_end"] = os.getloadavg()[0]
    (args.out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(table(res))
    return 0


def table(res: dict) -> str:
    g = res["gate"]
    alts = list(g["fp32"]["per_set"])
    lines = ["| model | R@1 all | " + " | ".join(f"R@1 {a}" for a in alts)
             + " | drop (points) | 95% interval | lost / gained | McNemar p | top-1 agreement | gate at 1 point |",
             "|---" * (8 + len(alts)) + "|"]
    lines.append(f"| fp32 | {g['fp32']['R@1']:.1f} | " + " | ".join(f"{g['fp32']['per_set'][a]:.1f}" for a in alts)
                 + " | | | | | | |")
    for name, r in g.items():
        if name == "fp32":
            continue
        lo, hi = r["r1_drop_ci"]
        lines.append(f"| {name} | {r['R@1']:.1f} | " + " | ".join(f"{r['per_set'][a]:.1f}" for a in alts)
                     + f" | {r['r1_drop']:.1f} | [{lo:.1f}, {hi:.1f}] | {r['lost']} / {r['gained']} | "
                     f"{r['mcnemar_p']:.2g} | {r['top1_agreement']:.1f} | {'pass' if r['passed'] else 'reject'} |")
    if "R@1_qdq_reference" in g.get("int8", {}):
        lines.append(f"\nINT8 Q/DQ reference (unfused, TensorRT's arithmetic): R@1 {g['int8']['R@1_qdq_reference']:.1f}")
    lines.append(f"\n{g['fp32']['n_queries']} queries; smallest detectable drop "
                 f"{next(r for k, r in g.items() if k != 'fp32')['smallest_detectable_drop']:.2f} points\n")
    lines.append("| engine | median ms/frame | p90 ms |\n|---|---|---|")
    for v in res["latency"].values():
        lines.append(f"| {v['engine']} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} |")
    m = res["machine"]
    lines.append(f"\nload average {m['load_avg_start']:.1f} at start, {m['load_avg_end']:.1f} at end "
                 f"({m['cores']} cores, shared); CPU flags {', '.join(m['cpu_flags'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
