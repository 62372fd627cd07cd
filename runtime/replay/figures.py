"""What decides whether a drone can fly on a replayed flight: its figures, from the frames' records
(:func:`runtime.replay.geotiff.frame_record`), defined once for the replays, the demo, the calibration and
the tools."""

from __future__ import annotations

import math

import numpy as np

from runtime.replay.common import pct, rnd


def flight_figures(records: list[dict]) -> dict:
    """What decides whether a drone can fly on it: fix availability after the first trusted fix, time to the
    first fix, wrong trusted fixes (error above one footprint; every trusted fix of a flight over a place
    the map does not hold), and calibration (share of trusted fixes with the truth inside ``r95_m``)."""
    trusted = [r for r in records if r["trusted"]]
    first = next((i for i, r in enumerate(records) if r["trusted"]), None)
    after = records[first + 1:] if first is not None else []
    wrong = sum(1 for r in trusted if not r.get("in_map", True)
                or (r["error_m"] is not None and r["footprint_m"] is not None and r["error_m"] > r["footprint_m"]))
    inside = [r["error_m"] <= r["r95_m"] for r in trusted
              if r.get("in_map", True) and r["error_m"] is not None and r.get("r95_m") is not None]
    reg = [r["registered"] for r in records if r.get("registered") is not None]
    odo = [r["odometry_ok"] for r in records if r.get("odometry_ok") is not None]
    return {"trusted": len(trusted), "wrong_trusted": int(wrong), "ttff_frames": first,
            "availability_pct": rnd(100.0 * sum(r["trusted"] for r in after) / len(after)) if after else None,
            "calibration_pct": rnd(100.0 * float(np.mean(inside))) if inside else None,
            "registered_pct": rnd(100.0 * float(np.mean(reg))) if reg else None,
            "heading_error_deg_median": rnd(pct([r.get("heading_error_deg") for r in records
                                                 if str(r.get("heading_source")).startswith("registration")], 50)),
            "heading_frames": sum(1 for r in records if str(r.get("heading_source")).startswith("registration")),
            "heading_search_error_deg_median": rnd(pct([r.get("heading_error_deg") for r in records
                                                        if r.get("heading_source") == "retrieval"], 50)),
            "odometry_ok_pct": rnd(100.0 * float(np.mean(odo))) if odo else None}


RELIABILITY_LEVELS = (0.5, 0.68, 0.8, 0.9, 0.95, 0.99)


def reliability(records: list[dict], levels=RELIABILITY_LEVELS) -> dict | None:
    """The reliability curve of the reported accuracy: for each nominal probability p, the share of trusted
    fixes (over the map) whose truth lies within the radius that holds p of a 2-D Gaussian error of the
    reported 95 % radius (r95 * sqrt(-2 ln(1 - p)) / sqrt(-2 ln 0.05)). Calibrated: observed = nominal."""
    pairs = [(r["error_m"], r["r95_m"]) for r in records if r["trusted"] and r.get("in_map", True)
             and r["error_m"] is not None and r.get("r95_m") is not None]
    if not pairs:
        return None
    err, r95 = np.array(pairs, float).T
    from runtime.localisation.geo import R95_PER_SIGMA

    observed = [rnd(100.0 * float(np.mean(err <= r95 * math.sqrt(-2.0 * math.log(1.0 - p)) / R95_PER_SIGMA)))
                for p in levels]
    return {"nominal_pct": [rnd(100.0 * p) for p in levels], "observed_pct": observed, "n": len(pairs)}


def pooled_figures(flights: list[list[dict]]) -> dict:
    """:func:`flight_figures` of several flights pooled: counts summed, availability and calibration over
    the pooled frames, the time to first fix the slowest flight's (None when one never got a fix)."""
    figs = [flight_figures(recs) for recs in flights]
    after = [(len(recs) - f["ttff_frames"] - 1, f["availability_pct"]) for recs, f in zip(flights, figs)
             if f["ttff_frames"] is not None and f["availability_pct"] is not None]
    n_after = sum(n for n, _ in after)
    trusted_recs = [r for recs in flights for r in recs if r["trusted"]]
    inside = [r["error_m"] <= r["r95_m"] for r in trusted_recs
              if r.get("in_map", True) and r["error_m"] is not None and r.get("r95_m") is not None]
    ttff = [f["ttff_frames"] for f in figs]
    return {"flights": len(flights), "trusted": sum(f["trusted"] for f in figs),
            "wrong_trusted": sum(f["wrong_trusted"] for f in figs),
            "ttff_frames": None if not ttff or None in ttff else max(ttff),
            "availability_pct": rnd(sum(n * a for n, a in after) / n_after) if n_after else None,
            "calibration_pct": rnd(100.0 * float(np.mean(inside))) if inside else None,
            "reliability": reliability([r for recs in flights for r in recs])}


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
        **flight_figures(records),
    }


def flight_frames(results: dict) -> dict[str, list[dict]]:
    """Each altitude's flight's frame records from :func:`replay_geotiff`'s results (``frames`` holds them
    altitude after altitude, as many as its summary's ``n_frames``). A record's own ``altitude_m`` is the
    height the chain flew it at, which the height's scale estimate moves by metres: not the flight's."""
    out, start = {}, 0
    for alt, summary in results["altitudes"].items():
        out[alt] = results["frames"][start:start + summary["n_frames"]]
        start += summary["n_frames"]
    return out
