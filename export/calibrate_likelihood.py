"""Calibrate the map filter's likelihood for one model, on held-out flights, and store it in the bundle.

The map filter (runtime.localisation.map_filter) turns a frame's cosine similarities into likelihood ratios
``exp((s - median - offset) / temperature)`` (runtime.search.layer_grid.Likelihood). How similarities of true and
false matches are distributed is a property of the model, so both numbers are fitted per model:

1. Flights are rendered from the calibration raster(s) (another year of the map: never the years used to
   measure) at every altitude layer of the tile database, and recorded once (frames north-up, embedded by
   the engine that flies, odometry): :func:`runtime.replay.filter_replay.record_flight`.
2. ``offset`` and a first temperature ``T0``: a logistic regression, classes weighted equally, of "true
   tile" (the frame's centred similarity at its true position) against "another place" (tiles more than
   one footprint away). Its logit is then ``log f_true(s) / f_other(s)``, the per-frame likelihood ratio.
3. Consecutive frames overlap and one year's look differs from the map's in the same way frame after
   frame, so their evidence is not independent, and the linear logit overrates the rare very similar
   wrong tile: the filter is run on the calibration flights with ``T = k * T0`` and a bound ``clip`` on
   the evidence of one frame, over a grid of both; ``r95_scale`` (>= 1) is set for each so that the truth
   lies inside ``r95_m`` for 95 % of its trusted fixes. Kept: the setting with the most trusted fixes among
   those with no wrong trusted fix and at least ``min_coverage`` inside their 95 % radius (measured:
   bounding one frame's evidence is what removes wrong locks; a higher temperature only delays them).
   Off-map flights (over one half of the area, against a database of the other half) are replayed too,
   and the offset raised (``shift``) when that keeps enough fixes while trusting fewer of them.

The result goes to the bundle manifest as ``"likelihood"`` (written atomically; other fields untouched).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from tiles.io import atomic_write_json

log = logging.getLogger(__name__)

TEMPER_STEPS = (1.0, 1.5)
CLIP_STEPS = (2.0, 3.0, 4.0)
SHIFT_STEPS = (0.0, 0.5, 1.0)  # offset raised by this many T0: more evidence needed to be on the map


def fit_logistic(pos: np.ndarray, neg: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """(a, b) of ``logit = a * s + b`` fitted by Newton's method, both classes of equal total weight."""
    s = np.concatenate([pos, neg]).astype(np.float64)
    yv = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    w = np.concatenate([np.full(len(pos), 0.5 / len(pos)), np.full(len(neg), 0.5 / len(neg))])
    x = np.stack([s, np.ones_like(s)], 1)
    beta = np.zeros(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -30, 30)))
        g = x.T @ (w * (p - yv))
        h = (x * (w * p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(beta[0]), float(beta[1])


def score_samples(db, records) -> tuple[np.ndarray, np.ndarray]:
    """Centred similarities of frames at their true position (bilinear between tiles) and of far tiles."""
    import cv2

    from runtime.search.layer_grid import LayerGrid

    pos, neg = [], []
    grids: dict[int, LayerGrid] = {}
    for rec in records:
        g = grids.setdefault(rec.layer, LayerGrid(db, rec.layer))
        emb = np.asarray(db.embeddings[g.rows[0]: g.rows[-1] + 1], np.float32)
        for q, (tx, ty) in zip(rec.emb, rec.truth):
            if not (rec.in_map and math.isfinite(tx)):
                continue
            s = emb @ q
            ref = float(np.median(s))
            img = g.score_image(None, s, fill=ref)
            u = np.array([[(tx - g.x0) / g.stride_m]], np.float32)
            v = np.array([[(g.y1 - ty) / g.stride_m]], np.float32)
            pos.append(float(cv2.remap(img, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0, 0]) - ref)
            far = np.hypot(g.x - tx, g.y - ty) > g.footprint_m
            neg.append(s[far] - ref)
    if not pos:
        raise ValueError("no calibration frame over the map: check the calibration rasters cover the database")
    return np.array(pos), np.concatenate(neg)


def _evaluate(cases, cfg, lik) -> dict:
    """Replay every (database, records) case; off-map records count each trusted fix as wrong."""
    from runtime.replay.filter_replay import run_filter

    frames = [f for db, records in cases for rec in records for f in run_filter(db, rec, cfg, lik)]
    trusted = [f for f in frames if f["trusted"] and f["in_map"]]
    wrong = sum(f["error_m"] > f["footprint_m"] for f in trusted)
    off = sum(f["trusted"] for f in frames if not f["in_map"])
    ratio = [f["error_m"] / f["r95_m"] for f in trusted]
    return {"frames": sum(f["in_map"] for f in frames), "trusted": len(trusted), "wrong": int(wrong),
            "offmap_frames": len(frames) - sum(f["in_map"] for f in frames), "offmap_trusted": int(off),
            "coverage": float(np.mean([r <= 1.0 for r in ratio])) if ratio else None,
            "ratio_q95": float(np.quantile(ratio, 0.95)) if ratio else None}


def fit_likelihood(db, records, cfg=None, *, offmap=None, min_coverage: float = 0.9, keep_share: float = 0.8,
                   temper=TEMPER_STEPS, clips=CLIP_STEPS, shifts=SHIFT_STEPS) -> tuple[dict, dict]:
    """(likelihood dict for the manifest, report) from recorded calibration flights over ``db``, and
    ``offmap`` = (database, records) of flights over ground that database does not hold.

    Kept: among the settings with no wrong trusted fix over the map and ``min_coverage`` of the truth
    inside r95, those with at least ``keep_share`` of the most trusted fixes, the one with the fewest
    trusted fixes off the map. (Measured on the demo model: off-map locks onto look-alike ground score
    higher than correct fixes, so no likelihood setting removes them without losing most fixes; see
    docs/results/filter.md.)"""
    from runtime.localisation.map_filter import MapFilterConfig
    from runtime.search.layer_grid import Likelihood

    cfg = cfg or MapFilterConfig()
    pos, neg = score_samples(db, records)
    a, b = fit_logistic(pos, neg)
    if a <= 0:
        raise ValueError(f"the model's similarities do not separate true from false places (slope {a:.3g}): "
                         "nothing to calibrate; is the database built with this bundle?")
    t0, offset = 1.0 / a, -b / a
    cases = [(db, records)] + ([offmap] if offmap else [])
    tried, good = [], []
    for shift in shifts:
        for clip in clips:
            for k in temper:
                kw = dict(temperature=t0 * k, offset=offset + shift * t0, centre="median", clip=clip)
                ev = _evaluate(cases, cfg, Likelihood(**kw))
                scale = float(np.clip(ev["ratio_q95"] or 1.0, 1.0, 4.0))  # never narrower than the posterior
                lik = Likelihood(**kw, r95_scale=scale)
                ev = _evaluate(cases, cfg, lik) if scale > 1.0 else ev
                tried.append({"k": k, "clip": clip, "shift": shift, "r95_scale": scale, **ev})
                log.info("likelihood %s", tried[-1])
                if ev["wrong"] == 0 and ev["trusted"] and (ev["coverage"] or 0) >= min_coverage:
                    good.append((lik, ev))
    if good:  # the fewest off-map fixes among the settings keeping >= keep_share of the most trusted fixes
        most = max(ev["trusted"] for _, ev in good)
        best = min((g for g in good if g[1]["trusted"] >= keep_share * most),
                   key=lambda g: (g[1]["offmap_trusted"], -g[1]["trusted"]))
    else:
        lik = Likelihood(temperature=t0 * max(temper), offset=offset + max(shifts) * t0, centre="median",
                         clip=min(clips), r95_scale=4.0)
        log.warning("no setting gave zero wrong trusted fixes on the calibration flights; using the most cautious")
        best = (lik, _evaluate(cases, cfg, lik))
    report = {"t0": t0, "offset": offset, "n_pos": len(pos), "n_neg": len(neg), "pos_median": float(np.median(pos)),
              "neg_p99": float(np.quantile(neg, 0.99)), "tried": tried, "final": best[1]}
    return best[0].to_dict(), report


def half_database(db, out, side: str = "west") -> Path:
    """The tiles of ``db`` whose centre lies in the western (or eastern) half of its area, same embeddings:
    a map that does not hold the other half (out-of-map flights for calibration and evaluation)."""
    from tiles.db import write_database

    out = Path(out)
    if (out / "manifest.json").is_file():
        return out
    x = np.asarray(db.entries["x"])
    xmid = 0.5 * (float(x.min()) + float(x.max()))
    keep = x < xmid if side == "west" else x >= xmid
    m = db.manifest
    extra = dict(m.get("extra", {}), note=f"{side}ern half of {db.path.name}: tiles with x {'<' if side == 'west' else '>='} {xmid:.0f}")
    write_database(out, np.asarray(db.embeddings, np.float32)[keep], db.entries[keep], layers=m["layers"],
                   model=m["model"], preprocess=m["preprocess"], crs=m["crs"], sources=m["sources"], extra=extra)
    return out


def calibration_flights(db, rasters, *, hfov_deg: float, frames: int = 40, speed_mps: float = 40.0,
                        photometric: float = 0.3, flights_per_raster: int = 1, seed: int = 1000,
                        outside_x: float | None = None):
    """(name, GeoTiffFlight) rendered from ``rasters`` at each layer's altitude, the same for every calibration
    (the likelihood's here, the reported accuracy's in export.calibrate_accuracy). ``outside_x``: fly west of
    this x (with a footprint of margin)."""
    from runtime.replay.flights import GeoTiffFlight, curve_waypoints

    for ri, raster in enumerate(rasters):
        for layer in db.layers:
            for k in range(flights_per_raster):
                s = seed + 100 * ri + 10 * k + int(layer["altitude_m"])
                wp = None
                if outside_x is not None:
                    from tiles.raster import open_raster

                    fp = float(layer["footprint_m"])
                    with open_raster(raster) as r:
                        b = r.bounds_m
                    wp = curve_waypoints((b[0], b[1], outside_x - fp, b[3]), margin_m=0.75 * fp, seed=s)
                fl = GeoTiffFlight(raster, float(layer["altitude_m"]), pattern="curve", waypoints=wp,
                                   hfov_deg=hfov_deg, speed_mps=speed_mps, fps=1.0, photometric=photometric,
                                   max_frames=frames, seed=s)
                yield f"{Path(raster).stem}@{fl.altitude_m:g}-{k}", fl


def calibration_records(engine, db, rasters, *, hfov_deg: float, frames: int = 40, speed_mps: float = 40.0,
                        photometric: float = 0.3, flights_per_raster: int = 1, seed: int = 1000,
                        cache_dir=None, outside_x: float | None = None, tag: str = "") -> list:
    """:func:`calibration_flights`, recorded (runtime.replay.filter_replay); with ``cache_dir``, each recorded
    flight is kept there and read back on the next call. ``outside_x``: the flights are marked off the map
    (``db`` holds only the ground east of it)."""
    from runtime.localisation.odometry import VisualOdometry
    from runtime.replay.filter_replay import load_record, record_flight, save_record

    vo, records = VisualOdometry(), []
    for name, fl in calibration_flights(db, rasters, hfov_deg=hfov_deg, frames=frames, speed_mps=speed_mps,
                                        photometric=photometric, flights_per_raster=flights_per_raster,
                                        seed=seed, outside_x=outside_x):
        name = f"{tag}{name}"
        cached = Path(cache_dir) / f"{name}.npz" if cache_dir else None
        if cached is not None and cached.is_file():
            records.append(load_record(cached))
            continue
        records.append(record_flight(engine, vo, db, fl, hfov_deg=hfov_deg, name=name, in_map=outside_x is None))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            save_record(cached, records[-1])
    return records


def calibrate_bundle(bundle_dir, db_path, rasters, *, hfov_deg: float = 60.0, precision: str = "auto",
                     threads: int | None = None, frames: int = 40, report_path=None, cache_dir=None,
                     accuracy: bool = True) -> dict:
    """Fit the likelihood for ``bundle_dir`` on flights from ``rasters`` over the database ``db_path`` (built
    by this bundle) and write it into the bundle manifest; then (``accuracy``) the scale of the fixes'
    reported accuracy, flown through the Localizer (:mod:`export.calibrate_accuracy`). Returns the stored
    dict."""
    from runtime.engines.bundle import MANIFEST, read_bundle
    from runtime.engines.engine import check_engine_database, load_engine
    from tiles.db import TileDatabase

    bundle = read_bundle(bundle_dir)
    db = TileDatabase.open(db_path)
    engine = load_engine(bundle_dir, precision=precision, threads=threads)
    check_engine_database(engine, db)
    records = calibration_records(engine, db, [Path(r) for r in rasters], hfov_deg=hfov_deg, frames=frames,
                                  cache_dir=cache_dir)
    import tempfile

    work = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="geoloc-calib-"))
    east = TileDatabase.open(half_database(db, work / "east_db", "east"))
    off = calibration_records(engine, east, [Path(r) for r in rasters], hfov_deg=hfov_deg, frames=frames,
                              cache_dir=cache_dir, outside_x=float(np.asarray(east.entries["x"]).min()), tag="off-")
    lik, report = fit_likelihood(db, records, offmap=(east, off))
    lik["fitted_on"] = {"rasters": [Path(r).name for r in rasters], "database": Path(db_path).name,
                        "engine": engine.name, "frames": int(sum(len(r.t) for r in records)),
                        "final": report["final"]}
    manifest = dict(bundle.manifest)
    manifest["likelihood"] = lik
    atomic_write_json(Path(bundle_dir) / MANIFEST, manifest)
    if accuracy:
        from export.calibrate_accuracy import calibrate_fix_accuracy

        engine = load_engine(bundle_dir, precision=precision, threads=threads)  # with the likelihood just fitted
        lik["fix_accuracy"] = calibrate_fix_accuracy(engine, db, [Path(r) for r in rasters], hfov_deg=hfov_deg,
                                                     frames=frames)
        manifest["likelihood"] = lik
        atomic_write_json(Path(bundle_dir) / MANIFEST, manifest)
    if report_path is not None:
        atomic_write_json(Path(report_path), report)
    log.info("likelihood calibrated: %s", json.dumps(lik))
    return lik
