"""PNG plots of replay results: track over the map, error along the flight, per-altitude bars, reliability.

matplotlib (Agg backend) is imported inside each function, and the map background is read through
``tiles.raster`` (rasterio) only when a raster is given: the onboard runtime never needs either.
Each function writes the PNG atomically and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiles.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_track(path, truth_xy, est_xy, trusted, raster_path=None, title: str = "") -> Path:
    """True track, per-frame estimates (trusted in green, untrusted grey) over the map raster."""
    plt = _plt()
    truth_xy = np.asarray(truth_xy, float).reshape(-1, 2)
    est_xy = np.asarray(est_xy, float).reshape(-1, 2)
    trusted = np.asarray(trusted, bool)
    fig, ax = plt.subplots(figsize=(8, 6.5))
    if raster_path is not None:
        from tiles.raster import open_raster

        with open_raster(raster_path) as r:
            rgb, _, _ = r.overview(max_side=1024)
            xmin, ymin, xmax, ymax = r.bounds_m
        ax.imshow(rgb, extent=(xmin, xmax, ymin, ymax), origin="upper", alpha=0.85)
    ax.plot(truth_xy[:, 0], truth_xy[:, 1], "-", color="white", lw=3, alpha=0.9)
    ax.plot(truth_xy[:, 0], truth_xy[:, 1], "-", color="black", lw=1.2, label="true track")
    ok = np.all(np.isfinite(est_xy), axis=1)
    ax.scatter(est_xy[ok & ~trusted, 0], est_xy[ok & ~trusted, 1], s=12, c="0.6", marker="x",
               label="estimate (not trusted)")
    ax.scatter(est_xy[ok & trusted, 0], est_xy[ok & trusted, 1], s=14, c="lime", edgecolors="darkgreen",
               linewidths=0.5, label="fix (trusted)")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "track over the map")
    return _save(fig, path)


def plot_error(path, t, error_m, trusted, title: str = "") -> Path:
    """Position error (m) along the flight; untrusted frames marked separately."""
    plt = _plt()
    t = np.asarray(t, float)
    err = np.asarray(error_m, float)
    trusted = np.asarray(trusted, bool)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(t, err, color="0.75", lw=0.8, label="per-frame estimate")
    ax.scatter(t[trusted], err[trusted], s=10, c="tab:green", label="trusted fix", zorder=3)
    ax.scatter(t[~trusted], err[~trusted], s=8, c="tab:red", marker="x", label="not trusted", zorder=3)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("error (m)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "position error along the flight")
    return _save(fig, path)


def plot_altitude_bars(path, rows: list[dict], metric: str = "R@1", group: str = "series",
                       title: str = "") -> Path:
    """Grouped bars of ``metric`` per altitude; ``rows`` are dicts with 'altitude_m', ``group`` and metric."""
    plt = _plt()
    alts = sorted({int(r["altitude_m"]) for r in rows})
    series = list(dict.fromkeys(r[group] for r in rows))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(alts) + 2), 4))
    xs = np.arange(len(alts))
    for si, name in enumerate(series):
        vals = []
        for a in alts:
            hit = [r[metric] for r in rows if int(r["altitude_m"]) == a and r[group] == name]
            vals.append(hit[0] if hit else np.nan)
        bars = ax.bar(xs + (si - (len(series) - 1) / 2) * width, vals, width, label=name)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(xs, [f"{a} m" for a in alts])
    ax.set_ylabel(metric + (" (%)" if metric.startswith(("R@", "AP", "fix")) else ""))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or f"{metric} per altitude")
    return _save(fig, path)



def plot_reliability(path, curve: dict, title: str = "") -> Path:
    """Observed share of trusted fixes within the radius of each nominal probability, against the nominal
    (``runtime.replay.figures.reliability``): on the diagonal when the reported accuracy is calibrated."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 100], [0, 100], color="0.6", lw=1, ls="--", label="calibrated")
    ax.plot(curve["nominal_pct"], curve["observed_pct"], "o-", color="tab:blue", label="observed")
    ax.set_xlim(40, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("nominal probability of the radius (%)")
    ax.set_ylabel("trusted fixes with the truth inside (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or f"reported accuracy: reliability ({curve['n']} trusted fixes)")
    return _save(fig, path)
