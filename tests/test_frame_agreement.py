"""Registration verified over frames (runtime.localisation.frame_agreement): peaks that follow the odometry over new ground
confirm; a hovering drone, peaks that wander (a wrong window), a broken odometry chain or a heading that
disagrees do not. On real imagery at 150 m over the 5 m/px map, where no single frame verifies itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.map_imagery import write_map_imagery
from runtime.localisation.frame_agreement import AgreementConfig, FrameAgreement
from runtime.localisation.odometry import Motion, OdometryConfig, VisualOdometry
from runtime.localisation.registration import Registrar, Registration
from tiles.map_imagery import MapImagery

FP = 173.2  # footprint at 150 m, hfov 60
GSD = 5.0


def _tentative(x, y, heading=90.0, score=0.6):
    return Registration(False, x, y, heading, 1.0, 1, math.nan, 3.0, score, 0.1, 5.0, "correlation",
                        "inconsistent geometry", tentative=True)


def _fly(agree, peaks, step=(40.0, 0.0), motion_ok=None):
    """Offer one tentative peak per frame; the odometry moved ``step`` metres before each frame."""
    out = []
    for i, (x, y) in enumerate(peaks):
        ok = True if motion_ok is None else motion_ok[i]
        agree.carry(Motion(True, *step) if ok else Motion(False, reason="no features"))
        out.append(agree.offer([_tentative(x, y)], GSD, FP))
    return out


def test_peaks_that_follow_the_odometry_over_new_ground_confirm():
    agree = FrameAgreement(AgreementConfig(frames=3, min_span_footprints=0.75))
    peaks = [(1000.0 + 40 * i + (1.0 if i % 2 else -1.0), 2000.0) for i in range(6)]  # +-1 m of the track
    got = _fly(agree, peaks)
    first = next(i for i, r in enumerate(got) if r is not None)
    assert 40 * first >= 0.75 * FP  # not before the first agreeing peak is 0.75 footprint behind
    assert first == math.ceil(0.75 * FP / 40)
    r = got[first]
    assert r.ok and not r.tentative and r.method.startswith("correlation over") and r.reason == ""
    assert (r.x, r.y) == peaks[first]


def test_hovering_never_confirms():
    """Frames over the same ground are one piece of evidence, however many."""
    agree = FrameAgreement(AgreementConfig(frames=3, min_span_footprints=0.75))
    assert all(r is None for r in _fly(agree, [(1000.0, 2000.0)] * 30, step=(0.0, 0.0)))


def test_wandering_peaks_never_confirm():
    """A wrong window: the peak lands wherever the ground looks a bit alike, not where the motion goes."""
    rng = np.random.default_rng(0)
    agree = FrameAgreement(AgreementConfig(frames=3, min_span_footprints=0.75))
    peaks = [(1000.0 + 40 * i + rng.uniform(-150, 150), 2000.0 + rng.uniform(-150, 150)) for i in range(40)]
    assert all(r is None for r in _fly(agree, peaks))


def test_a_broken_odometry_chain_or_another_heading_does_not_confirm():
    peaks = [(1000.0 + 40 * i, 2000.0) for i in range(6)]
    agree = FrameAgreement(AgreementConfig(frames=3, min_span_footprints=0.75))
    assert all(r is None for r in _fly(agree, peaks, motion_ok=[True, True, True, False, True, True]))
    agree = FrameAgreement(AgreementConfig(frames=3, min_span_footprints=0.75))
    for i, (x, y) in enumerate(peaks):  # the same track, but each frame's heading 8 deg from the last
        agree.carry(Motion(True, 40.0, 0.0))
        assert agree.offer([_tentative(x, y, heading=90.0 + 8 * i)], GSD, FP) is None


def test_config_refuses_one_frame():
    with pytest.raises(ValueError, match="agreement frames must be >= 2"):
        AgreementConfig(frames=1)


def _frame(raster, x, y, alt, px=240):
    from tiles.views import CameraPose, render_view

    return render_view(raster, CameraPose(x, y, alt, 0.0, 0.0, 60.0), (px, px), photometric=0.3,
                       rng=np.random.default_rng(int(x) % 997)).image


@pytest.fixture(scope="module")
def imagery_2018(naip_paths, tmp_path_factory):
    d = tmp_path_factory.mktemp("agree")
    return MapImagery.open(write_map_imagery([naip_paths[2018]], d / "imagery", gsd_m=GSD))


def _flight(imagery, raster, start, offset, frames=10, alt=150.0):
    """A straight flight east at 40 m per frame (held-out 2016 frames, north-up); registration around the true
    position plus ``offset`` (a wrong window when it is kilometres), real odometry between frames."""
    reg, odo = Registrar(imagery), VisualOdometry(OdometryConfig())
    agree = FrameAgreement(AgreementConfig(frames=3, min_span_footprints=0.75))
    single, confirmed = 0, []
    for i in range(frames):
        x, y = start[0] + 40.0 * i, start[1]
        img = _frame(raster, x, y, alt)
        agree.carry(odo.update(img, float(i), alt, 60.0, None))
        r = reg.register(img, alt, 60.0, (x + offset[0], y + offset[1]), 0.0)
        single += r.ok
        c = r if r.ok else agree.offer([r], imagery.gsd_m, FP)
        if c is not None and not r.ok:
            confirmed.append((i, math.hypot(c.x - x, c.y - y)))
    return single, confirmed


def test_150m_on_the_5m_map_verified_over_frames_not_alone(naip_paths, imagery_2018):
    from tiles.raster import open_raster

    with open_raster(naip_paths[2016]) as raster:
        single, confirmed = _flight(imagery_2018, raster, (486800.0, 5208500.0), (30.0, -40.0))
        assert single <= 2  # the frame's parts (17 map px) are too small to verify one frame
        assert confirmed, "no registration confirmed over 10 frames"
        i, err = confirmed[0]
        assert i <= 6 and err < 15.0  # within three map pixels of the truth
        assert all(e < 15.0 for _, e in confirmed)
        for start in [(486800.0, 5208500.0), (487400.0, 5207000.0), (489000.0, 5206200.0)]:
            _, wrong = _flight(imagery_2018, raster, start, (2500.0, -1500.0 if start[1] > 5207500 else 1500.0))
            assert wrong == []  # the window 2.9 km off: nothing confirmed
