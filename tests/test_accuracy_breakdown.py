"""tools.accuracy_breakdown's per-flight figures and coverage from frame records."""

from tools.accuracy_breakdown import coverage, per_flight


def _rec(flight, err, r95, dx=0.0, trusted=True):
    return {"flight": flight, "trusted": trusted, "error_m": err, "r95_m": r95, "fix_x": 10.0 + dx, "true_x": 10.0,
            "fix_y": 0.0, "true_y": 0.0}


def test_per_flight_and_coverage_at_each_level():
    recs = [_rec("a", 1.0, 10.0, dx=1.0), _rec("a", 5.0, 10.0, dx=5.0), _rec("b", 9.0, 10.0, dx=9.0),
            _rec("b", 50.0, 10.0, trusted=False)]
    flights = per_flight(recs)
    assert set(flights) == {"a", "b"} and flights["a"]["trusted"] == 2 and flights["b"]["trusted"] == 1
    assert flights["a"]["mean_offset_m"] == 3.0 and flights["a"]["error_m_max"] == 5.0
    cov = coverage(flights, scale=1.0)  # ratios 0.1, 0.5, 0.9: r68 radius is 0.617 of r95, r50 0.481
    assert cov == {"r50": round(100 / 3, 1), "r68": round(200 / 3, 1), "r95": 100.0}
    assert coverage(flights, scale=0.5)["r95"] == round(200 / 3, 1)
