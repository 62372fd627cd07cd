"""The service's health: counters, per-stage latency percentiles, the last fix.

Latencies (ms, p50/p90/p95/p99 of the last ``window``): each stage of a frame, ``total`` (capture to fix),
``output`` (the output thread's work per turn) and ``capture_to_send`` (for every autopilot message carrying
a fix: from the capture of the frame it was predicted from to its send; the delay to tell the autopilot is
chosen from it and ``total``, README "Telling the autopilot"). Counters include ``autopilot_messages`` and
``autopilot_no_fix``.

:class:`Health` is updated by the service threads; ``snapshot()`` returns a JSON-able dict that is logged
periodically and served on ``http://127.0.0.1:PORT/health`` by :class:`HealthServer` (loopback only,
``http.server`` in a daemon thread). Latencies keep the last ``window`` samples per stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from runtime.outputs.json_lines import json_line

logger = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "search", "fusion", "output", "total", "capture_to_send")


class Health:
    def __init__(self, window: int = 1000):
        self.started = time.time()
        self.lock = threading.Lock()
        self.counters = {"frames_in": 0, "frames_processed": 0, "frames_dropped": 0, "corrupt": 0,
                         "read_failures": 0, "reopens": 0, "fixes_trusted": 0, "fixes_untrusted": 0,
                         "output_errors": 0}
        self.latency_ms: dict[str, deque] = {s: deque(maxlen=window) for s in STAGES}
        self.last_fix: dict | None = None
        self.last_trusted_fix: dict | None = None
        self.info: dict = {}

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def set_counts(self, **values) -> None:
        with self.lock:
            self.counters.update(values)

    def observe(self, stage: str, ms: float) -> None:
        with self.lock:
            self.latency_ms.setdefault(stage, deque(maxlen=1000)).append(float(ms))

    def fix(self, fix_dict: dict) -> None:
        with self.lock:
            self.last_fix = fix_dict
            if fix_dict.get("trusted"):
                self.last_trusted_fix = fix_dict
                self.counters["fixes_trusted"] += 1
            else:
                self.counters["fixes_untrusted"] += 1

    def snapshot(self) -> dict:
        with self.lock:
            lat = {}
            for stage, vals in self.latency_ms.items():
                if vals:
                    a = np.fromiter(vals, float)
                    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
                    lat[stage] = {"p50": round(p50, 3), "p90": round(p90, 3), "p95": round(p95, 3),
                                  "p99": round(p99, 3), "n": len(a)}
            uptime = time.time() - self.started
            return {"uptime_s": round(uptime, 1), "counters": dict(self.counters),
                    "fps": round(self.counters["frames_processed"] / uptime, 2) if uptime > 0 else 0.0,
                    "latency_ms": lat, "last_fix": self.last_fix, "last_trusted_fix": self.last_trusted_fix,
                    **({"info": self.info} if self.info else {})}

    def log_line(self) -> str:
        s = self.snapshot()
        c = s["counters"]
        tot = s["latency_ms"].get("total", {})
        last = s["last_trusted_fix"]
        where = f"{last['lat']:.6f},{last['lon']:.6f} ±{last['accuracy_m']}m" if last and last.get("lat") is not None \
            else "none"
        return (f"health: in {c['frames_in']} processed {c['frames_processed']} dropped {c['frames_dropped']} "
                f"corrupt {c['corrupt']} reopens {c['reopens']} fps {s['fps']} latency p50/p99 "
                f"{tot.get('p50', '-')}/{tot.get('p99', '-')} ms trusted {c['fixes_trusted']} last fix {where}")


class HealthServer:
    """GET /health (or /) -> the snapshot as JSON, on 127.0.0.1 only. Port 0 picks a free port."""

    def __init__(self, health: Health, port: int = 0, host: str = "127.0.0.1"):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the health endpoint binds to the loopback only, not {host!r}")
        h = health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] not in ("/", "/health"):
                    self.send_error(404, "try /health")
                    return
                body = json_line(h.snapshot()).encode()  # strict JSON: a NaN in the last fix is null
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                logger.debug("health http: " + fmt, *args)

        self.httpd = ThreadingHTTPServer((host, int(port)), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health-http", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        logger.info("health endpoint on http://127.0.0.1:%d/health", self.port)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
