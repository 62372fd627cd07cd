"""A simulated autopilot for the tests: a real pymavlink peer on a loopback UDP socket.

It heartbeats once a second as an ArduPilot quadrotor, streams ``GLOBAL_POSITION_INT`` (``alt_mm``, None:
silent) and ``ATTITUDE`` (``yaw_rad``, None: silent) at ``rate_hz``, and keeps every message it receives
(``types(name)``), acknowledging each ``COMMAND_LONG``/``COMMAND_INT`` with ``COMMAND_ACK`` as an autopilot
does. Used as a context manager.
"""

from __future__ import annotations

import threading
import time

from runtime.outputs.mavlink_link import mavutil


class FakeAutopilot:
    def __init__(self, port: int, *, rate_hz: float = 20.0, system: int = 1, component: int = 1):
        self.mu = mavutil()
        self.M = self.mu.mavlink
        self.conn = self.mu.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=system,
                                               source_component=component)
        self.alt_mm: int | None = None
        self.yaw_rad: float | None = None
        self.lat_e7, self.lon_e7 = 470000000, -991000000
        self.rate_hz = rate_hz
        self.received: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _boot_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def _run(self) -> None:
        last_hb = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_hb > 1.0:
                self.conn.mav.heartbeat_send(self.M.MAV_TYPE_QUADROTOR, self.M.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 0)
                last_hb = time.monotonic()
            if self.alt_mm is not None:
                self.conn.mav.global_position_int_send(self._boot_ms(), self.lat_e7, self.lon_e7, 600000,
                                                       self.alt_mm, 0, 0, 0, 0)
            if self.yaw_rad is not None:
                self.conn.mav.attitude_send(self._boot_ms(), 0.0, 0.0, self.yaw_rad, 0.0, 0.0, 0.0)
            while (m := self.conn.recv_match(blocking=False)) is not None:
                self._receive(m)
            self._stop.wait(1.0 / self.rate_hz)

    def _receive(self, m) -> None:
        with self._lock:
            self.received.append(m)
        if m.get_type() in ("COMMAND_LONG", "COMMAND_INT"):
            self.conn.mav.command_ack_send(m.command, self.M.MAV_RESULT_ACCEPTED)

    def types(self, name: str) -> list:
        with self._lock:
            return [m for m in self.received if m.get_type() == name]

    def __enter__(self) -> FakeAutopilot:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(2)
        self.conn.close()
