"""The autopilot outputs' frontend: one steady rate, one prediction, one accuracy, for every route.

Frames come at the camera's rate and the chain's pace; an autopilot wants its GPS steadily at 5-10 Hz.
:class:`OutputScheduler` owns rate, timing and accuracy (as ArduPilot's ``AP_GPS`` owns a GPS's health and
timing while its backends only decode); the writers (``GPS_INPUT``/external position, ``ODOMETRY``, UBX,
NMEA) are its backends, each given the same :class:`~runtime.outputs.gnss_solution.GnssSolution`:

- it sends at ``output_rate_hz``, on ticks ``k / rate`` of the clock it is driven by (the wall clock live:
  :meth:`OutputScheduler.run_due`; the flight's clock in a replay recording: :meth:`OutputScheduler.send_at`);
  a tick missed by more than a period is skipped, never sent in a burst;
- each message describes the instant ``output_delay_ms`` before it leaves (the delay the autopilot is
  told: ``GPSn_DELAY_MS``, ``VISO_DELAY_MS``, ``EKF2_GPS_DELAY``), the track predicted to it from the last
  frame's fix (:class:`~runtime.outputs.prediction.FixPredictor`: the accuracy grows with the time since
  that frame's capture; "no fix" once it is older than ``output_max_age_s``) with the vertical of the MSL
  altitude source (:class:`~runtime.outputs.vertical.VerticalSource`);
- it measures, per message carrying a fix, the time from that frame's capture to the send
  (``capture_to_send_ms``, for the health record and the replays), and counts what it sent.
"""

from __future__ import annotations

import logging
import math
import time

from runtime.outputs.gnss_solution import GnssSolution
from runtime.outputs.prediction import FixPredictor
from runtime.outputs.vertical import VerticalSource

logger = logging.getLogger(__name__)


class OutputScheduler:
    """The steady-rate autopilot stream (module docstring). ``outputs``: writers with ``send_solution(s,
    now_unix)``; ``recorders``: recording files whose ``now_unix`` is set before each send (replay);
    ``origin_source``: an object with ``origin()`` (the autopilot's EKF origin, for ``ODOMETRY``);
    ``on_sent(solution, now_unix)``: called after each tick (health)."""

    def __init__(self, outputs, predictor: FixPredictor, vertical: VerticalSource | None = None, *,
                 rate_hz: float = 10.0, delay_s: float = 0.2, recorders=(), origin_source=None, on_sent=None,
                 on_error=None):
        if not rate_hz > 0:
            raise ValueError(f"output rate must be > 0 Hz, got {rate_hz}")
        self.outputs = list(outputs)
        self.predictor = predictor
        self.vertical = vertical or VerticalSource("none")
        self.period = 1.0 / float(rate_hz)
        self.delay_s = float(delay_s)
        self.recorders = list(recorders)
        self.origin_source = origin_source
        self.on_sent, self.on_error = on_sent, on_error
        self._next: int | None = None  # the next tick's number (its time: number x period)
        self.sent = self.valid = self.skipped = 0
        self.last: GnssSolution | None = None

    def describe(self) -> str:
        return (f"{1.0 / self.period:g} Hz, each message {self.delay_s * 1000:g} ms old, no fix after "
                f"{self.predictor.max_age_s:g} s without a frame; {self.vertical.describe()}")

    def update(self, fix, capture_unix: float | None = None, height_m: float | None = None) -> None:
        """A frame's fused fix (trusted or not), its capture time and the height it was flown at."""
        self.predictor.update(fix, capture_unix)
        cap = self.predictor.capture_unix
        self.vertical.observe(cap, height_m)

    def next_due(self, now_unix: float | None = None) -> float:
        """When the next tick is due (unix seconds; ticks are whole multiples of the period)."""
        if self._next is None:
            now = time.time() if now_unix is None else now_unix
            self._next = math.ceil(now / self.period)
        return self._next * self.period

    def run_due(self, now_unix: float | None = None) -> int:
        """Send the tick that is due by ``now_unix`` (live: the wall clock); returns the number sent (0 or 1)."""
        now = time.time() if now_unix is None else now_unix
        due = self.next_due(now)
        if now < due:
            return 0
        missed = int((now - due) // self.period)
        self.skipped += missed
        self._next += missed + 1
        self.send_at(now, tick_unix=(self._next - 1) * self.period)
        return 1

    def send_at(self, now_unix: float, tick_unix: float | None = None) -> GnssSolution:
        """One message on every output, sent at ``now_unix`` for the tick ``tick_unix`` (default: now): it
        describes ``tick - delay``, so consecutive messages are exactly a period apart."""
        for rec in self.recorders:
            rec.now_unix = now_unix
        t_ref = (now_unix if tick_unix is None else tick_unix) - self.delay_s
        s = self.predictor.solution(t_ref, self.vertical.at(t_ref))
        origin = self.origin_source.origin() if self.origin_source is not None else None
        for out in self.outputs:
            if origin is not None and hasattr(out, "use_origin"):
                out.use_origin(*origin)
            try:
                out.send_solution(s, now_unix)
            except Exception as e:  # an output failing must not stop the others
                if self.on_error is not None:
                    self.on_error(out, e)
                else:
                    logger.warning("output %s failed: %s", out.describe(), e)
        self.sent += 1
        self.valid += bool(s.valid)
        self.last = s
        if self.on_sent is not None:
            self.on_sent(s, now_unix)
        return s

    @staticmethod
    def capture_to_send_ms(s: GnssSolution, now_unix: float) -> float | None:
        """From the capture of the frame a message was predicted from to its send (None: no fix)."""
        if not s.valid or s.age_s is None:
            return None
        return (now_unix - s.time_unix + s.age_s) * 1000.0

    def close(self) -> None:
        for out in self.outputs:
            try:
                out.close()
            except Exception as e:
                logger.warning("closing %s: %s", out.describe(), e)


def build_scheduler(settings, outputs, *, accel_mps2: float, camera_yaw_offset_deg: float = 0.0, reader=None,
                    recorders=(), health=None) -> OutputScheduler:
    """The scheduler for :class:`runtime.outputs.settings.OutputConfig` ``settings`` (``accel_mps2``: the map
    filter's, until the track shows its own; ``reader``: the autopilot reader, for the MSL altitude and
    the EKF origin; ``health``: a :class:`runtime.outputs.health.Health` that counts the messages, the "no
    fix" ones and the output errors, and keeps each fix's capture-to-send time)."""
    on_sent = on_error = None
    if health is not None:
        def on_sent(s, now_unix):
            health.count("autopilot_messages")
            ms = OutputScheduler.capture_to_send_ms(s, now_unix)
            if ms is None:
                health.count("autopilot_no_fix")
            else:
                health.observe("capture_to_send", ms)

        def on_error(out, e):
            health.count("output_errors")
    predictor = FixPredictor(accel_mps2=accel_mps2, max_age_s=settings.output_max_age_s,
                             satellites=settings.satellites_visible, camera_yaw_offset_deg=camera_yaw_offset_deg)
    vertical = VerticalSource(settings.altitude_msl_from, home_alt_msl_m=settings.home_alt_msl_m,
                              sigma_m=settings.altitude_msl_sigma_m, reader=reader)
    origin = reader if reader is not None and hasattr(reader, "origin") else None
    return OutputScheduler(outputs, predictor, vertical, rate_hz=settings.output_rate_hz,
                           delay_s=settings.output_delay_ms / 1000.0, recorders=recorders, origin_source=origin,
                           on_sent=on_sent, on_error=on_error)


def service_scheduler(cfg, outputs, *, reader=None, health=None) -> OutputScheduler | None:
    """The service's scheduler (a :class:`runtime.config.ServiceConfig` ``cfg``) of those ``outputs`` that
    take solutions (``send_solution``); None without any."""
    autopilot = [o for o in outputs if hasattr(o, "send_solution")]
    if not autopilot:
        return None
    return build_scheduler(cfg, autopilot, accel_mps2=cfg.map_filter.accel_mps2, reader=reader, health=health,
                           camera_yaw_offset_deg=cfg.camera_yaw_offset_deg)
