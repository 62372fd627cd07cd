"""tools.bench_camera's figures from frame records: wrong beyond the limit, calibration, the table."""

from __future__ import annotations

from tools.bench_camera import _portable, condition_figures, flight_row, table


def _rec(trusted, err=None, r95=20.0, off=None, hag=None, alt=150.0):
    return {"trusted": trusted, "error_m": err, "r95_m": r95, "in_map": True, "footprint_m": 173.0,
            "registered": None, "odometry_ok": None, "true_off_nadir_deg": off, "true_hag_m": hag, "altitude_m": alt,
            "preprocess_ms": 1.0, "inference_ms": 2.0, "search_ms": 3.0, "fusion_ms": 4.0}


def test_figures_count_wrong_fixes_beyond_the_limit_and_the_truth_inside_r95():
    a = [_rec(False), _rec(True, 4.0), _rec(True, 30.0), _rec(True, 10.0)]
    b = [_rec(True, 50.0, r95=60.0, off=20.0, hag=140.0), _rec(False, off=10.0, hag=145.0)]
    f = condition_figures([a, b], wrong_m=25.0)
    assert (f["frames"], f["trusted"], f["wrong"]) == (6, 4, 2)
    assert f["truth_in_r95_pct"] == 75.0  # 4 and 10 within 20, 50 within 60; 30 beyond 20
    assert f["off_nadir_deg_median"] == 15.0 and f["height_error_m_median"] == 7.5
    assert f["ms_per_frame_median"] == 10.0
    assert flight_row(a, 2016, "150", 25.0) == {"year": 2016, "altitude_m": "150", "trusted": 3, "wrong": 1,
                                                "error_m_median": 10.0}
    text = table({"wrong_m": 25.0, "conditions": {"x": f}})
    assert "| x | 6 | 4 | 2 |" in text and "wrong > 25 m" in text


def test_the_command_recorded_names_no_path_of_this_machine():
    class A:
        bundle, db, out = "/abs/bundle", "/abs/db", None

    assert _portable(["--bundle", "/abs/bundle", "--db", "/abs/db", "--map", "m.tif"], A) == [
        "--bundle", "BUNDLE", "--db", "DB", "--map", "m.tif"]

    class B(A):
        out = "/abs/results.json"

    assert _portable(["--out", "/abs/results.json"], B) == ["--out", "OUT.json"]
    B.out = "docs/results/camera.json"
    assert _portable(["--out", "docs/results/camera.json"], B) == ["--out", "docs/results/camera.json"]


def test_every_condition_is_a_flight_and_what_the_chain_is_told():
    from dataclasses import fields

    from runtime.localisation.config import LocalizerConfig
    from runtime.replay.geotiff import FlightSpec
    from tools.bench_camera import CONDITIONS

    flight, told = {f.name for f in fields(FlightSpec)}, {f.name for f in fields(LocalizerConfig)}
    for name, spec in CONDITIONS.items():
        assert set(spec) - {"localizer"} <= flight, name
        assert set(spec.get("localizer", {})) <= told, name
    assert CONDITIONS["baro bias 10 m, told (--height-sigma-m 10)"]["localizer"] == {"height_sigma_m": 10.0}
