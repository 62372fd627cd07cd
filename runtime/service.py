"""The onboard service: camera -> :class:`~runtime.localisation.localizer.Localizer` -> JSON lines / MAVLink / health.

Four threads overlap the work:

    capture thread ──► FrameSlot (1 frame; the newest wins on live sources) ──► embed thread (north-up,
        engine: Localizer.embed_ahead) ──► FrameSlot ──► fusion (caller's thread: Localizer.locate: search,
        odometry, map filter, registration) ──► output queue ──► output thread (JSON lines per frame; the
        autopilot outputs at their own steady rate, the last fix predicted between frames: its scheduler;
        health keeps each message's capture-to-send time, ``capture_to_send``, next to ``total``)

The engine embeds frame n+1 while frame n is fused (``pipeline``; on a Jetson the engine runs on the GPU
and the fusion on the CPU, so the slower of the two sets the frame rate, not their sum). A frame whose
heading is not known before the fusion (no compass: the tracked heading) is embedded in the fusion
thread instead. The price is latency when the fusion is the slower stage: an embedded frame waits for
the previous frame's fusion (at most one fusion period; every record carries its capture time).
The camera is never blocked by inference: on a live source a frame that arrives while the
previous one is still waiting replaces it (counted as dropped). Files and folders are processed frame by
frame unless ``drop_frames`` is set. :meth:`Service.stop` (wired to SIGINT/SIGTERM by ``python -m runtime serve``)
ends capture, drains the queue, writes a final summary record and flushes and closes every output.

What the service adds to the Localizer is telemetry (:class:`runtime.inputs.telemetry.TelemetryPolicy`: the
altitude picks the layer, the heading turns the frame north-up; from the autopilot while fresh, else the
given values) and the I/O around it. Each JSON line records the altitude and heading used, their sources
and ages, and the layer. A database with several layers and no altitude gives "no fix" (reason
``no altitude``), an altitude far from every layer "no fix" too, never a match at the wrong scale.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np

from runtime.config import ServiceConfig
from runtime.engines.bundle import calibration_line
from runtime.engines.engine import check_engine_database, load_engine
from runtime.inputs.frame_slot import FrameSlot
from runtime.inputs.sources import SourceStats, open_source
from runtime.inputs.telemetry import TelemetryPolicy, telemetry_fields
from runtime.localisation.localizer import Localization, Localizer
from runtime.outputs.health import Health, HealthServer
from runtime.outputs.json_lines import fix_record, open_outputs
from runtime.outputs.scheduler import service_scheduler

logger = logging.getLogger(__name__)


class Service:
    """The onboard service: a frame source, the :class:`~runtime.localisation.localizer.Localizer`, outputs, health."""

    def __init__(self, cfg: ServiceConfig, *, source=None, engine=None, db=None):
        from runtime.threads import engine_threads, limit_blas_threads
        from tiles.db import TileDatabase

        self._blas = limit_blas_threads(1)  # the service's threads share the cores (runtime.threads)
        self.cfg = cfg
        self._stop = threading.Event()
        self.engine = engine or load_engine(cfg.bundle, precision=cfg.precision, backend=cfg.backend, spin=cfg.spin,
                                            providers=cfg.providers, threads=engine_threads(cfg.threads, cfg.pipeline))
        self.db = db or TileDatabase.open(cfg.db, verify=cfg.verify_db)
        check_engine_database(self.engine, self.db)  # DatabaseMismatchError names the differing fields
        self._check_layers()
        self.localizer = Localizer(self.engine, self.db, cfg.localizer_config(), registration_worker=True)
        self.health = Health()
        self.source_stats = SourceStats()
        self.source = self._open_source(source)
        self.drop_frames = bool(getattr(self.source, "live", False)) if cfg.drop_frames is None else cfg.drop_frames
        self.output_failed: dict[str, str] = {}  # output -> its first error: the run then exits 1
        self.outputs = self._open_outputs()
        self.telemetry = TelemetryPolicy(cfg)
        self.scheduler = service_scheduler(cfg, self.outputs, reader=self.telemetry.altitude_reader,
                                           health=self.health)  # the autopilot outputs' (None: none)
        if self.scheduler is not None:  # a failed message makes the run exit 1, like a lost record
            self.scheduler.on_error = lambda out, e: self.output_failed_once(out.describe(), e)
        self.health_server = self._open_health_server()
        self._out_q: queue.Queue = queue.Queue(maxsize=256)
        self.last: Localization | None = None
        self.processed = 0
        self.capture_failed: str | None = None
        self._stop_requested = False  # a stop (signal, max_frames) rather than the source's end
        self.t_first: float | None = None  # perf_counter at the first frame's start, the last frame's end
        self.t_last: float | None = None

    # ---- setup --------------------------------------------------------------------------------
    def _check_layers(self) -> None:
        """A database with several layers needs an altitude from somewhere: refuse now, not per frame."""
        cfg, layers = self.cfg, self.db.layers
        if len(layers) > 1:
            self.db.layer_for_altitude(cfg.altitude_m or 1.0)  # fails when no layer records its altitude
            if cfg.altitude_m is None and not cfg.altitude_from:
                alts = [lay.get("altitude_m") for lay in layers]
                raise ValueError(f"the database {self.db.path} has {len(layers)} altitude layers {alts}: give "
                                 "--altitude-m METRES or --altitude-from MAVLINK_URL (the autopilot's altitude)")

    def _open_source(self, source):
        cfg = self.cfg
        if source is None:
            return open_source(cfg.source, stop=self._stop, stats=self.source_stats, loop=cfg.loop,
                               backoff_s=(0.5, cfg.backoff_max_s), read_timeout_s=cfg.read_timeout_s)
        if hasattr(source, "stop"):
            source.stop = self._stop
        if hasattr(source, "stats"):
            self.source_stats = source.stats
        return source

    def _open_outputs(self) -> list:
        try:
            return open_outputs(self.cfg)
        except OSError as e:
            raise ValueError(f"cannot open an output: {e}") from e

    def _open_health_server(self):
        if self.cfg.health_port is None:
            return None
        try:
            return HealthServer(self.health, self.cfg.health_port)
        except OSError as e:
            raise ValueError(f"--health-port {self.cfg.health_port}: cannot listen there ({e.strerror or e}); "
                             "pick a free port, or 0 for any") from e

    @property
    def frame_outputs(self) -> list:
        """The outputs written per frame (JSON lines); the autopilot outputs belong to the scheduler."""
        return [o for o in self.outputs if not hasattr(o, "send_solution")]

    @property
    def autopilot(self):
        """The autopilot reader the altitude comes from (None without --altitude-from)."""
        return self.telemetry.altitude_reader

    @property
    def heading_reader(self):
        return self.telemetry.heading_reader

    # ---- control ------------------------------------------------------------------------------
    def stop(self, *_args) -> None:
        """Ask every thread to finish (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _layer_name(self, layer: int | None) -> str | None:
        return self.db.layers[layer]["name"] if layer is not None else None

    def self_check(self) -> list[str]:
        """Run one blank frame through the engine and describe what the service uses."""
        h, w = self.engine.preprocess.input_size
        t0 = time.perf_counter()
        emb = self.engine.embed([np.zeros((h, w, 3), np.uint8)])
        warm_ms = (time.perf_counter() - t0) * 1000
        if emb.shape != (1, self.engine.embedding_dim) or not np.all(np.isfinite(emb)):
            raise RuntimeError(f"engine self-check failed: output {emb.shape}, finite={np.all(np.isfinite(emb))}")
        if self.telemetry.readers():
            self.telemetry.wait_first(min(1.0, self.cfg.altitude_stale_s))
        alts = ", ".join(str(la.get("altitude_m")) for la in self.db.layers)
        alt = self.telemetry.altitude()
        layer, why = self.localizer.choose_layer(alt.altitude_m if alt else None)
        now = f"now layer {self._layer_name(layer)!r}" if layer is not None else f"now no layer ({why})"
        lines = [
            f"engine: {self.engine.name}, input {self.engine.input_dtype}/{self.engine.input_layout} {h}x{w}, "
            f"D={self.engine.embedding_dim}, model {self.engine.model_fingerprint} (first run {warm_ms:.0f} ms)",
            f"database: {self.db.path}, {len(self.db)} tiles, {len(self.db.layers)} layer(s) at {alts} m, {now}, "
            f"crs {self.db.crs}",
            calibration_line(getattr(getattr(self.engine, "bundle", None), "manifest", None), self.cfg.bundle, self.cfg.db),
            self.telemetry.altitude_line(len(self.db.layers)),
            f"{self.telemetry.heading_line()}; camera: {self.localizer.camera_view.describe()}",
            f"source: {self.source.describe() if hasattr(self.source, 'describe') else self.source!r}, "
            f"{'newest frame wins' if self.drop_frames else 'every frame processed'}",
            "outputs: " + (", ".join(o.describe() for o in self.outputs) or "none (give --jsonl/--mavlink)"),
        ]
        if self.scheduler is not None:
            lines.append(f"autopilot stream: {self.scheduler.describe()}")
        if self.health_server is not None:
            lines.append(f"health: http://127.0.0.1:{self.health_server.port}/health")
        self.health.info = {"engine": self.engine.name, "database": str(self.db.path)}
        self._sync_health()
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
        except Exception as e:
            self.capture_failed = f"{type(e).__name__}: {e}"
            logger.error("the frame source failed: %s", self.capture_failed)
        finally:
            slot.close()

    def _output(self) -> None:
        """Each frame's record to the JSON outputs as it comes; the autopilot outputs when their tick is due."""
        sched = self.scheduler
        while True:
            timeout = None if sched is None else max(0.0, sched.next_due() - time.time())
            try:
                item = self._out_q.get(timeout=timeout)
            except queue.Empty:
                item = ()
            if item is None:
                return
            t0 = time.perf_counter()
            if item:
                self._emit_frame(*item)
            if sched is not None:
                sched.run_due()
            self.health.observe("output", (time.perf_counter() - t0) * 1000)

    def output_failed_once(self, name: str, err: Exception) -> None:
        """Count an output's failure; its first one is logged as an error and makes the run exit 1."""
        self.health.count("output_errors")
        if name not in self.output_failed:
            self.output_failed[name] = str(err)
            logger.error("output %s failed: %s", name, err)

    def _emit_frame(self, record: dict, fix) -> None:
        for out in self.frame_outputs:
            try:
                out.emit(record, fix)
            except Exception as e:  # an output failing must not stop positioning; the exit status says it
                self.output_failed_once(out.describe(), e)
        if fix is not None and self.scheduler is not None:
            self.scheduler.update(fix, fix.capture_time_unix, record.get("altitude_m"))

    def _embed(self, slot: FrameSlot, feed: FrameSlot) -> None:
        """Frames from capture -> (frame, telemetry, embedded ahead or None) to the fusion loop."""
        try:
            while not self._stop.is_set():
                frame = slot.get(0.2)
                if frame is None:
                    if slot.finished():
                        break
                    continue
                t, img, meta = frame
                tel = self.telemetry.for_frame(t, meta.get("capture_time") if isinstance(meta, dict) else None)
                try:
                    ahead = self.localizer.embed_ahead(img, tel)
                except Exception as e:  # locate() embeds it again, where a failure ends the run
                    logger.warning("embedding frame %s ahead failed (%s: %s); embedding it in the fusion thread",
                                   meta.get("index") if isinstance(meta, dict) else "?", type(e).__name__, e)
                    ahead = None
                feed.put((frame, tel, ahead), self._stop)
        finally:
            feed.close()

    def process(self, frame, telemetry=None, ahead=None) -> tuple[dict, object]:
        """One frame through the Localizer; returns (JSON record, fused fix). ``telemetry`` and ``ahead``:
        the frame's telemetry and embedding when the embed thread took them already."""
        t, img, meta = frame
        meta = meta if isinstance(meta, dict) else {}
        cap = meta.get("capture_time")
        tel = telemetry if telemetry is not None else self.telemetry.for_frame(t, cap)
        loc = self.localizer.locate(img, tel, ahead=ahead)
        if self.last is None or loc.layer != self.last.layer:
            self._note_layer(loc)
        self.last = loc
        lat = dict(loc.timings_ms)
        lat["total"] = (time.time() - cap) * 1000 if cap else sum(lat.values())
        keyframe = loc.fusion.get("keyframe", True)
        for k, v in lat.items():  # between keyframes nothing is embedded or searched: not a 0 ms sample
            if keyframe or k in ("fusion", "total"):
                self.health.observe(k, v)
        self.health.count("keyframes" if keyframe else "frames_between_keyframes")
        if tel.altitude_m is None:
            self.health.count("frames_no_altitude")
        elif loc.layer is None:
            self.health.count("frames_no_layer")
        record = fix_record(loc.fix, loc.raw, self.db, loc.matches.indices[0], loc.matches.scores[0],
                            frame_index=meta.get("index", self.processed), latency_ms=lat,
                            altitude_m=tel.altitude_m, meta=meta)
        record.update(telemetry_fields(loc.telemetry, self._layer_name(loc.layer)))  # the heading used
        return record, loc.fix

    def _note_layer(self, loc: Localization) -> None:
        tel = loc.telemetry
        if loc.layer is not None:
            src = f"altitude {tel.altitude_m:.1f} m from {tel.altitude_source}" if tel.altitude_source else "no altitude"
            logger.info("layer %r (%s)", self._layer_name(loc.layer), src)
        else:
            logger.warning("no layer: %s; no fix until that changes", loc.raw.reason)

    def _sync_health(self) -> None:
        """Health's view of source counters, altitude and heading (refreshed every loop turn)."""
        tel = self.last.telemetry if self.last is not None else None
        layer = self._layer_name(self.last.layer) if self.last is not None else None
        self.health.info = {**self.health.info, **self.telemetry.health_info(tel, layer)}
        if self.telemetry.frames_no_heading:
            self.health.set_counts(frames_no_heading=self.telemetry.frames_no_heading)

    def _sync_counts(self, slot: FrameSlot) -> None:
        s = self.source_stats
        self.health.set_counts(frames_in=s.frames_in, corrupt=s.corrupt, read_failures=s.read_failures,
                               reopens=s.reopens, frames_dropped=slot.dropped)

    def _status_line(self) -> str:
        tel = self.last.telemetry if self.last is not None else None
        layer = self._layer_name(self.last.layer) if self.last is not None else None
        return f"{self.health.log_line()}; {self.telemetry.status_text(tel, layer)}"

    def run(self) -> int:
        """Run until the source ends, ``max_frames`` are done, or :meth:`stop`. Exit code: 0 a normal end
        (also a stop before any frame), 1 the run failed (the source failed or never gave a frame, the
        engine or the loop failed)."""
        for reader in self.telemetry.readers():
            reader.start()
        for line in self.self_check():
            logger.info(line)
        if self.health_server is not None:
            self.health_server.start()
        slot = FrameSlot(drop=self.drop_frames)
        cap_t = threading.Thread(target=self._capture, args=(slot,), name="capture", daemon=True)
        out_t = threading.Thread(target=self._output, name="output", daemon=True)
        feed, emb_t = slot, None
        if self.cfg.pipeline:
            feed = FrameSlot(drop=False)
            emb_t = threading.Thread(target=self._embed, args=(slot, feed), name="embed", daemon=True)
        out_t.start()
        cap_t.start()
        if emb_t is not None:
            emb_t.start()
        code = 0
        try:
            self._loop(slot, feed)
        except Exception:
            logger.exception("inference loop failed")
            code = 1
        finally:
            self._stop_requested = self._stop.is_set()
            self._stop.set()
            cap_t.join(timeout=5.0)
            if emb_t is not None:
                emb_t.join(timeout=5.0)
            self._sync_counts(slot)
            self._finish(out_t)
        if code == 0 and self.capture_failed:
            code = 1
        if code == 0 and self.output_failed:
            logger.error("records were lost: %s", "; ".join(f"{k}: {v}" for k, v in self.output_failed.items()))
            code = 1
        if code == 0 and self.processed == 0 and not self._stop_requested:
            logger.error("the source %s gave no frame", self.cfg.source or "given")
            code = 1
        return code

    def _loop(self, slot: FrameSlot, feed: FrameSlot) -> None:
        """Fuse what ``feed`` hands over: frames from capture, or (frame, telemetry, ahead) from the embed
        thread (``pipeline``); ``slot`` is capture's, for its counters."""
        next_log = time.monotonic() + self.cfg.health_log_s
        while not feed.finished() and not self._stop.is_set():
            item = feed.get(0.2)
            self._sync_counts(slot)
            self._sync_health()
            if time.monotonic() >= next_log:
                logger.info("%s", self._status_line())
                next_log = time.monotonic() + self.cfg.health_log_s
            if item is None:
                continue
            if self.t_first is None:
                self.t_first = time.perf_counter()
            record, fused = self.process(*item) if feed is not slot else self.process(item)
            self.t_last = time.perf_counter()
            self.processed += 1
            self.health.count("frames_processed")
            self.health.fix(record["fix"])
            self._out_q.put((record, fused))
            if self.cfg.max_frames and self.processed >= self.cfg.max_frames:
                self._stop_requested = True
                break

    def _finish(self, out_t: threading.Thread) -> None:
        """Write the summary record, drain and close every output, the readers, health and the engine."""
        summary = {"type": "summary", "time_utc": time.time(), "health": self.health.snapshot()}
        self._out_q.put((summary, None))
        self._out_q.put(None)
        out_t.join(timeout=10.0)
        self.telemetry.close()  # before the outputs: a reader may read through the MAVLink output's link
        for out in self.frame_outputs:
            try:
                out.close()
            except Exception as e:
                logger.warning("closing %s: %s", out.describe(), e)
        if self.scheduler is not None:
            self.scheduler.close()
        if self.health_server is not None:
            self.health_server.close()
        self.localizer.close()
        self.engine.close()
        logger.info(self._status_line())
        logger.info("service stopped after %d frames", self.processed)
