"""``python -m runtime serve ...`` (the onboard service) and ``python -m runtime replay ...`` (offline)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="settings file (.json or .toml); command-line options override it")
    p.add_argument("--bundle", help="model bundle folder (python -m export)")
    p.add_argument("--db", help="tile database folder")
    p.add_argument("--source", help="camera index, video file, rtsp://, udp://, GStreamer pipeline, or image folder")
    p.add_argument("--altitude", dest="altitude_m", type=float,
                   help="flight altitude in metres (picks the layer; the fallback when --altitude-from is stale)")
    p.add_argument("--altitude-from", dest="altitude_from", metavar="MAVLINK_URL",
                   help="read the height above ground from the autopilot: udpin:0.0.0.0:14551, udpout:HOST:PORT, "
                        "tcp:HOST:PORT or a serial device (the same as --mavlink shares that connection)")
    p.add_argument("--altitude-from-baud", dest="altitude_from_baud", type=int,
                   help="serial baud for --altitude-from (default: --mavlink-baud)")
    p.add_argument("--altitude-stale-s", dest="altitude_stale_s", type=float,
                   help="autopilot altitude older than this is not used (default 2)")
    p.add_argument("--altitude-request-hz", dest="altitude_request_hz", type=float,
                   help="ask the autopilot to stream its altitude messages at this rate (0: do not ask; default 5)")
    p.add_argument("--heading", dest="heading_deg", type=float, metavar="DEG",
                   help="fixed compass heading (degrees clockwise from north) the image top faces, e.g. 0 for a "
                        "gimbal locked north; the fallback while the autopilot's heading is stale")
    p.add_argument("--heading-from", dest="heading_from", metavar="MAVLINK_URL",
                   help="read the heading (ATTITUDE yaw) from the autopilot at this address (default: the "
                        "--altitude-from link; the same address shares one reader and connection)")
    p.add_argument("--camera-yaw-offset-deg", dest="camera_yaw_offset_deg", type=float,
                   help="camera image top turned clockwise from the airframe's nose (added to the autopilot's "
                        "heading; default 0)")
    p.add_argument("--derotate", dest="derotate", action=argparse.BooleanOptionalAction, default=None,
                   help="turn each frame north-up by the heading before embedding (default: on)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"])
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"])
    p.add_argument("--providers", nargs="+", help="ONNX Runtime providers, e.g. CUDAExecutionProvider")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    p.add_argument("--jsonl", help="write JSON lines to PATH, or '-' for stdout")
    p.add_argument("--udp-json", dest="udp_json", help="send JSON datagrams to HOST:PORT")
    p.add_argument("--mavlink", help="GPS_INPUT to udpout:HOST:PORT, udpin:HOST:PORT or a serial device")
    p.add_argument("--mavlink-baud", dest="mavlink_baud", type=int)
    p.add_argument("--health-port", dest="health_port", type=int, help="serve health on 127.0.0.1:PORT/health")
    p.add_argument("--health-log-s", dest="health_log_s", type=float, help="seconds between health log lines")
    p.add_argument("--top-k", dest="top_k", type=int)
    p.add_argument("--search-radius-m", dest="search_radius_m", type=float,
                   help="search only tiles within this radius of the last trusted fix")
    p.add_argument("--max-speed-mps", dest="max_speed_mps", type=float)
    p.add_argument("--min-confidence", dest="min_confidence", type=float)
    p.add_argument("--acquire-frames", dest="acquire_frames", type=int,
                   help="consistent fixes needed before positions are trusted (default 3)")
    p.add_argument("--loop", action="store_true", default=None, help="restart a video file at its end")
    p.add_argument("--drop-frames", dest="drop_frames", action=argparse.BooleanOptionalAction, default=None,
                   help="newest frame wins (default: on for live sources, off for files)")
    p.add_argument("--max-frames", dest="max_frames", type=int, help="stop after N processed frames")


def serve(args) -> int:
    from .config import build_config, load_config_file
    from .service import Service

    file_values = load_config_file(args.config) if args.config else {}
    cfg = build_config(file_values, vars(args))
    service = Service(cfg)
    signal.signal(signal.SIGINT, service.stop)
    signal.signal(signal.SIGTERM, service.stop)
    return service.run()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_arguments(sub.add_parser("serve", help="run the onboard service on a frame source"))
    replay_parser = sub.add_parser("replay", help="replay recorded flights offline and report metrics")
    replay_mod = None
    wants_replay = "replay" in (argv if argv is not None else sys.argv[1:])
    if wants_replay:
        from .replay import cli as replay_mod  # the replay engineer's module; serve works without it

        replay_mod.add_replay_arguments(replay_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "serve":
        # One query at a time: multi-threaded BLAS only fights the engine and capture threads for the cores
        # (measured: search p50 11 ms -> 0.4 ms on 2 cores). Set before numpy is imported; env overrides.
        if "numpy" not in sys.modules:
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            os.environ.setdefault("MKL_NUM_THREADS", "1")
        from tiles.db import DatabaseError

        from .bundle import BundleError
        from .sources import SourceError

        try:
            return serve(args)
        except (ValueError, FileNotFoundError, ImportError, BundleError, DatabaseError, SourceError) as e:
            logging.getLogger("runtime").error("%s", e)
            return 2
    return int(replay_mod.run_replay(args))


if __name__ == "__main__":
    sys.exit(main())
