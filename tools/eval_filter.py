"""Measure the odometry + map filter against issue 10's targets on the bundled NAIP imagery.

    python -m tools.eval_filter --bundle BUNDLE --db DB --out DIR [--calibrate 2010 2012 2014]

Flights as the demo flies them (curve, 60 frames, 40 m/s, 1 fps, photometric 0.3, heading along the track,
frames turned north-up with that compass heading) rendered from the held-out years (2016, 2020) over the
tile database of the 2018 map, at each altitude; through the engine, the odometry and the map filter.
Extra flights: a kidnapping (frames 0-29 of one flight, then 30-59 of another, far away), out of the map
(a database of the map's western half, flown over its eastern half), and frames of nothing (noise,
uniform colours). ``--calibrate YEARS`` first copies the bundle into DIR and fits its likelihood on
flights from those years (export.calibrate_likelihood), never on the years measured.

Frames are embedded once and cached in DIR/records/ (delete it to re-embed); the filter is replayed from
the cache. Results: DIR/filter_eval.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from tools.demo import naip

log = logging.getLogger("eval_filter")


class _Chain:
    """Frames of two flights: the first ``cut`` of ``a``, then ``b`` from ``cut`` on (a kidnapping)."""

    def __init__(self, a, b, cut: int):
        self.a, self.b, self.cut = a, b, cut

    def __iter__(self):
        for i, fr in enumerate(self.a):
            if i >= self.cut:
                break
            yield fr
        for i, fr in enumerate(self.b):
            if i >= self.cut:
                yield fr


def _nothing_frames(n: int, alt: float, seed: int):
    """Noise, then uniform colours: frames that show no place at all."""
    from runtime.inputs.sources import Frame

    rng = np.random.default_rng(seed)
    for i in range(n):
        if i < n // 2:
            img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        else:
            img = np.full((256, 256, 3), rng.integers(0, 256, 3), np.uint8)
        yield Frame(float(i), img, {"index": i, "altitude_m": alt, "heading_deg": float(rng.uniform(0, 360))})


def flights(args, db, west_db):
    """(key, db, frames factory, in_map) of every flight to evaluate."""
    from runtime.replay.flights import GeoTiffFlight, curve_waypoints

    common = dict(hfov_deg=args.hfov, speed_mps=40.0, fps=1.0, photometric=0.3, max_frames=args.frames)
    out = []
    for year in args.years:
        for alt in args.altitudes:
            def normal(year=year, alt=alt, seed=year):
                return GeoTiffFlight(naip(year), alt, pattern="curve", seed=seed, **common)
            out.append((f"{year}_{alt}", db, normal, True))
            out.append((f"{year}_{alt}_kidnap", db,
                        lambda n=normal, year=year: _Chain(n(), n(seed=year + 7), args.frames // 2), True))
            xe = np.asarray(west_db.entries["x"]).max() + 1.5 * float(west_db.layers[0]["footprint_m"])
            from tiles.raster import open_raster

            with open_raster(naip(year)) as r:
                b = r.bounds_m
            wp = curve_waypoints((xe, b[1], b[2], b[3]), margin_m=0.75 * 2 * alt * np.tan(np.radians(args.hfov / 2)),
                                 seed=year)
            out.append((f"{year}_{alt}_offmap", west_db,
                        lambda wp=wp, year=year, alt=alt: GeoTiffFlight(naip(year), alt, waypoints=wp, seed=year,
                                                                         **common), False))
    for alt in args.altitudes:
        out.append((f"nothing_{alt}", db, lambda alt=alt: _nothing_frames(args.frames, float(alt), int(alt)), False))
    return out


def record_all(args, engine, todo) -> dict:
    from runtime.localisation.odometry import VisualOdometry
    from runtime.replay.filter_replay import load_record, record_flight, save_record

    rdir = args.out / "records"
    rdir.mkdir(parents=True, exist_ok=True)
    vo, recs = VisualOdometry(), {}
    for key, db, make, in_map in todo:
        path = rdir / f"{key}.npz"
        if not path.is_file():
            t0 = time.perf_counter()
            rec = record_flight(engine, vo, db, make(), hfov_deg=args.hfov, name=key, in_map=in_map)
            save_record(path, rec)
            log.info("recorded %s: %d frames in %.1f s", key, len(rec.t), time.perf_counter() - t0)
        recs[key] = load_record(path)
    return recs


def evaluate(args, recs: dict, dbs: dict, cfg, lik) -> dict:
    from runtime.replay.filter_replay import run_filter, summarize

    res = {}
    for key, rec in recs.items():
        t0 = time.perf_counter()
        frames = run_filter(dbs[key], rec, cfg, lik)
        s = summarize(frames)
        s["filter_ms_per_frame"] = 1e3 * (time.perf_counter() - t0) / max(1, len(frames))
        res[key] = {"summary": s, "frames": frames}
    return res


def latency(args, engine, db, n: int = 20) -> dict:
    """Median per-frame milliseconds of the engine alone, the odometry and the filter step (batch 1, on
    the first ``n`` frames of the first year's flight at the lowest altitude: the largest layer)."""
    from runtime.engines.preprocess import north_up
    from runtime.localisation.map_filter import MapFilter, MapFilterConfig
    from runtime.localisation.odometry import OdometryConfig, VisualOdometry
    from runtime.replay.flights import GeoTiffFlight
    from runtime.search.layer_grid import Likelihood

    alt = min(args.altitudes)
    fl = GeoTiffFlight(naip(args.years[0]), alt, pattern="curve", seed=args.years[0], hfov_deg=args.hfov,
                       speed_mps=40.0, fps=1.0, photometric=0.3, max_frames=n)
    layer = db.layer_for_altitude(alt)
    mf, vo = MapFilter(db, layer, MapFilterConfig(), Likelihood.from_manifest(None)), VisualOdometry()
    orb = VisualOdometry(OdometryConfig(detector="orb", max_side_px=256))
    sl = db.layer_slice(layer)
    emb_layer = np.asarray(db.embeddings[sl], np.float32)  # converted once, as runtime.search.searcher.Searcher does
    ms = {"engine": [], "odometry": [], "filter": [], "odometry_orb": []}
    for t, image, meta in fl:
        up = north_up(image, meta["heading_deg"])
        t0 = time.perf_counter()
        q = engine.embed([up])[0]
        t1 = time.perf_counter()
        m = vo.update(up, t, alt, args.hfov, None)
        t2 = time.perf_counter()
        mf.predict(t, m)
        rows = mf.rows_to_score()
        scores = emb_layer @ q if rows is None else emb_layer[rows - sl.start] @ q
        mf.update(rows, scores)
        mf.estimate()
        t3 = time.perf_counter()
        orb.update(up, t, alt, args.hfov, None)
        t4 = time.perf_counter()
        for k, v in zip(ms, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            ms[k].append(1e3 * v)
    med = {k: float(np.median(v)) for k, v in ms.items()}
    med["fps_ratio"] = med["engine"] / (med["engine"] + med["odometry"] + med["filter"])
    return med


def pooled(res: dict, altitudes, years, suffix: str = "") -> dict:
    """Per altitude, the flights of every year together: frames pooled for errors, R@k and calibration;
    availability over the frames after each flight's own first fix; the slowest time to first fix."""
    out = {}
    for alt in altitudes:
        fl = [res[k] for k in (f"{y}_{alt}{suffix}" for y in years) if k in res]
        if not fl:
            continue
        frames = [f for r in fl for f in r["frames"]]
        trusted = [f for f in frames if f["trusted"]]
        errs = [f["error_m"] for f in trusted]
        after = [f for r in fl if r["summary"]["ttff_frames"] is not None
                 for f in r["frames"] if f["index"] > r["summary"]["ttff_frames"]]
        ttff = [r["summary"]["ttff_frames"] for r in fl]
        out[f"{alt:g}{suffix}"] = {
            "R@1": 100.0 * float(np.mean([f["top1_hit"] for f in frames])),
            "R@5": 100.0 * float(np.mean([f["top5_hit"] for f in frames])),
            "ttff_frames": None if None in ttff else max(ttff),
            "availability_pct": 100.0 * float(np.mean([f["trusted"] for f in after])) if after else None,
            "error_median_m": float(np.median(errs)) if errs else None,
            "error_p95_m": float(np.percentile(errs, 95)) if errs else None,
            "error_max_m": float(max(errs)) if errs else None,
            "wrong_trusted": int(sum(r["summary"]["wrong_trusted"] for r in fl)),
            "calibration_pct": 100.0 * float(np.mean([f["error_m"] <= f["r95_m"] for f in trusted])) if trusted else None,
            "trusted": len(trusted), "frames": len(frames),
            "odometry_ok_pct": 100.0 * float(np.mean([f["odometry_ok"] for f in frames])),
            "rows_scored_mean": float(np.mean([f["rows_scored"] for f in frames])),
            "half_stride_m": fl[0]["summary"]["stride_m"] / 2.0}
    return out


def table(res: dict) -> str:
    cols = ("R@1", "R@5", "ttff_frames", "availability_pct", "error_median_m", "error_p95_m", "error_max_m",
            "wrong_trusted", "calibration_pct", "trusted", "frames", "odometry_ok_pct", "rows_scored_mean")
    lines = ["| flight | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, r in res.items():
        s = r["summary"]
        cells = ["-" if s[c] is None else (f"{s[c]:.1f}" if isinstance(s[c], float) else str(s[c])) for c in cols]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.eval_filter", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--db", type=Path, required=True, help="tile database of the 2018 map (all altitudes)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--calibrate", type=int, nargs="*", default=None, help="years to calibrate the likelihood on")
    ap.add_argument("--years", type=int, nargs="+", default=[2016, 2020])
    ap.add_argument("--altitudes", type=float, nargs="+", default=[150, 200, 250, 300])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--hfov", type=float, default=60.0)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from export.calibrate_likelihood import half_database
    from runtime.engines.bundle import read_bundle
    from runtime.engines.engine import load_engine
    from runtime.localisation.map_filter import MapFilterConfig
    from runtime.search.layer_grid import Likelihood
    from tiles.db import TileDatabase
    from tiles.io import atomic_write_json

    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle
    if args.calibrate:
        from export.calibrate_likelihood import calibrate_bundle

        bundle = args.out / "bundle"
        if not bundle.is_dir():
            shutil.copytree(args.bundle, bundle)
        if "likelihood" not in read_bundle(bundle).manifest:
            calibrate_bundle(bundle, args.db, [naip(y) for y in args.calibrate], hfov_deg=args.hfov,
                             precision=args.precision, threads=args.threads,
                             report_path=args.out / "calibration_report.json", cache_dir=args.out / "calib_records")
    lik = Likelihood.from_manifest(read_bundle(bundle).manifest)
    db = TileDatabase.open(args.db)
    west = TileDatabase.open(half_database(db, args.out / "west_db", "west"))
    engine = load_engine(bundle, precision=args.precision, threads=args.threads)
    todo = flights(args, db, west)
    recs = record_all(args, engine, todo)
    dbs = {key: d for key, d, _, _ in todo}
    cfg = MapFilterConfig()
    res = evaluate(args, recs, dbs, cfg, lik)
    lat = latency(args, engine, db)
    per_alt = {**pooled(res, args.altitudes, args.years), **pooled(res, args.altitudes, args.years, "_kidnap")}
    from runtime.replay.common import jsonable

    atomic_write_json(args.out / "filter_eval.json", jsonable({
        "engine": engine.name, "likelihood": {**lik.to_dict(), "source": lik.source}, "latency_ms": lat, "per_altitude": per_alt,
        "config": cfg.__dict__, "summaries": {k: r["summary"] for k, r in res.items()},
        "frames": {k: r["frames"] for k, r in res.items()}}))
    print(table({k: {"summary": v} for k, v in per_alt.items()}))
    print(table(res))
    print("latency (median ms per frame):", {k: round(v, 2) for k, v in lat.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
