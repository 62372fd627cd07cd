"""Measure registration on rendered frames: error, heading, verification of wrong windows, cost.

Frames are rendered (``tiles.views.render_view``, nadir, random heading) from a QUERY raster (a held-out
year) and registered against the map imagery of a MAP raster, written at ``--map-gsd`` (default: native)
into a temporary folder. Each frame is registered twice: around a right candidate (the truth plus a
uniform offset of +-``--offset-frac`` footprint per axis, as the nearest tile of a half-footprint grid)
and around a wrong one (a window that does not hold the frame: >= 1.5 footprints away), with the
compass given (``--compass-sigma`` noise) or not (``--no-compass``).

    python tools/bench_registration.py --query data/naip/..._2016.tif --map data/naip/..._2018.tif \\
        --altitudes 150 200 250 300 --n 30 --method correlation --out runs/reg/naip2016.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import validate  # noqa: E402 (after the path above)
from common.cli import options_parser, parse_options  # noqa: E402 (after the path above)
from common.options import DEFAULT_ALTITUDES_M, DEFAULT_HFOV_DEG, option, shared  # noqa: E402 (after the path above)


@dataclass
class Options:
    """Defaults of the shared sizes here: --frame-px 320, --n 30, --threads 2, --photometric 0."""

    query: str | None = shared("query", required=True)
    map: str | None = shared("map", required=True)
    map_gsd: float | None = option(None, "map imagery resolution, m/px (default: the raster's)",
                                   check=validate.positive_rule("m/px"))
    altitudes_m: list[float] | None = shared("altitudes_m")
    hfov_deg: float | None = shared("hfov_deg")
    frame_px: int | None = shared("frame_px")
    n: int | None = shared("n")
    offset_frac: float = option(0.25, "offset of the right candidate from the truth, fraction of the footprint",
                                check=validate.range_rule(0.0, 1.0))
    compass: bool = shared("compass")
    compass_sigma: float = shared("compass_sigma")
    photometric: float | None = shared("photometric")
    set: list[str] = shared("set")
    threads: int | None = shared("threads")
    seed: int = shared("seed")
    out: str | None = option(None, "results JSON")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def parse_args(argv=None):
    return parse_options(build_parser(), argv, Options, altitudes_m=list(DEFAULT_ALTITUDES_M), hfov_deg=DEFAULT_HFOV_DEG, frame_px=320, n=30, threads=2, photometric=0.0)


def _cfg(pairs):
    from runtime.localisation.registration import RegistrationConfig

    kw = {}
    for p in pairs:
        k, v = p.split("=", 1)
        f = RegistrationConfig.__dataclass_fields__[k]
        kw[k] = {"int": int, "float": float, "bool": lambda s: s.lower() in ("1", "true", "yes")}.get(
            f.type, str)(v)
    return RegistrationConfig(**kw)


def summarise(rows) -> dict:
    ok = [r for r in rows if r["right"]["ok"]]
    err = np.array([r["right"]["err_m"] for r in ok])
    herr = np.array([r["right"]["heading_err_deg"] for r in ok])
    good = err <= 3 * rows[0]["map_gsd"] if len(err) else err  # within 3 map pixels
    wrong_rej = np.mean([not r["wrong"]["ok"] for r in rows])
    return {
        "frames": len(rows), "verified": len(ok) / len(rows),
        "median_err_m": float(np.median(err)) if len(err) else None,
        "p95_err_m": float(np.percentile(err, 95)) if len(err) else None,
        "trusted_off_gt_3px": int(np.sum(~good)) if len(err) else 0,
        "heading_median_deg": float(np.median(herr)) if len(herr) else None,
        "wrong_rejected": float(wrong_rej),
        "ms_median": float(np.median([r["right"]["ms"] for r in rows])),
        "cpu_ms_median": float(np.median([r["right"]["cpu_ms"] for r in rows])),  # all threads' CPU time
    }


def main(argv=None) -> int:
    import cv2

    from export.map_imagery import write_map_imagery
    from runtime.localisation.registration import Registrar
    from tiles.grid import footprint_m
    from tiles.map_imagery import MapImagery
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    args = parse_args(argv)
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(args.seed)
    q, m = open_raster(args.query), open_raster(args.map)
    tmp = tempfile.mkdtemp(prefix="reg-bench-")
    gsd = args.map_gsd or m.gsd_m
    imagery = MapImagery.open(write_map_imagery([m], Path(tmp) / "imagery", gsd_m=gsd))
    reg = Registrar(imagery, _cfg(args.set))
    xmin, ymin, xmax, ymax = m.bounds_m
    rows, table = [], {}
    for alt in args.altitudes_m:
        fp = footprint_m(alt, args.hfov_deg)
        margin = fp * (reg.cfg.window_footprints / 2 + 0.5)
        alt_rows = []
        for _ in range(args.n):
            while True:  # frames over map holes (nodata) are not frames a drone would see
                x, y = rng.uniform(xmin + margin, xmax - margin), rng.uniform(ymin + margin, ymax - margin)
                heading = float(rng.uniform(0, 360))
                view = render_view(q, CameraPose(x, y, alt, heading, 0.0, args.hfov_deg),
                                   (args.frame_px, args.frame_px), photometric=args.photometric or None, rng=rng)
                if view.valid_fraction > 0.98:
                    break
            compass = None if (not args.compass) else heading + float(rng.normal(0, args.compass_sigma))
            right = (x + rng.uniform(-1, 1) * args.offset_frac * fp, y + rng.uniform(-1, 1) * args.offset_frac * fp)
            while True:
                wrong = (rng.uniform(xmin + margin, xmax - margin), rng.uniform(ymin + margin, ymax - margin))
                if max(abs(wrong[0] - x), abs(wrong[1] - y)) >= 1.5 * fp:
                    break
            row = {"alt": alt, "x": x, "y": y, "heading": heading, "map_gsd": imagery.gsd_m}
            for name, cand in (("right", right), ("wrong", wrong)):
                t0, c0 = time.perf_counter(), time.process_time()
                r = reg.register(view.image, alt, args.hfov_deg, cand, compass)
                ms, cpu_ms = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
                herr = abs((r.heading_deg - heading + 180) % 360 - 180) if r.ok else None
                row[name] = {"ok": r.ok, "err_m": math.hypot(r.x - x, r.y - y) if r.ok else None,
                             "heading_err_deg": herr, "ms": ms, "cpu_ms": cpu_ms, "reason": r.reason, "score": r.score,
                             "distinct": r.distinct, "psr": r.psr, "inliers": r.inliers, "sigma_m": r.sigma_m,
                             "scale": r.scale, "method": r.method,
                             "raw_err_m": math.hypot(r.x - x, r.y - y) if np.isfinite(r.x) else None}
            alt_rows.append(row)
        table[f"{alt:g}"] = summarise(alt_rows)
        print(f"{alt:g} m: " + json.dumps(table[f'{alt:g}']), flush=True)
        rows += alt_rows
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "config": reg.cfg.__dict__, "table": table,
           "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
