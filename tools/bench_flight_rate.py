"""Frame rate and latency of the whole onboard chain at camera rate, against the engine alone.

    python -m tools.bench_flight_rate --bundle B --db DB --flight-raster YEAR.tif [--altitude-m 200]
        [--camera-fps 30] [--seconds 20] [--threads N] [--out result.json]

Renders one flight (40 m/s along a curve, heading along the track, photometric changes) at the camera's
rate (``--camera-fps``: 1.3 m between frames at 30 fps) and runs the real :class:`runtime.service.Service` on it,
the frames handed over from memory as a camera driver would (no file decoding), for each setting:

The engine alone runs with the threads the pipelined service gives it (every core but one unless
``--threads``), so the ratio compares like with like.

- ``throughput``: every frame processed as fast as the chain goes (frames/s over the run);
- ``live``: the frames released at the camera's rate in real time, the newest frame winning when the chain
  falls behind (as on a live source): capture-to-fix latency p50/p95, frames dropped.

Settings: the default (keyframes every 0.2 s of the flight's clock, registration in its own thread); every
frame a keyframe (``keyframe_s`` 0: the whole chain on every frame); registration on every keyframe while
tracking; without registration; the default with ``--no-pipeline``. The engine alone is timed on the same
frames (batch 1, the service's thread setting) and inside the service (its ``inference`` stage).
Medians of one run on this machine; the machine must be otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from common import validate
from common.cli import options_parser, parse_options
from common.options import option, shared

SETTINGS = {
    "default": {},
    "every frame a keyframe (keyframe_s 0)": {"keyframe_s": 0.0},
    "registration every keyframe while tracking": {"registration_tracking_s": 0.0},
    "no registration": {"registration": False, "verify_lock": False},
    "default, --no-pipeline": {"pipeline": False},
}



def engine_alone(bundle, frames, threads: int | None) -> float:
    """Median milliseconds of one frame through the engine (preprocessing excluded), batch 1."""
    from runtime.engines.engine import load_engine

    engine = load_engine(bundle, precision="fp32", threads=threads)
    xs = [engine.prepare([f]) for f in frames[:200]]
    engine.embed_prepared(xs[0])
    times = []
    for x in xs:
        t0 = time.perf_counter()
        engine.embed_prepared(x)
        times.append((time.perf_counter() - t0) * 1e3)
    engine.close()
    return statistics.median(times)


class PacedFrames:
    """The flight's frames released at ``fps`` in real time (a camera); each stamped with its capture time."""

    def __init__(self, frames, fps: float, live: bool):
        self.frames, self.fps, self.live = frames, fps, live

    def __iter__(self):
        start = time.perf_counter()
        for i, (t, img, _) in enumerate(self.frames):
            if self.live:
                delay = start + i / self.fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            yield t, img, {"index": i, "capture_time": time.time()}


def service_run(bundle, db, frames, altitude_m: float, heading_deg: float, fps: float, live: bool,
                threads: int | None, **knobs) -> dict:
    from runtime.config import ServiceConfig
    from runtime.inputs.sources import IterSource
    from runtime.service import Service

    cfg = ServiceConfig(bundle=str(bundle), db=str(db), source="memory", altitude_m=altitude_m,
                        heading_deg=heading_deg, precision="fp32", drop_frames=live, health_log_s=1e9,
                        threads=threads, **knobs)
    source = IterSource(PacedFrames(frames, fps, live), fps=fps, name="camera (memory)", live=live)
    svc = Service(cfg, source=source)
    t0 = time.perf_counter()
    svc.run()
    wall = time.perf_counter() - t0
    snap = svc.health.snapshot()
    lat = snap["latency_ms"]
    out = {"frames_processed": svc.processed, "frames_dropped": snap["counters"].get("frames_dropped", 0),
           "fps": round(svc.processed / wall, 2), "wall_s": round(wall, 2),
           "median_ms": {k: v.get("p50") for k, v in lat.items()},
           "latency_ms": {q: lat.get("total", {}).get(q) for q in ("p50", "p95", "p99")}}
    return out


def render(flight_raster, altitude_m: float, fps: float, seconds: float):
    from runtime.replay.flights import GeoTiffFlight

    fl = GeoTiffFlight(flight_raster, altitude_m, pattern="curve", speed_mps=40.0, fps=fps, photometric=0.3,
                       max_frames=int(round(fps * seconds)), seed=2016)
    frames = list(fl)
    return frames, float(frames[0][2].get("heading_deg", 0.0))


@dataclass
class Options:
    """Defaults of the shared sizes here: --altitude-m 200."""

    bundle: str | None = shared("bundle", required=True)
    db: str | None = shared("db", required=True)
    flight_raster: str | None = shared("flight_raster", required=True)
    altitude_m: float | None = shared("altitude_m")
    camera_fps: float = option(30.0, "the camera's frame rate", check=validate.range_rule(1.0, 240.0))
    seconds: float = option(20.0, "flight duration", check=validate.range_rule(1.0, 3600.0))
    threads: int | None = shared("threads")
    settings: list[str] = option(list(SETTINGS), "which chain settings to run", choices=list(SETTINGS))
    out: str | None = option(None, "results JSON")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options, altitude_m=200.0)
    args.out = args.out and Path(args.out)
    import logging

    logging.basicConfig(level=logging.WARNING)
    frames, heading = render(args.flight_raster, args.altitude_m, args.camera_fps, args.seconds)
    # a fixed heading for the run: the flight turns, but the service is given the first frame's (the
    # throughput does not depend on it; the fixes' quality is measured by the replays)
    from runtime.threads import engine_threads

    alone_threads = engine_threads(args.threads, True)  # the service's default (pipelined) setting
    res = {"fps_camera": args.camera_fps, "frames": len(frames), "threads": args.threads,
           "engine_alone_ms": round(engine_alone(args.bundle, [f[1] for f in frames], alone_threads), 3),
           "settings": {}}
    print(f"engine alone: {res['engine_alone_ms']:.2f} ms a frame ({1e3 / res['engine_alone_ms']:.0f} fps)")
    for name in args.settings:
        row = {}
        for mode in ("throughput", "live"):
            r = service_run(args.bundle, args.db, frames, args.altitude_m, heading, args.camera_fps, mode == "live",
                            args.threads, **SETTINGS[name])
            row[mode] = r
        inf = row["throughput"]["median_ms"].get("inference")
        row["inference_ratio"] = round(inf / res["engine_alone_ms"], 2) if inf else None
        res["settings"][name] = row
        t, live = row["throughput"], row["live"]
        print(f"{name:>45}: {t['fps']:6.1f} fps, inference {inf} ms ({row['inference_ratio']}x alone); live at "
              f"{args.camera_fps:g} fps: latency p50 {live['latency_ms']['p50']} ms p95 {live['latency_ms']['p95']} ms, "
              f"{live['frames_dropped']} of {len(frames)} dropped")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
