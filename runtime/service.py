"""The onboard service: camera -> engine -> nearest tiles -> fused position -> JSON lines / MAVLink.

Three threads overlap the work:

    capture thread ──► FrameSlot (1 frame; the newest wins on live sources) ──► inference (caller's thread)
        preprocess, engine, search, position fusion ──► output queue ──► output thread (JSON, UDP, MAVLink)

The camera is never blocked by inference: on a live source a frame that arrives while the previous one
is still waiting replaces it (counted as dropped). Files and folders are processed frame by frame unless
``drop_frames`` is set. :meth:`Service.stop` (wired to SIGINT/SIGTERM by ``python -m runtime serve``)
ends capture, drains the queue, writes a final summary record and flushes and closes every output.

The altitude layer of the database is chosen per frame from the current altitude: the autopilot's
(``altitude_from``, :mod:`runtime.autopilot`) while it is fresh, else the given ``altitude_m``. A database
with several layers and no altitude from either gives "no fix" (reason ``no altitude``), never a layer
picked at random. Each JSON line records the altitude used, its source and age, and the layer.

Map tiles are north-up; the camera faces wherever the drone (or gimbal) points. Before the engine, each
frame is turned north-up (:func:`runtime.preprocess.north_up`, timed as part of ``preprocess``) by the
heading its image top faces: the autopilot's fresh heading (``heading_from``, which defaults to the
``altitude_from`` link and then shares its reader) plus ``camera_yaw_offset_deg``, else the fixed
``heading_deg``. With neither, the frame is embedded as it is (the fix is still attempted; the service
warns and counts ``frames_no_heading``). ``derotate=False`` turns this off. Each JSON line records
``heading_deg`` (the heading used, or null), ``heading_source`` and ``heading_age_s``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time

import numpy as np

from .config import ServiceConfig
from .engine import check_engine_database, load_engine
from .health import Health, HealthServer
from .outputs import JsonLinesOutput, MavlinkGpsOutput, UdpJsonOutput, fix_record
from .position import Fix, PositionFilter, estimate_fix
from .preprocess import north_up
from .search import Matches, Searcher
from .sources import SourceStats, open_source

logger = logging.getLogger(__name__)


class FrameSlot:
    """A one-frame hand-over between capture and inference."""

    def __init__(self, drop: bool):
        self.drop = drop
        self.cond = threading.Condition()
        self.item = None
        self.closed = False
        self.dropped = 0

    def put(self, item, stop: threading.Event) -> None:
        with self.cond:
            if self.drop:
                if self.item is not None:
                    self.dropped += 1
                self.item = item
            else:
                while self.item is not None and not stop.is_set():
                    self.cond.wait(0.1)
                self.item = item
            self.cond.notify_all()

    def get(self, timeout: float = 0.2):
        with self.cond:
            if self.item is None and not self.closed:
                self.cond.wait(timeout)
            item, self.item = self.item, None
            self.cond.notify_all()
            return item

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def finished(self) -> bool:
        with self.cond:
            return self.closed and self.item is None


class Service:
    def __init__(self, cfg: ServiceConfig, *, source=None, engine=None, db=None):
        from tiles.db import TileDatabase

        self.cfg = cfg
        self._stop = threading.Event()
        self.engine = engine or load_engine(cfg.bundle, precision=cfg.precision, backend=cfg.backend,
                                            providers=cfg.providers, threads=cfg.threads, spin=cfg.spin)
        self.db = db or TileDatabase.open(cfg.db)
        check_engine_database(self.engine, self.db)  # DatabaseMismatchError names the differing fields
        self.layer = self._initial_layer()
        self.altitude: dict = {"altitude_m": cfg.altitude_m, "source": "given" if cfg.altitude_m is not None
                               else None, "age_s": None}
        self._logged_layer_source: tuple | None = None  # what the last layer log line said
        self.searcher = Searcher(self.db)
        self.filter = PositionFilter(max_speed_mps=cfg.max_speed_mps, min_confidence=cfg.min_confidence,
                                     acquire_frames=cfg.acquire_frames, reacquire_frames=cfg.acquire_frames)
        self.health = Health()
        self.source_stats = SourceStats()
        if source is None:
            source = open_source(cfg.source, stop=self._stop, stats=self.source_stats, loop=cfg.loop,
                                 backoff_s=(0.5, cfg.backoff_max_s), read_timeout_s=cfg.read_timeout_s)
        else:
            if hasattr(source, "stop"):
                source.stop = self._stop
            if hasattr(source, "stats"):
                self.source_stats = source.stats
        self.source = source
        live = bool(getattr(source, "live", False))
        self.drop_frames = live if cfg.drop_frames is None else bool(cfg.drop_frames)
        self.outputs = []
        if cfg.jsonl:
            self.outputs.append(JsonLinesOutput(cfg.jsonl))
        if cfg.udp_json:
            self.outputs.append(UdpJsonOutput(cfg.udp_json))
        if cfg.mavlink:
            self.outputs.append(MavlinkGpsOutput(cfg.mavlink, baud=cfg.mavlink_baud,
                                                 satellites_visible=cfg.satellites_visible))
        for name in ("heading_deg", "camera_yaw_offset_deg"):
            v = getattr(cfg, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number of degrees, got {v!r}")
        self.autopilot = self._open_reader(cfg.altitude_from) if cfg.altitude_from else None  # the altitude's
        self.heading_reader = self._open_heading_reader()
        self.heading: dict = {"heading_deg": None, "source": None, "age_s": None}
        self._logged_heading_source: object = ()  # what the last heading log line said (() = nothing yet)
        self.health_server = HealthServer(self.health, cfg.health_port) if cfg.health_port is not None else None
        self._out_q: queue.Queue = queue.Queue(maxsize=256)
        self.processed = 0
        self.t_first: float | None = None  # perf_counter at the first frame's start, the last frame's end
        self.t_last: float | None = None

    # ---- altitude -----------------------------------------------------------------------------
    def _initial_layer(self) -> int | None:
        """The layer before the first frame; None when it is chosen per frame from the autopilot."""
        cfg, n = self.cfg, len(self.db.layers)
        if n > 1:
            # fails now, not per frame, when no layer records its altitude
            self.db.layer_for_altitude(cfg.altitude_m if cfg.altitude_m is not None else 0.0)
        if cfg.altitude_m is not None or n == 1:
            return self.db.layer_for_altitude(cfg.altitude_m)
        if cfg.altitude_from:
            return None
        alts = [lay.get("altitude_m") for lay in self.db.layers]
        raise ValueError(f"the database {self.db.path} has {n} altitude layers {alts}: give --altitude METRES "
                         "or --altitude-from MAVLINK_URL (the autopilot's altitude) to choose one")

    def _open_reader(self, url: str):
        """An autopilot reader on ``url``; on the --mavlink output's link when it is the same address."""
        from .autopilot import AutopilotReader

        cfg = self.cfg
        shared = next((o for o in self.outputs if isinstance(o, MavlinkGpsOutput) and o.url == url), None)
        return AutopilotReader(url, baud=cfg.altitude_from_baud or cfg.mavlink_baud,
                               stale_s=cfg.altitude_stale_s, request_hz=cfg.altitude_request_hz,
                               conn=shared.conn if shared else None, send_lock=shared.lock if shared else None)

    def _readers(self) -> list:
        """The distinct autopilot readers (altitude and heading share one when their address is the same)."""
        out = []
        for r in (self.autopilot, self.heading_reader):
            if r is not None and all(r is not o for o in out):
                out.append(r)
        return out

    # ---- heading ------------------------------------------------------------------------------
    def _open_heading_reader(self):
        cfg = self.cfg
        if not cfg.derotate:
            if cfg.heading_from or cfg.heading_deg is not None:
                logger.info("--no-derotate: the heading settings are not used")
            return None
        url = cfg.heading_from or cfg.altitude_from
        if not url:
            return None
        if url == cfg.altitude_from and self.autopilot is not None:
            return self.autopilot  # one reader, one link for both
        return self._open_reader(url)

    def current_heading(self) -> dict:
        """{"heading_deg", "source", "age_s"}: the compass heading the image top faces. The autopilot's fresh
        heading plus ``camera_yaw_offset_deg`` (source ``autopilot:<attitude|vfr_hud|global_position_int>``),
        else the fixed ``heading_deg`` (``given``), else none (also when derotation is off)."""
        from .autopilot import compass_deg

        cfg = self.cfg
        if not cfg.derotate:
            return {"heading_deg": None, "source": None, "age_s": None}
        if self.heading_reader is not None:
            r = self.heading_reader.heading()
            if r is not None:
                return {"heading_deg": compass_deg(r.heading_deg + (cfg.camera_yaw_offset_deg or 0.0)),
                        "source": f"autopilot:{r.source}", "age_s": r.age_s}
        if cfg.heading_deg is not None:
            return {"heading_deg": compass_deg(cfg.heading_deg), "source": "given", "age_s": None}
        return {"heading_deg": None, "source": None, "age_s": None}

    def _note_heading(self, hdg: dict) -> None:
        """Log when the heading's source changes (a warning when there is none), count frames without one."""
        if self.cfg.derotate and hdg["source"] is None:
            self.health.count("frames_no_heading")
        if hdg["source"] != self._logged_heading_source:
            self._logged_heading_source = hdg["source"]
            if hdg["source"] is not None:
                logger.info("heading %.1f deg from %s: frames turned north-up", hdg["heading_deg"], hdg["source"])
            elif self.cfg.derotate:
                logger.warning("no heading (%s): frames are embedded as the camera saw them, not north-up like "
                               "the tiles; give --heading DEG or --heading-from MAVLINK_URL",
                               "autopilot silent or stale, no --heading" if self.heading_reader is not None
                               else "no --heading, --heading-from or --altitude-from")
        self.heading = hdg

    def _sync_heading(self) -> None:
        """Health's view of the heading (refreshed every loop turn)."""
        h, cfg = self.heading, self.cfg
        info = {"heading_deg": None if h["heading_deg"] is None else round(h["heading_deg"], 3),
                "source": h["source"], "age_s": None if h["age_s"] is None else round(h["age_s"], 3),
                "derotate": cfg.derotate, "given_deg": cfg.heading_deg,
                "camera_yaw_offset_deg": cfg.camera_yaw_offset_deg}
        if self.heading_reader is not None:
            st = self.heading_reader.status()
            info["autopilot"] = {"url": st["url"], "heading": st["heading"], "sources": st["heading_sources"]}
        self.health.info = {**self.health.info, "heading": info}  # replaced, never mutated

    def _heading_text(self) -> str:
        h = self.heading
        if not self.cfg.derotate:
            return "heading not used (--no-derotate)"
        if h["source"] is None:
            n = self.health.snapshot()["counters"].get("frames_no_heading", 0)
            return f"heading none ({n} frames not turned north-up)"
        age = f", {h['age_s']:.1f} s old" if h["age_s"] is not None else ""
        return f"heading {h['heading_deg']:.1f} deg ({h['source']}{age})"

    def _heading_line(self) -> str:
        """The self-check's line about the heading."""
        cfg = self.cfg
        if not cfg.derotate:
            return "heading: not used (--no-derotate): frames are embedded as the camera saw them"
        if self.heading_reader is not None:
            r = self.heading_reader.heading()
            offset = (f", camera yaw offset {cfg.camera_yaw_offset_deg:+g} deg" if cfg.camera_yaw_offset_deg
                      else "")
            now = (f"now {self.current_heading()['heading_deg']:.1f} deg from autopilot:{r.source} "
                   f"({r.age_s:.1f} s old)" if r is not None else "no reading yet")
            fallback = (f"{cfg.heading_deg:g} deg (--heading)" if cfg.heading_deg is not None
                        else "none: frames not turned north-up while it is stale")
            return (f"heading: {self.heading_reader.describe('heading')} (ATTITUDE yaw, else VFR_HUD, else "
                    f"GLOBAL_POSITION_INT){offset}, {now}; fallback {fallback}")
        if cfg.heading_deg is not None:
            return f"heading: {cfg.heading_deg:g} deg given (--heading): every frame turned north-up by it"
        return ("heading: none (no --heading, --heading-from or --altitude-from): frames are NOT turned north-up "
                "although the tiles are; give --heading DEG or --heading-from MAVLINK_URL")

    def current_altitude(self) -> dict:
        """{"altitude_m", "source", "age_s"}: the autopilot's fresh reading, else the given altitude, else
        none (source None). Sources: ``autopilot:<rangefinder|relative_alt|...>`` or ``given``."""
        if self.autopilot is not None:
            r = self.autopilot.current()
            if r is not None:
                return {"altitude_m": r.altitude_m, "source": f"autopilot:{r.source}", "age_s": r.age_s}
        if self.cfg.altitude_m is not None:
            return {"altitude_m": self.cfg.altitude_m, "source": "given", "age_s": None}
        return {"altitude_m": None, "source": None, "age_s": None}

    def _choose_layer(self, alt: dict) -> int | None:
        if len(self.db.layers) == 1:
            layer = 0
        elif alt["altitude_m"] is None:
            layer = None
        else:
            layer = self.db.layer_for_altitude(alt["altitude_m"])
        if (layer, alt["source"]) != self._logged_layer_source:
            self._logged_layer_source = (layer, alt["source"])
            name = self.db.layers[layer]["name"] if layer is not None else None
            if alt["source"]:
                logger.info("altitude %.1f m from %s: layer %r", alt["altitude_m"], alt["source"], name)
            elif layer is not None:
                logger.info("no altitude: the database's only layer %r", name)
            else:
                logger.warning("no altitude (autopilot silent or stale, no --altitude): no fix on a database with "
                               "%d layers until an altitude arrives", len(self.db.layers))
        self.layer, self.altitude = layer, alt
        return layer

    def _sync_altitude(self) -> None:
        """Health's view of the altitude (refreshed every loop turn, so its age moves without frames)."""
        lay = self.db.layers[self.layer]["name"] if self.layer is not None else None
        info = {"altitude_m": self.altitude["altitude_m"], "source": self.altitude["source"],
                "age_s": None if self.altitude["age_s"] is None else round(self.altitude["age_s"], 3),
                "layer": lay}
        if self.autopilot is not None:
            info["autopilot"] = self.autopilot.status()
        self.health.info = {**self.health.info, "layer": lay, "altitude": info}  # replaced, never mutated

    def _altitude_text(self) -> str:
        a = self.altitude
        if a["source"] is None:
            return "altitude none (no fix on a multi-layer database)" if len(self.db.layers) > 1 else "altitude none"
        age = f", {a['age_s']:.1f} s old" if a["age_s"] is not None else ""
        lay = self.db.layers[self.layer]["name"] if self.layer is not None else None
        return f"altitude {a['altitude_m']:.1f} m ({a['source']}{age}) layer {lay}"

    # ---- control ------------------------------------------------------------------------------
    def stop(self, *_args) -> None:
        """Ask every thread to finish (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def self_check(self) -> list[str]:
        """Run one blank frame through the engine and describe what the service uses."""
        h, w = self.engine.preprocess.input_size
        t0 = time.perf_counter()
        emb = self.engine.embed([np.zeros((h, w, 3), np.uint8)])
        warm_ms = (time.perf_counter() - t0) * 1000
        if emb.shape != (1, self.engine.embedding_dim) or not np.all(np.isfinite(emb)):
            raise RuntimeError(f"engine self-check failed: output {emb.shape}, finite={np.all(np.isfinite(emb))}")
        if self._readers():  # give the link a moment so the check shows real readings
            deadline = time.monotonic() + min(1.0, self.cfg.altitude_stale_s)
            while time.monotonic() < deadline and (
                    (self.autopilot is not None and self.autopilot.current() is None)
                    or (self.heading_reader is not None and self.heading_reader.heading() is None)):
                time.sleep(0.05)
        alt = self.current_altitude()
        self._choose_layer(alt)
        if self.layer is not None:
            lay = self.db.layers[self.layer]
            layer_text = (f"layer {lay['name']!r} ({lay.get('count')} tiles, altitude {lay.get('altitude_m')} m)"
                          + (" of " + ", ".join(f"{la.get('altitude_m')}" for la in self.db.layers) + " m"
                             if len(self.db.layers) > 1 else ""))
        else:
            layer_text = (f"{len(self.db.layers)} layers ({', '.join(str(la.get('altitude_m')) for la in self.db.layers)}"
                          " m), chosen per frame from the altitude")
        if self.autopilot is not None:
            r = self.autopilot.current()
            now = (f"now {r.altitude_m:.1f} m from autopilot:{r.source} ({r.age_s:.1f} s old)" if r is not None
                   else "no reading yet")
            fallback = (f"{self.cfg.altitude_m:g} m (--altitude)" if self.cfg.altitude_m is not None
                        else ("none: no fix while it is stale" if len(self.db.layers) > 1 else "the only layer"))
            altitude_line = f"altitude: {self.autopilot.describe()}, {now}; fallback {fallback}"
        elif self.cfg.altitude_m is not None:
            altitude_line = f"altitude: {self.cfg.altitude_m:g} m given (--altitude)"
        else:
            altitude_line = "altitude: none given (the database has one layer)"
        lines = [
            f"engine: {self.engine.name}, input {self.engine.input_dtype}/{self.engine.input_layout} {h}x{w}, "
            f"D={self.engine.embedding_dim}, model {self.engine.model_fingerprint} (first run {warm_ms:.0f} ms)",
            f"database: {self.db.path}, {len(self.db)} tiles, {layer_text}, crs {self.db.crs}",
            altitude_line,
            self._heading_line(),
            f"source: {self.source.describe() if hasattr(self.source, 'describe') else self.source!r}, "
            f"{'newest frame wins' if self.drop_frames else 'every frame processed'}",
            "outputs: " + (", ".join(o.describe() for o in self.outputs) or "none (give --jsonl/--mavlink)"),
        ]
        if self.health_server is not None:
            lines.append(f"health: http://127.0.0.1:{self.health_server.port}/health")
        self.health.info = {"engine": self.engine.name, "database": str(self.db.path)}
        self.heading = self.current_heading()
        self._sync_altitude()
        self._sync_heading()
        return lines

    # ---- threads ------------------------------------------------------------------------------
    def _capture(self, slot: FrameSlot) -> None:
        it = iter(self.source)
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    frame = next(it)
                except StopIteration:
                    break
                self.health.observe("decode", (time.perf_counter() - t0) * 1000)
                slot.put(frame, self._stop)
        except Exception:
            logger.exception("capture thread failed")
        finally:
            slot.close()

    def _output(self) -> None:
        while True:
            item = self._out_q.get()
            if item is None:
                return
            record, fix = item
            t0 = time.perf_counter()
            for out in self.outputs:
                try:
                    if isinstance(out, MavlinkGpsOutput):
                        if fix is None:  # the summary record is not a fix
                            continue
                        out.send_fix(fix, unix_time=record["time_utc"])
                    else:
                        out.write(record)
                except Exception as e:  # an output failing must not stop positioning
                    self.health.count("output_errors")
                    logger.warning("output %s failed: %s", out.describe(), e)
            self.health.observe("output", (time.perf_counter() - t0) * 1000)

    def process(self, frame) -> tuple[dict, object]:
        """One frame through preprocess, engine, search and fusion; returns (record, fused fix)."""
        t, img, meta = frame
        hdg = self.current_heading()
        self._note_heading(hdg)
        t0 = time.perf_counter()
        if hdg["heading_deg"] is not None:
            img = north_up(img, hdg["heading_deg"])
        x = self.engine.prepare([img])
        t1 = time.perf_counter()
        emb = self.engine.embed_prepared(x)
        t2 = time.perf_counter()
        alt = self.current_altitude()
        layer = self._choose_layer(alt)
        if layer is None:  # several layers and no altitude: which scale the frame is at is unknown
            k = self.cfg.top_k
            m = Matches(np.full((1, k), -1, np.int64), np.full((1, k), -np.inf, np.float32))
            t3 = time.perf_counter()
            raw = Fix(t=t, reason="no altitude")
            self.health.count("frames_no_altitude")
        else:
            centre = None
            last = self.filter.last
            if self.cfg.search_radius_m and last is not None and math.isfinite(last.x):
                centre = (last.x, last.y)
            m = self.searcher.search(emb, k=self.cfg.top_k, layer=layer, centre_xy=centre,
                                     radius_m=self.cfg.search_radius_m if centre else None)
            if centre is not None and m.indices[0, 0] < 0:  # nothing near the last fix: search everywhere
                m = self.searcher.search(emb, k=self.cfg.top_k, layer=layer)
            t3 = time.perf_counter()
            raw = estimate_fix(self.db, m.indices[0], m.scores[0], t, margin_scale=self.cfg.margin_scale)
        fused = self.filter.update(raw)
        t4 = time.perf_counter()
        lat = {"preprocess": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000, "search": (t3 - t2) * 1000,
               "fusion": (t4 - t3) * 1000}
        cap = meta.get("capture_time") if isinstance(meta, dict) else None
        lat["total"] = (time.time() - cap) * 1000 if cap else sum(lat.values())
        for k, v in lat.items():
            self.health.observe(k, v)
        record = fix_record(fused, raw, self.db, m.indices[0], m.scores[0], frame_index=meta.get("index", self.processed),
                            latency_ms=lat, altitude_m=alt["altitude_m"], meta=meta)
        record["altitude_source"] = alt["source"]  # autopilot:<source>, given, or None
        record["altitude_age_s"] = None if alt["age_s"] is None else round(alt["age_s"], 3)
        record["layer"] = self.db.layers[layer]["name"] if layer is not None else None
        record["heading_deg"] = None if hdg["heading_deg"] is None else round(hdg["heading_deg"], 3)
        record["heading_source"] = hdg["source"]  # autopilot:<source>, given, or None (not turned north-up)
        record["heading_age_s"] = None if hdg["age_s"] is None else round(hdg["age_s"], 3)
        return record, fused

    def run(self) -> int:
        """Run until the source ends, ``max_frames`` are done, or :meth:`stop`; returns an exit code."""
        for reader in self._readers():
            reader.start()
        for line in self.self_check():
            logger.info(line)
        if self.health_server is not None:
            self.health_server.start()
        slot = FrameSlot(drop=self.drop_frames)
        cap_t = threading.Thread(target=self._capture, args=(slot,), name="capture", daemon=True)
        out_t = threading.Thread(target=self._output, name="output", daemon=True)
        out_t.start()
        cap_t.start()
        next_log = time.monotonic() + self.cfg.health_log_s
        code = 0
        try:
            while not slot.finished():
                if self._stop.is_set():
                    break
                frame = slot.get(0.2)
                self._sync_counts(slot)
                self._sync_altitude()
                self._sync_heading()
                if time.monotonic() >= next_log:
                    logger.info("%s; %s; %s", self.health.log_line(), self._altitude_text(), self._heading_text())
                    next_log = time.monotonic() + self.cfg.health_log_s
                if frame is None:
                    continue
                if self.t_first is None:
                    self.t_first = time.perf_counter()
                record, fused = self.process(frame)
                self.t_last = time.perf_counter()
                self.processed += 1
                self.health.count("frames_processed")
                self.health.fix(record["fix"])
                self._out_q.put((record, fused))
                if self.cfg.max_frames and self.processed >= self.cfg.max_frames:
                    break
        except Exception:
            logger.exception("inference loop failed")
            code = 1
        finally:
            self._stop.set()
            cap_t.join(timeout=5.0)
            self._sync_counts(slot)
            summary = {"type": "summary", "time_utc": time.time(), "health": self.health.snapshot()}
            self._out_q.put((summary, None))
            self._out_q.put(None)
            out_t.join(timeout=10.0)
            for reader in self._readers():  # before the outputs: it may read through the MAVLink output's link
                reader.close()
            for out in self.outputs:
                try:
                    out.close()
                except Exception as e:
                    logger.warning("closing %s: %s", out.describe(), e)
            if self.health_server is not None:
                self.health_server.close()
            self.engine.close()
            logger.info(self.health.log_line())
            logger.info("service stopped after %d frames", self.processed)
        return code

    def _sync_counts(self, slot: FrameSlot) -> None:
        s = self.source_stats
        self.health.set_counts(frames_in=s.frames_in, corrupt=s.corrupt, read_failures=s.read_failures,
                               reopens=s.reopens, frames_dropped=slot.dropped)
