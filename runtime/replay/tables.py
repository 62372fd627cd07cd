"""The printed tables of a GeoTIFF replay: one row per flight, and what its autopilot streams sent."""

from __future__ import annotations

from pathlib import Path


def _f(v, w, nd=1):
    return f"{v:{w}.{nd}f}" if v is not None else f"{'-':>{w}}"


def geotiff_table(results: dict) -> str:
    head = (f"{'alt':>5} | {'frames':>6} | {'fix %':>6} {'avail':>6} {'ttff':>5} {'wrong':>5} {'calib':>6} | "
            f"{'err med':>8} {'err p95':>8} | {'R@1':>6} {'R@5':>6} | {'reg %':>6} | {'ms/frame':>8}")
    lines = [f"GeoTIFF flights over {Path(results['map']).name} ({results['engine']}; avail = trusted share after "
             "the first fix, ttff = frames to it, wrong = trusted fixes off by more than a footprint, calib = "
             "truth inside the 95 % radius)", head, "-" * len(head)]

    f = _f
    for alt, s in results["altitudes"].items():
        lines.append(f"{alt:>5} | {s['n_frames']:>6} | {f(s['fix_rate'], 6)} {f(s['availability_pct'], 6)} "
                     f"{f(s['ttff_frames'], 5, 0)} {s['wrong_trusted']:>5} {f(s['calibration_pct'], 6)} | "
                     f"{f(s['error_m_median'], 8)} {f(s['error_m_p95'], 8)} | {f(s['R@1'], 6)} {f(s['R@5'], 6)} | "
                     f"{f(s['registered_pct'], 6)} | {f(s['total_ms_median'], 8, 2)}")
    return "\n".join(lines)


def autopilot_table(results: dict) -> str:
    """The autopilot recordings of each flight: what was sent and how it compares with the truth."""
    head = (f"{'alt':>5} | {'msgs':>5} {'fixes':>5} {'Hz':>5} {'gap s':>5} {'1st fix':>7} | {'calib':>6} "
            f"{'err med':>7} {'err max':>7} | {'hAcc med':>8} {'p95':>5} | {'sAcc med':>8} {'p95':>5} "
            f"{'v err':>5} {'v cal':>5} | {'c2s p50':>7} {'p95':>5}")
    lines = ["Autopilot streams (per message carrying a fix: calib = truth inside its 95 % radius; hAcc 1-sigma m; "
             "sAcc, v err m/s; v cal = truth's velocity inside 2.45 sAcc, %; c2s = capture to send, ms)", head, "-" * len(head)]

    f = _f
    for alt, s in results["altitudes"].items():
        a = s.get("autopilot")
        if not a:
            continue
        lines.append(f"{alt:>5} | {a['messages']:>5} {a['fixes_sent']:>5} {f(a['rate_hz'], 5, 2)} "
                     f"{f(a['max_gap_s'], 5, 2)} {f(a['first_fix_s'], 7)} | {f(a['calibration_pct'], 6)} "
                     f"{f(a['error_m_median'], 7)} {f(a['error_m_max'], 7)} | {f(a['h_acc_m_median'], 8, 2)} "
                     f"{f(a['h_acc_m_p95'], 5, 2)} | {f(a['speed_acc_mps_median'], 8, 2)} "
                     f"{f(a['speed_acc_mps_p95'], 5, 2)} {f(a['speed_error_mps_median'], 5, 2)} "
                     f"{f(a['speed_calibration_pct'], 5, 0)} | "
                     f"{f(a['capture_to_send_ms_p50'], 7, 0)} {f(a['capture_to_send_ms_p95'], 5, 0)}")
    return "\n".join(lines)
