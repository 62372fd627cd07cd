"""Calibrate the map filter's likelihood for one model, through the Localizer that flies, and store it.

The map filter turns a frame's cosine similarities into likelihood ratios
``exp((s - median - offset) / temperature)`` (:class:`runtime.localisation.likelihood.Likelihood`). How
similarities of true and false matches are distributed is a property of the model, so both numbers are
fitted per model:

1. ``offset`` and a first temperature ``T0``: a logistic regression, classes weighted equally, of "true
   tile" (the frame's centred similarity at its true position) against "another place" (tiles more than
   one footprint away), on the descriptors of the calibration flights (:mod:`export.calibration_flights`).
   Its logit is then ``log f_true(s) / f_other(s)``, the per-frame likelihood ratio.
2. Consecutive frames overlap and one year's look differs from the map's in the same way frame after
   frame, so their evidence is not independent, and the linear logit overrates the rare very similar
   wrong tile: the calibration flights are flown through the :class:`~runtime.localisation.localizer.Localizer`
   (the service's chain and settings) with ``T = k * T0`` and a bound ``clip`` on the evidence of one
   frame, over a small grid; flights off the map are flown too. The grid is judged by the filter's own
   trust, registration off: registration's check would hide a likelihood that locks onto look-alike
   ground (and it costs most of a frame). Kept: among the settings with no wrong trusted fix over the map
   and none off it, the one with the most trusted fixes (measured: bounding one frame's evidence is what
   removes wrong locks; a higher temperature only delays them). When off-map fixes are trusted, the
   offset is raised (``shift``).
3. ``r95_scale`` (>= 1) makes the posterior's 95 % radius hold its mean's error for 95 % of the trusted
   frames.

Then the kept setting flies the whole chain, registration included, as the service runs it: the reported
accuracy of the fix is fitted on those records (:mod:`export.calibrate_accuracy`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np

log = logging.getLogger(__name__)

TEMPER_STEPS = (1.0, 1.5)
CLIP_STEPS = (2.0, 3.0)
SHIFT_STEPS = (0.5, 1.0)  # offset raised by this many T0 when the unshifted settings trust fixes off the map


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


def score_samples(db, flights) -> tuple[np.ndarray, np.ndarray]:
    """Centred similarities of frames at their true position (bilinear between tiles) and of far tiles."""
    import cv2

    from runtime.search.layer_grid import LayerGrid

    pos, neg = [], []
    grids: dict[int, LayerGrid] = {}
    for fl in flights:
        if not fl.in_map:
            continue
        for (_, _, meta), ahead in zip(fl.frames, fl.aheads):
            layer = db.layer_for_altitude(float(meta["altitude_m"])) if len(db.layers) > 1 else 0
            g = grids.setdefault(layer, LayerGrid(db, layer))
            emb = np.asarray(db.embeddings[g.rows[0]: g.rows[-1] + 1], np.float32)
            tx, ty = float(meta["x"]), float(meta["y"])
            s = emb @ np.asarray(ahead.embedding, np.float32).reshape(-1)
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


def evaluate(records: list[dict]) -> dict:
    """What a setting did on the calibration flights (records of :func:`export.calibration_flights.fly`)."""
    on = [r for r in records if r["in_map"]]
    trusted = [r for r in on if r["trusted"]]
    wrong = sum(r["error_m"] is not None and r["error_m"] > r["footprint_m"] for r in trusted)
    ratio = [math.hypot(r["posterior_x"] - r["true_x"], r["posterior_y"] - r["true_y"]) / r["posterior_r95_m"]
             for r in trusted if r.get("posterior_r95_m")]
    return {"frames": len(on), "trusted": len(trusted), "wrong": int(wrong),
            "offmap_frames": len(records) - len(on), "offmap_trusted": sum(r["trusted"] for r in records
                                                                           if not r["in_map"]),
            "coverage": float(np.mean(np.asarray(ratio) <= 1.0)) if ratio else None,
            "ratio_q95": float(np.quantile(ratio, 0.95)) if ratio else None}


def fit_likelihood(engine, cases, cfg, *, min_coverage: float = 0.9,
                   progress: bool = True) -> tuple[dict, dict, list[dict]]:
    """(likelihood dict for the manifest, report, the kept setting's records over the map) from ``cases`` =
    [(database, flights)], the first over the map the bundle's database holds (module docstring).
    ``progress``: a bar per flying of the calibration flights (``likelihood k=1 clip=2 shift=0``, ...,
    ``fix accuracy: the whole chain``), counting frames."""
    from runtime.localisation.likelihood import Likelihood

    db, flights = cases[0]
    pos, neg = score_samples(db, flights)
    a, b = fit_logistic(pos, neg)
    if a <= 0:
        raise ValueError(f"the model's similarities do not separate true from false places (slope {a:.3g}): "
                         "nothing to calibrate; is the database built with this bundle?")
    t0, offset = 1.0 / a, -b / a

    # the filter's evidence is judged by the filter's own trust (registration's check would hide a likelihood
    # that locks onto look-alike ground; it also costs most of a frame): the chain without registration
    filter_only = replace(cfg, registration=False, verify_lock=False)

    def run(lik, desc, chain=filter_only, flown=cases):
        records = _fly_all(engine, flown, chain, lik, desc, progress)
        return records, evaluate(records)

    tried, good = [], []
    for shift in (0.0, *SHIFT_STEPS):
        for clip in CLIP_STEPS:
            for k in TEMPER_STEPS:
                lik = Likelihood(temperature=t0 * k, offset=offset + shift * t0, centre="median", clip=clip)
                records, ev = run(lik, f"likelihood k={k:g} clip={clip:g} shift={shift:g}")
                tried.append({"k": k, "clip": clip, "shift": shift, **ev})
                log.info("likelihood %s", tried[-1])
                if ev["wrong"] == 0 and ev["offmap_trusted"] == 0 and ev["trusted"]:
                    good.append((lik, ev, records))
        if good:
            break
    if good:
        lik, ev, records = max(good, key=lambda g: g[1]["trusted"])
    else:
        lik = Likelihood(temperature=t0 * max(TEMPER_STEPS), offset=offset + max(SHIFT_STEPS) * t0,
                         centre="median", clip=min(CLIP_STEPS))
        log.warning("no setting gave zero wrong trusted fixes on the calibration flights; using the most cautious")
        records, ev = run(lik, "likelihood: the most cautious setting")
    scale = float(np.clip(ev["ratio_q95"] or 1.0, 1.0, 4.0))  # never narrower than the posterior
    lik = Likelihood(**{**lik.to_dict(), "r95_scale": scale})
    filter_ev = run(lik, f"likelihood r95 scale {scale:.2f}")[1] if scale > 1.0 else ev
    # the whole chain, as it flies, over the map: what the reported accuracy is fitted on
    records, chain_ev = run(lik, "fix accuracy: the whole chain", chain=cfg, flown=cases[:1])
    report = {"t0": t0, "offset": offset, "n_pos": len(pos), "n_neg": len(neg), "pos_median": float(np.median(pos)),
              "neg_p99": float(np.quantile(neg, 0.99)), "tried": tried, "final": filter_ev, "chain": chain_ev,
              "min_coverage": min_coverage}
    if (filter_ev["coverage"] or 0.0) < min_coverage:
        log.warning("the posterior's radius holds the truth for %s of trusted frames (wanted %s)",
                    filter_ev["coverage"], min_coverage)
    return lik.to_dict(), report, [r for r in records if r["in_map"]]


def _fly_all(engine, cases, chain, lik, desc: str, progress: bool) -> list[dict]:
    """The records of every flight of ``cases`` flown with ``chain`` and the likelihood ``lik``, under a bar."""
    from common.progress import progress_bar
    from export.calibration_flights import fly

    total = sum(len(fl.frames) for _, fls in cases for fl in fls)
    with progress_bar(desc=desc, total=total, unit="frame", enabled=progress) as bar:
        return [r for cdb, fls in cases for fl in fls
                for r in fly(engine, cdb, fl, chain, likelihood=lik, fix_r95_scale=1.0, bar=bar)]
