"""The hand-over of one frame between two threads (capture -> embed -> fuse)."""

from __future__ import annotations

import threading


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
