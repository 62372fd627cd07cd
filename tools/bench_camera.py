"""How the flight chain fares with a real camera: one GeoTIFF replay per condition and held-out year.

Each condition is a set of :class:`runtime.replay.geotiff.FlightSpec` fields (the real camera's:
attitude noise, a fixed wing's banked turns, lens distortion, relief, the barometer's bias), and under
``"localizer"`` what the user told the chain (:class:`runtime.localisation.config.LocalizerConfig`), on top of the
demo's flight (60 frames at 40 m/s, photometric changes 0.3, seeded by the year), flown by
``runtime.replay.geotiff.replay_geotiff`` (the service's Localizer) over every layer of the database. Per
condition, pooled over years and layers: trusted fixes, wrong ones (more than ``--wrong-m`` off),
median and p95 error of the trusted fixes, the share with the truth inside the reported r95, the
availability after the first fix, the median off-nadir angle and height error of the frames.

    flock /work/heavy.lock python -m tools.bench_camera --bundle BUNDLE --db DB \\
        --map data/naip/..._20180716.tif --flights data/naip/..._20160816.tif data/naip/..._20200831.tif \\
        --out docs/results/camera.json
"""

from __future__ import annotations

import argparse
import logging
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import validate
from common.cli import options_parser, parse_options
from common.options import option, shared

CONDITIONS = {
    "nadir, flat (reference)": {},
    "camera mounted 10 deg forward": {"tilt_deg": 10.0},
    "camera mounted 20 deg forward": {"tilt_deg": 20.0},
    "attitude noise 5 deg": {"attitude_noise_deg": 5.0},
    "attitude noise 10 deg": {"attitude_noise_deg": 10.0},
    "weave, level (reference)": {"pattern": "weave"},
    "fixed wing, 25 deg banked turns": {"pattern": "weave", "airframe": "fixed_wing", "bank_deg": 25.0},
    "lens k1 = -0.2": {"lens_k1": -0.2},
    "50 m relief": {"relief_m": 50.0},
    "baro bias 10 m": {"baro_bias_m": 10.0},
    "baro bias 10 m, told (--height-sigma-m 10)": {"baro_bias_m": 10.0, "localizer": {"height_sigma_m": 10.0}},
    "attitude noise 5 deg, reported 0.1 s late": {"attitude_noise_deg": 5.0, "report_delay_s": 0.1},
    "all: noise 5, turns 25, k1, relief 50, baro 10": {
        "pattern": "weave", "airframe": "fixed_wing", "bank_deg": 25.0, "attitude_noise_deg": 5.0,
        "lens_k1": -0.2, "relief_m": 50.0, "baro_bias_m": 10.0},
}
FLIGHT = {"max_frames": 60, "speed_mps": 40.0, "photometric": 0.3}


def condition_figures(flights: list[list[dict]], wrong_m: float) -> dict:
    """The figures of one condition from its flights' frame records (pooled)."""
    from runtime.replay.common import pct, rnd
    from runtime.replay.figures import pooled_figures

    recs = [r for f in flights for r in f]
    trusted = [r for r in recs if r["trusted"]]
    err = [r["error_m"] for r in trusted if r["error_m"] is not None]
    inside = [r["error_m"] <= r["r95_m"] for r in trusted if r["error_m"] is not None and r.get("r95_m") is not None]
    pooled = pooled_figures(flights)
    off = [r["true_off_nadir_deg"] for r in recs if r.get("true_off_nadir_deg") is not None]
    hag = [abs(r.get("height_m", r["altitude_m"]) - r["true_hag_m"]) for r in recs
           if r.get("true_hag_m") is not None and r.get("height_m", r["altitude_m"]) is not None]
    ms = [sum(r[k] for k in ("preprocess_ms", "inference_ms", "search_ms", "fusion_ms")) for r in recs]
    return {"frames": len(recs), "trusted": len(trusted), "wrong": sum(e > wrong_m for e in err),
            "error_m_median": rnd(pct(err, 50)), "error_m_p95": rnd(pct(err, 95)),
            "truth_in_r95_pct": rnd(100.0 * float(np.mean(inside))) if inside else None,
            "availability_pct": pooled["availability_pct"], "ttff_frames_worst": pooled["ttff_frames"],
            "off_nadir_deg_median": rnd(pct(off, 50)) if off else 0.0,
            "height_error_m_median": rnd(pct(hag, 50)) if hag else 0.0, "ms_per_frame_median": rnd(pct(ms, 50))}


def flight_row(records: list[dict], year: int, altitude: str, wrong_m: float) -> dict:
    """One flight's trusted and wrong fixes and median error (for the breakdown)."""
    from runtime.replay.common import pct, rnd

    err = [r["error_m"] for r in records if r["trusted"] and r["error_m"] is not None]
    return {"year": year, "altitude_m": altitude, "trusted": len(err), "wrong": sum(e > wrong_m for e in err),
            "error_m_median": rnd(pct(err, 50))}


def run(args) -> dict:
    from runtime.engines.engine import load_engine
    from runtime.localisation.config import LocalizerConfig
    from runtime.replay.figures import flight_frames
    from runtime.replay.geotiff import replay_geotiff

    engine = load_engine(args.bundle, precision="fp32")
    out = {"command": "python -m tools.bench_camera " + " ".join(_portable(args.argv, args)),
           "map": Path(args.map).name, "flights": [Path(f).name for f in args.flights],
           "flight": FLIGHT, "wrong_m": args.wrong_m, "machine": f"{platform.machine()}, {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d"), "conditions": {}}
    for name, spec in CONDITIONS.items():
        if args.conditions and not re.search(args.conditions, name):
            continue
        flights, rows, t0 = [], [], time.perf_counter()
        for path in args.flights:
            year = int(re.search(r"(\d{4})\d{4}\.tif$", str(path)).group(1))
            flight = {k: v for k, v in spec.items() if k != "localizer"}
            res = replay_geotiff(engine, args.map, flight_raster=path, db=args.db, altitudes=args.altitudes,
                                 localizer=LocalizerConfig(**spec.get("localizer", {})), plots=False, seed=year,
                                 **FLIGHT, **flight)
            for alt, frames in flight_frames(res).items():
                flights.append(frames)
                rows.append(flight_row(frames, year, alt, args.wrong_m))
        figs = condition_figures(flights, args.wrong_m)
        figs["wall_s"] = round(time.perf_counter() - t0, 1)
        out["conditions"][name] = {"spec": spec, **figs, "flights": rows}
        logging.getLogger("bench_camera").info("%s: %s", name, figs)
    return out


def _portable(argv: list[str], args) -> list[str]:
    """The command line with the bundle and database as BUNDLE and DB, an absolute --out as OUT.json (no path
    of this machine)."""
    names = {str(args.bundle): "BUNDLE", str(args.db): "DB"}
    if args.out and Path(args.out).is_absolute():
        names[str(args.out)] = "OUT.json"
    return [names.get(a, a) for a in argv]


def table(res: dict) -> str:
    head = ("| condition | frames | trusted | wrong > {w:g} m | median error (m) | p95 error (m) | truth inside r95 "
            "| availability | worst ttff | median off nadir | median height error (m) | ms/frame |"
            ).format(w=res["wrong_m"])
    lines = [head, "|" + "---|" * 12]

    def f(v, nd=1):
        return "-" if v is None else f"{v:.{nd}f}"

    for name, c in res["conditions"].items():
        lines.append(f"| {name} | {c['frames']} | {c['trusted']} | {c['wrong']} | {f(c['error_m_median'])} | "
                     f"{f(c['error_m_p95'])} | {f(c['truth_in_r95_pct'], 0)} % | {f(c['availability_pct'], 0)} % | "
                     f"{f(c['ttff_frames_worst'], 0)} | {f(c['off_nadir_deg_median'])} deg | "
                     f"{f(c['height_error_m_median'])} | {f(c['ms_per_frame_median'])} |")
    return "\n".join(lines)


@dataclass
class Options:
    bundle: str | None = shared("bundle", required=True)
    db: str | None = shared("db", required=True)
    map: str | None = shared("map", required=True)
    flights: list[str] = option([], "held-out rasters (year in the name)", required=True)
    altitudes_m: list[float] | None = shared("altitudes_m")
    wrong_m: float = option(25.0, "a trusted fix farther than this from the truth is wrong, metres",
                            check=validate.range_rule(0.0, None, lo_open=True))
    conditions: str | None = option(None, "regular expression: run the matching conditions only")
    out: str | None = option(None, "results JSON")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__, "python -m tools.bench_camera")


def main(argv=None) -> int:
    import sys

    args = parse_options(build_parser(), argv, Options)
    args.altitudes = args.altitudes_m
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = run(args)
    if args.out:
        from tiles.io import atomic_write_json

        atomic_write_json(args.out, res)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
