"""Frame sources: cameras, video files, network streams, GStreamer pipelines, folders of images.

The interface is an iterable of :class:`Frame` ``(t, image, meta)``: ``t`` seconds (wall clock at capture
for live sources, the stream position for files), ``image`` RGB uint8 (H, W, 3), ``meta`` a dict (at least
``index``; optionally ``altitude_m``, ground truth ``x``/``y``, ``path``). Any generator of such tuples
plugs into the service and replay (SUES-200 flights, GeoTIFF-rendered flights live in runtime.replay).

    for t, rgb, meta in open_source("rtsp://10.0.0.2/cam", stats=stats): ...

:class:`VideoSource` wraps ``cv2.VideoCapture`` (device index, file, RTSP/UDP/HTTP URL, GStreamer pipeline
string with a GStreamer-enabled OpenCV such as JetPack's). Frames are converted BGR->RGB once, here. A
live source that stops delivering is released and reopened with exponential back-off while the caller
keeps running; empty or malformed frames are counted in :class:`SourceStats` and skipped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .preprocess import bgr_to_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "udp://", "tcp://", "http://", "https://", "srt://")


class Frame(NamedTuple):
    t: float
    image: np.ndarray
    meta: dict


class SourceError(ValueError):
    """A source that cannot be opened at all (bad path, no such device)."""


@dataclass
class SourceStats:
    frames_in: int = 0
    corrupt: int = 0  # frames that arrived but were empty or malformed (skipped)
    read_failures: int = 0  # reads that returned nothing (stream stalled or dropped)
    reopens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {"frames_in": self.frames_in, "corrupt": self.corrupt, "read_failures": self.read_failures,
                "reopens": self.reopens}


def valid_frame(img) -> bool:
    """A decoded frame that can be used: uint8, (H, W, 3|4), at least 8 px a side."""
    return (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4)
            and img.shape[0] >= 8 and img.shape[1] >= 8)


def is_live_spec(spec) -> bool:
    """Device indices, URLs and GStreamer pipelines are live (reopened on drop); files are not."""
    if isinstance(spec, int):
        return True
    s = str(spec)
    return s.isdigit() or s.startswith(URL_SCHEMES) or "!" in s or s.startswith("/dev/video")


class VideoSource:
    """Anything ``cv2.VideoCapture`` opens, with reopen-on-drop for live sources.

    ``spec``: int device index (or its string), file path, URL, or GStreamer pipeline (contains '!').
    ``live``: reopen on failure (default: true for devices/URLs/pipelines, false for files, which end).
    ``backoff_s``: first and maximum wait between reopen attempts (doubling). ``loop``: restart a file
    at its end (demos, soak tests). ``read_timeout_s``: for FFmpeg-backed streams, how long a read may
    stall before it counts as a drop. ``stop``: a threading.Event that ends iteration.
    """

    def __init__(self, spec, *, live: bool | None = None, backoff_s: tuple[float, float] = (0.5, 8.0),
                 loop: bool = False, read_timeout_s: float = 3.0, stop: threading.Event | None = None,
                 stats: SourceStats | None = None, opener: Callable | None = None, max_reopens: int | None = None):
        self.spec = int(spec) if isinstance(spec, str) and spec.isdigit() else spec
        self.live = is_live_spec(self.spec) if live is None else bool(live)
        if not self.live and not isinstance(self.spec, int) and not Path(str(self.spec)).exists():
            raise SourceError(f"video source {self.spec!r} does not exist; give a file, a device index, "
                              "a stream URL (rtsp://, udp://) or a GStreamer pipeline")
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self.loop = loop
        self.read_timeout_s = float(read_timeout_s)
        self.stop = stop or threading.Event()
        self.stats = stats or SourceStats()
        self.opener = opener
        self.max_reopens = max_reopens
        self._cap = None
        self.fps: float | None = None

    def describe(self) -> str:
        kind = "live" if self.live else "file"
        return f"cv2.VideoCapture({self.spec!r}) [{kind}{', loop' if self.loop else ''}]"

    def _open(self):
        if self.opener is not None:
            return self.opener(self.spec)
        import cv2

        if isinstance(self.spec, str) and "!" in self.spec:
            return cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
        if isinstance(self.spec, str) and self.spec.startswith(URL_SCHEMES):
            ms = int(self.read_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(ms, 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            return cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(self.spec if isinstance(self.spec, int) else os.fspath(self.spec))

    def _release(self):
        if self._cap is not None:
            try:
                self._cap.release()
            except Exception:  # a broken capture may fail to release; nothing more to do
                pass
            self._cap = None

    def _ensure_open(self) -> bool:
        """Open (or reopen with back-off); False when stopped or out of attempts."""
        wait = self.backoff_s[0]
        attempts = 0
        while not self.stop.is_set():
            cap = self._open()
            if cap is not None and cap.isOpened():
                self._cap = cap
                try:
                    import cv2

                    fps = float(cap.get(cv2.CAP_PROP_FPS))
                    self.fps = fps if 0 < fps < 1000 else None
                except Exception:
                    self.fps = None
                return True
            if cap is not None:
                cap.release()
            if not self.live:
                raise SourceError(f"cv2.VideoCapture cannot open {self.spec!r} (unsupported codec or not a video)")
            attempts += 1
            if self.max_reopens is not None and attempts > self.max_reopens:
                return False
            logger.warning("source %r not available; retrying in %.1f s", self.spec, wait)
            self.stop.wait(wait)
            wait = min(wait * 2, self.backoff_s[1])
        return False

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        opened_once = False
        try:
            while not self.stop.is_set():
                if self._cap is None:
                    if opened_once:
                        self.stats.add(reopens=1)
                    if not self._ensure_open():
                        return
                    if opened_once:
                        logger.info("source %r reopened", self.spec)
                    opened_once = True
                ok, img = self._cap.read()
                if not ok:
                    if not self.live:
                        if self.loop and index > 0:
                            self._release()
                            continue
                        return
                    self.stats.add(read_failures=1)
                    logger.warning("source %r stopped delivering frames; reopening", self.spec)
                    self._release()
                    self.stop.wait(self.backoff_s[0])
                    continue
                if not valid_frame(img):
                    self.stats.add(corrupt=1)
                    continue
                if self.live:
                    t = time.time()
                else:
                    import cv2

                    t = float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
                self.stats.add(frames_in=1)
                yield Frame(t, bgr_to_rgb(img), {"index": index, "capture_time": time.time()})
                index += 1
        finally:
            self._release()


class FolderSource:
    """Images of a folder in name order; unreadable files are counted as corrupt and skipped."""

    def __init__(self, folder, *, stop: threading.Event | None = None, stats: SourceStats | None = None,
                 interval_s: float = 1.0, loop: bool = False):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"image folder {self.folder} does not exist")
        self.paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"{self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.stop = stop or threading.Event()
        self.stats = stats or SourceStats()
        self.interval_s = float(interval_s)
        self.loop = loop
        self.live = False

    def describe(self) -> str:
        return f"folder {self.folder} ({len(self.paths)} images)"

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        index = 0
        while True:
            for p in self.paths:
                if self.stop.is_set():
                    return
                img = cv2.imread(os.fspath(p), cv2.IMREAD_COLOR)
                if not valid_frame(img):
                    self.stats.add(corrupt=1)
                    logger.warning("skipping unreadable image %s", p)
                    continue
                self.stats.add(frames_in=1)
                yield Frame(index * self.interval_s, bgr_to_rgb(img),
                            {"index": index, "path": str(p), "capture_time": time.time()})
                index += 1
            if not self.loop or index == 0:
                return


class IterSource:
    """Wrap any iterable of (t, rgb, meta) or of bare RGB frames (then t = index / fps)."""

    def __init__(self, frames: Iterable, *, fps: float = 10.0, stop: threading.Event | None = None,
                 stats: SourceStats | None = None, name: str = "iterator", live: bool = False):
        self.frames = frames
        self.fps = fps
        self.stop = stop or threading.Event()
        self.stats = stats or SourceStats()
        self.name = name
        self.live = live

    def describe(self) -> str:
        return self.name

    def __iter__(self) -> Iterator[Frame]:
        for i, item in enumerate(self.frames):
            if self.stop.is_set():
                return
            if isinstance(item, tuple) and len(item) == 3:
                t, img, meta = item
            else:
                t, img, meta = i / self.fps, item, {}
            if not valid_frame(img):
                self.stats.add(corrupt=1)
                continue
            meta = dict(meta)
            meta.setdefault("index", i)
            meta.setdefault("capture_time", time.time())
            self.stats.add(frames_in=1)
            yield Frame(float(t), np.ascontiguousarray(img[:, :, :3]), meta)


def open_source(spec, *, stop: threading.Event | None = None, stats: SourceStats | None = None,
                loop: bool = False, live: bool | None = None, backoff_s=(0.5, 8.0), read_timeout_s: float = 3.0):
    """A source from a command-line string: a folder of images, or anything cv2.VideoCapture opens."""
    if not isinstance(spec, int) and Path(str(spec)).is_dir():
        return FolderSource(spec, stop=stop, stats=stats, loop=loop)
    return VideoSource(spec, stop=stop, stats=stats, loop=loop, live=live, backoff_s=backoff_s,
                       read_timeout_s=read_timeout_s)
