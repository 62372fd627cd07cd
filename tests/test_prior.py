"""A position known at the start (`--prior-lat/--prior-lon/--prior-sigma-m`: the last GPS fix before it was
lost): the map filter starts there instead of anywhere; off the map it says so and starts anywhere.
Real engine and tile database (NAIP 2020); the measured effect on flights is in docs/results/localizer.md."""

from __future__ import annotations

import logging
import math

import pytest

from runtime.localisation.geo import latlon_at, xy_at
from runtime.localisation.localizer import Localizer, LocalizerConfig, Telemetry
from tools.toy_assets import flight_crops, tiny_assets


@pytest.fixture(scope="module")
def parts():
    from runtime.engines.engine import load_engine
    from tiles.db import TileDatabase

    a = tiny_assets()
    engine = load_engine(a["bundle"], precision="fp32")
    yield engine, TileDatabase.open(a["db"])
    engine.close()


def _first_fix(parts, **prior):
    engine, db = parts
    loc = Localizer(engine, db, LocalizerConfig(hfov_deg=60.0, **prior))
    img = flight_crops(tiny_assets()["raster"], n_frames=1)[0][0]
    res = loc.locate(img, Telemetry(t=0.0, altitude_m=float(db.layers[0]["altitude_m"]), heading_deg=0.0))
    return loc, res.fix


def test_xy_at_inverts_latlon_at(parts):
    engine, db = parts
    loc = Localizer(engine, db, LocalizerConfig(hfov_deg=60.0))
    grid = loc.track._filter_for(0).grid
    for f in (0.2, 0.5, 0.8):
        x = float(grid.x.min() + f * (grid.x.max() - grid.x.min()))
        y = float(grid.y.min() + (1 - f) * (grid.y.max() - grid.y.min()))
        lat, lon = latlon_at(db, grid, x, y)
        assert math.hypot(*(a - b for a, b in zip(xy_at(db, grid, lat, lon), (x, y)))) < 0.5


def test_the_filter_starts_at_the_prior(parts):
    engine, db = parts
    loc, _ = _first_fix(parts)
    grid = loc.track.filter.grid
    x = float(grid.x.min() + 0.3 * (grid.x.max() - grid.x.min()))
    y = float(grid.y.min() + 0.6 * (grid.y.max() - grid.y.min()))
    lat, lon = latlon_at(db, grid, x, y)
    _, anywhere = _first_fix(parts)
    _, started = _first_fix(parts, prior_lat=lat, prior_lon=lon, prior_sigma_m=40.0)
    assert not started.trusted  # a prior is never a fix: registration still has to verify the place
    assert math.hypot(started.x - x, started.y - y) < 2 * 40.0 + loc.track.filter.cell_m
    assert started.r95_m < 0.5 * anywhere.r95_m


def test_a_prior_off_the_map_says_so_and_starts_anywhere(parts, caplog):
    caplog.set_level(logging.WARNING, logger="runtime.localisation.track")
    _, anywhere = _first_fix(parts)
    _, off = _first_fix(parts, prior_lat=48.5, prior_lon=-97.0, prior_sigma_m=100.0)  # ~150 km away
    assert any("lies" in r.getMessage() and "starting anywhere on the map" in r.getMessage() for r in caplog.records)
    assert off.r95_m == pytest.approx(anywhere.r95_m, rel=1e-6)


@pytest.mark.parametrize("kw, message", [
    ({"prior_lat": 47.0}, "give both"),
    ({"prior_lat": 95.0, "prior_lon": -99.0}, "--prior-lat"),
    ({"prior_lat": 47.0, "prior_lon": -190.0}, "--prior-lon"),
    ({"prior_lat": 47.0, "prior_lon": -99.0, "prior_sigma_m": 0.0}, "prior-sigma-m"),
])
def test_bad_priors_are_refused_by_name(kw, message):
    with pytest.raises(ValueError, match=message):
        LocalizerConfig(**kw)
