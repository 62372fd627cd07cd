"""A verified track's chain of odometry (runtime.localisation.track): bland frames (too few features) are coasted
through by the filter's velocity for ``coast_s`` and the fix stays trusted with a growing radius; a
picture that jumps breaks the chain at once; past the limit the filter's own rule applies again."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.localisation.config import LocalizerConfig
from runtime.localisation.likelihood import Likelihood
from runtime.localisation.map_filter import MapFilterConfig
from runtime.localisation.odometry import Motion
from runtime.localisation.track import MapTrack
from runtime.search.searcher import Searcher
from tests.mapdb import frame_embedding, grid_database, track_step
from tiles.db import TileDatabase

X0, Y0, V = 500300.0, 5199500.0, 10.0  # start, and metres east per frame


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return TileDatabase.open(grid_database(tmp_path_factory.mktemp("chain") / "db"))


def _fly(db, failures: dict, coast_s: float, frames: int = 16, registered_off=(0.0, 0.0), compass=True,
         dt: float = 1.0, fix_r95_scale: float = 1.0):
    """A drone flying east at 10 m/frame; the track verified by 'registration' on frame 5 (set as a
    registration would); from frame 8 the odometry fails as ``failures`` says ({frame: Motion})."""
    cfg = LocalizerConfig(map_filter=MapFilterConfig(independent_frac=0.0), coast_s=coast_s,
                          map_sigma_m=0.0)
    track = MapTrack(db, Likelihood(temperature=0.1, offset=0.2), cfg, verify=True,  # as with a registrar
                     fix_r95_scale=fix_r95_scale)
    searcher = Searcher(db)
    rng = np.random.default_rng(0)
    out = []
    for i in range(frames):
        x = X0 + V * i
        motion = failures.get(i, Motion(True, V, 0.0, 0.0, 1.0, 50, 60, 1.0))
        q = frame_embedding(db, x, Y0, 1.0, rng)
        fix = track_step(track, searcher, float(i) * dt, q, motion=motion, compass=compass)
        if i == 5:  # set as a 3 m registration would
            track.verified = np.array([x + registered_off[0], Y0 + registered_off[1]])
            track.chain_ok, track.coasting, track.verified_var = True, False, 3.0**2
        out.append(fix)
    return out


def test_coasting_lasts_seconds_of_the_flight_whatever_the_frame_rate(db):
    """``coast_s`` counts the flight's clock from the keyframe the odometry last carried the track: at 2 frames
    a second 2 s are four bland frames (a count of frames coasted a 1 frame/s replay 10 s, the service 2 s)."""
    bland = {i: Motion(False, reason="too few features (3, 2)", bland=True) for i in range(8, 14)}
    fixes = _fly(db, bland, coast_s=2.0, dt=0.5)
    assert all(f.trusted for f in fixes[8:12]), [f.reason for f in fixes[8:12]]
    assert not any(f.trusted for f in fixes[12:14])
    slow = _fly(db, bland, coast_s=2.0, dt=1.0)
    assert all(f.trusted for f in slow[8:10]) and not any(f.trusted for f in slow[10:14])


def test_bland_frames_coast_a_verified_track(db):
    bland = {i: Motion(False, reason="too few features (3, 2)", bland=True) for i in range(8, 12)}
    fixes = _fly(db, bland, coast_s=10)
    assert fixes[7].trusted
    assert all(f.trusted for f in fixes[8:12]), [f.reason for f in fixes[8:12]]
    assert fixes[11].r95_m > fixes[7].r95_m  # the radius grows while coasting
    no_coast = _fly(db, bland, coast_s=0)
    assert not any(f.trusted for f in no_coast[8:12])
    assert all("no ground motion" in f.reason for f in no_coast[8:12])


def test_a_jump_breaks_the_chain_and_the_coast_is_bounded(db):
    jump = {8: Motion(False, reason="too few matches (2)", jump=True)}
    fixes = _fly(db, jump, coast_s=10)
    assert not fixes[8].trusted and "no ground motion" in fixes[8].reason
    bland = {i: Motion(False, reason="too few features (3, 2)", bland=True) for i in range(8, 14)}
    fixes = _fly(db, bland, coast_s=3)
    assert [f.trusted for f in fixes[8:14]] == [True] * 3 + [False] * 3


def test_the_fix_is_the_registered_point_carried_by_the_odometry(db):
    """Not the filter's grid mean: its cells are a quarter stride wide (12.5 m here) and a sharp measurement
    pulls the mean towards a cell centre; the registered point moved by the odometry keeps the metres."""
    fixes = _fly(db, {}, coast_s=10)
    for i in range(6, 16):  # verified at X0 + 50 on frame 5, then 10 m east per frame of odometry
        assert fixes[i].trusted
        assert (fixes[i].x, fixes[i].y) == pytest.approx((X0 + V * i, Y0), abs=1e-6)


def test_a_registered_point_the_filter_disagrees_with_is_not_trusted(db):
    """A registration 60 m off (a 150 m frame's peak on a look-alike field edge) verifies the track (within a
    footprint of the mode) but does not move the fix: the filter's mean stays, within a cell of the truth.
    Which of the two is off is not known: the radius covers the registered point too, and the fix is not
    trusted (before, it was: a look-alike registration 163 m off made a held-out flight's fixes 27-41 m
    off for ten frames)."""
    fixes = _fly(db, {}, coast_s=10, registered_off=(0.0, 60.0))
    for i in range(6, 16):
        assert not fixes[i].trusted and "disagree by 6" in fixes[i].reason, fixes[i].reason
        assert abs(fixes[i].y - Y0) < 12.5 and abs(fixes[i].x - (X0 + V * i)) < 12.5
        assert fixes[i].r95_m > 60.0


def test_the_registered_track_reports_its_own_growing_radius(db):
    """The registration's variance grown by each odometry step (its residual sigma, 1 m here, and 2 % of the
    distance for the altitude's scale): not the grid's spread, which cannot be below a cell's."""
    from runtime.localisation.geo import R95_PER_SIGMA
    from runtime.localisation.track import ODOMETRY_SCALE_SIGMA

    fixes = _fly(db, {}, coast_s=10)
    for n, f in enumerate(fixes[6:16], start=1):
        var = 3.0**2 + n * (1.0**2 + (ODOMETRY_SCALE_SIGMA * V) ** 2)
        assert f.r95_m == pytest.approx(R95_PER_SIGMA * math.sqrt(var))
        assert f.accuracy_m == pytest.approx(f.r95_m / 2.45) and f.cov_xy[0] == pytest.approx(var)


def test_the_calibrated_scale_applies_to_the_registered_tracks_radius_only(db):
    """The export fits the radius's scale on calibration flights whose trusted fixes are all the registered
    track's: the filter's own posterior (before a registration, or once the odometry broke the chain)
    reports its radius as it is (measured: 10 deg of attitude noise, the filter's fixes 26-34 m off reported
    within 25 m scaled, 45 m as they are)."""
    plain, scaled = _fly(db, {}, coast_s=10), _fly(db, {}, coast_s=10, fix_r95_scale=0.5)
    for a, b in zip(plain, scaled):
        assert (a.x, a.y, a.trusted) == (b.x, b.y, b.trusted)  # the scale changes the radius, not the track
    for i in range(5):  # the filter's posterior, before the registration
        assert scaled[i].r95_m == pytest.approx(plain[i].r95_m) and scaled[i].cov_xy == plain[i].cov_xy
    for i in range(6, 16):  # the registered track
        assert scaled[i].r95_m == pytest.approx(0.5 * plain[i].r95_m)
        assert scaled[i].accuracy_m == pytest.approx(0.5 * plain[i].accuracy_m)
        assert scaled[i].cov_xy[0] == pytest.approx(0.25 * plain[i].cov_xy[0])


def test_without_a_compass_the_fix_is_the_filter_mean(db):
    """The odometry is then turned by a tracked heading whose drift moves the carried point sideways."""
    with_compass = _fly(db, {}, coast_s=10, registered_off=(0.0, 8.0))
    tracked = _fly(db, {}, coast_s=10, registered_off=(0.0, 8.0), compass=False)
    for a, b in zip(with_compass[6:], tracked[6:]):
        assert a.trusted and b.trusted
        assert a.y == pytest.approx(Y0 + 8.0) and b.y != pytest.approx(Y0 + 8.0, abs=0.5)


def test_a_registration_that_conflicts_with_the_track_widens_its_radius(db):
    """Agreeing registrations are fused (the map's georeferencing stays: both share it); one 24 m off a track
    whose spreads allow ~8 m (a demo flight at 200 m) moves the fix and its distance enters the variance."""
    fusion = MapTrack(db, Likelihood(temperature=0.1, offset=0.2), LocalizerConfig(map_sigma_m=4.0), verify=True)
    fusion.chain_ok = True
    fusion._register_point(np.array([0.0, 0.0]), 3.0**2)
    assert fusion.verified_var == pytest.approx(9.0 + 16.0)
    fusion._register_point(np.array([3.0, 0.0]), 3.0**2)  # agrees: fused half way, noise variance halved
    assert fusion.verified[0] == pytest.approx(1.5) and fusion.verified_var == pytest.approx(4.5 + 16.0)
    fusion._register_point(np.array([25.5, 0.0]), 3.0**2)  # 24 m off: a conflict
    assert fusion.verified[0] == pytest.approx(25.5)
    r95 = math.sqrt(-2 * math.log(0.05) * fusion.verified_var)
    assert r95 > 24.0  # the radius covers the track the registration disagrees with


def _registered(track, searcher, t: float, q, motion, x: float, y: float):
    """One frame as the Localizer runs it with a verified 3 m registration at (x, y)."""
    from types import SimpleNamespace

    track.predict(t, 0, motion)
    rows = track.rows_to_score()
    track.update(rows, searcher.score_layer(q, 0) if rows is None else searcher.score_rows(q, rows))
    reg = SimpleNamespace(ok=True, x=x, y=y, sigma_m=3.0, heading_deg=math.nan)
    track.register(reg)
    return track.fix(t, reg, True)[0]


def test_a_registration_the_drifted_track_disagrees_with_moves_the_filter_once_confirmed(db):
    """The odometry 40 % long (a height far off): the filter and the registered track drift together, 40 m
    past the truth after ten frames. A registration at the truth moves the registered track, its radius
    covering the track it disagrees with, and untrusts the fix (which one is off is not known); the next
    registration that agrees with it confirms it, and the filter follows (before: the filter's mean stayed
    40 m off with a radius of a few metres, a confident wrong fix)."""
    cfg = LocalizerConfig(map_filter=MapFilterConfig(independent_frac=0.0), map_sigma_m=0.0)
    track = MapTrack(db, Likelihood(temperature=0.1, offset=0.2), cfg, verify=True)
    searcher, rng = Searcher(db), np.random.default_rng(0)
    motion = Motion(True, 1.4 * V, 0.0, 0.0, 1.0, 50, 60, 1.0)
    for i in range(17):
        x = X0 + V * i
        q = frame_embedding(db, x, Y0, 1.0, rng)
        if i < 15:
            fix = track_step(track, searcher, float(i), q, motion=motion)
        else:
            fix = _registered(track, searcher, float(i), q, motion, x, Y0)
        if i == 5:  # set as a 3 m registration would
            track.verified = np.array([x, Y0])
            track.chain_ok, track.coasting, track.verified_var = True, False, 3.0**2
        if i == 14:
            assert fix.trusted and fix.x - x > 30.0  # drifted with the odometry
        if i == 15:
            assert not fix.trusted and "disagree" in fix.reason
            assert fix.r95_m > math.hypot(fix.x - x, fix.y - Y0)  # its radius holds the truth
            assert abs(track.verified[0] - x) < 5.0 and track.disputed_var > 0.0
    assert fix.trusted and abs(fix.x - (X0 + V * 16)) < 5.0 and abs(fix.y - Y0) < 5.0
    assert track.disputed_var == 0.0 and fix.r95_m < 20.0
    est = track.filter.estimate()
    assert abs(est.x - (X0 + V * 16)) < 12.5  # the filter's mean moved with it


def test_a_look_alike_registration_inside_a_wide_gate_does_not_confirm(db):
    """A track carried 2 km since its registration with a height 3 m uncertain at 300 m (1 %: 20 m) lets a
    registration 56 m off into its gate (a held-out flight's look-alike at 300 m, 52 m from the truth): it
    moves the registered track, keeps the disagreement in the variance and does not move the filter."""
    track = MapTrack(db, Likelihood(temperature=0.1, offset=0.2), LocalizerConfig(map_sigma_m=4.0), verify=True)
    track.chain_ok = True
    track._register_point(np.array([0.0, 0.0]), 3.0**2)
    track.verified_var += 100.0  # the odometry's steps over 2 km
    track.carried_m, track.scale_sigma = np.array([2000.0, 0.0]), 0.01
    track.moved_var = 50 * (0.02 * 40.0) ** 2  # fifty 40 m steps, each 2 % uncertain
    assert not track._register_point(np.array([40.0, 39.0]), 3.5**2)  # within the gate, not confirmed
    assert track.verified == pytest.approx([40.0, 39.0], abs=2.0)  # the registration's precision wins
    d2 = 40.0**2 + 39.0**2
    assert track.disputed_var > 0.4 * d2 and math.sqrt(track.verified_var) > 35.0
    assert track._register_point(track.verified + 2.0, 3.0**2)  # the next one agrees: confirmed
    assert track.disputed_var == 0.0 and math.sqrt(track.verified_var) < 6.0


def test_the_odometry_residuals_do_not_widen_what_confirms(db):
    """Ten frames of a wobbling camera at 150 m grow the track's variance by its odometry's fit residuals
    (about 14 m a side); a look-alike 38 m off (a held-out flight's, 6 m claimed) must not confirm it: the
    gate is the two registrations' own noise and 2 % of each of the ten 40 m steps between them."""
    track = MapTrack(db, Likelihood(temperature=0.1, offset=0.2), LocalizerConfig(map_sigma_m=4.0), verify=True)
    track.chain_ok = True
    track._register_point(np.array([0.0, 0.0]), 7.5**2)
    track.verified_var += 190.0
    track.moved_var = 10 * (0.02 * 40.0) ** 2
    assert not track._register_point(np.array([27.0, 27.0]), 6.1**2)
    assert track.disputed_var > 300.0
    track.moved_var = (0.02 * 40.0) ** 2
    assert track._register_point(track.verified + np.array([5.0, -4.0]), 6.0**2)  # a second one agrees


def test_a_registration_that_confirms_the_track_before_a_look_alike_settles_it(db):
    """A confirmed track; a look-alike registration 75 m off (3/4 of a footprint) moves the registered track
    and untrusts the fix; the next registration confirms the track as it was before the look-alike (carried
    by the odometry): the dispute is settled, the track restarts at the two's fusion, trusted (before: fused
    with the look-alike's track, it kept a radius of most of the distance to the look-alike: 180 m for the
    rest of a held-out flight whose fixes were 5 m off)."""
    cfg = LocalizerConfig(map_filter=MapFilterConfig(independent_frac=0.0), map_sigma_m=4.0)
    track = MapTrack(db, Likelihood(temperature=0.1, offset=0.2), cfg, verify=True)
    searcher, rng = Searcher(db), np.random.default_rng(0)
    motion = Motion(True, V, 0.0, 0.0, 1.0, 50, 60, 1.0)
    for i in range(14):
        x = X0 + V * i
        q = frame_embedding(db, x, Y0, 1.0, rng)
        if i in (5, 6, 12):
            fix = _registered(track, searcher, float(i), q, motion, x, Y0)
        elif i == 10:
            fix = _registered(track, searcher, float(i), q, motion, x, Y0 + 75.0)
        else:
            fix = track_step(track, searcher, float(i), q, motion=motion)
        if i == 9:
            assert fix.trusted and fix.r95_m < 20.0
        if i == 11:
            assert not fix.trusted and "disagree" in fix.reason and track.disputed_var > 0.0
    assert fix.trusted, fix.reason
    assert track.disputed_var == 0.0 and fix.r95_m < 20.0
    assert math.hypot(fix.x - (X0 + V * 13), fix.y - Y0) < 5.0


def test_only_a_registration_that_confirms_the_rival_settles_a_dispute(db):
    """The rival (the track before the disputing registration) is settled only by the gate that confirms a
    track: two registrations' own noise and 2 % of each step. One 25 m from it, inside the map filter's
    cell-wide agreement at 300 m (43 m), does not settle it."""
    def disputed():
        track = MapTrack(db, Likelihood(temperature=0.1, offset=0.2), LocalizerConfig(map_sigma_m=4.0), verify=True)
        track.chain_ok = True
        track._register_point(np.array([0.0, 0.0]), 3.0**2)
        assert track._register_point(np.array([2.0, 1.0]), 3.0**2)  # confirmed
        assert not track._register_point(np.array([60.0, 0.0]), 3.0**2)  # a look-alike: disputed
        assert track.disputed_var > 0.0 and track.rival is not None
        return track
    track = disputed()
    assert not track._register_point(np.array([25.0, 0.0]), 3.0**2)
    assert track.disputed_var > 0.0
    track = disputed()
    assert track._register_point(np.array([0.0, -2.0]), 3.0**2)  # agrees with the track before the look-alike
    assert track.disputed_var == 0.0 and track.rival is None
    assert np.hypot(*track.verified) < 3.0 and math.sqrt(track.verified_var) < 6.0


def _doubted_by_retrieval(db, registered_at: tuple[int, ...]) -> list:
    """Flying east, 'registered' on the frames ``registered_at`` (3 m, at the truth), then frames that
    match nothing on the map (retrieval's doubt: possibly off it)."""
    cfg = LocalizerConfig(map_filter=MapFilterConfig(independent_frac=0.0), map_sigma_m=0.0)
    track = MapTrack(db, Likelihood(temperature=0.1, offset=0.2), cfg, verify=True)
    searcher, rng = Searcher(db), np.random.default_rng(0)
    motion = Motion(True, V, 0.0, 0.0, 1.0, 50, 60, 1.0)
    fixes = []
    for i in range(24):
        x = X0 + V * i
        if i < 8:
            q = frame_embedding(db, x, Y0, 1.0, rng)
        else:
            q = rng.normal(size=db.embedding_dim).astype(np.float32)
            q /= np.linalg.norm(q)
        if i in registered_at:
            fixes.append(_registered(track, searcher, float(i), q, motion, x, Y0))
        else:
            fixes.append(track_step(track, searcher, float(i), q, motion=motion))
    return fixes


def test_retrievals_doubt_is_overruled_only_by_a_confirmed_track(db):
    """Frames that match nothing make the filter doubt it is on the map. A registered track carried by the
    odometry overrules that doubt once a second registration confirmed it; a single registration does not,
    for it may be a look-alike (a weave at 150 m over 2020: a first registration 69 m off, agreed over three
    frames, was trusted against that doubt for 9 frames)."""
    confirmed = _doubted_by_retrieval(db, (6, 7))
    single = _doubted_by_retrieval(db, (7,))
    doubted = [i for i, f in enumerate(single) if not f.trusted and "off the map" in f.reason]
    overruled = [i for i in doubted if confirmed[i].trusted]  # (once the posterior spreads, neither is)
    assert overruled, ([f.reason for f in single], [f.reason for f in confirmed])
    assert all(c.trusted or not s.trusted for s, c in zip(single, confirmed))
