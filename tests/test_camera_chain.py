"""A real camera in the chain (issue 26): a tilted mount, a banked airframe, a distorting lens and a wrong
barometer, flown over real imagery through the replay and the service's own Localizer (the thumbnail model
of the toy assets, its database with map imagery). Each case is flown twice, with what the chain now does
and without it, so each test shows both the failure and its cure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.inputs.attitude import CameraAttitude
from runtime.localisation.camera_view import CameraView, drone_motion
from runtime.localisation.config import LocalizerConfig
from runtime.localisation.localizer import Localizer
from runtime.localisation.odometry import Motion
from runtime.replay.flights import GeoTiffFlight
from runtime.replay.geotiff import replay_flight
from runtime.replay.real_camera import CameraEffects, lens_for


def _fly(thumb, cfg: LocalizerConfig, *, tilt_deg: float = 0.0, effects: CameraEffects | None = None,
         frames: int = 30, camera=None):
    engine, db, tiny = thumb
    alt = tiny["thumb_altitude_m"]
    flight = GeoTiffFlight(tiny["raster"], alt, pattern="line", hfov_deg=60.0, size_px=96, speed_mps=40.0,
                           fps=1.0, tilt_deg=tilt_deg, max_frames=frames, seed=7, effects=effects)
    loc = Localizer(engine, db, cfg, camera=camera)
    recs = replay_flight(loc, list(flight), altitude_m=alt, mount_tilt_deg=tilt_deg)
    trusted = [r for r in recs if r["trusted"]]
    errors = np.array([r["error_m"] for r in trusted])
    return recs, trusted, errors


NO_CAMERA = dict(rectify=False, height_from_map=False)


def test_a_tilted_mount_no_longer_moves_the_fix_to_where_the_camera_looks(thumb_imagery):
    alt = thumb_imagery[2]["thumb_altitude_m"]
    cfg = dict(max_speed_mps=150.0, map_sigma_m=4.0)
    _, t_old, e_old = _fly(thumb_imagery, LocalizerConfig(**cfg, **NO_CAMERA), tilt_deg=15.0)
    recs, t_new, e_new = _fly(thumb_imagery, LocalizerConfig(**cfg), tilt_deg=15.0)
    look = alt * math.tan(math.radians(15.0))  # 74 m: where the optical axis meets the ground
    assert len(t_old) >= 5 and np.median(e_old) > 0.6 * look  # before: the fix followed the image centre
    assert len(t_new) >= 10
    assert np.median(e_new) < 0.3 * look and e_new.max() < 0.6 * look
    # the record says what was rectified, and by how much the fix was moved
    keyed = [r for r in recs if r.get("tilt_deg") is not None]
    assert keyed and all(abs(r["tilt_deg"] - 15.0) < 0.5 and abs(r["offset_m"] - look) < 3 for r in keyed)


def test_a_frame_beyond_the_tilt_limit_moves_the_track_by_odometry_only(thumb_imagery):
    recs, trusted, _ = _fly(thumb_imagery, LocalizerConfig(max_speed_mps=150.0, max_tilt_deg=10.0), tilt_deg=15.0,
                            frames=12)
    assert all(r["too_tilted"] for r in recs if r.get("tilt_deg") is not None)
    assert all(r["rows_scored"] == 0 and r["registered"] is None for r in recs)  # never compared with the map
    assert not trusted  # never verified: nothing to trust


def test_the_lens_calibration_undistorts_into_the_databases_pinhole(tiny):
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    lens = lens_for(CameraEffects(lens_k1=-0.25), (96, 96), 60.0)
    with open_raster(tiny["raster"]) as r:
        x0, y0, x1, y1 = r.bounds_m
        pose = CameraPose((x0 + x1) / 2, (y0 + y1) / 2, 300.0, 0.0, 0.0, 60.0)
        pinhole = render_view(r, pose, (96, 96)).image.astype(float)
        barrel = render_view(r, pose, (96, 96), lens=lens).image
    view = CameraView(LocalizerConfig(), 60.0, lens)
    assert view.hfov_deg == 60.0  # the chain works in the database's field of view
    fixed = view(barrel, heading_deg=None).frame

    def off(img):  # mean difference to the pinhole's picture, away from the edges
        return float(np.abs(img[12:84, 12:84].astype(float) - pinhole[12:84, 12:84]).mean())

    assert off(fixed) < 0.5 * off(barrel)


def test_rectified_view_and_offset_follow_the_attitude():
    cfg = LocalizerConfig()
    view = CameraView(cfg, 60.0)
    img = np.full((96, 96, 3), 128, np.uint8)
    att = CameraAttitude.from_view_angles(90.0, 20.0)  # facing east, tilted 20 deg forward
    v = view(img, heading_deg=90.0, attitude=att, height_m=200.0)
    assert v.rectified and not v.too_tilted and v.tilt_deg == pytest.approx(20.0)
    east, north = v.offset_en_m  # the drone is west of the point the camera looks at
    assert east == pytest.approx(-200.0 * math.tan(math.radians(20.0)), rel=1e-3) and abs(north) < 1e-6
    assert v.offset_sigma_m == pytest.approx(200.0 * math.radians(1.0) / math.cos(math.radians(20.0)) ** 2)
    steep = view(img, 90.0, CameraAttitude.from_view_angles(90.0, 50.0), 200.0)
    assert steep.too_tilted and steep.image is not None  # odometry still sees it
    plain = view(img, heading_deg=90.0)  # no attitude: turned north-up by the compass, as a nadir frame
    assert not plain.rectified and plain.offset_en_m == (0.0, 0.0)


def test_the_track_moves_with_the_drone_not_with_the_point_the_camera_looks_at():
    cfg = LocalizerConfig()
    view = CameraView(cfg, 60.0)
    img = np.full((64, 64, 3), 90, np.uint8)
    a = view(img, 0.0, CameraAttitude.from_view_angles(0.0, 5.0), 150.0)
    b = view(img, 0.0, CameraAttitude.from_view_angles(0.0, -5.0), 150.0)
    seen = Motion(True, dx_e_m=0.0, dy_n_m=40.0, dt_s=1.0, sigma_m=0.5)  # the viewed point moved 40 m north
    m = drone_motion(seen, b, a.offset_en_m)
    drone = 40.0 + 2 * 150.0 * math.tan(math.radians(5.0))  # the camera pitched back: the drone moved more
    assert m.dy_n_m == pytest.approx(drone, rel=1e-6) and m.sigma_m > seen.sigma_m
    assert drone_motion(seen, b, None) is seen  # no earlier view: nothing to add


def test_the_height_above_ground_from_msl_less_terrain_and_from_the_ground_covered():
    from types import SimpleNamespace

    from runtime.localisation.frames import Telemetry
    from runtime.localisation.height import HeightAboveGround
    from tiles.terrain import FlatGround

    def reg(y, sigma=5.0, scale=float("nan"), method="correlation"):
        return SimpleNamespace(x=0.0, y=y, scale=scale, method=method, sigma_m=sigma)

    def fly(h, metres):  # 8 steps; the odometry's metres are the height's, so scaled by its correction
        for _ in range(8):
            h.moved(Motion(True, dx_e_m=0.0, dy_n_m=metres / 8.0 * h.factor, dt_s=1.0))

    db = SimpleNamespace(path=None)
    h = HeightAboveGround(LocalizerConfig(), db, terrain=FlatGround(120.0))
    tel = Telemetry(t=0.0, altitude_m=140.0, altitude_source="flight", altitude_msl_m=275.0)
    assert h.of(tel, None) == (140.0, "flight")  # no fix yet: the ground under it is not known
    assert h.of(tel, (10.0, 20.0)) == (155.0, "msl - terrain")
    prior = h.scale_sigma(140.0)
    assert prior == pytest.approx(3.0 / 140.0)  # the height's sigma over the height, until measured
    # the barometer reads 5 % high: odometry measures 5 % too much ground between two registrations
    h.registered(reg(0.0))
    fly(h, 336.0)  # 336 m measured, 320 m covered
    h.registered(reg(320.0))
    first = h.factor
    assert 320.0 / 336.0 < first < 1.0  # a span weighs by its precision against the prior's
    assert h.scale_sigma(140.0) < prior  # and the scale is known better
    assert h.of(tel, None)[1].endswith("(map)")
    for y in (640.0, 960.0):  # the next spans close in on it
        before = abs(h.factor - 320.0 / 336.0)
        fly(h, 336.0)
        h.registered(reg(y))
        assert abs(h.factor - 320.0 / 336.0) < before
    before, sigma = h.factor, h.scale_sigma(140.0)
    h.moved(None)  # a span the odometry broke (no motion, no coasting) measures nothing
    fly(h, 336.0)
    h.registered(reg(1280.0))
    assert h.factor == before
    fly(h, 336.0)  # a wrong registration: 14 % long, beyond the gate of the estimate's and its own sigmas
    h.registered(reg(1280.0 + 1.14 * 320.0))
    assert h.factor == before
    assert h.scale_sigma(140.0) > sigma  # the ground flown since let the scale drift (DRIFT_PER_KM)
    short = HeightAboveGround(LocalizerConfig(), db)  # a span under SPAN_M is measured from further on
    short.of(tel)
    short.registered(reg(0.0))
    fly(short, 84.0)
    short.registered(reg(80.0))
    assert short.factor == 1.0
    fly(short, 84.0)
    short.registered(reg(160.0))
    assert short.factor < 1.0
    # a look-alike between two right registrations: the span from the one before it still measures
    between = HeightAboveGround(LocalizerConfig(), db)
    between.of(tel)
    between.registered(reg(0.0))
    fly(between, 336.0)
    between.registered(reg(2000.0))  # 2 km off: no span from the registration before it
    assert between.factor == 1.0
    fly(between, 336.0)
    between.registered(reg(640.0))  # 672 m measured from the first, 640 covered
    assert 640.0 / 672.0 < between.factor < 1.0
    off = HeightAboveGround(LocalizerConfig(height_from_map=False), db)
    off.of(tel)
    off.registered(reg(0.0, scale=1.2, method="features"))
    assert off.factor == 1.0
    on = HeightAboveGround(LocalizerConfig(), db)  # a registration by features fits the scale itself
    on.of(tel)
    on.registered(reg(0.0, scale=1.05, method="features"))
    assert 1.0 < on.factor < 1.05


def test_the_ground_under_the_drone_is_where_the_last_fix_has_carried_it():
    """The last trusted fix is a keyframe old (40 m at 40 m/s, 1 frame/s): on a hillside the ground under
    it is metres off the ground under the drone, and the odometry's metres with it. The fix carried by its
    velocity to the frame's time gives the ground under the drone."""
    from types import SimpleNamespace

    from runtime.localisation.fix import Fix
    from runtime.localisation.frames import Telemetry
    from runtime.localisation.height import MAX_CARRY_S, HeightAboveGround, ground_point

    class Hillside:  # the ground rises 10 m every 100 m eastwards
        def height_at(self, x, y):
            return 0.1 * np.asarray(x, float)

    last = Fix(t=10.0, x=1000.0, y=500.0, trusted=True, vel_e_mps=40.0, vel_n_mps=-3.0)
    assert ground_point(last, 11.0) == pytest.approx((1040.0, 497.0))
    assert ground_point(last, 10.0 + MAX_CARRY_S + 1.0) == (1000.0, 500.0)  # too old to carry: where it was
    assert ground_point(Fix(t=10.0, x=1000.0, y=500.0, trusted=True), 11.0) == (1000.0, 500.0)  # no velocity
    assert ground_point(Fix(t=10.0, x=1000.0, y=500.0, trusted=False), 11.0) is None
    h = HeightAboveGround(LocalizerConfig(), SimpleNamespace(path=None), terrain=Hillside())
    tel = Telemetry(t=11.0, altitude_m=150.0, altitude_source="flight", altitude_msl_m=254.0)
    assert h.of(tel, ground_point(last, 11.0))[0] == pytest.approx(254.0 - 104.0)  # not 254 - 100
