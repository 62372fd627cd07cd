"""common.validate: one rule per number, the same in the library, the tiles CLI and export's CLI."""

from __future__ import annotations

import argparse
import math

import pytest

from common import validate as v
from common.validate import InputError


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "nan", "abc", None, [1]])
def test_non_numbers_and_non_finite_refused_everywhere(bad):
    for check in (v.altitude_m, v.hfov_deg, v.tilt_deg, v.heading_deg, v.latitude, v.longitude, v.radius_m,
                  v.speed_mps):
        with pytest.raises(InputError, match="number"):
            check(bad)


def test_ranges_and_their_edges():
    assert v.altitude_m("150") == 150.0 and v.altitude_m(10000) == 10000.0
    for bad in (0, -50, 10000.5):
        with pytest.raises(InputError, match=r"altitude_m must be in \(0, 10000\] m, got"):
            v.altitude_m(bad)
    assert v.hfov_deg(150) == 150.0 and v.hfov_deg(0.5) == 0.5
    for bad in (0, 150.1, 179, 180):
        with pytest.raises(InputError, match=r"hfov_deg must be in \(0, 150\] degrees.*fisheye"):
            v.hfov_deg(bad)
    assert v.tilt_deg(0) == 0.0
    with pytest.raises(InputError, match=r"\[0, 80\)"):
        v.tilt_deg(80)
    assert v.heading_deg(-90) == 270.0 and v.heading_deg(725) == 5.0
    assert v.speed_mps(0) == 0.0
    with pytest.raises(InputError, match="m/s"):
        v.speed_mps(-1)
    with pytest.raises(InputError, match="radius_m"):
        v.radius_m(0)
    assert v.fraction("stride_frac", 1) == 1.0 and v.fraction("min_valid", 0, zero_ok=True) == 0.0
    with pytest.raises(InputError, match="stride_frac"):
        v.fraction("stride_frac", 0)


def test_lat_lon_swap_named():
    assert v.lat_lon(47.02, -99.15) == (47.02, -99.15)
    with pytest.raises(InputError, match="swap --lat and --lon"):
        v.lat_lon(-99.15, 47.02)
    with pytest.raises(InputError, match=r"lon must be in \[-180, 180\]"):
        v.lat_lon(47.0, 200.0)


def test_argparse_type_gives_a_one_line_usage_error(capsys):
    ap = argparse.ArgumentParser(prog="x")
    ap.add_argument("--altitude", type=v.arg(v.altitude_m))
    assert ap.parse_args(["--altitude", "120"]).altitude == 120.0
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--altitude", "nan"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("x: error: argument --altitude: altitude_m must be a finite number, got 'nan'")


def test_check_args_after_parsing_lists_and_absent_options(capsys):
    ap = argparse.ArgumentParser(prog="x")
    ap.add_argument("--altitudes-m", dest="altitudes", type=float, nargs="+")
    ap.add_argument("--hfov-deg", dest="hfov", type=float)
    checks = {"altitudes": ("--altitudes-m", v.altitude_m), "hfov": ("--hfov-deg", v.hfov_deg)}
    args = ap.parse_args(["--altitudes-m", "150", "300"])
    v.check_args(ap, args, checks)
    assert args.altitudes == [150.0, 300.0] and args.hfov is None
    with pytest.raises(SystemExit) as e:
        v.check_args(ap, ap.parse_args(["--altitudes-m", "150", "-3"]), checks)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("argument --altitudes-m: altitude_m must be in (0, 10000] m, "
                                                    "got -3.0; give the flight height above ground in metres")


def test_library_entry_points_share_the_rule():
    from tiles.grid import footprint_m
    from tiles.views import CameraPose

    assert math.isclose(footprint_m(100, 150), 2 * 100 * math.tan(math.radians(75)))
    with pytest.raises(InputError, match="hfov_deg"):
        footprint_m(100, 151)
    with pytest.raises(InputError, match="hfov_deg"):
        CameraPose(0, 0, 100, hfov_deg=151)
    CameraPose(0, 0, 100, hfov_deg=150)  # what footprint_m accepts, a view accepts
    with pytest.raises(InputError, match="x must be a finite number"):
        CameraPose(float("nan"), 0, 100)
