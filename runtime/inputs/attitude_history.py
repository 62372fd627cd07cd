"""The attitude at a frame's capture time: a short history of the autopilot's (or gimbal's) attitude, put
on this computer's clock and interpolated.

MAVLink ``ATTITUDE`` (roll, pitch, yaw in radians, ``time_boot_ms``) and
``GIMBAL_DEVICE_ATTITUDE_STATUS`` (quaternion w, x, y, z, ``time_boot_ms``, flags) are stamped with the
sender's boot clock. A sample was taken at ``boot_s + offset`` on this computer's monotonic clock, where
``offset`` is learnt as the smallest ``arrival - boot_s`` in the history (the fastest message: the
jitter of the link only ever delays; a window, so two drifting clocks stay matched) less the link's known one-way delay ``link_delay_s``. A frame captured at ``t``
(same monotonic clock) gets the rotation interpolated (slerp) between the samples either side of ``t``;
just after the newest sample it gets the newest (at most ``max_hold_s`` old); outside that, nothing
(None), never a guess. A boot clock that jumps back (the autopilot rebooted) restarts the history.
numpy only.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from runtime.inputs.attitude import euler_matrix, matrix_euler, matrix_quaternion, quaternion_matrix

# GIMBAL_DEVICE_FLAGS (MAVLink common.xml)
GIMBAL_YAW_LOCK, GIMBAL_YAW_IN_VEHICLE_FRAME, GIMBAL_YAW_IN_EARTH_FRAME = 16, 32, 64


@dataclass(frozen=True)
class AttitudeAt:
    """An attitude at a requested time: ``q`` (w, x, y, z) of ``R_world_body`` (``ATTITUDE``) or of the
    gimbal (``GIMBAL_DEVICE_ATTITUDE_STATUS``; ``yaw_in_earth`` says whether its yaw is against north or
    the vehicle's heading); ``gap_s`` how far the nearest sample is from the requested time; ``held``
    when the time is after the newest sample (the newest given as it is)."""

    q: tuple
    t: float
    gap_s: float
    held: bool = False
    yaw_in_earth: bool = False
    source: str = "attitude"

    @property
    def matrix(self) -> np.ndarray:
        return quaternion_matrix(self.q)

    @property
    def euler_deg(self) -> tuple[float, float, float]:
        """(roll, pitch, yaw) in degrees (Z-Y-X)."""
        return tuple(math.degrees(a) for a in matrix_euler(self.matrix))


def slerp(q0, q1, f: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (the short way round)."""
    q0, q1 = np.asarray(q0, float), np.asarray(q1, float)
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + f * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(d)
    return (math.sin((1 - f) * theta) * q0 + math.sin(f * theta) * q1) / math.sin(theta)


def attitude_sample(msg) -> tuple[int, np.ndarray, bool] | None:
    """(time_boot_ms, quaternion, yaw_in_earth) of an ``ATTITUDE`` or ``GIMBAL_DEVICE_ATTITUDE_STATUS``
    message; None for another message or a value that is not a rotation (NaN)."""
    kind = msg.get_type()
    if kind == "ATTITUDE":
        rpy = (float(msg.roll), float(msg.pitch), float(msg.yaw))
        if not all(math.isfinite(v) for v in rpy):
            return None
        return int(msg.time_boot_ms), matrix_quaternion(euler_matrix(*rpy)), True
    if kind == "GIMBAL_DEVICE_ATTITUDE_STATUS":
        q = np.array([float(v) for v in msg.q])
        if not np.all(np.isfinite(q)) or not np.linalg.norm(q) > 1e-6:
            return None
        flags = int(msg.flags)
        if flags & GIMBAL_YAW_IN_EARTH_FRAME:
            earth = True
        elif flags & GIMBAL_YAW_IN_VEHICLE_FRAME:
            earth = False
        else:  # the protocol's rule for older gimbals: YAW_LOCK means against north
            earth = bool(flags & GIMBAL_YAW_LOCK)
        return int(msg.time_boot_ms), q / np.linalg.norm(q), earth
    return None


class AttitudeHistory:
    """Timestamped attitudes of one source (see the module docstring); thread-safe."""

    def __init__(self, source: str = "attitude", max_samples: int = 512, max_hold_s: float = 0.25):
        self.source = source
        self.max_hold_s = float(max_hold_s)
        self._samples: deque = deque(maxlen=int(max_samples))  # (boot_s, arrival, q, yaw_in_earth)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, boot_ms: int, q, arrival: float, yaw_in_earth: bool = False) -> None:
        """One sample: the sender's ``time_boot_ms``, the rotation, this computer's arrival time."""
        boot_s = boot_ms / 1000.0
        with self._lock:
            if self._samples and boot_s < self._samples[-1][0] - 1.0:
                self._samples.clear()  # the sender rebooted: its clock restarted
            if self._samples and boot_s <= self._samples[-1][0]:
                return  # a duplicate or reordered sample
            self._samples.append((boot_s, float(arrival), np.asarray(q, float), bool(yaw_in_earth)))

    def add_message(self, msg, arrival: float) -> bool:
        s = attitude_sample(msg)
        if s is None:
            return False
        self.add(s[0], s[1], arrival, s[2])
        return True

    def at(self, t: float, link_delay_s: float = 0.0, max_gap_s: float = 0.5) -> AttitudeAt | None:
        """The attitude at capture time ``t`` (monotonic clock), or None when no sample brackets it
        (within ``max_gap_s`` either side) and the newest is more than ``max_hold_s`` before it."""
        with self._lock:
            if not self._samples:
                return None
            samples = list(self._samples)
        boot = np.array([s[0] for s in samples])
        offset = float(np.min(np.array([s[1] for s in samples]) - boot)) - float(link_delay_s)
        times = boot + offset
        i = int(np.searchsorted(times, t, side="right"))
        if i == 0:
            return None  # before the history
        if i == len(times):
            gap = t - times[-1]
            if gap > self.max_hold_s:
                return None
            s = samples[-1]
            return AttitudeAt(tuple(s[2]), t, gap, True, s[3], self.source)
        t0, t1 = times[i - 1], times[i]
        if t1 - t0 > 2 * max_gap_s:
            return None  # a hole in the stream around t
        f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
        q = slerp(samples[i - 1][2], samples[i][2], f)
        return AttitudeAt(tuple(q), t, min(t - t0, t1 - t), False, samples[i][3], self.source)

    def clock_offset_s(self) -> float | None:
        """``arrival - boot_s`` of the fastest sample (None before any)."""
        with self._lock:
            return None if not self._samples else min(s[1] - s[0] for s in self._samples)
