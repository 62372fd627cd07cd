"""Recorded and synthetic flights as frame sources with ground truth (for replay, tests and demos).

- :class:`GeoTiffFlight`: a drone flying a path (waypoints, a lawnmower survey or a smooth curve) at a
  given altitude over a GeoTIFF, each frame rendered by :func:`tiles.views.render_view` (pinhole camera,
  heading along the track, optional tilt and photometric changes). Ground truth per frame: the point
  below the drone (x, y in the map's metric CRS, lat, lon).
- :class:`SUES200Flight`: the frames of one SUES-200 location and altitude, in flight order; ground
  truth from ``ground_truth.json`` when the dataset was written by ``tools/make_sues200.py``.

Both follow :mod:`runtime.inputs.sources`: iterables of ``Frame(t, image, meta)`` (RGB uint8 image) with
``meta`` holding ``index``, ``altitude_m``, ``source`` and, where known, the ground truth ``x``, ``y`` (metric
CRS of the map, metres), ``lat``, ``lon``, ``heading_deg``; a ``describe()`` and ``live = False``, so the
service and replay take them like any other source. rasterio and ``tiles.raster`` are imported only when a
GeoTIFF flight starts: this module imports without them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runtime.inputs.sources import Frame

log = logging.getLogger(__name__)

PATTERNS = ("lawnmower", "curve", "line", "weave")


# ---- paths ------------------------------------------------------------------------------------------
def lawnmower_waypoints(bounds_m, spacing_m: float, margin_m: float = 0.0) -> np.ndarray:
    """A survey pattern: east-west legs ``spacing_m`` apart inside ``bounds_m`` shrunk by ``margin_m``."""
    xmin, ymin, xmax, ymax = (float(v) for v in bounds_m)
    xmin, ymin, xmax, ymax = xmin + margin_m, ymin + margin_m, xmax - margin_m, ymax - margin_m
    if xmax <= xmin or ymax <= ymin:
        raise ValueError(f"the area {bounds_m} leaves nothing inside a margin of {margin_m:.0f} m")
    if spacing_m <= 0:
        raise ValueError(f"spacing_m must be > 0, got {spacing_m}")
    n_legs = max(1, int(math.floor((ymax - ymin) / spacing_m)) + 1)
    ys = ymax - np.arange(n_legs) * spacing_m
    pts = []
    for i, y in enumerate(ys):
        a, b = (xmin, xmax) if i % 2 == 0 else (xmax, xmin)
        pts += [(a, y), (b, y)]
    return np.array(pts, float)


def curve_waypoints(bounds_m, n_points: int = 200, margin_m: float = 0.0, seed: int = 0) -> np.ndarray:
    """A smooth random curve across the area (a sum of two sines on a west-to-east line)."""
    xmin, ymin, xmax, ymax = (float(v) for v in bounds_m)
    xmin, ymin, xmax, ymax = xmin + margin_m, ymin + margin_m, xmax - margin_m, ymax - margin_m
    if xmax <= xmin or ymax <= ymin:
        raise ValueError(f"the area {bounds_m} leaves nothing inside a margin of {margin_m:.0f} m")
    rng = np.random.default_rng(seed)
    s = np.linspace(0.0, 1.0, n_points)
    f1, f2 = rng.uniform(0.5, 1.5), rng.uniform(1.5, 3.0)
    p1, p2 = rng.uniform(0, 2 * math.pi, 2)
    wave = 0.6 * np.sin(2 * math.pi * f1 * s + p1) + 0.4 * np.sin(2 * math.pi * f2 * s + p2)
    x = xmin + s * (xmax - xmin)
    y = (ymin + ymax) / 2 + wave * (ymax - ymin) / 2 * 0.9
    return np.stack([x, y], 1)


def weave_waypoints(bounds_m, radius_m: float, margin_m: float = 0.0, step_m: float = 2.0) -> np.ndarray:
    """S-turns west to east across the area: arcs of ``radius_m`` turning 120 degrees, alternately right and
    left (the heading swings between 30 and 150 degrees), so the airframe is always in a turn of that
    radius (a fixed wing banked ``atan(v^2 / (g r))``) except where the turn reverses."""
    xmin, ymin, xmax, ymax = (float(v) for v in bounds_m)
    xmin, ymin, xmax, ymax = xmin + margin_m, ymin + margin_m, xmax - margin_m, ymax - margin_m
    if xmax <= xmin or ymax - ymin < radius_m:
        raise ValueError(f"the area {bounds_m} leaves no room for turns of radius {radius_m:.0f} m inside a "
                         f"margin of {margin_m:.0f} m")
    x, y, h = xmin, (ymin + ymax) / 2, math.radians(30.0)
    pts, turned, sign = [(x, y)], 0.0, 1.0
    dh = step_m / radius_m
    while x < xmax:
        h += sign * dh
        turned += dh
        x, y = x + step_m * math.sin(h), y + step_m * math.cos(h)
        pts.append((x, y))
        if turned >= math.radians(120.0) - 1e-9:
            turned, sign = 0.0, -sign
    return np.array(pts)


def sample_path(waypoints, step_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step_m`` metres along the polyline, and the track heading there (compass degrees)."""
    wp = np.asarray(waypoints, float).reshape(-1, 2)
    if len(wp) < 2:
        raise ValueError(f"a path needs at least 2 waypoints, got {len(wp)}")
    if step_m <= 0:
        raise ValueError(f"step_m must be > 0, got {step_m}")
    seg = np.diff(wp, axis=0)
    seg_len = np.hypot(seg[:, 0], seg[:, 1])
    keep = seg_len > 1e-9
    seg, seg_len = seg[keep], seg_len[keep]
    starts = wp[:-1][keep]
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    s = np.arange(0.0, cum[-1] + 1e-9, step_m)
    i = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    f = (s - cum[i]) / seg_len[i]
    pts = starts[i] + f[:, None] * seg[i]
    heading = (np.degrees(np.arctan2(seg[i, 0], seg[i, 1])) + 360.0) % 360.0
    return pts, heading


# ---- GeoTIFF flight ---------------------------------------------------------------------------------
class GeoTiffFlight:
    """Frames rendered from a GeoTIFF along a path at one altitude (see the module docstring).

    ``waypoints``: (N, 2) metric x, y; or None to generate ``pattern`` ('lawnmower', 'curve', 'line')
    inside the raster, keeping a margin of one view footprint. ``speed_mps`` and ``fps`` set the spacing
    of frames along the path and their timestamps. ``heading_deg``: None to face along the track, or a
    fixed compass heading. ``photometric``: a strength for :func:`tiles.views.photometric_jitter` (one
    appearance per flight, seeded) or None. ``effects``: a :class:`runtime.replay.real_camera.CameraEffects`
    (attitude, lens, relief, barometer, blur, exposure); frames then carry ``truth`` and ``reported`` in
    their meta (see that module). The ``weave`` pattern turns at the radius of ``effects.bank_deg``.
    """

    def __init__(
        self,
        raster_path: str | os.PathLike,
        altitude_m: float,
        *,
        waypoints=None,
        pattern: str = "curve",
        hfov_deg: float = 60.0,
        size_px: int | tuple[int, int] = 256,
        speed_mps: float = 10.0,
        fps: float = 1.0,
        heading_deg: float | None = None,
        tilt_deg: float = 0.0,
        photometric: float | None = None,
        spacing_m: float | None = None,
        max_frames: int | None = None,
        seed: int = 0,
        effects=None,
    ):
        if pattern not in PATTERNS:
            raise ValueError(f"pattern {pattern!r} is not one of {PATTERNS}")
        if altitude_m <= 0 or speed_mps <= 0 or fps <= 0:
            raise ValueError(
                f"altitude_m, speed_mps and fps must be > 0, got {altitude_m}, {speed_mps}, {fps}"
            )
        self.raster_path = Path(raster_path)
        self.altitude_m = float(altitude_m)
        self.waypoints = None if waypoints is None else np.asarray(waypoints, float).reshape(-1, 2)
        self.pattern = pattern
        self.hfov_deg = float(hfov_deg)
        self.size_px = (int(size_px), int(size_px)) if np.isscalar(size_px) else tuple(int(v) for v in size_px)
        self.speed_mps = float(speed_mps)
        self.fps = float(fps)
        self.heading_deg = heading_deg
        self.tilt_deg = float(tilt_deg)
        self.photometric = photometric
        self.spacing_m = spacing_m
        self.max_frames = max_frames
        self.seed = int(seed)
        self.effects = effects
        self.footprint_m = 2.0 * self.altitude_m * math.tan(math.radians(self.hfov_deg) / 2.0)
        self._path: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return f"geotiff:{self.raster_path.name}@{self.altitude_m:g}m"

    def path(self, raster=None) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, 2) metric, heading (N,) degrees) of every frame."""
        if self._path is None:
            wp = self.waypoints
            if wp is None:
                if raster is None:
                    from tiles.raster import open_raster

                    with open_raster(self.raster_path) as r:
                        return self.path(r)
                margin = 0.75 * self.footprint_m
                if self.pattern == "lawnmower":
                    wp = lawnmower_waypoints(raster.bounds_m, self.spacing_m or self.footprint_m, margin)
                elif self.pattern == "curve":
                    wp = curve_waypoints(raster.bounds_m, margin_m=margin, seed=self.seed)
                elif self.pattern == "weave":
                    from runtime.replay.airframe import turn_radius_m

                    bank = self.effects.bank_deg if self.effects is not None else 25.0
                    wp = weave_waypoints(raster.bounds_m, turn_radius_m(self.speed_mps, bank), margin)
                else:
                    xmin, ymin, xmax, ymax = raster.bounds_m
                    wp = np.array([[xmin + margin, ymin + margin], [xmax - margin, ymax - margin]])
            pts, heading = sample_path(wp, self.speed_mps / self.fps)
            if self.max_frames is not None:
                pts, heading = pts[: self.max_frames], heading[: self.max_frames]
            self._path = (pts, heading)
        return self._path

    live = False

    def describe(self) -> str:
        return f"flight over {self.raster_path} at {self.altitude_m:g} m ({len(self)} frames)"

    def __len__(self) -> int:
        return len(self.path()[0])

    def __iter__(self) -> Iterator[Frame]:
        from tiles.raster import open_raster
        from tiles.views import CameraPose, photometric_jitter, render_view

        with open_raster(self.raster_path) as raster:
            pts, heading = self.path(raster)
            if self.effects is not None and self.effects.active:
                from runtime.replay.real_camera import render_frames

                yield from render_frames(self, self.effects, raster, pts, heading)
                return
            look_seed = int(np.random.default_rng(self.seed).integers(2**31))
            for i, ((x, y), trk) in enumerate(zip(pts, heading)):
                hdg = float(trk) if self.heading_deg is None else float(self.heading_deg)
                pose = CameraPose(float(x), float(y), self.altitude_m, hdg, self.tilt_deg, self.hfov_deg)
                view = render_view(raster, pose, self.size_px)
                image = view.image
                if self.photometric:
                    image = photometric_jitter(image, np.random.default_rng(look_seed), self.photometric)
                lat, lon = raster.to_wgs84(float(x), float(y))
                meta = {"index": i, "altitude_m": self.altitude_m, "x": float(x), "y": float(y),
                        "lat": float(lat), "lon": float(lon), "heading_deg": hdg,
                        "valid_fraction": view.valid_fraction, "source": self.name}
                if self.tilt_deg:  # a level airframe with its camera mounted tilted: the autopilot's attitude
                    meta["reported"] = {"roll_deg": 0.0, "pitch_deg": 0.0, "yaw_deg": hdg, "heading_deg": hdg}
                yield Frame(i / self.fps, image, meta)


# ---- SUES-200 flight --------------------------------------------------------------------------------
class SUES200Flight:
    """The frames of one SUES-200 location at one altitude, in order (``fps`` sets their timestamps)."""

    def __init__(self, root, location: str, altitude_m: int, fps: float = 1.0):
        from common.sues200_layout import SUES200, normalize_id

        self.dataset = root if isinstance(root, SUES200) else SUES200(root)
        self.location = normalize_id(location)
        self.altitude_m = int(altitude_m)
        self.fps = float(fps)
        self.paths = self.dataset.drone_frames(self.location, self.altitude_m)
        self.truth = self._load_truth()

    @property
    def name(self) -> str:
        return f"sues200:{self.location}@{self.altitude_m}m"

    live = False

    def describe(self) -> str:
        return f"SUES-200 flight {self.location} at {self.altitude_m} m ({len(self.paths)} frames, {self.dataset.root})"

    def _load_truth(self) -> list[dict] | None:
        gt = self.dataset.root / "ground_truth.json"
        if not gt.is_file():
            return None
        info = json.loads(gt.read_text()).get("locations", {}).get(self.location)
        if not info:
            return None
        flight = info.get("flights", {}).get(str(self.altitude_m))
        if not flight or len(flight["frames"]) != len(self.paths):
            return None
        fields = flight.get("frame_fields", ["x", "y", "heading_deg", "tilt_deg"])
        out = []
        for row in flight["frames"]:
            d = dict(zip(fields, row))
            out.append({"x": float(d["x"]), "y": float(d["y"]),
                        "heading_deg": float(d.get("heading_deg", math.nan))})
        return out

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        from runtime.engines.preprocess import bgr_to_rgb

        for i, p in enumerate(self.paths):
            bgr = cv2.imread(os.fspath(p), cv2.IMREAD_COLOR)
            if bgr is None:
                log.warning("%s: cannot decode %s, skipped", self.name, p)
                continue
            meta = {"index": i, "altitude_m": float(self.altitude_m), "path": str(p),
                    "location": self.location, "source": self.name}
            if self.truth:
                meta.update(self.truth[i])
            yield Frame(i / self.fps, bgr_to_rgb(bgr), meta)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8; a clear error when it cannot be decoded."""
    import cv2

    from runtime.engines.preprocess import bgr_to_rgb

    bgr = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read an image from {path} (missing, empty or not an image file)")
    return bgr_to_rgb(bgr)


class Kidnapping:
    """Frames of two flights: the first ``cut`` of ``a``, then ``b`` from ``cut`` on (the drone carried
    elsewhere between two frames)."""

    def __init__(self, a, b, cut: int):
        self.a, self.b, self.cut = a, b, cut

    def __iter__(self):
        for i, fr in enumerate(self.a):
            if i >= self.cut:
                break
            yield fr
        for i, fr in enumerate(self.b):
            if i >= self.cut:
                yield fr


def frames_of_nothing(n: int, alt: float, seed: int):
    """Noise, then uniform colours: frames that show no place at all (never to be trusted)."""
    from runtime.inputs.sources import Frame

    rng = np.random.default_rng(seed)
    for i in range(n):
        if i < n // 2:
            img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        else:
            img = np.full((256, 256, 3), rng.integers(0, 256, 3), np.uint8)
        yield Frame(float(i), img, {"index": i, "altitude_m": alt, "heading_deg": float(rng.uniform(0, 360))})
