"""The reported accuracy of fixes is calibrated on flights through the Localizer, and applied only where it
was fitted: the scale's statistics, its use by the fusion, and the export step on a real bundle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.calibrate_accuracy import calibrate_fix_accuracy, chi2_quantile, fit_fix_scale
from runtime.search.layer_grid import Likelihood


def _rayleigh_flights(n_flights: int, sigma: float, seed: int, fixes: int = 30):
    """Flights whose fixes share one offset (drawn per flight, 2-D Gaussian) plus a little noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_flights):
        off = float(np.hypot(*rng.normal(0.0, sigma, 2)))
        out.append(list(np.abs(off + rng.normal(0.0, 0.01, fixes))))
    return out


def test_chi2_quantile_matches_tables():
    # chi-square table values (Abramowitz & Stegun 26.8): 0.10 quantile, 14 dof 7.790; 0.90, 4 dof 7.779
    assert chi2_quantile(0.10, 14) == pytest.approx(7.790, rel=0.01)
    assert chi2_quantile(0.90, 4) == pytest.approx(7.779, rel=0.01)


def test_scale_estimates_the_flights_95th_percentile():
    true_q95 = 0.3 * math.sqrt(-2 * math.log(0.05))
    few = np.array([fit_fix_scale(_rayleigh_flights(7, 0.3, s))[0] for s in range(40)])
    assert 0.85 * true_q95 <= np.median(few) <= 1.15 * true_q95  # the median estimate: right on average
    bound = np.array([fit_fix_scale(_rayleigh_flights(7, 0.3, s), confidence=0.9)[0] for s in range(40)])
    assert np.mean(bound >= true_q95) >= 0.8 and np.all(bound > few)  # a 90 % bound: rarely below the truth
    many = fit_fix_scale(_rayleigh_flights(400, 0.3, 1))[0]
    assert 0.95 * true_q95 <= many <= 1.1 * true_q95


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


def test_fusion_reports_the_scaled_radius_and_covariance(tmp_path):
    from runtime.localisation.fusion import MapFusion
    from runtime.localisation.map_filter import MapFilterConfig
    from runtime.localisation.odometry import OdometryConfig
    from runtime.search.searcher import Searcher
    from tests.mapdb import frame_embedding, grid_database
    from tiles.db import TileDatabase

    db = TileDatabase.open(grid_database(tmp_path / "db"))
    lik = Likelihood(temperature=0.1, offset=0.2)
    fixes = {}
    for k in (1.0, 0.5):
        fusion = MapFusion(db, Searcher(db), lik, filter_cfg=MapFilterConfig(independent_frac=0.0),
                           odometry_cfg=OdometryConfig(), hfov_deg=60.0, fix_r95_scale=k)
        rng = np.random.default_rng(0)
        out = []
        for i in range(8):
            q = frame_embedding(db, 500300.0, 5199500.0, 1.5, rng)
            out.append(fusion.step(float(i), None, None, q, 0, 100.0, 0.0, 5)[0])
        fixes[k] = out
    for a, b in zip(fixes[1.0], fixes[0.5]):
        assert (a.x, a.y, a.trusted) == (b.x, b.y, b.trusted)  # the scale changes the radius, not the track
        assert b.r95_m == pytest.approx(0.5 * a.r95_m) and b.accuracy_m == pytest.approx(0.5 * a.accuracy_m)
        assert b.cov_xy[0] == pytest.approx(0.25 * a.cov_xy[0])
    assert all(math.isfinite(f.r95_m) for f in fixes[1.0])


def test_export_step_flies_the_localizer_on_a_real_bundle(tiny):
    from runtime.engines.engine import load_engine
    from tiles.db import TileDatabase

    engine = load_engine(tiny["bundle"])
    try:
        db = TileDatabase.open(tiny["db"])
        rec = calibrate_fix_accuracy(engine, db, [tiny["raster"]], hfov_deg=60.0, frames=4)
    finally:
        engine.close()
    assert rec["frames"] == 4 * len(db.layers)
    from tiles.map_imagery import open_database_imagery

    assert rec["registration"] is (open_database_imagery(db) is not None)
    assert rec["trusted"] < 20 and rec["r95_scale"] == 1.0 and rec["note"].startswith("only")


def test_a_bundle_calibrated_before_is_refitted_on_the_unscaled_radius(tiny, monkeypatch):
    """Re-calibrating a bundle whose manifest already carries a scale flies the chain unscaled: a fit on
    radii already scaled would return a scale relative to the old one (1.43 then 0.78 on one bundle)."""
    import runtime.replay.geotiff as replay
    from runtime.engines.engine import load_engine
    from tiles.db import TileDatabase

    engine = load_engine(tiny["bundle"])
    from runtime.search.layer_grid import Likelihood

    lik = Likelihood.from_manifest(None).to_dict()  # the fallback's values, as if calibrated
    from tiles.map_imagery import open_database_imagery

    db = TileDatabase.open(tiny["db"])
    lik["fix_accuracy"] = {"r95_scale": 3.0, "registration": open_database_imagery(db) is not None}
    monkeypatch.setitem(engine.bundle.manifest, "likelihood", lik)
    scales, fly = [], replay.replay_flight

    def spy(loc, frames, *a, **kw):
        scales.append(loc.fusion.fix_r95_scale)
        return fly(loc, frames, *a, **kw)

    monkeypatch.setattr(replay, "replay_flight", spy)
    try:
        calibrate_fix_accuracy(engine, db, [tiny["raster"]], hfov_deg=60.0, frames=2)
    finally:
        engine.close()
    assert scales and set(scales) == {1.0}


def test_reliability_curve_of_calibrated_and_overcautious_radii():
    from runtime.replay.geotiff import RELIABILITY_LEVELS, reliability

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
