"""A drone without a compass: the odometry carries registration's heading, the motion between registrations
settles registration's half-turn ambiguity, and without a heading the odometry never moves the filter the
wrong way. Real NAIP views (tiles.views), the real odometry and registration; a synthetic tile database for
the filter; the tiny random-weight bundle for the retrieval's rotation search."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from runtime.localisation.heading_track import HeadingTrackConfig, HeadingTracker, turn, undirected, wrap180
from runtime.localisation.odometry import Motion

HFOV = 60.0


def _reg(x, y, heading):
    return SimpleNamespace(ok=True, x=x, y=y, heading_deg=heading)


def _forward(step_m=40.0, dyaw=0.0, sigma=1.0):
    """The odometry of a drone flying towards its image top: displacement along the previous frame's up."""
    return Motion(True, 0.0, step_m, dyaw, 1.0, 100, 120, sigma, 1.0, "ok")


def test_half_turn_of_registration_is_settled_by_the_motion():
    """Registrations report the heading a half turn off (210 for 30): the registered displacement along the
    odometry's path says which, and the tracked heading follows the odometry's turns afterwards."""
    tr = HeadingTracker(HeadingTrackConfig(min_pairs=1))
    true_h, pos = 30.0, np.array([1000.0, 2000.0])
    assert tr.measure(0.0, _reg(*pos, true_h + 180.0)) == "pending" and not tr.known
    for _ in range(3):
        m = tr.predict(_forward(), 1.0)
        assert (m.dx_e_m, m.dy_n_m) == (0.0, 0.0) and m.sigma_m >= 40.0  # no heading: no direction
        pos = pos + turn(0.0, 40.0, true_h)
    assert tr.measure(3.0, _reg(*pos, true_h + 180.0 + 1.0)) == "locked"
    assert abs(wrap180(tr.heading - true_h)) < 1.0
    m = tr.predict(_forward(dyaw=5.0), 1.0)  # now the odometry moves east/north along the heading
    assert math.hypot(m.dx_e_m - turn(0, 40, true_h)[0], m.dy_n_m - turn(0, 40, true_h)[1]) < 1.0
    assert abs(wrap180(tr.heading - (true_h + 5.0))) < 1.0
    assert tr.search_tol_deg() < 90  # registration now searches near it: no half turn within reach


def test_a_pending_registration_predicts_where_to_register_under_each_half_turn():
    """One registration (heading a half turn off) and the odometry since: one of the two hypotheses is where
    the drone is, facing where it faces; registering there locks the heading."""
    tr = HeadingTracker(HeadingTrackConfig(min_pairs=1))
    true_h, pos = 250.0, np.array([0.0, 0.0])
    assert tr.hypotheses() == []
    tr.measure(0.0, _reg(*pos, true_h - 180.0))
    for _ in range(4):
        tr.predict(_forward(50.0, dyaw=-3.0), 1.0)
        pos = pos + turn(0.0, 50.0, true_h)
        true_h -= 3.0
    hyps = tr.hypotheses()
    assert len(hyps) == 2
    near = [h for h in hyps if math.hypot(h[0] - pos[0], h[1] - pos[1]) < 30.0]
    assert len(near) == 1 and abs(wrap180(near[0][2] - true_h)) < 1.0
    assert tr.measure(4.0, _reg(*pos, true_h)) == "locked" and abs(wrap180(tr.heading - true_h)) < 1.0
    assert tr.hypotheses() == []  # known: nothing to try


def test_a_registration_in_a_wrong_window_does_not_lock_with_a_right_one():
    """A wrong registration that happens to pair with a right one (measured at 150 m without a heading: it
    made the heading 172 deg off) is one pair; the lock needs two pairs that agree."""
    true_h = 100.0
    pos = [np.array(turn(0.0, 40.0 * k, true_h)) for k in range(6)]
    tr = HeadingTracker()  # min_pairs=2
    wrong = pos[3] + np.array(turn(0.0, 2 * 40.0 * 3, true_h))  # ahead by twice the path: reversed motion
    tr.measure(0.0, _reg(*wrong, true_h))
    for _ in range(3):
        tr.predict(_forward(), 1.0)
    assert tr.measure(3.0, _reg(*pos[3], true_h + 180.0)) == "pending"  # one (wrong) pair only
    for _ in range(2):
        tr.predict(_forward(), 1.0)
    assert tr.measure(5.0, _reg(*pos[5], true_h)) == "pending"  # pairs (5,3) and (5,0) disagree
    for _ in range(2):
        tr.predict(_forward(), 1.0)
    out = tr.measure(7.0, _reg(*np.array(turn(0.0, 280.0, true_h)), true_h + 180.0))
    assert out == "locked" and abs(wrap180(tr.heading - true_h)) < 1.0  # pairs (7,5), (7,3) agree


def test_no_lock_from_registrations_that_disagree_with_the_odometry():
    """Two registrations whose distance the odometry did not fly (one is wrong), or that are too close, or
    whose headings disagree with the motion beyond agree_deg: no heading."""
    tr = HeadingTracker(HeadingTrackConfig(min_baseline_m=60.0))
    tr.measure(0.0, _reg(0.0, 0.0, 0.0))
    tr.predict(_forward(40.0), 1.0)
    assert tr.measure(1.0, _reg(0.0, 40.0, 0.0)) == "pending"  # 40 m < the baseline
    tr.predict(_forward(40.0), 1.0)
    assert tr.measure(2.0, _reg(0.0, 400.0, 0.0)) == "pending"  # 400 m registered, 80 m flown
    tr = HeadingTracker()
    tr.measure(0.0, _reg(0.0, 0.0, 90.0))  # says east, the drone flew north with its top ahead
    for _ in range(3):
        tr.predict(_forward(40.0), 1.0)
    assert tr.measure(3.0, _reg(0.0, 120.0, 90.0)) == "pending" and not tr.known


def test_heading_is_forgotten_without_odometry_and_the_chain_restarts():
    tr = HeadingTracker(HeadingTrackConfig(turn_rate_dps=10.0, lose_sigma_deg=45.0))
    tr.heading, tr.sigma = 100.0, 2.0
    failed = Motion(False, reason="too few features")
    for _ in range(3):
        tr.predict(failed, 1.0)
    assert tr.known and 10.0 < tr.search_tol_deg() <= 60.0  # wider search, still no half turn
    for _ in range(30):
        tr.predict(failed, 1.0)
    assert not tr.known and tr.regs == []
    assert undirected(failed) is failed


def test_after_a_jump_the_heading_waits_for_a_registration_that_agrees():
    """Textured frames that do not match (a kidnapping, a glitch, a fast turn): the heading is not used
    until a registration searched widely around it verifies; one over every heading that disagrees, or
    none within prior_frames, starts the lock over."""
    jump = Motion(False, reason="no consistent motion", jump=True)
    for reg_heading, confirmed in ((33.0, True), (120.0, False)):
        tr = HeadingTracker()
        tr.heading, tr.sigma = 30.0, 1.0
        tr.predict(jump, 1.0)
        assert not tr.known and tr.prior == 30.0
        m = tr.predict(_forward(dyaw=2.0), 1.0)
        assert (m.dx_e_m, m.dy_n_m) == (0.0, 0.0)  # not moved along an unconfirmed heading
        assert tr.registration_prior() == (32.0, tr.cfg.search_tol_max_deg)  # searched around, widely
        out = tr.measure(2.0, _reg(0.0, 0.0, reg_heading))
        assert (out == "confirmed") is confirmed and tr.known is confirmed
        if confirmed:
            assert abs(wrap180(tr.heading - 32.5)) < 1.5
        else:
            assert tr.prior is None and out == "pending"
    tr = HeadingTracker(HeadingTrackConfig(prior_frames=3))
    tr.heading, tr.sigma = 30.0, 1.0
    tr.predict(jump, 1.0)
    for _ in range(4):  # no registration confirms it: forgotten, every heading searched again
        tr.predict(_forward(), 1.0)
    assert tr.prior is None and tr.registration_prior() == (None, None)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="lose_sigma_deg"):
        HeadingTrackConfig(lose_sigma_deg=-1.0)
    with pytest.raises(ValueError, match="search_tol_max_deg"):
        HeadingTrackConfig(search_tol_max_deg=120.0)
    from runtime.localisation.localizer import LocalizerConfig

    with pytest.raises(ValueError, match="heading[-_]search[-_]angles"):
        LocalizerConfig(heading_search_angles=-2)
    assert LocalizerConfig(heading_settings={"agree_deg": 15.0}).heading_settings.agree_deg == 15.0


def test_undirected_odometry_spreads_the_filter_instead_of_moving_it(tmp_path):
    """The bug this replaces: camera-axis displacements taken as east/north move the posterior the wrong
    way. Without a heading the posterior's centre stays and its spread grows by the distance flown."""
    from runtime.localisation.likelihood import Likelihood
    from runtime.localisation.map_filter import MapFilter, MapFilterConfig
    from tests.mapdb import grid_database
    from tiles.db import TileDatabase

    db = TileDatabase.open(grid_database(tmp_path / "db"))
    lik = Likelihood(temperature=0.1, offset=0.2, centre="median")
    start = (500600.0, 5199600.0)
    moved = Motion(True, 80.0, 0.0, 0.0, 1.0, 100, 100, 1.0, 1.0, "ok")  # 80 m along the camera's right
    out = {}
    for name, motion in (("directed", moved), ("undirected", undirected(moved))):
        mf = MapFilter(db, 0, MapFilterConfig(kidnap_rate=0.0), lik)
        mf.reset(prior=start + (15.0,))
        mf.predict(0.0)
        r0 = mf.estimate().r95_m
        mf.predict(1.0, motion)
        out[name] = (mf.estimate(), r0)
    e, _ = out["directed"]
    assert e.x - start[0] == pytest.approx(80.0, abs=5.0)
    e, r0 = out["undirected"]
    assert math.hypot(e.x - start[0], e.y - start[1]) < 5.0 and e.r95_m > r0 + 40.0


@pytest.fixture(scope="module")
def naip_flight(naip_paths, tmp_path_factory):
    """A 2016 flight at 300 m over the 2018 map imagery (5 m/px), the camera's top 125 deg from north and
    turning 2 deg per frame, 60 m per frame along the image top."""
    from export.map_imagery import write_map_imagery
    from tiles.map_imagery import MapImagery
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    imagery = MapImagery.open(write_map_imagery([naip_paths[2018]], tmp_path_factory.mktemp("hd") / "im", gsd_m=5.0))
    raster = open_raster(naip_paths[2016])
    pos, h, frames = np.array([487400.0, 5208200.0]), 125.0, []
    for _ in range(14):
        img = render_view(raster, CameraPose(pos[0], pos[1], 300.0, h, 0.0, HFOV), (320, 320)).image
        frames.append((img, pos.copy(), h))
        pos = pos + turn(0.0, 60.0, h)
        h += 2.0
    return imagery, frames


def test_rendered_flight_without_compass_recovers_the_heading(naip_flight):
    """The real odometry on the camera frames and the real registration (no heading: every heading searched)
    around the true position: the tracker locks and then follows the turning drone within 5 degrees."""
    from runtime.localisation.odometry import VisualOdometry
    from runtime.localisation.registration import Registrar

    imagery, frames = naip_flight
    reg, vo, tr = Registrar(imagery), VisualOdometry(), HeadingTracker()
    errors, registered = [], 0
    for t, (img, pos, h) in enumerate(frames):
        motion = tr.predict(vo.update(img, float(t), 300.0, HFOV, None), 1.0)
        if tr.known:
            errors.append(abs(wrap180(tr.heading - h)))
            assert motion.ok and math.hypot(motion.dx_e_m, motion.dy_n_m) == pytest.approx(60.0, rel=0.15)
        r = reg.register(img, 300.0, HFOV, pos + 40.0, tr.heading, tr.search_tol_deg() if tr.known else None)
        if r.ok:
            registered += 1
            tr.measure(float(t), r)
    assert tr.locks >= 1 and len(errors) >= 4, (registered, tr.regs)
    assert np.median(errors) < 5.0 and max(errors) < 10.0


def test_rotation_search_finds_the_heading_of_a_tile_seen_turned(tiny):
    """A frame that is exactly a database tile seen with the image top facing east: among 4 rotations, the
    one that turns it north-up again matches that tile best."""
    import cv2

    from runtime.engines.engine import load_engine
    from runtime.localisation.rotation_search import best_rotation
    from runtime.search.searcher import Searcher
    from tiles.db import TileDatabase
    from tools.toy_assets import read_rgb

    engine = load_engine(tiny["bundle"])
    db = TileDatabase.open(tiny["db"])
    searcher = Searcher(db)
    rgb, transform, _ = read_rgb(tiny["raster"])
    lay = db.layers[0]
    inv = ~transform
    row = db.layer_slice(0).start + len(db.entries[db.layer_slice(0)]) // 2
    c, r = inv @ (float(db.entries["x"][row]), float(db.entries["y"][row]))
    half = float(lay["footprint_m"]) / 2.0 / abs(transform.a)
    tile = rgb[int(round(r - half)):int(round(r + half)), int(round(c - half)):int(round(c + half))]
    frame = cv2.rotate(np.ascontiguousarray(tile), cv2.ROTATE_90_COUNTERCLOCKWISE)  # image top faces east
    emb, angle, rows = best_rotation(engine, searcher, frame, 0, 4)
    assert angle == 90.0
    assert int(np.argmax(searcher.score_layer(emb[0], 0))) + db.layer_slice(0).start == row == rows[0]
    engine.close()


def test_localizer_without_compass_never_moves_the_filter_along_camera_axes(tiny):
    """A drone flying east with its camera top facing east, no compass, no map imagery (no heading can be
    found): the odometry sees the ground move towards the image top. Taken as north (the old chain, with
    --no-heading-track) the filter's velocity points north; the tracker moves it in no direction instead."""
    from runtime.engines.engine import load_engine
    from runtime.localisation.localizer import Localizer, LocalizerConfig, Telemetry
    from tiles.db import TileDatabase
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    engine = load_engine(tiny["bundle"])
    db = TileDatabase.open(tiny["db"])
    raster = open_raster(tiny["raster"])
    xmin, ymin, _, ymax = raster.bounds_m
    x0, y0 = xmin + 400.0, (ymin + ymax) / 2
    frames = [render_view(raster, CameraPose(x0 + 40.0 * k, y0, 300.0, 90.0, 0.0, HFOV), (256, 256)).image
              for k in range(8)]
    vel, reasons = {}, []
    for track in (False, True):
        loc = Localizer(engine, db, LocalizerConfig(heading_track=track, heading_search_angles=4))
        for k, img in enumerate(frames):
            out = loc.locate(img, Telemetry(t=float(k), altitude_m=300.0))
            if track:
                reasons.append(out.fusion["odometry_reason"])
        vel[track] = (out.fix.vel_e_mps, out.fix.vel_n_mps)
    engine.close()
    assert vel[False][1] > 25.0 and abs(vel[False][0]) < 10.0  # the bug: east flight taken as north
    assert reasons.count("ok; direction unknown (no heading)") >= 5, reasons
    assert math.hypot(*vel[True]) < 10.0
