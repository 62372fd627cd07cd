"""Flights through the odometry and the map filter, and what to measure of them (calibration and evaluation).

A flight is recorded once (:func:`record_flight`: each frame turned north-up with its compass heading, as
the service does, embedded by the engine, and the odometry between consecutive frames), then replayed
through :class:`runtime.localisation.map_filter.MapFilter` as often as needed (:func:`run_filter`): the embedding is
the expensive part, so calibration can try many temperatures and the evaluation many settings on the
same frames. Every frame is also scored against the whole layer, for R@1/R@5 and so that the filter can
be given exactly the rows it asks for.

:func:`summarize` gives the figures issue 10 sets targets for: availability after the first trusted fix,
time to first fix, median/p95/max error of trusted fixes, wrong trusted fixes (error above one
footprint), calibration (share of trusted fixes with the truth inside ``r95_m``), R@1/R@5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FlightRecord:
    name: str
    layer: int
    t: np.ndarray  # (n,) seconds
    truth: np.ndarray  # (n, 2) metric x, y; NaN where the frame shows no place of the map
    emb: np.ndarray  # (n, D) float32 L2-normalised
    motions: list = field(default_factory=list)  # runtime.localisation.odometry.Motion per frame
    in_map: bool = True  # False: frames of a place the database does not hold (never to be trusted)
    texture: np.ndarray | None = None  # (n,) runtime.localisation.odometry.frame_texture of each north-up frame


def record_flight(engine, vo, db, frames, *, hfov_deg: float, name: str, in_map: bool = True,
                  batch_size: int = 16) -> FlightRecord:
    """Embed and odometrise ``frames`` (runtime.inputs.sources Frame tuples, ground truth in meta)."""
    from runtime.engines.preprocess import north_up
    from runtime.localisation.odometry import frame_texture

    images, ts, truth, motions, tex, alt = [], [], [], [], [], None
    vo.reset()
    for t, image, meta in frames:
        alt = float(meta["altitude_m"])
        up = north_up(image, meta.get("heading_deg"))
        motions.append(vo.update(up, float(t), alt, hfov_deg, None))
        images.append(up)
        tex.append(frame_texture(up))
        ts.append(float(t))
        truth.append((meta.get("x", math.nan), meta.get("y", math.nan)))
    emb = np.concatenate(list(engine.embed_batches(images, batch_size)))
    layer = db.layer_for_altitude(alt) if len(db.layers) > 1 else 0
    return FlightRecord(name, layer, np.array(ts), np.array(truth, float), emb.astype(np.float32), motions, in_map,
                        np.array(tex))


def _tile_hit(grid, rows_local, x: float, y: float) -> bool:
    half = grid.footprint_m / 2.0
    return bool(np.any((np.abs(grid.x[rows_local] - x) <= half) & (np.abs(grid.y[rows_local] - y) <= half)))


def run_filter(db, rec: FlightRecord, cfg, likelihood, prior=None, use_odometry: bool = True) -> list[dict]:
    """Replay ``rec`` through a fresh MapFilter; one dict per frame."""
    from runtime.localisation.map_filter import MapFilter

    mf = MapFilter(db, rec.layer, cfg, likelihood)
    if prior is not None:
        mf.reset(prior)
    grid = mf.grid
    layer_emb = np.asarray(db.embeddings[grid.rows[0]: grid.rows[-1] + 1], np.float32)
    sims = rec.emb @ layer_emb.T  # every frame against the whole layer, one product
    out = []
    for i in range(len(rec.t)):
        m = rec.motions[i] if use_odometry else None
        mf.predict(rec.t[i], m)
        rows = mf.rows_to_score()
        all_scores = sims[i]
        scores = all_scores if rows is None else all_scores[grid.local(rows)]
        if rec.texture is None or rec.texture[i] >= mf.cfg.min_texture:
            mf.update(rows, scores)
        e = mf.estimate()
        tx, ty = rec.truth[i]
        has_truth = bool(np.isfinite(tx) and np.isfinite(ty))
        top = np.argsort(-all_scores)[:5]
        err = math.hypot(e.x - tx, e.y - ty) if has_truth else math.nan
        out.append({"index": i, "t": float(rec.t[i]), "true_x": tx, "true_y": ty, "x": e.x, "y": e.y,
                    "r95_m": e.r95_m, "mass": e.mass, "p_out": e.p_out, "trusted": e.trusted, "reason": e.reason,
                    "error_m": err, "vel_e_mps": e.vel_e_mps, "vel_n_mps": e.vel_n_mps,
                    "odometry_ok": bool(m is not None and m.ok), "rows_scored": len(grid) if rows is None else len(rows),
                    "top1_hit": _tile_hit(grid, top[:1], tx, ty) if has_truth else None,
                    "top5_hit": _tile_hit(grid, top, tx, ty) if has_truth else None,
                    "footprint_m": grid.footprint_m, "stride_m": grid.stride_m, "in_map": rec.in_map})
    return out


def _pct(v, q):
    return float(np.percentile(v, q)) if len(v) else None


def summarize(frames: list[dict]) -> dict:
    """The issue's figures for one flight (or frames pooled over flights: availability per flight is then
    pooled over the frames after each flight's own first fix only if ``first_fix`` is marked per frame)."""
    n = len(frames)
    trusted = [f for f in frames if f["trusted"]]
    first = next((f["index"] for f in frames if f["trusted"]), None)
    after = [f for f in frames if first is not None and f["index"] > first]
    fp = frames[0]["footprint_m"] if frames else math.nan
    if not all(f["in_map"] for f in frames):  # frames of nowhere on the map: every trusted fix is wrong
        wrong = len(trusted)
        errs = []
    else:
        errs = [f["error_m"] for f in trusted if math.isfinite(f["error_m"])]
        wrong = sum(e > f["footprint_m"] for e, f in zip(errs, trusted))
    inside = [f["error_m"] <= f["r95_m"] for f in trusted if math.isfinite(f["error_m"])]
    h1 = [f["top1_hit"] for f in frames if f["top1_hit"] is not None]
    h5 = [f["top5_hit"] for f in frames if f["top5_hit"] is not None]
    return {
        "frames": n, "trusted": len(trusted), "wrong_trusted": int(wrong),
        "ttff_frames": first,
        "availability_pct": 100.0 * sum(f["trusted"] for f in after) / len(after) if after else None,
        "error_median_m": _pct(errs, 50), "error_p95_m": _pct(errs, 95), "error_max_m": max(errs) if errs else None,
        "calibration_pct": 100.0 * float(np.mean(inside)) if inside else None,
        "r95_median_m": _pct([f["r95_m"] for f in trusted], 50),
        "R@1": 100.0 * float(np.mean(h1)) if h1 else None, "R@5": 100.0 * float(np.mean(h5)) if h5 else None,
        "odometry_ok_pct": 100.0 * float(np.mean([f["odometry_ok"] for f in frames])) if n else None,
        "rows_scored_mean": float(np.mean([f["rows_scored"] for f in frames])) if n else None,
        "footprint_m": fp, "stride_m": frames[0]["stride_m"] if frames else None,
    }


_MOTION_FIELDS = ("ok", "dx_e_m", "dy_n_m", "dyaw_deg", "dt_s", "inliers", "matches", "sigma_m", "scale", "jump")


def save_record(path, rec: FlightRecord) -> None:
    """A recorded flight to ``path`` (.npz, written atomically), so a replay need not embed it again."""
    from tiles.io import atomic_path

    mot = {f"m_{k}": np.array([getattr(m, k) for m in rec.motions]) for k in _MOTION_FIELDS}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        tex = rec.texture if rec.texture is not None else np.full(len(rec.t), np.inf)
        np.savez(f, name=rec.name, layer=rec.layer, t=rec.t, truth=rec.truth, emb=rec.emb, in_map=rec.in_map, texture=tex,
                 reasons=np.array([m.reason for m in rec.motions]), **mot)


def _jumped(reason: str) -> bool:
    """For records saved before Motion.jump existed: the reasons that mean textured frames did not match."""
    return reason.startswith(("too few matches", "no consistent motion"))


def load_record(path) -> FlightRecord:
    from runtime.localisation.odometry import Motion

    z = np.load(path)
    n = len(z["t"])
    motions = [Motion(bool(z["m_ok"][i]), *(float(z[f"m_{k}"][i]) for k in _MOTION_FIELDS[1:5]),
                      int(z["m_inliers"][i]), int(z["m_matches"][i]), float(z["m_sigma_m"][i]),
                      float(z["m_scale"][i]), str(z["reasons"][i]),
                      bool(z["m_jump"][i]) if "m_jump" in z.files else _jumped(str(z["reasons"][i])))
               for i in range(n)]
    tex = z["texture"] if "texture" in z.files else None
    return FlightRecord(str(z["name"]), int(z["layer"]), z["t"], z["truth"], z["emb"], motions, bool(z["in_map"]), tex)
