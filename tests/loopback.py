"""Helpers for tests that talk over loopback sockets (MAVLink, UDP streams, health endpoints, gloo)."""

from __future__ import annotations

import socket
import time


def free_port(kind=socket.SOCK_DGRAM) -> int:
    """A port on 127.0.0.1 that is free now (UDP by default; ``socket.SOCK_STREAM`` for TCP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=5.0, every=None):
    """Poll ``pred`` (calling ``every`` between polls) until it is truthy or ``timeout`` s pass; return its
    last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        if every:
            every()
        time.sleep(0.02)
