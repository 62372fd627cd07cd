"""Camera rate: the whole chain on keyframes, the fix predicted between them, and registration off the frame
path (fused at a later keyframe, carried there by the odometry): real engine, database, imagery, Localizer."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from runtime.localisation.fix import Fix
from runtime.localisation.localizer import Localizer, LocalizerConfig, Telemetry
from runtime.localisation.prediction import KeyframeClock, predict_fix
from tools.toy_assets import flight_crops


def test_keyframe_clock_at_camera_rate():
    clock = KeyframeClock(0.2)
    keys = [i for i in range(31) if clock.is_key(i / 30.0)]
    assert keys == [0, 6, 12, 18, 24, 30]  # every 0.2 s of the flight's clock
    assert clock.is_key(1.0)  # the same frame asked again (the embed thread, then the fusion thread)
    assert clock.is_key(0.5)  # the clock went back: a new flight
    every = KeyframeClock(0.0)
    assert all(every.is_key(i / 30.0) for i in range(10))
    c = KeyframeClock(0.2)
    assert c.is_key(0.0) and not c.is_key(0.1) and c.is_key(0.1, force=True)  # forced: another layer


def test_prediction_moves_by_the_velocity_and_grows_the_radius():
    fix = Fix(t=10.0, x=500.0, y=200.0, lat=47.0, lon=-99.0, trusted=True, vel_e_mps=10.0, vel_n_mps=-5.0,
              speed_accuracy_mps=0.5, cov_xy=(4.0, 4.0, 0.0), r95_m=2.4477 * 2.0, accuracy_m=2.0)
    p = predict_fix(fix, 10.5)
    assert (p.x, p.y, p.t, p.trusted) == (505.0, 197.5, 10.5, True)
    grow = (0.5 * 0.5) ** 2 + (0.5 * 2.0 * 0.25) ** 2
    assert p.cov_xy[0] == pytest.approx(4.0 + grow) and p.r95_m > fix.r95_m
    assert p.accuracy_m == pytest.approx(p.r95_m / 2.45)
    old = predict_fix(fix, 12.0)
    assert not old.trusted and "prediction 2.0 s old" in old.reason
    assert not predict_fix(Fix(t=0.0, x=1.0, y=1.0, trusted=True), 0.1).trusted  # no velocity, no trust


def _flight(tiny, n: int, substeps: int):
    """The crops flight at 1 frame/s, each second followed by ``substeps - 1`` frames of the same image
    (a camera faster than the ground moves: only the clock advances)."""
    alt = tiny["thumb_altitude_m"]
    out = []
    for i, (img, _) in enumerate(flight_crops(tiny["raster"], n_frames=n)):
        for k in range(substeps):
            out.append((i + k / substeps, img))
    return [(t, img, Telemetry(t=t, altitude_m=alt)) for t, img in out]


def test_between_keyframes_the_fix_is_the_last_keyframes_predicted(thumb_imagery):
    engine, db, tiny = thumb_imagery
    loc = Localizer(engine, db, LocalizerConfig(derotate=False, max_speed_mps=150.0, registration=False,
                                                keyframe_s=1.0))
    recs = [(t, loc.locate(img, tel)) for t, img, tel in _flight(tiny, 30, 5)]  # 5 frames a second
    keys = [r for t, r in recs if r.fusion.get("keyframe", True)]
    between = [(t, r) for t, r in recs if not r.fusion.get("keyframe", True)]
    assert len(keys) == 30 and len(between) == 120  # a keyframe a second, four frames predicted between
    assert sum(r.fix.trusted for r in keys) >= 10
    last = None
    for t, r in recs:
        if r.fusion.get("keyframe", True):
            last = r.fix
            continue
        assert r.matches.indices[0, 0] == -1 and r.raw.reason == "between keyframes"
        assert r.timings_ms["inference"] == 0.0
        if last is not None and last.trusted:
            dt = t - last.t
            assert r.fix.x == pytest.approx(last.x + last.vel_e_mps * dt)
            assert r.fix.y == pytest.approx(last.y + last.vel_n_mps * dt) and r.fix.r95_m >= last.r95_m


def _spy_registration(loc, delay_s: float = 0.0):
    """Record the keyframe each registration belongs to, where and when it ran, and when it was fused."""
    mr = loc.registration
    runs, fused = [], []
    register, collect = mr.registrar.register_candidates, mr.collect

    def slow_register(*a, **kw):
        runs.append((threading.current_thread().name, time.perf_counter()))
        time.sleep(delay_s)
        return register(*a, **kw)

    def spy_collect(key_now, heading=None):
        job = mr._job
        out = collect(key_now, heading)
        if job is not None and mr._job is None:
            fused.append((job.key, key_now))
        return out

    mr.registrar.register_candidates, mr.collect = slow_register, spy_collect
    return runs, fused


def test_a_keyframes_registration_is_fused_at_the_next_keyframe_in_replays(thumb_imagery):
    engine, db, tiny = thumb_imagery
    loc = Localizer(engine, db, LocalizerConfig(derotate=False, max_speed_mps=150.0))
    assert loc.registration is not None
    runs, fused = _spy_registration(loc)
    for _, img, tel in _flight(tiny, 20, 1):
        loc.locate(img, tel)
    assert runs and all(name == threading.current_thread().name for name, _ in runs)  # no thread in replays
    assert fused and all(now == key + 1 for key, now in fused)  # deterministic: one keyframe later


@pytest.mark.parametrize("per_second", [1, 2, 5])
def test_a_carried_track_is_registered_once_a_second_of_flight_whatever_the_frame_rate(thumb_imagery, per_second):
    """The cadence is the flight's clock, not a count of keyframes: a replay at 1 or 2 frames a second
    registers a carried track as often as the service's 5 keyframes a second (a count of 5 keyframes made
    it every 5 s at 1 frame a second and every 1 s in the service)."""
    engine, db, tiny = thumb_imagery
    loc = Localizer(engine, db, LocalizerConfig(derotate=False, max_speed_mps=150.0, keyframe_s=0.2))
    mr, asked = loc.registration, []
    due = mr.due

    def spy_due(carried, t):
        out = due(carried, t)
        asked.append((t, carried, out))
        return out

    mr.due = spy_due
    for _, img, tel in _flight(tiny, 20, per_second):
        loc.locate(img, tel)
    carried = [(t, out) for t, c, out in asked if c]
    assert len(carried) >= 5 * per_second  # the track was carried for seconds
    runs = [t for t, out in carried if out]
    assert np.all(np.diff(runs) >= 1.0 - 1e-6)  # never more often than once a second
    # and never less: a carried keyframe waits only while the last registration is younger than a second
    last = None
    for t, c, out in asked:
        if out:
            last = t
        elif c:
            assert last is not None and t - last < 1.0 - 1e-6, (t, last)


def test_the_registration_worker_never_stalls_the_frames(thumb_imagery):
    """A registration taking 0.6 s while frames are fused every few milliseconds: the frames do not wait,
    keyframes due while it works are not queued, and its result is fused at a later keyframe."""
    engine, db, tiny = thumb_imagery
    loc = Localizer(engine, db, LocalizerConfig(derotate=False, max_speed_mps=150.0, keyframe_s=0.0),
                    registration_worker=True)
    runs, fused = _spy_registration(loc, delay_s=0.6)
    times = []
    try:
        for _, img, tel in _flight(tiny, 40, 1):
            t0 = time.perf_counter()
            loc.locate(img, tel)
            times.append(time.perf_counter() - t0)
            time.sleep(0.03)
    finally:
        loc.close()
    assert runs and all(name == "registration" for name, _ in runs)
    assert max(times) < 0.4, max(times)  # never the 0.6 s of a registration
    assert len(runs) < 40 / 2  # keyframes due while it worked were skipped, not queued
    assert fused and all(now - key >= 2 for key, now in fused)  # ready only keyframes later
    gaps = np.diff([t for _, t in runs])
    assert np.all(gaps >= 0.6 - 1e-3)  # one at a time
    assert math.isfinite(float(np.median(times)))
