"""The calibration flies the Localizer that flies: the logistic fit, the grid of likelihood settings judged
by the chain's own fixes, the manifest, and a change to the chain's settings changing what is fitted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export.calibrate_likelihood import fit_logistic


def test_logistic_fit_recovers_the_likelihood_ratio():
    rng = np.random.default_rng(0)
    # two Gaussians of equal spread: log f1/f0 is linear with slope (m1 - m0) / s^2, zero at the midpoint
    pos, neg = rng.normal(0.4, 0.1, 4000), rng.normal(0.0, 0.1, 40000)
    a, b = fit_logistic(pos, neg)
    assert a == pytest.approx(40.0, rel=0.1) and -b / a == pytest.approx(0.2, abs=0.01)


@pytest.fixture(scope="module")
def calibrated(tiny, tmp_path_factory):
    """The thumbnail bundle (a copy) calibrated on flights over the 2020 image it is cut from."""
    from export.calibrate import calibrate_bundle

    root = tmp_path_factory.mktemp("calib")
    bundle = root / "bundle"
    shutil.copytree(tiny["bundle_thumb"], bundle)
    lik = calibrate_bundle(bundle, tiny["db_thumb"], [tiny["raster"]], hfov_deg=60.0, frames=40,
                           report_path=root / "report.json", work_dir=root / "work")
    return bundle, lik, json.loads((root / "report.json").read_text())


def test_the_bundle_is_calibrated_on_the_localizers_own_fixes(calibrated):
    from runtime.engines.bundle import read_bundle
    from runtime.localisation.likelihood import Likelihood

    bundle, lik, report = calibrated
    stored = read_bundle(bundle).manifest["likelihood"]
    assert stored == json.loads(json.dumps(lik))  # the manifest carries what was fitted
    assert Likelihood.from_manifest(read_bundle(bundle).manifest).source == "bundle"
    final = report["final"]
    assert final["wrong"] == 0 and final["offmap_trusted"] == 0 and final["trusted"] >= 8
    assert final["offmap_frames"] == final["frames"] == 40  # one flight over the map, one off it
    assert 0.0 < lik["offset"] < report["pos_median"] and 1.0 <= lik["r95_scale"] <= 4.0
    assert {(t["k"], t["clip"]) for t in report["tried"]} >= {(1.0, 2.0), (1.5, 3.0)}
    fa = lik["fix_accuracy"]
    assert fa["trusted"] == report["chain"]["trusted"] and fa["wrong_trusted"] == 0 and fa["registration"] is False
    assert lik["fitted_on"]["localizer"]["registration_tracking_s"] == 1.0  # the settings it flew with


def test_the_chain_settings_change_what_the_calibration_flies(tiny, tmp_path):
    """Without odometry the chain trusts other frames: the calibration input follows the chain's settings."""
    from export.calibration_flights import embed_flights, fly, render_flights
    from runtime.engines.engine import load_engine
    from runtime.localisation.config import LocalizerConfig
    from tiles.db import TileDatabase

    engine = load_engine(tiny["bundle_thumb"])
    db = TileDatabase.open(tiny["db_thumb"])
    flights = render_flights(db, [tiny["raster"]], hfov_deg=60.0, frames=12)
    out = {}
    for odometry in (True, False):
        cfg = LocalizerConfig(odometry=odometry)
        fl = embed_flights(engine, db, cfg, flights)[0]
        out[odometry] = [(r["trusted"], r["odometry_ok"]) for r in fly(engine, db, fl, cfg)]
    engine.close()
    assert any(ok for _, ok in out[True]) and not any(ok for _, ok in out[False])
    assert out[True] != out[False]


def test_recalibrating_a_calibrated_bundle_fits_the_same_scales(calibrated, tiny, tmp_path):
    """The chain is flown with the reported radius unscaled: a fit on radii the bundle already scales would
    return a scale relative to the old one (1.43 then 0.78 on one bundle, before this was so)."""
    from export.calibrate import calibrate_bundle

    bundle, lik, _ = calibrated
    again = calibrate_bundle(bundle, tiny["db_thumb"], [tiny["raster"]], hfov_deg=60.0, frames=40,
                             work_dir=tmp_path / "work")
    assert again["fix_accuracy"]["r95_scale"] == pytest.approx(lik["fix_accuracy"]["r95_scale"])
    assert (again["temperature"], again["offset"], again["clip"]) == (lik["temperature"], lik["offset"], lik["clip"])
