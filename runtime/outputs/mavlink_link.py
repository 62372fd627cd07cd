"""One MAVLink link to the autopilot, shared by everything that talks to it.

A serial port cannot be opened twice, and the autopilot reader (:mod:`runtime.inputs.autopilot`) and the GPS
outputs (:mod:`runtime.outputs.mavlink_gps`) often use the same one. :func:`shared_link` returns the open
:class:`MavlinkLink` for an address (or opens it): one pymavlink connection, one send lock (pymavlink's
encoder is not thread-safe), one heartbeat of our own (rate-limited, whoever calls it; a ``udpout:``
peer such as a MAVLink router learns from it where to send), and a use count so that the last user's
``close()`` closes the connection.

Message ids, commands and flags come from pymavlink's dialect (``ardupilotmega``, a superset of
``common``) through :func:`mavlink_dialect`, never copied by hand. The link speaks MAVLink 2: the
``GPS_INPUT.yaw`` field is a MAVLink 2 extension, dropped on a MAVLink 1 wire. pymavlink chooses the wire
version process-wide from the ``MAVLINK20`` environment variable (it sets it itself when it first hears a
MAVLink 2 peer); :func:`mavlink_dialect` sets it before the first connection.
"""

from __future__ import annotations

import logging
import os
import threading
import time

logger = logging.getLogger(__name__)

PIP_HINT = "pip install 'geoloc-edge[mavlink]'"
_links: dict[str, MavlinkLink] = {}
_links_lock = threading.Lock()


def mavutil():
    """pymavlink's ``mavutil`` with MAVLink 2 selected (an error naming the install command without it)."""
    os.environ.setdefault("MAVLINK20", "1")
    try:
        from pymavlink import mavutil as mu
    except ImportError as e:
        raise ImportError(f"talking to the autopilot needs pymavlink: `{PIP_HINT}`") from e
    if mu.mavlink.WIRE_PROTOCOL_VERSION != "2.0":  # imported earlier without MAVLINK20
        mu.set_dialect(mu.current_dialect)
    return mu


def mavlink_dialect():
    """The pymavlink dialect module: message ids (``MAVLINK_MSG_ID_*``), enums (``MAV_CMD_*``,
    ``GPS_INPUT_IGNORE_FLAG_*``...) and message classes."""
    return mavutil().mavlink


def _resolve_udpout(url: str) -> None:
    """A ``udpout:HOST:PORT`` whose host does not resolve is an error now: pymavlink would resolve it at each
    send and drop every message without a word."""
    import socket

    if not url.startswith(("udpout:", "udpbcast:")):
        return
    host, _, port = url.split(":", 1)[1].rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"MAVLink address {url!r}: the port {port!r} is not 1-65535 (udpout:HOST:PORT)")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except OSError as e:
        raise ValueError(f"cannot send MAVLink to {url!r}: {host!r} does not resolve ({e}); give an IP address or "
                         "a host name this machine resolves (udpout:192.168.1.10:14550)") from e


class MavlinkLink:
    """An open pymavlink connection with its send lock and heartbeat (see the module docstring)."""

    def __init__(self, url: str, *, baud: int = 57600, source_system: int = 1, source_component: int | None = None,
                 heartbeat_s: float = 1.0):
        _resolve_udpout(url)
        mu = mavutil()
        M = mu.mavlink
        if source_component is None:
            source_component = M.MAV_COMP_ID_ONBOARD_COMPUTER
        try:
            self.conn = mu.mavlink_connection(url, baud=baud, source_system=source_system,
                                              source_component=source_component)
        except Exception as e:  # serial.SerialException, OSError (port in use), ...
            raise ValueError(
                f"cannot open the autopilot link {url!r}: {e}; give udpin:0.0.0.0:PORT, udpout:HOST:PORT, "
                "tcp:HOST:PORT or an existing serial device (one address used by several options is shared)"
            ) from e
        self.url = url
        self.M = M
        self.send_lock = threading.Lock()
        self.heartbeat_s = float(heartbeat_s)
        self._last_hb = -1e9
        self.users = 1
        self.closed = False
        self._owned = True

    @classmethod
    def adopt(cls, conn, send_lock=None, url: str = "shared connection") -> MavlinkLink:
        """A link over a connection someone else opened and closes (and heartbeats): ``close()`` leaves it
        open and ``heartbeat()`` sends nothing."""
        link = cls.__new__(cls)
        link.conn, link.url, link.M = conn, url, mavlink_dialect()
        link.send_lock = send_lock or threading.Lock()
        link.heartbeat_s, link._last_hb, link.users, link.closed = 0.0, -1e9, 1, False
        link._owned = False
        return link

    def send(self, name: str, *args) -> None:
        """``conn.mav.<name>_send(*args)`` under the send lock, e.g. ``link.send("gps_input", ...)``."""
        fn = getattr(self.conn.mav, f"{name}_send")
        with self.send_lock:
            fn(*args)

    def heartbeat(self, now: float | None = None) -> bool:
        """Send our heartbeat if ``heartbeat_s`` has passed since the last one; True when sent."""
        now = time.monotonic() if now is None else now
        with self.send_lock:
            if not self.heartbeat_s or now - self._last_hb < self.heartbeat_s:
                return False
            self._last_hb = now
            self.conn.mav.heartbeat_send(self.M.MAV_TYPE_ONBOARD_CONTROLLER, self.M.MAV_AUTOPILOT_INVALID,
                                         0, 0, 0)
        return True

    def recv(self, timeout: float = 0.2):
        """The next message (or None after ``timeout`` s); reading needs no lock (one reader thread)."""
        return self.conn.recv_match(blocking=True, timeout=timeout)

    def close(self) -> None:
        """Drop one use; the last one closes the connection."""
        with _links_lock:
            self.users -= 1
            if self.users > 0 or self.closed:
                return
            self.closed = True
            if _links.get(self.url) is self:
                del _links[self.url]
        if self._owned:
            with self.send_lock:
                self.conn.close()


def shared_link(url: str, *, baud: int = 57600, **kwargs) -> MavlinkLink:
    """The open link for ``url`` (its use count raised), or a new one. Every user calls ``close()`` once."""
    with _links_lock:
        link = _links.get(url)
        if link is not None and not link.closed:
            link.users += 1
            return link
    link = MavlinkLink(url, baud=baud, **kwargs)
    with _links_lock:
        _links[url] = link
    return link
