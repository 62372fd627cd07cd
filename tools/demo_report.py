"""The demo's report: the tables it prints and the files of ``<out>/report/`` (summary JSON and CSV, the
comparison plots, report.md)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path


def eval_table(evals: dict) -> str:
    """Held-out retrieval per altitude (the training's evaluation), frozen vs trained."""
    head = f"{'altitude':>8} | {'model':<8} | {'R@1 %':>6} {'R@5 %':>6} | {'median error m':>14}"
    lines = [head, "-" * len(head)]
    alts = sorted(next(iter(evals.values()))["per_altitude"], key=int)
    for alt in [*alts, "all"]:
        for model, ev in evals.items():
            m = ev["all"] if alt == "all" else ev["per_altitude"][alt]["all"]
            name = "all" if alt == "all" else f"{alt} m"
            lines.append(f"{name:>8} | {model:<8} | {m['R@1']:6.1f} {m['R@5']:6.1f} | {m['median_error_m']:14.0f}")
    return "\n".join(lines)


def report(cfg, summaries: dict, report_dir: Path, timings: dict, engines: dict,
           evals: dict | None = None) -> str:
    """Write summary JSON/CSV, the comparison plots and report.md; return the printed table."""
    from runtime.replay.plots import plot_altitude_bars
    from tiles.io import atomic_write_json, atomic_write_text

    rows = []
    for model, per_alt in summaries.items():
        for alt, s in per_alt.items():
            rows.append({"model": model, "altitude_m": alt, "n_frames": s["n_frames"], "R@1": s["R@1"],
                         "R@5": s["R@5"], "error_m_median": s["error_m_median"], "error_m_p95": s["error_m_p95"],
                         "raw_error_m_median": s["error_raw_m_median"], "fix_rate": s["fix_rate"],
                         "availability_pct": s["availability_pct"], "ttff_frames": s["ttff_frames"],
                         "wrong_trusted": s["wrong_trusted"], "calibration_pct": s["calibration_pct"],
                         "fps": s["fps_pipeline"], "ms_per_frame": s["total_ms_median"]})
    fields = list(rows[0])
    csv_lines = [",".join(fields)] + [",".join("" if r[f] is None else str(r[f]) for f in fields) for r in rows]
    atomic_write_text(report_dir / "summary.csv", "\n".join(csv_lines) + "\n")
    atomic_write_json(report_dir / "summary.json", {"config": asdict(cfg), "engines": engines,
                                                    "timings_s": timings, "rows": rows,
                                                    "held_out_eval": evals or {}})
    for metric, title in (("R@1", "top-1 tile contains the true position (%)"),
                          ("raw_error_m_median", "median error of each frame's estimate (m)"),
                          ("fix_rate", "trusted fixes (%)")):
        safe = metric.replace("@", "").replace("_m_", "_").lower()
        plot_altitude_bars(report_dir / f"compare_{safe}.png",
                           [{"altitude_m": r["altitude_m"], "series": r["model"], metric: r[metric] or 0.0}
                            for r in rows if isinstance(r["altitude_m"], int)], metric, title=f"frozen ImageNet vs trained: {title}")
    table = "Flights replayed through the onboard runtime:\n" + format_table(rows)
    if evals:
        table = ("Held-out retrieval (views of the held-out years against map tiles, the training's own "
                 "evaluation):\n" + eval_table(evals) + "\n\n" + table)
    years = ", ".join(map(str, cfg.flight_years))
    md = ["# Demo report\n", f"Flights over the {cfg.reference_year} map rendered from {years} (unseen in training); "
          f"{cfg.flight_frames} frames per year and altitude.\n",
          "```", table, "```\n", "Engines: " + ", ".join(f"{k}: {v}" for k, v in engines.items()) + "\n",
          "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + "\n",
          "R@1: the top-1 tile contains the true position. fix: frames with a trusted fix; avail: of the frames "
          "after each flight's first trusted fix; ttff: frames to the first trusted fix (the slowest flight); "
          "wrong: trusted fixes more than a footprint off; calib: trusted fixes whose 95 % radius holds the "
          "truth. err: distance of the trusted fix from the truth (median / 95th percentile). ms/frame: the "
          "Localizer (north-up, engine, search, odometry, map filter, registration) on this machine. "
          f"kidnap {cfg.kidnap_altitude_m:g}: one flight per year carried elsewhere in mid-flight.\n",
          "Plots: `compare_*.png` (per altitude), `trained/<year>/track_<alt>m.png` (track over the map), "
          "`trained/<year>/error_<alt>m.png` (error along the flight).\n"]
    atomic_write_text(report_dir / "report.md", "\n".join(md))
    return table


def format_table(rows: list[dict]) -> str:
    def f(v, w, nd=1):
        return f"{v:{w}.{nd}f}" if v is not None else f"{'-':>{w}}"

    head = (f"{'altitude':>8} | {'model':<8} | {'R@1 %':>6} {'R@5 %':>6} | {'fix %':>6} {'avail':>6} {'ttff':>5} "
            f"{'wrong':>5} {'calib':>6} | {'err med':>7} {'err p95':>7} m | {'ms/frame':>8}")
    lines = [head, "-" * len(head)]
    for alt in sorted({r["altitude_m"] for r in rows}, key=str):
        for r in (r for r in rows if r["altitude_m"] == alt):
            name = f"{alt} m" if isinstance(alt, int) else str(alt)
            lines.append(f"{name:>8} | {r['model']:<8} | {f(r['R@1'], 6)} {f(r['R@5'], 6)} | "
                         f"{f(r['fix_rate'], 6)} {f(r['availability_pct'], 6)} {f(r['ttff_frames'], 5, 0)} "
                         f"{r['wrong_trusted'] if r['wrong_trusted'] is not None else '-':>5} "
                         f"{f(r['calibration_pct'], 6)} | {f(r['error_m_median'], 7, 0)} "
                         f"{f(r['error_m_p95'], 7, 0)}   | {f(r['ms_per_frame'], 8)}")
    return "\n".join(lines)
