"""``--record-autopilot``: the byte streams the autopilot outputs would send during a replayed flight, timed
on the flight's clock, and how they compare with the truth.

A replay runs every frame through the Localizer as fast as it can; a flight does not. The recording puts
each frame back on the flight's clock: captured at the camera's rate (``t`` of the frame, from the flight's
start ``start_unix``), its fix available once the chain has processed it (the processing time the replay
measured for that frame, after the previous frame's, as the service's one fusion thread would). The
output scheduler of the service (:func:`runtime.outputs.scheduler.build_scheduler`) then ticks at its rate
on that clock from the first frame's fix to one frame interval after the last, and the live writers send
into recording files instead of a port (:mod:`runtime.outputs.recorders`), per flight:

- ``mavlink.tlog``: ``GPS_INPUT`` (gps_id of the settings) and the heartbeat, as pymavlink's tlog;
- ``mavlink_odometry.tlog``: ``SET_GPS_GLOBAL_ORIGIN`` and ``ODOMETRY`` (the ExternalNav route);
- ``gnss_ubx.cap``, ``gnss_nmea.cap``: the u-blox and NMEA receivers' bytes, as the timed capture that
  ``px4-gps/check.py --replay`` plays (``PX4GPSCAP1``).

Checked against the truth (the frames' true positions, linear between frames), per message carrying a
fix: the horizontal error at the instant it describes, inside its 95 % radius or not, and the speed error
(truth: the displacement between the frames around that instant over their interval), inside 2.45 speed
accuracies (the 95 % radius of a 2-D error of that per-axis sigma) or not.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from runtime.outputs.gnss_serial import GnssSerialOutput
from runtime.outputs.gnss_solution import R95_PER_SIGMA
from runtime.outputs.mavlink_gps import MavlinkGpsOutput
from runtime.outputs.mavlink_odometry import MavlinkOdometryOutput
from runtime.outputs.recorders import CaptureRecorder, RecordingLink, TlogRecorder
from runtime.outputs.scheduler import build_scheduler
from runtime.replay.common import pct, rnd

FILES = ("mavlink.tlog", "mavlink_odometry.tlog", "gnss_ubx.cap", "gnss_nmea.cap")


def frame_timeline(frames: list[dict], start_unix: float) -> list[float]:
    """When each frame's fix is available on the flight's clock (unix s): its capture, plus its processing
    time, after the previous frame's (one fusion thread)."""
    ready, free = [], -math.inf
    for f in frames:
        cap = start_unix + f["t"]
        free = max(cap, free) + f["processing_ms"] / 1000.0
        ready.append(free)
    return ready


def _writers(folder: Path, settings):
    recs = [TlogRecorder(folder / FILES[0]), TlogRecorder(folder / FILES[1]), CaptureRecorder(folder / FILES[2]),
            CaptureRecorder(folder / FILES[3])]
    outs = [MavlinkGpsOutput(link=RecordingLink(recs[0]), mode="gps_input", gps_id=settings.gps_id),
            MavlinkOdometryOutput(link=RecordingLink(recs[1])),
            GnssSerialOutput(recs[2], protocols="ubx"), GnssSerialOutput(recs[3], protocols="nmea")]
    return recs, outs


class _Truth:
    """The frames' true positions (lat, lon) and times, linear between frames."""

    def __init__(self, frames: list[dict], start_unix: float):
        self.t = np.array([start_unix + f["t"] for f in frames])
        self.ll = np.array([[f.get("true_lat", math.nan), f.get("true_lon", math.nan)] for f in frames], float)

    def _metres(self, lat0: float, lat: np.ndarray, lon: np.ndarray, ref) -> tuple:
        k = math.radians(1.0) * 6378137.0
        return (lat - ref[0]) * k, (lon - ref[1]) * k * math.cos(math.radians(lat0))

    def error(self, s) -> tuple[float, float] | None:
        """(position error m, speed error m/s or nan) of a solution at the instant it describes."""
        t, n = s.time_unix, len(self.t)
        if n < 2 or not self.t[0] <= t <= self.t[-1] or not np.all(np.isfinite(self.ll)):
            return None
        i = min(int(np.searchsorted(self.t, t, side="right")) - 1, n - 2)
        f = (t - self.t[i]) / (self.t[i + 1] - self.t[i])
        true = self.ll[i] + f * (self.ll[i + 1] - self.ll[i])
        dn, de = self._metres(true[0], np.array([s.lat_deg]), np.array([s.lon_deg]), true)
        vn_t, ve_t = self._metres(true[0], self.ll[i + 1:i + 2, 0], self.ll[i + 1:i + 2, 1], self.ll[i])
        dt = self.t[i + 1] - self.t[i]
        speed_err = (math.hypot(s.vel_n_mps - vn_t[0] / dt, s.vel_e_mps - ve_t[0] / dt)
                     if s.has_velocity else math.nan)
        return float(math.hypot(dn[0], de[0])), speed_err


def record_flight(folder, frames: list[dict], settings, *, accel_mps2: float, start_unix: float) -> dict:
    """Write the four recordings of one replayed flight into ``folder`` and return what they hold.
    ``frames``: per frame ``t`` (s from the flight's start), ``processing_ms``, ``fix`` (the Localizer's
    fused :class:`runtime.localisation.fix.Fix`), ``height_m`` and the truth ``true_lat``/``true_lon``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recs, outs = _writers(folder, settings)
    sched = build_scheduler(settings, outs, accel_mps2=accel_mps2, recorders=recs)
    ready = frame_timeline(frames, start_unix)
    truth = _Truth(frames, start_unix)
    interval = (frames[-1]["t"] - frames[0]["t"]) / max(len(frames) - 1, 1) if frames else 0.0
    sent, k = [], 0
    tick = math.ceil(ready[0] / sched.period) if frames else 0
    end = (ready[-1] + interval) if frames else 0.0
    while frames and tick * sched.period <= end:
        t = tick * sched.period  # ticks are whole multiples of the period, as live
        while k < len(frames) and ready[k] <= t:
            f = frames[k]
            sched.update(f["fix"], start_unix + f["t"], f.get("height_m"))
            k += 1
        s = sched.send_at(t)
        sent.append((t, s, truth.error(s) if s.valid else None))
        tick += 1
    sched.close()
    return summarize_recording(sent, start_unix, folder)


def summarize_recording(sent, start_unix: float, folder: Path) -> dict:
    """What the recordings hold: messages, their rate, the first fix, accuracies and the errors."""
    valid = [(t, s, e) for t, s, e in sent if s.valid]
    errs = [e for _, _, e in valid if e is not None]
    inside = [e[0] <= s.r95_m for _, s, e in valid if e is not None]
    v_inside = [e[1] <= R95_PER_SIGMA * s.speed_acc_mps for _, s, e in valid
                if e is not None and s.speed_acc_mps is not None and math.isfinite(e[1])]
    gaps = np.diff([t for t, _, _ in sent]) if len(sent) > 1 else np.array([])
    c2s = [(t - s.time_unix + s.age_s) * 1000 for t, s, _ in valid]
    return {
        "messages": len(sent), "fixes_sent": len(valid),
        "rate_hz": rnd((len(sent) - 1) / (sent[-1][0] - sent[0][0]), 3) if len(sent) > 1 else None,
        "max_gap_s": rnd(float(gaps.max()), 3) if gaps.size else None,
        "first_fix_s": rnd(valid[0][0] - sent[0][0], 3) if valid else None,
        "calibration_pct": rnd(100.0 * np.mean(inside), 1) if inside else None,
        "error_m_median": rnd(pct([e[0] for e in errs], 50)), "error_m_max": rnd(max((e[0] for e in errs), default=None)),
        "h_acc_m_median": rnd(pct([s.h_acc_m for _, s, _ in valid], 50)),
        "h_acc_m_p95": rnd(pct([s.h_acc_m for _, s, _ in valid], 95)),
        "speed_acc_mps_median": rnd(pct([s.speed_acc_mps for _, s, _ in valid if s.speed_acc_mps is not None], 50)),
        "speed_acc_mps_p95": rnd(pct([s.speed_acc_mps for _, s, _ in valid if s.speed_acc_mps is not None], 95)),
        "speed_calibration_pct": rnd(100.0 * np.mean(v_inside), 1) if v_inside else None,
        "speed_error_mps_median": rnd(pct([e[1] for e in errs], 50)),
        "speed_error_mps_p95": rnd(pct([e[1] for e in errs], 95)),
        "capture_to_send_ms_p50": rnd(pct(c2s, 50), 1), "capture_to_send_ms_p95": rnd(pct(c2s, 95), 1),
        "files": {name: str(folder / name) for name in FILES},
    }
