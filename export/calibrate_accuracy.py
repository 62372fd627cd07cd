"""Calibrate the accuracy the Localizer reports with its fixes, on flights through the Localizer itself.

The 95 % radius of a fix (``Fix.r95_m``; ``accuracy_m`` = r95 / 2.45 is what GPS_INPUT and NMEA carry)
comes from the map filter's posterior, a grid of cells a quarter of the tile stride wide. Once
registration to the map imagery has verified the track, the true error is much smaller than that grid
(metres against tens of metres): the radius is honest but over-cautious, and an autopilot weighs the fix
less than it deserves (PX4 refuses a GPS whose accuracy is above ``EKF2_REQ_EPH``).

So after the likelihood (:mod:`export.calibrate_likelihood`), the calibration flights are flown through
the :class:`runtime.localisation.localizer.Localizer` with that likelihood, exactly as the service runs (odometry,
filter, registration when the database carries the map imagery), and the ratio error / r95 of their
trusted fixes gives ``r95_scale`` (:func:`fit_fix_scale`, the flight being the independent unit), so that
the reported radius holds the truth for about 95 % of trusted fixes. It is stored in the manifest's ``"likelihood"`` as ``"fix_accuracy"`` together
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


def fit_fix_scale(flights, *, confidence: float = 0.5, min_trusted: int = MIN_TRUSTED) -> tuple[float, str]:
    """(r95 scale, why) from the trusted fixes' error / r95 ratios, one list per calibration flight.

    A flight's errors share one cause (that year's look, its georeferencing against the map's), so the
    independent unit is the flight, not the fix: each flight gives the 95th percentile of its ratios, r_i,
    taken as the radius of a 2-D Gaussian error (Rayleigh) of scale sigma across flights; the scale is the
    95 % radius 2.45 sigma, sigma estimated at ``confidence`` (sum r_i^2 / sigma^2 is chi-square with 2n
    degrees of freedom; 0.5: the median estimate, calibrated on average; 0.9: an upper bound, cautious).
    Measured: the plain 95th percentile of the pooled fixes of 3 calibration years (0.65) covered 83 % on
    two held-out years, the median estimate over flights 100 %, the 90 % bound 100 % with a wider radius."""
    per = [np.asarray([v for v in f if v is not None and math.isfinite(v)], float) for f in flights]
    per = [f for f in per if len(f)]
    n = sum(len(f) for f in per)
    if n < min_trusted:
        return 1.0, f"only {n} trusted fixes on the calibration flights (needs {min_trusted}): radius kept"
    r = np.array([np.quantile(f, 0.95) for f in per])
    dof = 2 * len(r)
    sigma = math.sqrt(float(np.sum(r**2)) / chi2_quantile(1.0 - confidence, dof))
    scale = float(np.clip(sigma * math.sqrt(-2.0 * math.log(0.05)), *SCALE_RANGE))
    return scale, (f"{n} trusted fixes in {len(r)} flights, per-flight 95th percentiles of error / r95 "
                   f"{np.round(r, 3).tolist()}: scale {scale:.3f} (sigma at confidence {confidence:g})")


def chi2_quantile(p: float, dof: int) -> float:
    """Quantile ``p`` of chi-square with ``dof`` degrees of freedom (Wilson-Hilferty; within 1 % for dof >= 4)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    a = 2.0 / (9.0 * dof)
    return dof * max(1e-6, 1.0 - a + z * math.sqrt(a)) ** 3


def calibrate_fix_accuracy(engine, db, rasters, *, hfov_deg: float, frames: int = 40) -> dict:
    """Fly the calibration flights through the Localizer (``engine.bundle`` carries the fitted likelihood)
    and return the manifest's ``fix_accuracy`` record."""
    from export.calibrate_likelihood import calibration_flights
    from runtime.localisation.localizer import Localizer, LocalizerConfig
    from runtime.replay.geotiff import replay_flight

    loc = Localizer(engine, db, LocalizerConfig(hfov_deg=hfov_deg))
    registration = bool(loc.fusion is not None and loc.fusion.registrar is not None)
    if loc.fusion is not None:  # the fit is of the radius unscaled: a bundle calibrated before is not scaled twice
        loc.fusion.fix_r95_scale = 1.0
    flights, n_frames, wrong = {}, 0, 0
    for name, frames_iter in calibration_flights(db, rasters, hfov_deg=hfov_deg, frames=frames):
        loc.reset()
        ratios = flights.setdefault(name, [])
        for rec in replay_flight(loc, frames_iter):
            n_frames += 1
            if rec["trusted"] and rec["error_m"] is not None and rec.get("r95_m"):
                ratios.append(rec["error_m"] / rec["r95_m"])
                wrong += rec["error_m"] > (rec.get("footprint_m") or math.inf)
        log.info("accuracy calibration flight %s: %d trusted", name, len(ratios))
    scale, why = fit_fix_scale(list(flights.values()))
    pooled = [r for f in flights.values() for r in f]
    inside = float(np.mean(np.asarray(pooled) <= 1.0)) if pooled else None
    out = {"r95_scale": scale, "registration": registration, "frames": n_frames, "trusted": len(pooled),
           "wrong_trusted": int(wrong), "coverage_unscaled": inside, "note": why,
           "ratios": {k: [round(float(v), 4) for v in f] for k, f in flights.items() if f}}
    log.info("fix accuracy calibrated: %s", out)
    return out
