"""Calibrate the accuracy the Localizer reports with its fixes, on flights through the Localizer itself.

The 95 % radius of a fix (``Fix.r95_m``; ``accuracy_m`` = r95 / 2.45 is what GPS_INPUT and NMEA carry)
comes from the map filter's posterior, a grid of cells a quarter of the tile stride wide. Once
registration to the map imagery has verified the track, the true error is much smaller than that grid
(metres against tens of metres): the radius is honest but over-cautious, and an autopilot weighs the fix
less than it deserves (PX4 refuses a GPS whose accuracy is above ``EKF2_REQ_EPH``).

So after the likelihood (:mod:`export.calibrate_likelihood`), the calibration flights flown through the
:class:`runtime.localisation.localizer.Localizer` with that likelihood, exactly as the service runs (odometry,
filter, registration when the database carries the map imagery), with the reported radius unscaled, give
the ratios error / r95 of their trusted fixes, and from them ``r95_scale`` (:func:`fit_fix_scale`, each
flight weighing the same), so that the reported radius holds the truth for 95 % of trusted fixes: at the
nominal level, not above it. It is stored in the manifest's ``"likelihood"`` as ``"fix_accuracy"`` together
with whether registration was on; the Localizer applies it only under that same condition (a scale fitted
with registration is too small for fixes without it), and 1 otherwise.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

MIN_TRUSTED = 20  # fewer trusted fixes than this on the calibration flights: keep the posterior's radius
SCALE_RANGE = (0.25, 4.0)


def fit_fix_scale(flights, *, level: float = 0.95, min_trusted: int = MIN_TRUSTED) -> tuple[float, str]:
    """(r95 scale, why) from the trusted fixes' error / r95 ratios, one list per calibration flight.

    The scale is the ``level`` quantile of the ratios pooled over the flights, each flight weighing the same
    (a long flight is not more evidence about the next flight than a short one): the radius then holds the
    truth for ``level`` of the calibration flights' fixes, at that level and not above it (a radius that
    holds the truth every time is one the autopilot weighs less than the fix deserves)."""
    per = [np.asarray([v for v in f if v is not None and math.isfinite(v)], float) for f in flights]
    per = [f for f in per if len(f)]
    n = sum(len(f) for f in per)
    if n < min_trusted:
        return 1.0, f"only {n} trusted fixes on the calibration flights (needs {min_trusted}): radius kept"
    q = weighted_quantile(per, level)
    scale = float(np.clip(q, *SCALE_RANGE))
    return scale, (f"{n} trusted fixes in {len(per)} flights; error / r95 per flight (median, 95th percentile): "
                   f"{[(round(float(np.median(f)), 3), round(float(np.quantile(f, 0.95)), 3)) for f in per]}; "
                   f"scale {scale:.3f}, the {level:.0%} quantile with each flight weighing the same")


def weighted_quantile(per_flight: list[np.ndarray], level: float) -> float:
    """The ``level`` quantile of the values of every flight pooled, each flight's values weighing 1 in all."""
    v = np.concatenate(per_flight)
    w = np.concatenate([np.full(len(f), 1.0 / len(f)) for f in per_flight])
    order = np.argsort(v)
    cum = np.cumsum(w[order]) / w.sum()
    return float(v[order][min(int(np.searchsorted(cum, level)), len(v) - 1)])


def fix_accuracy(records: list[dict], registration: bool) -> dict:
    """The manifest's ``fix_accuracy`` record from calibration flights flown through the Localizer with the
    reported radius unscaled (``records``: :func:`export.calibration_flights.fly`'s, over the map)."""
    flights: dict[str, list[float]] = {}
    wrong = 0
    for rec in records:
        ratios = flights.setdefault(rec["flight"], [])
        if rec["trusted"] and rec["error_m"] is not None and rec.get("r95_m"):
            ratios.append(rec["error_m"] / rec["r95_m"])
            wrong += rec["error_m"] > (rec.get("footprint_m") or math.inf)
    scale, why = fit_fix_scale(list(flights.values()))
    pooled = [r for f in flights.values() for r in f]
    inside = float(np.mean(np.asarray(pooled) <= 1.0)) if pooled else None
    out = {"r95_scale": scale, "registration": bool(registration), "frames": len(records), "trusted": len(pooled),
           "wrong_trusted": int(wrong), "coverage_unscaled": inside, "note": why,
           "ratios": {k: [round(float(v), 4) for v in f] for k, f in flights.items() if f}}
    log.info("fix accuracy calibrated: %s", {k: v for k, v in out.items() if k != "ratios"})
    return out
