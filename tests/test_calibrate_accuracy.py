"""The reported accuracy of fixes is calibrated on flights through the Localizer, and applied only where it
was fitted: the scale's statistics, its use by the fusion, and the export step on a real bundle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.calibrate_accuracy import fit_fix_scale, fix_accuracy
from runtime.localisation.likelihood import Likelihood


def _rayleigh_flights(n_flights: int, sigma: float, seed: int, fixes: int = 30):
    """Flights whose fixes share one offset (drawn per flight, 2-D Gaussian) plus a little noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_flights):
        off = float(np.hypot(*rng.normal(0.0, sigma, 2)))
        out.append(list(np.abs(off + rng.normal(0.0, 0.01, fixes))))
    return out


def test_scale_is_the_95th_percentile_with_each_flight_weighing_the_same():
    true_q95 = 0.3 * math.sqrt(-2 * math.log(0.05))
    few = np.array([fit_fix_scale(_rayleigh_flights(7, 0.3, s))[0] for s in range(40)])
    assert 0.8 * true_q95 <= np.median(few) <= 1.2 * true_q95  # right on average
    many = fit_fix_scale(_rayleigh_flights(400, 0.3, 1))[0]
    assert 0.93 * true_q95 <= many <= 1.07 * true_q95
    # a flight of many fixes counts as one flight: 900 fixes at 0.1 do not outvote 19 flights at 1.0
    flights = [[0.1] * 900] + [[1.0] * 10 for _ in range(19)]
    assert fit_fix_scale(flights)[0] == pytest.approx(1.0)


def test_too_few_trusted_fixes_keep_the_posterior_radius():
    scale, why = fit_fix_scale([[0.2, 0.3], [0.1]])
    assert scale == 1.0 and "only 3 trusted fixes" in why


def test_the_scale_applies_only_with_the_registration_setting_it_was_fitted_with():
    man = {"likelihood": {"temperature": 0.05, "offset": 0.1,
                          "fix_accuracy": {"r95_scale": 0.6, "registration": True}}}
    assert Likelihood.fix_r95_scale(man, registration=True) == 0.6
    assert Likelihood.fix_r95_scale(man, registration=False) == 1.0
    assert Likelihood.fix_r95_scale({"likelihood": {"temperature": 0.05, "offset": 0.1}}, True) == 1.0
    assert Likelihood.fix_r95_scale(None, True) == 1.0


def test_the_filters_own_fixes_keep_their_radius_whatever_the_scale(tmp_path):
    """No registration: the fix is the map filter's posterior, which the calibration flights never trust
    (their trusted fixes are all the registered track's), so the scale fitted on them does not apply
    (tests/test_verified_chain.py: the registered track's radius is scaled)."""
    from runtime.localisation.config import LocalizerConfig
    from runtime.localisation.map_filter import MapFilterConfig
    from runtime.localisation.track import MapTrack
    from runtime.search.searcher import Searcher
    from tests.mapdb import frame_embedding, grid_database, track_step
    from tiles.db import TileDatabase

    db = TileDatabase.open(grid_database(tmp_path / "db"))
    lik = Likelihood(temperature=0.1, offset=0.2)
    fixes = {}
    for k in (1.0, 0.5):
        cfg = LocalizerConfig(map_filter=MapFilterConfig(independent_frac=0.0))
        track, searcher = MapTrack(db, lik, cfg, verify=False, fix_r95_scale=k), Searcher(db)
        rng = np.random.default_rng(0)
        out = []
        for i in range(8):
            q = frame_embedding(db, 500300.0, 5199500.0, 1.5, rng)
            out.append(track_step(track, searcher, float(i), q))
        fixes[k] = out
    for a, b in zip(fixes[1.0], fixes[0.5]):
        assert (a.x, a.y, a.trusted) == (b.x, b.y, b.trusted)
        assert (b.r95_m, b.accuracy_m, b.cov_xy) == (a.r95_m, a.accuracy_m, a.cov_xy)
    assert all(math.isfinite(f.r95_m) for f in fixes[1.0])


def test_fix_accuracy_is_fitted_per_flight_from_the_records():
    rng = np.random.default_rng(1)
    records = []
    for f in range(4):  # four flights, errors of a 2-D Gaussian of 3 m per axis, reported r95 of 20 m
        for e in np.hypot(*rng.normal(0.0, 3.0, (2, 30))):
            records.append({"flight": f"f{f}", "trusted": True, "error_m": float(e), "r95_m": 20.0,
                            "footprint_m": 170.0})
    records.append({"flight": "f0", "trusted": False, "error_m": None, "r95_m": 20.0, "footprint_m": 170.0})
    rec = fix_accuracy(records, registration=True)
    assert rec["trusted"] == 120 and rec["frames"] == 121 and rec["wrong_trusted"] == 0
    assert rec["registration"] is True and set(rec["ratios"]) == {"f0", "f1", "f2", "f3"}
    assert rec["r95_scale"] == pytest.approx(3.0 * math.sqrt(-2 * math.log(0.05)) / 20.0, rel=0.25)


def test_reliability_curve_of_calibrated_and_overcautious_radii():
    from runtime.replay.figures import RELIABILITY_LEVELS, reliability

    rng = np.random.default_rng(0)
    sigma = 4.0
    err = np.hypot(*rng.normal(0.0, sigma, (2, 4000)))
    r95 = sigma * math.sqrt(-2 * math.log(0.05))  # the true 95 % radius of that error
    recs = [{"trusted": True, "error_m": float(e), "r95_m": r95} for e in err]
    recs.append({"trusted": False, "error_m": None, "r95_m": 1.0})  # untrusted frames do not count
    cal = reliability(recs)
    assert cal["n"] == 4000 and cal["nominal_pct"] == [100 * p for p in RELIABILITY_LEVELS]
    assert np.allclose(cal["observed_pct"], cal["nominal_pct"], atol=2.5)
    wide = reliability([{**r, "r95_m": 2 * r95} for r in recs[:-1]])
    assert all(o > n + 5 for o, n in zip(wide["observed_pct"][:4], wide["nominal_pct"][:4]))  # over-cautious
    assert reliability([]) is None
