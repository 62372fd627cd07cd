"""Offline replay: how well the runtime localises, on SUES-200 flights and on flights over a GeoTIFF.

``python -m runtime replay sues200 --data ROOT --bundle B --out DIR``
    Per altitude, drone->satellite retrieval per frame under both protocols of REFERENCE.md section 2
    (``official``: every location's satellite in the gallery, the training ones as distractors;
    ``query_only``: the test locations only, Sample4Geo's easier gallery), per flight (the frames of a
    location and altitude fused: the mean embedding, and a majority vote of the frames' top-1), optionally
    satellite->drone, and the engine's latency. The gallery is embedded on the fly from the satellite
    images (part of the evaluation), or read from the gallery database ``python -m export --bundle B
    --gallery ROOT --gallery-out DB`` wrote (``--db DB``; labels are the location folder names).

``python -m runtime replay geotiff --map REF.tif --flight-raster OTHER_YEAR.tif --bundle B --db DB --out DIR``
    Per altitude, a flight rendered from the flight raster along a path (runtime.flights), each frame
    through the onboard chain: engine -> Searcher (the altitude's layer) -> estimate_fix ->
    PositionFilter. Reports the error in metres per frame (median, p95), the fix rate, R@1/R@5 (the true
    position inside the top-1 / a top-5 tile) and the latency of each stage. The tile database ``DB`` of
    ``--map`` is the one the aircraft flies with, built once by ``python -m export --bundle B --tiles
    REF.tif --altitudes 150 200 250 300 --hfov 60 --db-out DB`` (one layer per altitude); the replay
    builds none itself.

Results go to ``DIR`` as JSON and CSV, with PNG plots (track over the map, error along the flight,
per-altitude bars); a per-altitude table is printed. The functions :func:`replay_sues200` and
:func:`replay_geotiff` return the same results as dicts for the demo and the tests.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import shlex
import time
from pathlib import Path

import numpy as np

from tiles.io import atomic_path, atomic_write_json

from .metrics import retrieval_metrics

log = logging.getLogger(__name__)

METRIC_KEYS = ("R@1", "R@5", "R@10", "R@1%", "AP")
SUES_CSV_FIELDS = ("altitude_m", "level", "direction", "protocol", *METRIC_KEYS, "n_queries", "n_gallery")
FRAME_CSV_FIELDS = ("altitude_m", "index", "t", "true_x", "true_y", "est_x", "est_y", "fix_x", "fix_y",
                    "trusted", "confidence", "accuracy_m", "error_raw_m", "error_m", "top1_hit", "top5_hit",
                    "top1_score", "reason", "preprocess_ms", "inference_ms", "search_ms", "fusion_ms")


# ---- small helpers ----------------------------------------------------------------------------------
def _engine(bundle_or_engine, precision="auto", backend="auto", threads=None):
    if hasattr(bundle_or_engine, "embed_prepared"):
        return bundle_or_engine
    from .engine import load_engine

    return load_engine(bundle_or_engine, precision=precision, backend=backend, threads=threads)


def _bundle_path(bundle_or_engine):
    """The bundle folder of a bundle path or a loaded engine (for the commands an error suggests)."""
    b = getattr(bundle_or_engine, "bundle", None)
    return b.path if b is not None else bundle_or_engine


def _pct(values, q) -> float | None:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    return float(np.percentile(v, q)) if v.size else None


def _r(v, nd=2):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), nd)


def _write_csv(path: Path, rows: list[dict], fields) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow(row)
    return path


def embed_images(engine, paths, batch_size: int = 32) -> tuple[np.ndarray, dict]:
    """Embed image files in batches; returns (N, D) float32 and timings (decode, embed seconds)."""
    from .flights import read_rgb

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
    return {"n": len(tot), "preprocess_ms_median": _r(_pct(prep, 50), 3),
            "inference_ms_median": _r(_pct(inf, 50), 3), "total_ms_median": _r(_pct(tot, 50), 3),
            "total_ms_p95": _r(_pct(tot, 95), 3),
            "fps_batch1": _r(1e3 / _pct(tot, 50), 2) if tot else None}


# ---- SUES-200 ---------------------------------------------------------------------------------------
def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _row(alt, level, direction, protocol, m) -> dict:
    return {"altitude_m": alt, "level": level, "direction": direction, "protocol": protocol,
            **{k: _r(m.get(k)) for k in METRIC_KEYS}, "n_queries": m.get("n_queries"),
            "n_gallery": m.get("n_gallery")}


def replay_sues200(
    data_root,
    bundle,
    *,
    altitudes=None,
    db=None,
    out_dir=None,
    batch_size: int = 32,
    directions=("drone2sat",),
    latency_frames: int = 20,
    plots: bool = True,
    precision: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
) -> dict:
    """SUES-200 replay (see the module docstring); ``bundle`` is a bundle folder or a loaded engine.

    Returns ``{"dataset", "engine", "altitudes": {alt: {...}}, "rows": [...]}``; with ``out_dir``
    also writes ``replay_sues200.json``, ``replay_sues200.csv`` and ``sues200_r1.png``.
    """
    from .sues200 import SUES200

    engine = _engine(bundle, precision, backend, threads)
    ds = data_root if isinstance(data_root, SUES200) else SUES200(data_root)
    alts = ds.altitudes if altitudes is None else tuple(int(a) for a in altitudes)
    for d in directions:
        if d not in ("drone2sat", "sat2drone"):
            raise ValueError(f"direction {d!r} is not 'drone2sat' or 'sat2drone'")

    gallery_db = None
    if db is not None:
        from tiles.db import TileDatabase

        from .engine import check_engine_database

        gallery_db = db if isinstance(db, TileDatabase) else TileDatabase.open(db)
        check_engine_database(engine, gallery_db)
        db_labels = [str(v) for v in gallery_db.entries["label"]]
        db_emb = np.asarray(gallery_db.embeddings, np.float32)

    sat_cache: dict[str, np.ndarray] = {}

    def satellite_embeddings(locs: list[str], alt: int) -> np.ndarray:
        if gallery_db is not None:
            where = {lab: i for i, lab in enumerate(db_labels)}
            missing = [c for c in locs if c not in where]
            if missing:
                raise ValueError(
                    f"gallery database {gallery_db.path} has no entry for locations {missing[:5]}; rebuild it "
                    f"from this dataset: python -m export --bundle {shlex.quote(str(_bundle_path(engine)))} "
                    f"--gallery {shlex.quote(str(ds.given_root))} --gallery-out {shlex.quote(str(gallery_db.path))} "
                    "--overwrite"
                )
            return _normalize(db_emb[[where[c] for c in locs]])
        todo = [c for c in locs if c not in sat_cache]
        if todo:
            emb, _ = embed_images(engine, [ds.satellite_image(c, alt) for c in todo], batch_size)
            sat_cache.update(zip(todo, emb))
        return np.stack([sat_cache[c] for c in locs])

    results: dict = {"dataset": {"root": str(ds.root), "layout": ds.layout}, "engine": engine.name,
                     "gallery": "database" if gallery_db is not None else "embedded on the fly",
                     "altitudes": {}, "rows": []}
    rows = results["rows"]
    for alt in alts:
        sp = ds.split(alt)
        test = sp["test"]
        if not test:
            raise ValueError(f"{ds.root} has no test location at {alt} m: nothing to evaluate")
        gallery_ids = ds.gallery_ids(alt)
        g_emb = satellite_embeddings(gallery_ids, alt)
        g_lab = np.asarray(gallery_ids)
        junk_qo = ~np.isin(g_lab, test)

        q_paths, q_lab, flight_of = [], [], []
        for fi, loc in enumerate(test):
            frames = ds.drone_frames(loc, alt)
            q_paths += frames
            q_lab += [loc] * len(frames)
            flight_of += [fi] * len(frames)
        q_emb, timing = embed_images(engine, q_paths, batch_size)
        q_lab = np.asarray(q_lab)
        flight_of = np.asarray(flight_of)
        sim = q_emb @ g_emb.T
        res = {"n_test_locations": len(test), "n_gallery_locations": len(gallery_ids),
               "n_frames": len(q_paths), "frame": {}, "flight_mean": {}, "flight_vote": {}}
        for protocol, junk in (("official", None), ("query_only", junk_qo)):
            m = retrieval_metrics(sim, q_lab, g_lab, ks=(1, 5, 10), junk=junk)
            res["frame"][protocol] = m
            rows.append(_row(alt, "frame", "drone2sat", protocol, m))
        # per flight: the mean of the frames' embeddings
        f_emb = _normalize(np.stack([q_emb[flight_of == i].mean(0) for i in range(len(test))]))
        f_sim = f_emb @ g_emb.T
        for protocol, junk in (("official", None), ("query_only", junk_qo)):
            m = retrieval_metrics(f_sim, np.asarray(test), g_lab, ks=(1, 5, 10), junk=junk)
            res["flight_mean"][protocol] = m
            rows.append(_row(alt, "flight_mean", "drone2sat", protocol, m))
        # per flight: majority vote of the frames' top-1 location (ties: the best summed similarity)
        for protocol, junk in (("official", None), ("query_only", junk_qo)):
            s = sim if junk is None else np.where(junk[None, :], -np.inf, sim)
            top1 = np.argmax(s, axis=1)
            hits = []
            for i, loc in enumerate(test):
                votes = np.bincount(top1[flight_of == i], minlength=len(g_lab)).astype(float)
                votes += 1e-6 * np.nan_to_num(s[flight_of == i].sum(0), neginf=-1e9) / max(1, (flight_of == i).sum())
                hits.append(g_lab[int(np.argmax(votes))] == loc)
            m = {"R@1": 100.0 * float(np.mean(hits)), "n_queries": len(test),
                 "n_gallery": int(len(g_lab) - (0 if junk is None else junk.sum()))}
            res["flight_vote"][protocol] = m
            rows.append(_row(alt, "flight_vote", "drone2sat", protocol, m))
        if "sat2drone" in directions:
            res["sat2drone"] = {}
            d_lab = list(q_lab)
            extra = [c for c in gallery_ids if c not in test]
            extra_paths = [p for c in extra for p in ds.drone_frames(c, alt)]
            extra_lab = [c for c in extra for _ in ds.drone_frames(c, alt)]
            e_emb, _ = embed_images(engine, extra_paths, batch_size)
            d_emb = np.concatenate([q_emb, e_emb]) if len(e_emb) else q_emb
            d_lab = np.asarray(d_lab + extra_lab)
            s_emb = satellite_embeddings(test, alt)
            s2d = s_emb @ d_emb.T
            for protocol, junk in (("official", None), ("query_only", ~np.isin(d_lab, test))):
                m = retrieval_metrics(s2d, np.asarray(test), d_lab, ks=(1, 5, 10), junk=junk)
                res["sat2drone"][protocol] = m
                rows.append(_row(alt, "frame", "sat2drone", protocol, m))
        lat_imgs = []
        if latency_frames:
            from .flights import read_rgb

            lat_imgs = [read_rgb(p) for p in q_paths[:latency_frames]]
        res["latency"] = {
            "batched_fps": _r(timing["n"] / timing["embed_s"], 2) if timing["embed_s"] > 0 else None,
            "batched_ms_per_frame": _r(1e3 * timing["embed_s"] / max(1, timing["n"]), 3),
            "decode_ms_per_frame": _r(1e3 * timing["decode_s"] / max(1, timing["n"]), 3),
            "batch_size": batch_size,
            **(batch1_latency(engine, lat_imgs) if lat_imgs else {}),
        }
        results["altitudes"][str(alt)] = res
        log.info("SUES-200 %d m: frame R@1 %.2f (official) / %.2f (query-only), flight R@1 %.2f",
                 alt, res["frame"]["official"]["R@1"], res["frame"]["query_only"]["R@1"],
                 res["flight_mean"]["official"]["R@1"])

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "replay_sues200.json", _jsonable(results))
        _write_csv(out / "replay_sues200.csv", rows, SUES_CSV_FIELDS)
        files = {"json": str(out / "replay_sues200.json"), "csv": str(out / "replay_sues200.csv")}
        if plots:
            from .plots import plot_altitude_bars

            bars = [{"altitude_m": r["altitude_m"], "series": f"{r['level']} {r['protocol']}", "R@1": r["R@1"]}
                    for r in rows if r["direction"] == "drone2sat"]
            files["r1_png"] = str(plot_altitude_bars(out / "sues200_r1.png", bars, "R@1",
                                                     title="SUES-200 drone->satellite R@1 per altitude"))
        results["files"] = files
    return results


def sues200_table(results: dict) -> str:
    """A per-altitude text table of a :func:`replay_sues200` result."""
    head = (f"{'alt':>5} | {'frames':>6} | {'R@1 off':>7} {'R@5 off':>7} {'AP off':>7} | {'R@1 qo':>7} "
            f"{'AP qo':>7} | {'flight R@1 off':>14} {'qo':>6} {'vote':>6} | {'ms/frame':>8} {'b1 ms':>7}")
    lines = [f"SUES-200 drone->satellite ({results['engine']}; off = official gallery with distractors, "
             "qo = query-only gallery)", head, "-" * len(head)]
    for alt, r in results["altitudes"].items():
        fo, fq = r["frame"]["official"], r["frame"]["query_only"]
        lat = r.get("latency", {})
        lines.append(
            f"{alt:>5} | {r['n_frames']:>6} | {fo['R@1']:7.2f} {fo['R@5']:7.2f} {fo['AP']:7.2f} | "
            f"{fq['R@1']:7.2f} {fq['AP']:7.2f} | {r['flight_mean']['official']['R@1']:14.2f} "
            f"{r['flight_mean']['query_only']['R@1']:6.2f} {r['flight_vote']['official']['R@1']:6.2f} | "
            f"{lat.get('batched_ms_per_frame') or float('nan'):8.2f} {lat.get('total_ms_median') or float('nan'):7.2f}"
        )
    return "\n".join(lines)


# ---- GeoTIFF flights --------------------------------------------------------------------------------
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
    from .position import PositionFilter, estimate_fix
    from .preprocess import north_up
    from .search import Searcher

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
            "altitude_m": alt, "index": meta.get("index", len(records)), "t": _r(t, 3),
            "true_x": _r(tx), "true_y": _r(ty), "est_x": _r(raw.x), "est_y": _r(raw.y),
            "fix_x": _r(fix.x) if fix.trusted else None, "fix_y": _r(fix.y) if fix.trusted else None,
            "trusted": bool(fix.trusted), "confidence": _r(fix.confidence, 4), "accuracy_m": _r(fix.accuracy_m, 1),
            "error_raw_m": _r(err_raw), "error_m": _r(err),
            "top1_hit": _tile_hit(db, m.indices[0, :1], tx, ty) if has_truth else None,
            "top5_hit": _tile_hit(db, m.indices[0, :5], tx, ty) if has_truth else None,
            "top1_score": _r(float(m.scores[0, 0]), 4), "reason": fix.reason,
            "preprocess_ms": _r(1e3 * (t1 - t0), 3), "inference_ms": _r(1e3 * (t2 - t1), 3),
            "search_ms": _r(1e3 * (t3 - t2), 3), "fusion_ms": _r(1e3 * (t4 - t3), 3),
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
    stage = {s: _r(_pct([r[s] for r in records], 50), 3)
             for s in ("preprocess_ms", "inference_ms", "search_ms", "fusion_ms")}
    total = [sum(r[s] for s in ("preprocess_ms", "inference_ms", "search_ms", "fusion_ms")) for r in records]
    return {
        "n_frames": n,
        "fix_rate": _r(100.0 * len(trusted) / n) if n else None,
        "error_m_median": _r(_pct(err, 50)), "error_m_p95": _r(_pct(err, 95)),
        "error_m_max": _r(max(err)) if err else None,
        "error_raw_m_median": _r(_pct(err_raw, 50)), "error_raw_m_p95": _r(_pct(err_raw, 95)),
        "R@1": _r(100.0 * np.mean(hits1)) if hits1 else None,
        "R@5": _r(100.0 * np.mean(hits5)) if hits5 else None,
        "latency_ms_median": stage, "total_ms_median": _r(_pct(total, 50), 3),
        "total_ms_p95": _r(_pct(total, 95), 3),
        "fps_pipeline": _r(1e3 / _pct(total, 50), 2) if total else None,
        "fps_wall": _r(n / wall_s, 2) if wall_s else None,
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

    from .engine import check_engine_database
    from .flights import GeoTiffFlight
    from .search import Searcher

    if db is None:
        raise ValueError(
            "a GeoTIFF replay needs the tile database of the map (--db DB); build it once with "
            f"`{export_tiles_command(_bundle_path(bundle), map_path, altitudes, hfov_deg)}` and pass --db DB"
        )
    engine = _engine(bundle, precision, backend, threads)
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
        atomic_write_json(out / "replay_geotiff.json", _jsonable(results))
        _write_csv(out / "replay_geotiff_frames.csv", all_records, FRAME_CSV_FIELDS)
        summary_rows = [{"altitude_m": a, **{k2: v for k2, v in s.items() if not isinstance(v, dict)}}
                        for a, s in results["altitudes"].items()]
        _write_csv(out / "replay_geotiff_summary.csv", summary_rows,
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


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ---- command line -----------------------------------------------------------------------------------
def _waypoints(text: str | None):
    if not text:
        return None
    try:
        pts = [tuple(float(v) for v in p.split(",")) for p in text.split(";") if p.strip()]
    except ValueError as e:
        raise ValueError(f"--waypoints {text!r}: expected 'x,y;x,y;...' in metres of the map's CRS") from e
    if len(pts) < 2 or any(len(p) != 2 for p in pts):
        raise ValueError(f"--waypoints {text!r}: expected at least two 'x,y' points separated by ';'")
    return np.array(pts)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m runtime replay {sues200,geotiff} ...``."""
    sub = parser.add_subparsers(dest="replay_kind", required=True)

    def common(p):
        p.add_argument("--bundle", required=True, help="model bundle folder (python -m export)")
        p.add_argument("--out", default=None, help="folder for JSON, CSV and PNG results")
        p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "int8"))
        p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
        p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
        p.add_argument("--altitudes", type=int, nargs="+", default=None, help="altitudes in metres")
        p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    s = sub.add_parser("sues200", help="SUES-200 (raw or split layout): retrieval per altitude")
    common(s)
    s.add_argument("--data", required=True, help="SUES-200 root (raw archive or split layout)")
    s.add_argument("--db", default=None,
                   help="gallery database from `python -m export --bundle B --gallery ROOT --gallery-out DB` "
                        "(default: embed the satellite images on the fly)")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--sat2drone", action="store_true", help="also evaluate satellite->drone")
    s.add_argument("--latency-frames", type=int, default=20, help="frames timed one by one (batch 1)")

    g = sub.add_parser("geotiff", help="flights rendered over a GeoTIFF: error in metres, fix rate")
    common(g)
    g.add_argument("--map", required=True, help="reference GeoTIFF (the tile database's map)")
    g.add_argument("--db", default=None,
                   help="required: the tile database of --map, built by `python -m export --bundle B --tiles MAP "
                        "--altitudes 150 200 250 300 --hfov 60 --db-out DB`")
    g.add_argument("--flight-raster", default=None, help="GeoTIFF the frames are rendered from (default: --map)")
    g.add_argument("--hfov-deg", type=float, default=60.0)
    g.add_argument("--pattern", default="curve", choices=("curve", "lawnmower", "line"))
    g.add_argument("--waypoints", default=None, help="'x,y;x,y;...' in metres (overrides --pattern)")
    g.add_argument("--speed-mps", type=float, default=15.0)
    g.add_argument("--fps", type=float, default=1.0)
    g.add_argument("--size-px", type=int, default=256, help="rendered frame side in pixels")
    g.add_argument("--tilt-deg", type=float, default=0.0)
    g.add_argument("--no-derotate", dest="derotate", action="store_false",
                   help="feed frames as the camera saw them, not turned north-up by their heading")
    g.add_argument("--photometric", type=float, default=None, help="appearance change strength (e.g. 0.5)")
    g.add_argument("--max-frames", type=int, default=None)
    g.add_argument("--k", type=int, default=5, help="top-k tiles per frame")
    g.add_argument("--radius-m", type=float, default=None, help="search only this far from the last fix")
    g.add_argument("--seed", type=int, default=0)


def run_replay(args: argparse.Namespace) -> int:
    """Entry point of ``python -m runtime replay``: run, write results, print the table; 0 on success."""
    from tiles.db import DatabaseError

    from .bundle import BundleError
    from .sues200 import SUES200LayoutError

    try:
        if args.replay_kind == "sues200":
            res = replay_sues200(
                args.data, args.bundle, altitudes=args.altitudes, db=args.db, out_dir=args.out,
                batch_size=args.batch_size, directions=("drone2sat", "sat2drone") if args.sat2drone else ("drone2sat",),
                latency_frames=args.latency_frames, plots=not args.no_plots, precision=args.precision,
                backend=args.backend, threads=args.threads)
            print(sues200_table(res))
        else:
            res = replay_geotiff(
                args.bundle, args.map, flight_raster=args.flight_raster,
                altitudes=args.altitudes or (150, 200, 250, 300), db=args.db, out_dir=args.out,
                hfov_deg=args.hfov_deg, pattern=args.pattern, waypoints=_waypoints(args.waypoints),
                speed_mps=args.speed_mps, fps=args.fps, size_px=args.size_px, tilt_deg=args.tilt_deg,
                derotate=args.derotate,
                photometric=args.photometric, max_frames=args.max_frames, k=args.k, radius_m=args.radius_m,
                seed=args.seed, plots=not args.no_plots,
                precision=args.precision, backend=args.backend, threads=args.threads)
            print(geotiff_table(res))
    except (SUES200LayoutError, BundleError, DatabaseError, FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    if res.get("files"):
        print("results: " + ", ".join(os.fspath(v) for v in res["files"].values()))
    return 0
