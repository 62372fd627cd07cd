"""Frame rate of the service with the whole Localizer, against the engine alone (issue 10's ratio).

    python -m tools.bench_flight_rate --bundle B --db DB --flight-raster YEAR.tif [--altitude-m 200]
        [--frames 60] [--threads N] [--out result.json]

Renders one flight (the demo's: 40 m/s, 1 frame/s, heading along the track) to a folder of PNG frames and
runs the real :class:`runtime.service.Service` on it (every frame processed, fixed altitude and heading)
with each fusion setting: the map filter with registration, the map filter with registration every 5th
frame, without registration, and the first version's per-frame gate; the default and the map filter
without registration also with ``--no-pipeline`` (one frame at a time instead of embedding frame n+1
while frame n is fused). The engine alone is timed on the same frames (batch 1). ``--threads``: ONNX
Runtime's intra-op threads, for the engine alone and the service (1 leaves the other core to the fusion,
as a Jetson's GPU engine does). Medians of one run on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from common.cli import add_dataclass_options, parse_options
from common.options import option, shared


def engine_alone(bundle, frames, threads: int | None = None) -> float:
    from runtime.engines.engine import load_engine

    engine = load_engine(bundle, precision="fp32", threads=threads)
    xs = [engine.prepare([f]) for f in frames]
    engine.embed_prepared(xs[0])
    times = []
    for x in xs:
        t0 = time.perf_counter()
        engine.embed_prepared(x)
        times.append(time.perf_counter() - t0)
    engine.close()
    return 1.0 / statistics.median(times)


def service_rate(bundle, db, folder, altitude_m: float, heading_deg: float, **knobs) -> dict:
    from runtime.config import ServiceConfig
    from runtime.service import Service

    cfg = ServiceConfig(bundle=str(bundle), db=str(db), source=str(folder), altitude_m=altitude_m,
                        heading_deg=heading_deg, precision="fp32", drop_frames=False, health_log_s=1e9, **knobs)
    svc = Service(cfg)
    svc.run()
    lat = svc.health.snapshot()["latency_ms"]
    return {"fps": (svc.processed - 1) / (svc.t_last - svc.t_first), "frames": svc.processed,
            "median_ms": {k: v.get("p50") for k, v in lat.items()}}


@dataclass
class Options:
    """Defaults of the shared sizes here: --altitude-m 200, --frames 60."""

    bundle: str | None = shared("bundle", required=True)
    db: str | None = shared("db", required=True)
    flight_raster: str | None = shared("flight_raster", required=True)
    altitude_m: float | None = shared("altitude_m")
    frames: int | None = shared("frames")
    threads: int | None = shared("threads")
    work: str | None = shared("work")
    out: str | None = option(None, "results JSON")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_options(ap, Options)
    return ap


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options, altitude_m=200.0, frames=60, work="runs/bench_flight_rate")
    args.work, args.out = Path(args.work), args.out and Path(args.out)

    import cv2

    from runtime.replay.flights import GeoTiffFlight

    folder = args.work / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    flight = GeoTiffFlight(args.flight_raster, args.altitude_m, pattern="line", speed_mps=40.0, fps=1.0,
                           photometric=0.3, max_frames=args.frames, seed=1)
    frames, heading = [], 0.0
    for i, (_, img, meta) in enumerate(flight):
        cv2.imwrite(str(folder / f"{i:04d}.png"), img[:, :, ::-1])
        frames.append(img)
        heading = float(meta.get("heading_deg", 0.0))  # a line: one heading for the whole flight
    res = {"engine_alone_fps": engine_alone(args.bundle, frames, args.threads), "threads": args.threads,
           "machine_note": "one run, 2-core VM"}
    no_reg = {"registration": False, "verify_lock": False}
    settings = {"map_filter + registration (default: every 5th frame once tracking)": {},
                "the default, --no-pipeline": {"pipeline": False},
                "map_filter + registration on every frame": {"registration_every_tracking": 1},
                "map_filter + registration every 5th frame": {"registration_every": 5},
                "map_filter, no registration": no_reg,
                "map_filter, no registration, --no-pipeline": {**no_reg, "pipeline": False}}
    for name, knobs in settings.items():
        r = service_rate(args.bundle, args.db, folder, args.altitude_m, heading, threads=args.threads, **knobs)
        r["ratio_to_engine"] = r["fps"] / res["engine_alone_fps"]
        res[name] = r
        print(f"{name:>66}: {r['fps']:6.2f} fps = {r['ratio_to_engine']:.2f} of the engine alone "
              f"({res['engine_alone_fps']:.1f} fps)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
