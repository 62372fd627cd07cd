"""The accuracy gate's statistics against values computed by hand and a published reference."""

from __future__ import annotations

import numpy as np
import pytest

from export.gate_stats import (
    discordant,
    drop_interval,
    mcnemar_exact_p,
    paired_report,
    queries_needed,
    smallest_detectable_drop,
)

Z95 = 1.959963985  # the 97.5 % normal quantile


def test_interval_computed_by_hand():
    # n = 98 paired queries, FP32 right and variant wrong on 3, the other way round on 1.
    # Agresti-Min: add 0.5 to each cell -> lost 3.5, gained 1.5, n 100.
    # centre = (3.5 - 1.5) / 100 = 0.02; se = sqrt((3.5 + 1.5) - 2.0**2 / 100) / 100 = sqrt(4.96) / 100
    se = np.sqrt(4.96) / 100
    est, lo, hi = drop_interval(3, 1, 98)
    assert est == pytest.approx(2.0)
    assert lo == pytest.approx(100 * (0.02 - Z95 * se)) and lo == pytest.approx(-2.3650, abs=1e-4)
    assert hi == pytest.approx(100 * (0.02 + Z95 * se)) and hi == pytest.approx(6.3650, abs=1e-4)


def test_interval_equals_the_published_propcis_example():
    # R PropCIs::diffpropci.mp(b = 40, c = 20, n = 160) prints -0.21601726 -0.03089632, estimate -0.1234568
    # (its difference is c - b; ours is the drop lost - gained, so b = gained here)
    est, lo, hi = drop_interval(lost=20, gained=40, n=160)
    assert (est, lo, hi) == pytest.approx((-12.34568, -21.601726, -3.089632), abs=1e-5)
    assert drop_interval(40, 20, 160) == pytest.approx((12.34568, 3.089632, 21.601726), abs=1e-5)


def test_perfect_agreement_still_has_an_upper_bound():
    # no discordant query: centre 0, se = sqrt(1) / (n + 2) -> upper end z / (n + 2)
    assert drop_interval(0, 0, 98)[2] == pytest.approx(100 * Z95 / 100)
    assert smallest_detectable_drop(98) == pytest.approx(1.959964, abs=1e-6)
    assert smallest_detectable_drop(30) == pytest.approx(100 * Z95 / 32)  # the README's old 30-query check: 6.1
    # 2 points need z / (n + 2) <= 0.02 -> n >= 96.0
    assert queries_needed(2.0) == 96
    assert smallest_detectable_drop(96) <= 2.0 < smallest_detectable_drop(95)
    assert queries_needed(1.0) == 194
    with pytest.raises(ValueError, match="limit > 0"):
        queries_needed(0.0)


def test_mcnemar_exact_by_hand():
    # 4 discordant queries, 1 of them gained: P(X <= 1 | Bin(4, 1/2)) = (1 + 4) / 16, two-sided x2
    assert mcnemar_exact_p(3, 1) == pytest.approx(10 / 16)
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(2, 2) == 1.0


def test_paired_report_from_per_query_outcomes():
    ref = np.array([1, 1, 1, 1, 0, 0, 1, 0], bool)
    var = np.array([1, 0, 0, 1, 0, 1, 1, 0], bool)
    assert discordant(ref, var) == (2, 1, 8)
    r = paired_report(ref, var, max_drop=30.0)
    assert r["r1_drop"] == pytest.approx(12.5) and r["lost"] == 2 and r["gained"] == 1
    lo, hi = drop_interval(2, 1, 8)[1:]
    assert r["r1_drop_ci"] == [lo, hi] and r["passed"] == (hi <= 30.0)
    # the gate's rule at its edge: perfect agreement passes a limit at its upper end, not below it
    same = np.ones(98, bool)
    assert paired_report(same, same, max_drop=1.96)["passed"] is True
    assert paired_report(same, same, max_drop=1.95)["passed"] is False


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="lost=5, gained=1 must be counts of the n=4"):
        drop_interval(5, 1, 4)
    with pytest.raises(ValueError, match="equal 1-D boolean arrays"):
        discordant([True, False], [True])
    with pytest.raises(ValueError, match="confidence 1.5"):
        drop_interval(0, 0, 10, confidence=1.5)
