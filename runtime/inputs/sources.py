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

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.cli import UserError
from common.image_files import IMAGE_SUFFIXES
from runtime.engines.preprocess import bgr_to_rgb

logger = logging.getLogger(__name__)

MAX_FILE_READ_ERRORS = 20  # reads in a row that raise before a file source gives up
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "udp://", "tcp://", "http://", "https://", "srt://")


class Frame(NamedTuple):
    t: float
    image: np.ndarray
    meta: dict


class SourceError(UserError, ValueError):
    """A source that cannot be opened at all (bad path, no such device)."""


@dataclass
class SourceStats:
    frames_in: int = 0
    corrupt: int = 0  # frames that arrived but were empty or malformed (skipped); by reason in `skipped`
    read_failures: int = 0  # reads that returned nothing or raised (stream stalled or dropped)
    reopens: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> frames skipped for it
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def skip(self, reason: str, what: str = "") -> None:
        """Count a bad frame; the first of each reason is logged (a broken camera would flood the log)."""
        with self.lock:
            self.corrupt += 1
            first = reason not in self.skipped
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if first:
            logger.warning("skipping a frame%s: %s (further frames like it are only counted)",
                           f" of {what}" if what else "", reason)

    def as_dict(self) -> dict:
        return {"frames_in": self.frames_in, "corrupt": self.corrupt, "read_failures": self.read_failures,
                "reopens": self.reopens, "skipped": dict(self.skipped)}


MIN_SIDE_PX = 8  # smaller is not a camera frame
MAX_PIXELS = 64_000_000  # 64 Mpx (an 8K frame is 33 Mpx): beyond is a corrupt header, not a camera


def check_frame(img) -> tuple[np.ndarray | None, str | None]:
    """A usable 8-bit 3-channel frame from a decoded image, or ``(None, reason)``.

    Grey ``(H, W)`` / ``(H, W, 1)`` frames (mono cameras) are repeated to 3 channels and a 4th channel
    (alpha) is dropped, keeping the channel order; refused: nothing, empty, odd shapes, other than
    8-bit pixels (floats with NaN/inf said as such), fewer than :data:`MIN_SIDE_PX` or more than
    :data:`MAX_PIXELS` pixels."""
    if not isinstance(img, np.ndarray) or img.size == 0:
        return None, "empty frame (the decoder returned no pixels)"
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        return None, f"malformed frame of shape {img.shape} (expected H x W x 3)"
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            return None, f"{img.dtype} frame with NaN/inf pixels"
        return None, f"{img.dtype} frame (expected 8-bit pixels)"
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE_PX:
        return None, f"frame of {w}x{h} px is too small (at least {MIN_SIDE_PX} px a side)"
    if h * w > MAX_PIXELS:
        return None, f"frame of {w}x{h} px is too large (more than {MAX_PIXELS // 1_000_000} Mpx)"
    if img.ndim == 2 or img.shape[2] == 1:
        return np.repeat(img.reshape(h, w, 1), 3, axis=2), None
    return (img[:, :, :3] if img.shape[2] == 4 else img), None


def valid_frame(img) -> bool:
    """A decoded frame that :func:`check_frame` accepts."""
    return check_frame(img)[0] is not None


def gstreamer_available() -> bool:
    """Whether this OpenCV can open GStreamer pipelines (JetPack's can; the PyPI wheels cannot)."""
    import cv2

    registry = getattr(cv2, "videoio_registry", None)
    if registry is not None and hasattr(registry, "hasBackend"):
        return bool(registry.hasBackend(cv2.CAP_GSTREAMER))
    m = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
    return bool(m and m.group(1).upper() not in ("NO", "NONE"))


def is_pipeline(spec) -> bool:
    """A GStreamer pipeline description (``... ! ... ! appsink``)."""
    return isinstance(spec, str) and "!" in spec


def _cv2_version() -> str:
    import cv2

    return f"OpenCV {cv2.__version__}"


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
        if opener is None and is_pipeline(self.spec) and not gstreamer_available():
            raise SourceError(
                f"this OpenCV ({_cv2_version()}) was built without GStreamer, so it cannot open the pipeline "
                f"{self.spec!r} (cv2.getBuildInformation() says 'GStreamer: NO'); use JetPack's OpenCV (pip "
                "uninstall opencv-python-headless) or an OpenCV built with -DWITH_GSTREAMER=ON"
            )
        if not self.live:
            self._ensure_open()  # a file that cannot be opened is refused here, not in the capture thread

    def describe(self) -> str:
        kind = "live" if self.live else "file"
        return f"cv2.VideoCapture({self.spec!r}) [{kind}{', loop' if self.loop else ''}]"

    def _open(self):
        """A capture, or None when opening raised (counted as a failed open, never a crash)."""
        try:
            return self._open_capture()
        except Exception as e:  # OpenCV raises cv2.error on some backends; a fake opener may raise anything
            logger.warning("opening source %r failed: %s", self.spec, e)
            return None

    def _open_capture(self):
        if self.opener is not None:
            return self.opener(self.spec)
        import cv2

        if is_pipeline(self.spec):
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
                with contextlib.suppress(Exception):
                    cap.release()
            if not self.live:
                raise SourceError(f"cv2.VideoCapture cannot open {self.spec!r}: not a video, or a codec this "
                                  "OpenCV lacks (check it with `ffprobe`)")
            attempts += 1
            if self.max_reopens is not None and attempts > self.max_reopens:
                return False
            logger.warning("source %r not available; retrying in %.1f s", self.spec, wait)
            self.stop.wait(wait)
            wait = min(wait * 2, self.backoff_s[1])
        return False

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        failures = 0  # reads in a row that raised
        opened_once = self._cap is not None  # a file is opened by the constructor
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
                try:
                    ok, img = self._cap.read()
                except Exception as e:  # a decoder error must not end the capture thread
                    self.stats.add(read_failures=1)
                    failures += 1
                    if not self.live and failures >= MAX_FILE_READ_ERRORS:
                        raise SourceError(f"{self.spec!r}: {failures} reads in a row failed ({e}); the file is "
                                          "damaged") from e
                    logger.warning("reading source %r failed: %s", self.spec, e)
                    if self.live:
                        self._release()
                        self.stop.wait(self.backoff_s[0])
                    continue
                failures = 0
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
                img, reason = check_frame(img)
                if img is None:
                    self.stats.skip(reason, repr(self.spec))
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
                try:
                    img = cv2.imread(os.fspath(p), cv2.IMREAD_COLOR)
                except Exception as e:  # cv2.error on some damaged files
                    img = None
                    logger.debug("imread %s: %s", p, e)
                img, reason = check_frame(img) if img is not None else (None, "unreadable image (damaged or "
                                                                            "not an image)")
                if img is None:
                    self.stats.skip(reason, str(p))
                    logger.debug("skipped %s: %s", p, reason)
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
            img, reason = check_frame(img)
            if img is None:
                self.stats.skip(reason, self.name)
                continue
            meta = dict(meta)
            meta.setdefault("index", i)
            meta.setdefault("capture_time", time.time())
            self.stats.add(frames_in=1)
            yield Frame(float(t), np.ascontiguousarray(img), meta)


def open_source(spec, *, stop: threading.Event | None = None, stats: SourceStats | None = None,
                loop: bool = False, live: bool | None = None, backoff_s=(0.5, 8.0), read_timeout_s: float = 3.0):
    """A source from a command-line string: a folder of images, or anything cv2.VideoCapture opens."""
    if not isinstance(spec, int) and Path(str(spec)).is_dir():
        return FolderSource(spec, stop=stop, stats=stats, loop=loop)
    return VideoSource(spec, stop=stop, stats=stats, loop=loop, live=live, backoff_s=backoff_s,
                       read_timeout_s=read_timeout_s)
