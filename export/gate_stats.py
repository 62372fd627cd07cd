"""Statistics of the accuracy gate: how sure are we that a variant loses at most N points of R@1?

The FP32 model and a variant answer the *same* queries, so their R@1 values are paired proportions. Per
query there are four outcomes; only the discordant ones carry information about the difference:
``lost`` (FP32 right, variant wrong) and ``gained`` (FP32 wrong, variant right). The drop in R@1 is
``(lost - gained) / n``.

The interval is Agresti & Min's adjusted Wald interval for matched proportions ("Wald+2", Statistics in
Medicine 24 (2005) 729-740): add 0.5 to each of the four cells, then the Wald interval. It is close to
nominal coverage even for few discordant pairs, needs no iteration, and is not zero-width when the two
models agree on every query (a perfect agreement on 60 queries does not prove a zero drop). Its values
equal R's ``PropCIs::diffpropci.mp``.

The gate passes a variant only when the *upper* end of that interval is within the limit: the held-out
queries then show, at the stated confidence, that the variant loses at most that much. Hence the
smallest limit ``n`` queries can ever show, even for a variant that agrees with FP32 on every query:
:func:`smallest_detectable_drop`.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence {confidence} must lie between 0.5 and 1 (e.g. 0.95)")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def discordant(ref_correct, var_correct) -> tuple[int, int, int]:
    """(lost, gained, n) from two boolean arrays over the same queries."""
    a, b = np.asarray(ref_correct, dtype=bool), np.asarray(var_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal 1-D boolean arrays over the same queries, got {a.shape} and {b.shape}")
    return int(np.sum(a & ~b)), int(np.sum(~a & b)), len(a)


def drop_interval(lost: int, gained: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(estimate, low, high) of the R@1 drop, percentage points, by Agresti-Min's Wald+2 for matched pairs.

    The estimate is the one of the adjusted table, ``(lost - gained) / (n + 2)``, as the interval's centre;
    the raw drop is ``100 * (lost - gained) / n``. Ends are clipped to [-100, 100].
    """
    if n < 1 or lost < 0 or gained < 0 or lost + gained > n:
        raise ValueError(f"lost={lost}, gained={gained} must be counts of the n={n} queries")
    z = _z(confidence)
    b, c, nt = lost + 0.5, gained + 0.5, n + 2.0
    est = (b - c) / nt
    se = math.sqrt((b + c) - (b - c) ** 2 / nt) / nt
    return 100 * est, 100 * max(-1.0, est - z * se), 100 * min(1.0, est + z * se)


def smallest_detectable_drop(n: int, confidence: float = CONFIDENCE) -> float:
    """The smallest R@1 drop limit (points) that ``n`` queries can show: the interval's upper end when the
    variant agrees with FP32 on every query, ``100 z / (n + 2)`` (4.8 points for 39 queries, 1 for 194)."""
    return drop_interval(0, 0, n, confidence)[2]


def queries_needed(max_drop: float, confidence: float = CONFIDENCE) -> int:
    """The fewest queries for which :func:`smallest_detectable_drop` is within ``max_drop`` points."""
    if max_drop <= 0:
        raise ValueError(f"--max-r1-drop {max_drop} cannot be shown by any number of queries; give a limit > 0")
    return max(1, math.ceil(100 * _z(confidence) / max_drop - 2))


def mcnemar_exact_p(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: under 'no difference' each discordant query is a fair coin."""
    m = lost + gained
    if m == 0:
        return 1.0
    k = min(lost, gained)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0 ** m
    return min(1.0, 2 * tail)


def paired_report(ref_correct, var_correct, max_drop: float | None = None,
                  confidence: float = CONFIDENCE) -> dict:
    """Everything the gate records about one variant against FP32 on the same queries."""
    lost, gained, n = discordant(ref_correct, var_correct)
    est, lo, hi = drop_interval(lost, gained, n, confidence)
    rec = {"n_queries": n, "lost": lost, "gained": gained, "r1_drop": 100.0 * (lost - gained) / n,
           "r1_drop_ci": [lo, hi], "confidence": confidence, "mcnemar_p": mcnemar_exact_p(lost, gained),
           "smallest_detectable_drop": smallest_detectable_drop(n, confidence)}
    if max_drop is not None:
        rec["max_r1_drop"] = max_drop
        rec["passed"] = bool(hi <= max_drop)
    return rec
