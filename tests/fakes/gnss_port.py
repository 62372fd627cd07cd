"""The autopilot's end of a GPS serial port, for the tests: a real pseudo-terminal pair (os.openpty) whose
slave path the runtime's emulated receiver opens; what it writes is collected here and decoded with pyubx2
(UBX) and pynmea2 (NMEA)."""

from __future__ import annotations

import io
import os
import threading
import time


class PtyPeer:
    """The autopilot's end of a pseudo-terminal: collects what the receiver writes, can write to it."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.data = bytearray()
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, bytes so far)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        import select

        while not self._stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    return
                self.data += chunk
                self.arrivals.append((time.monotonic(), len(self.data)))

    def write(self, b: bytes):
        os.write(self.master, b)

    def wait_bytes(self, n: int, timeout: float = 3.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.data) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return bytes(self.data)

    def close(self):
        self._stop.set()
        self._t.join(1)
        os.close(self.master)
        os.close(self.slave)


def decode(data: bytes) -> tuple[list, list]:
    """(UBX messages parsed by pyubx2, NMEA sentences parsed by pynmea2) from a mixed stream."""
    import pynmea2
    import pyubx2

    ubx, nmea = [], []
    rd = pyubx2.UBXReader(io.BytesIO(data), protfilter=pyubx2.UBX_PROTOCOL | pyubx2.NMEA_PROTOCOL)
    for raw, parsed in rd:
        if raw[:1] == b"$":
            nmea.append(pynmea2.parse(raw.decode("ascii").strip(), check=True))
        else:
            ubx.append(parsed)
    return ubx, nmea
