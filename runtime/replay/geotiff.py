"""GeoTIFF flights: frames rendered from one raster, localised against the tile database of another.

Per altitude, a flight rendered from the flight raster along a path (:mod:`runtime.replay.flights`), each
frame through the onboard chain. Reports the error in metres per frame (median, p95), the fix rate,
R@1/R@5 (the true position inside the top-1 / a top-5 tile) and the latency of each stage.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from pathlib import Path

import numpy as np

from tiles.io import atomic_write_json

from .common import bundle_path, jsonable, load_engine_or_use, pct, rnd, write_csv

log = logging.getLogger(__name__)

FRAME_CSV_FIELDS = ("altitude_m", "index", "t", "true_x", "true_y", "est_x", "est_y", "fix_x", "fix_y",
                    "trusted", "confidence", "accuracy_m", "error_raw_m", "error_m", "top1_hit", "top5_hit",
                    "top1_score", "reason", "preprocess_ms", "inference_ms", "search_ms", "fusion_ms")



def export_tiles_command(bundle, map_path, altitudes, hfov_deg: float, db="DB") -> str:
    """The ``python -m export`` command that builds the tile database a GeoTIFF replay needs."""
    alts = " ".join(f"{float(a):g}" for a in altitudes)
    return (f"python -m export --bundle {shlex.quote(str(bundle))} --tiles {shlex.quote(str(map_path))} "
            f"--altitudes {alts} --hfov {float(hfov_deg):g} --db-out {shlex.quote(str(db))}")


def _check_map_database(tdb, altitudes, hfov_deg: float, map_path) -> None:
    """Refuse a database without tile positions; warn where it was cut for other settings than this
    replay's (it still runs)."""
    if len(tdb.entries) and not bool(np.any(tdb.entries["has_geo"])):
        raise ValueError(f"{tdb.path} has no tile positions (a gallery database?): a GeoTIFF replay needs the "
                         f"map's tile database, `{export_tiles_command('B', map_path, altitudes, hfov_deg)}`")
    db_hfov = tdb.manifest.get("extra", {}).get("hfov_deg")
    if db_hfov is not None and abs(float(db_hfov) - float(hfov_deg)) > 1e-6:
        log.warning("%s was cut for hfov %g deg, the flight uses %g deg: tiles and frames cover different "
                    "ground", tdb.path, db_hfov, hfov_deg)
    have = [lay.get("altitude_m") for lay in tdb.layers]
    lacking = [a for a in altitudes if not any(h is not None and abs(float(h) - a) < 1e-6 for h in have)]
    if lacking:
        log.warning("%s has no layer for altitudes %s (it has %s): the nearest layer is used", tdb.path,
                    lacking, have)
    names = [src.get("name") for src in tdb.manifest.get("sources", [])]
    if names and Path(map_path).name not in names:
        log.warning("%s was built from %s, not from the map %s", tdb.path, names, Path(map_path).name)


def _tile_hit(db, rows, x: float, y: float) -> bool:
    """True position inside one of the tiles ``rows`` (north-up squares of footprint_m)."""
    for i in rows:
        if i < 0:
            continue
        e = db.entries[int(i)]
        half = float(e["footprint_m"]) / 2.0
        if abs(float(e["x"]) - x) <= half and abs(float(e["y"]) - y) <= half:
            return True
    return False


def replay_flight(engine, db, frames, *, altitude_m: float | None = None, k: int = 5,
                  radius_m: float | None = None, position_filter=None, searcher=None,
                  derotate: bool = True) -> list[dict]:
    """Run frames (runtime.sources Frame tuples with ground truth in meta) through the onboard chain.

    ``derotate``: turn each frame north-up with its ``meta["heading_deg"]`` (the compass heading an
    autopilot reports) before embedding, as the service does; frames without a heading are used as is.
    """
    from ..position import PositionFilter, estimate_fix
    from ..preprocess import north_up
    from ..search import Searcher

    searcher = searcher or Searcher(db)
    pf = position_filter or PositionFilter()
    records = []
    for t, image, meta in frames:
        alt = meta.get("altitude_m", altitude_m)
        layer = db.layer_for_altitude(alt) if len(db.layers) > 1 else 0
        t0 = time.perf_counter()
        if derotate:
            image = north_up(image, meta.get("heading_deg"))
        x = engine.prepare([image])
        t1 = time.perf_counter()
        emb = engine.embed_prepared(x)
        t2 = time.perf_counter()
        centre = (pf.last.x, pf.last.y) if (radius_m and pf.last is not None) else None
        m = searcher.search(emb, k=k, layer=layer, centre_xy=centre, radius_m=radius_m if centre else None)
        if centre is not None and m.indices[0, 0] < 0:  # nothing within the radius: search the layer
            m = searcher.search(emb, k=k, layer=layer)
        t3 = time.perf_counter()
        raw = estimate_fix(db, m.indices[0], m.scores[0], t)
        fix = pf.update(raw)
        t4 = time.perf_counter()
        tx, ty = meta.get("x", math.nan), meta.get("y", math.nan)
        has_truth = math.isfinite(tx) and math.isfinite(ty)
        err_raw = math.hypot(raw.x - tx, raw.y - ty) if has_truth and raw.has_position else math.nan
        err = math.hypot(fix.x - tx, fix.y - ty) if has_truth and fix.trusted else math.nan
        records.append({
            "altitude_m": alt, "index": meta.get("index", len(records)), "t": rnd(t, 3),
            "true_x": rnd(tx), "true_y": rnd(ty), "est_x": rnd(raw.x), "est_y": rnd(raw.y),
            "fix_x": rnd(fix.x) if fix.trusted else None, "fix_y": rnd(fix.y) if fix.trusted else None,
            "trusted": bool(fix.trusted), "confidence": rnd(fix.confidence, 4), "accuracy_m": rnd(fix.accuracy_m, 1),
            "error_raw_m": rnd(err_raw), "error_m": rnd(err),
            "top1_hit": _tile_hit(db, m.indices[0, :1], tx, ty) if has_truth else None,
            "top5_hit": _tile_hit(db, m.indices[0, :5], tx, ty) if has_truth else None,
            "top1_score": rnd(float(m.scores[0, 0]), 4), "reason": fix.reason,
            "preprocess_ms": rnd(1e3 * (t1 - t0), 3), "inference_ms": rnd(1e3 * (t2 - t1), 3),
            "search_ms": rnd(1e3 * (t3 - t2), 3), "fusion_ms": rnd(1e3 * (t4 - t3), 3),
        })
    return records


def summarize_flight(records: list[dict], wall_s: float | None = None) -> dict:
    """Error distribution, fix rate, R@1/R@5 and latency of a replayed flight."""
    n = len(records)
    trusted = [r for r in records if r["trusted"]]
    err = [r["error_m"] for r in trusted if r["error_m"] is not None]
    err_raw = [r["error_raw_m"] for r in records if r["error_raw_m"] is not None]
    hits1 = [r["top1_hit"] for r in records if r["top1_hit"] is not None]
    hits5 = [r["top5_hit"] for r in records if r["top5_hit"] is not None]
    stage = {s: rnd(pct([r[s] for r in records], 50), 3)
             for s in ("preprocess_ms", "inference_ms", "search_ms", "fusion_ms")}
    total = [sum(r[s] for s in ("preprocess_ms", "inference_ms", "search_ms", "fusion_ms")) for r in records]
    return {
        "n_frames": n,
        "fix_rate": rnd(100.0 * len(trusted) / n) if n else None,
        "error_m_median": rnd(pct(err, 50)), "error_m_p95": rnd(pct(err, 95)),
        "error_m_max": rnd(max(err)) if err else None,
        "error_raw_m_median": rnd(pct(err_raw, 50)), "error_raw_m_p95": rnd(pct(err_raw, 95)),
        "R@1": rnd(100.0 * np.mean(hits1)) if hits1 else None,
        "R@5": rnd(100.0 * np.mean(hits5)) if hits5 else None,
        "latency_ms_median": stage, "total_ms_median": rnd(pct(total, 50), 3),
        "total_ms_p95": rnd(pct(total, 95), 3),
        "fps_pipeline": rnd(1e3 / pct(total, 50), 2) if total else None,
        "fps_wall": rnd(n / wall_s, 2) if wall_s else None,
    }


def replay_geotiff(
    bundle,
    map_path,
    *,
    flight_raster=None,
    altitudes=(150, 200, 250, 300),
    db=None,
    out_dir=None,
    hfov_deg: float = 60.0,
    pattern: str = "curve",
    waypoints=None,
    speed_mps: float = 15.0,
    fps: float = 1.0,
    size_px: int = 256,
    tilt_deg: float = 0.0,
    photometric: float | None = None,
    max_frames: int | None = None,
    k: int = 5,
    radius_m: float | None = None,
    seed: int = 0,
    plots: bool = True,
    precision: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    derotate: bool = True,
) -> dict:
    """GeoTIFF flight replay (see the module docstring); returns per-altitude summaries and frames."""
    from tiles.db import TileDatabase

    from ..engine import check_engine_database
    from ..search import Searcher
    from .flights import GeoTiffFlight

    if db is None:
        raise ValueError(
            "a GeoTIFF replay needs the tile database of the map (--db DB); build it once with "
            f"`{export_tiles_command(bundle_path(bundle), map_path, altitudes, hfov_deg)}` and pass --db DB"
        )
    engine = load_engine_or_use(bundle, precision, backend, threads)
    flight_raster = flight_raster or map_path
    out = Path(out_dir) if out_dir is not None else None
    tdb = db if isinstance(db, TileDatabase) else TileDatabase.open(db)
    check_engine_database(engine, tdb)
    _check_map_database(tdb, altitudes, hfov_deg, map_path)
    searcher = Searcher(tdb)
    results: dict = {"map": str(map_path), "flight_raster": str(flight_raster), "engine": engine.name,
                     "database": str(tdb.path), "settings": {
                         "hfov_deg": hfov_deg, "pattern": pattern, "speed_mps": speed_mps, "fps": fps,
                         "size_px": size_px, "tilt_deg": tilt_deg, "photometric": photometric, "k": k,
                         "radius_m": radius_m, "max_frames": max_frames, "seed": seed,
                         "derotate": derotate},
                     "altitudes": {}}
    all_records = []
    files: dict = {}
    for alt in altitudes:
        flight = GeoTiffFlight(flight_raster, alt, waypoints=waypoints, pattern=pattern, hfov_deg=hfov_deg,
                               size_px=size_px, speed_mps=speed_mps, fps=fps, tilt_deg=tilt_deg,
                               photometric=photometric, max_frames=max_frames, seed=seed)
        t0 = time.perf_counter()
        records = replay_flight(engine, tdb, flight, altitude_m=alt, k=k, radius_m=radius_m, searcher=searcher,
                                derotate=derotate)
        wall = time.perf_counter() - t0
        summary = summarize_flight(records, wall)
        results["altitudes"][str(alt)] = summary
        all_records += records
        log.info("flight at %d m: %d frames, fix rate %s%%, median error %s m, R@1 %s%%", alt,
                 summary["n_frames"], summary["fix_rate"], summary["error_m_median"], summary["R@1"])
        if out is not None and plots:
            from .plots import plot_error, plot_track

            nan = float("nan")
            truth = [(r["true_x"], r["true_y"]) for r in records]
            est = [(r["fix_x"] if r["trusted"] else (r["est_x"] if r["est_x"] is not None else nan),
                    r["fix_y"] if r["trusted"] else (r["est_y"] if r["est_y"] is not None else nan))
                   for r in records]
            trusted = [r["trusted"] for r in records]
            files[f"track_{alt}"] = str(plot_track(
                out / f"track_{alt}m.png", truth, est, trusted, raster_path=map_path,
                title=f"{alt} m: fix rate {summary['fix_rate']}%, median error {summary['error_m_median']} m"))
            files[f"error_{alt}"] = str(plot_error(
                out / f"error_{alt}m.png", [r["t"] for r in records],
                [r["error_raw_m"] if r["error_raw_m"] is not None else nan for r in records], trusted,
                title=f"{alt} m: error of each frame's estimate"))
    results["frames"] = all_records
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "replay_geotiff.json", jsonable(results))
        write_csv(out / "replay_geotiff_frames.csv", all_records, FRAME_CSV_FIELDS)
        summary_rows = [{"altitude_m": a, **{k2: v for k2, v in s.items() if not isinstance(v, dict)}}
                        for a, s in results["altitudes"].items()]
        write_csv(out / "replay_geotiff_summary.csv", summary_rows,
                   ["altitude_m", "n_frames", "fix_rate", "error_m_median", "error_m_p95", "error_m_max",
                    "error_raw_m_median", "error_raw_m_p95", "R@1", "R@5", "total_ms_median", "total_ms_p95",
                    "fps_pipeline", "fps_wall"])
        files.update({"json": str(out / "replay_geotiff.json"), "csv": str(out / "replay_geotiff_frames.csv"),
                      "summary_csv": str(out / "replay_geotiff_summary.csv")})
        if plots:
            from .plots import plot_altitude_bars

            bars = []
            for a, s in results["altitudes"].items():
                for key in ("fix_rate", "R@1", "R@5"):
                    if s.get(key) is not None:
                        bars.append({"altitude_m": a, "series": key, "value": s[key]})
            files["bars"] = str(plot_altitude_bars(out / "geotiff_altitudes.png", bars, "value",
                                                   title="GeoTIFF flights: fix rate and tile recall (%)"))
        results["files"] = files
    return results


def geotiff_table(results: dict) -> str:
    head = (f"{'alt':>5} | {'frames':>6} | {'fix %':>6} | {'err med':>8} {'err p95':>8} | {'raw med':>8} | "
            f"{'R@1':>6} {'R@5':>6} | {'ms/frame':>8} {'fps':>6}")
    lines = [f"GeoTIFF flights over {Path(results['map']).name} ({results['engine']})", head, "-" * len(head)]

    def f(v, w, nd=1):
        return f"{v:{w}.{nd}f}" if v is not None else f"{'-':>{w}}"

    for alt, s in results["altitudes"].items():
        lines.append(f"{alt:>5} | {s['n_frames']:>6} | {f(s['fix_rate'], 6)} | {f(s['error_m_median'], 8)} "
                     f"{f(s['error_m_p95'], 8)} | {f(s['error_raw_m_median'], 8)} | {f(s['R@1'], 6)} "
                     f"{f(s['R@5'], 6)} | {f(s['total_ms_median'], 8, 2)} {f(s['fps_pipeline'], 6)}")
    return "\n".join(lines)

