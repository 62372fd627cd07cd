"""Drone-like camera views synthesised from a map raster, with exact ground truth.

Camera model: a pinhole camera at ``(x, y, altitude_m)`` above a flat ground plane (z = 0) in the
metric frame of :mod:`tiles.raster` (x east, y north, metres). ``heading_deg`` is the direction the top of
the image faces (0 = north, clockwise, like a compass); ``tilt_deg`` pitches the optical axis forward from
nadir (0 = looking straight down; negative looks back), then ``roll_deg`` leans it towards the image right.
These three *view angles* describe any attitude without the gimbal lock Euler angles have at nadir
(:class:`runtime.inputs.attitude.CameraAttitude` converts an airframe's attitude and camera mount to them).
The focal length in pixels is ``(width / 2) / tan(hfov / 2)``.

Because the ground is a plane, image -> ground is exactly a homography, so a view is rendered by mapping
the four image corners to the ground (:func:`image_to_ground`) and warping that quadrilateral out of the
raster (:meth:`GeoRaster.sample_quad`). :func:`ground_to_image` is the inverse, used by tests to check
that a ground point lands where the geometry says.

The ground truth of a view is ``(pose.x, pose.y)``: the point directly below the drone. With tilt the
image centre looks at ``centre_xy``, ``altitude_m * tan(tilt)`` ahead of it.

On request :func:`render_view` renders through a real lens (``lens``: distortion, e.g. a
:class:`runtime.inputs.camera.CameraModel`) and over relief (``terrain``: the map draped on a height
field), ray by ray (:mod:`tiles.view_rays`); the camera is then ``altitude_m`` above the plane z = 0 the
terrain's heights are measured from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common import validate
from tiles.raster import GeoRaster


@dataclass(frozen=True)
class CameraPose:
    x: float
    y: float
    altitude_m: float
    heading_deg: float = 0.0
    tilt_deg: float = 0.0
    hfov_deg: float = 60.0
    roll_deg: float = 0.0

    def __post_init__(self):
        # the project's one rule for each number (common.validate); raises InputError (a ValueError)
        validate.finite("x", self.x)
        validate.finite("y", self.y)
        validate.altitude_m(self.altitude_m)
        validate.hfov_deg(self.hfov_deg)
        validate.tilt_deg(abs(self.tilt_deg), "tilt_deg (either way)")
        validate.tilt_deg(abs(self.roll_deg), "roll_deg (either way)")
        validate.heading_deg(self.heading_deg)


def _axes(pose: CameraPose):
    """Unit vectors (world ENU) of the optical axis, image right and image up."""
    h, t = math.radians(pose.heading_deg), math.radians(pose.tilt_deg)
    fwd = np.array([math.sin(h), math.cos(h), 0.0])
    right = np.array([math.cos(h), -math.sin(h), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    axis = math.cos(t) * down + math.sin(t) * fwd
    up = math.cos(t) * fwd + math.sin(t) * np.array([0.0, 0.0, 1.0])
    if pose.roll_deg:
        r = math.radians(pose.roll_deg)
        axis, right = math.cos(r) * axis + math.sin(r) * right, math.cos(r) * right - math.sin(r) * axis
    return axis, right, up


def focal_px(pose: CameraPose, width_px: int) -> float:
    return (width_px / 2.0) / math.tan(math.radians(pose.hfov_deg) / 2.0)


def image_to_ground(pose: CameraPose, size_px: tuple[int, int], u, v) -> np.ndarray:
    """Ground points (N, 2) seen at image coordinates (u, v) (continuous, corner of top-left pixel at 0)."""
    w, h = size_px
    f = focal_px(pose, w)
    axis, right, up = _axes(pose)
    u, v = np.atleast_1d(np.asarray(u, float)), np.atleast_1d(np.asarray(v, float))
    rays = f * axis[None] + (u - w / 2.0)[:, None] * right[None] - (v - h / 2.0)[:, None] * up[None]
    if np.any(rays[:, 2] >= -1e-9):
        raise ValueError(
            f"part of the view looks at or above the horizon (tilt {pose.tilt_deg} deg, hfov "
            f"{pose.hfov_deg} deg); reduce the tilt or the field of view"
        )
    s = pose.altitude_m / -rays[:, 2]
    return np.stack([pose.x + s * rays[:, 0], pose.y + s * rays[:, 1]], axis=1)


def ground_to_image(pose: CameraPose, size_px: tuple[int, int], gx, gy) -> np.ndarray:
    """Image coordinates (N, 2) of ground points; the inverse of :func:`image_to_ground`."""
    w, h = size_px
    f = focal_px(pose, w)
    axis, right, up = _axes(pose)
    p = np.stack([np.atleast_1d(gx) - pose.x, np.atleast_1d(gy) - pose.y,
                  np.full(np.size(gx), -pose.altitude_m)], axis=1)
    zc = p @ axis
    return np.stack([w / 2.0 + f * (p @ right) / zc, h / 2.0 - f * (p @ up) / zc], axis=1)


@dataclass
class View:
    image: np.ndarray  # RGB uint8 (h, w, 3)
    valid: np.ndarray  # float32 (h, w): 0 where the view left the map
    pose: CameraPose
    centre_xy: tuple[float, float]  # ground point on the optical axis
    corners_xy: np.ndarray  # (4, 2) ground corners TL, TR, BR, BL

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean())


def render_view(
    raster: GeoRaster,
    pose: CameraPose,
    size_px: tuple[int, int] = (256, 256),
    photometric: float | None = None,
    rng: np.random.Generator | None = None,
    *,
    lens=None,
    terrain=None,
) -> View:
    """Render what the camera at ``pose`` sees of ``raster``; ``photometric`` (a strength, e.g. 1.0)
    applies random appearance changes drawn from ``rng`` (see :func:`photometric_jitter`).

    ``lens``: an object with ``pixel_rays(u, v)`` and ``size`` == ``size_px`` (e.g. a
    :class:`runtime.inputs.camera.CameraModel`): the view through it (distortion included; its
    intrinsics replace ``pose.hfov_deg``). ``terrain``: ``f(x, y) -> z``, the ground's height above the
    plane the camera's altitude is measured from (see :mod:`tiles.view_rays`)."""
    w, h = int(size_px[0]), int(size_px[1])
    if lens is not None or terrain is not None:
        return _render_rays(raster, pose, (w, h), lens, terrain, photometric, rng)
    corners = image_to_ground(pose, (w, h), [0, w, w, 0], [0, 0, h, h])
    image, valid = raster.sample_quad(corners, (w, h))
    if photometric:
        image = photometric_jitter(image, rng if rng is not None else np.random.default_rng(), photometric)
    centre = image_to_ground(pose, (w, h), [w / 2.0], [h / 2.0])[0]
    return View(image, valid, pose, (float(centre[0]), float(centre[1])), corners)


def camera_rays(pose: CameraPose, size_px: tuple[int, int], u, v, lens=None) -> np.ndarray:
    """World rays (N, 3; ENU) through image points (u, v) (continuous, corner at 0), through ``lens``
    when given, else the pinhole of ``pose.hfov_deg``."""
    w, h = size_px
    u, v = np.ravel(np.asarray(u, float)), np.ravel(np.asarray(v, float))
    if lens is not None:
        if tuple(lens.size) != (w, h):
            raise ValueError(f"the lens is calibrated for {lens.size[0]}x{lens.size[1]}, the view is {w}x{h}: "
                             "render at the lens's size (or scale the lens)")
        cam = lens.pixel_rays(u, v)  # x right, y down, z along the optical axis
    else:
        f = focal_px(pose, w)
        cam = np.stack([u - w / 2.0, v - h / 2.0, np.full(u.shape, f)], axis=1)
    axis, right, up = _axes(pose)
    return cam[:, :1] * right[None] - cam[:, 1:2] * up[None] + cam[:, 2:3] * axis[None]


def _render_rays(raster, pose, size_px, lens, terrain, photometric, rng) -> View:
    from tiles.view_rays import intersect_terrain, sample_ground

    w, h = size_px
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    origin = (pose.x, pose.y, pose.altitude_m)
    ground = intersect_terrain(origin, camera_rays(pose, (w, h), u, v, lens), terrain)
    image, valid = sample_ground(raster, ground[:, 0].reshape(h, w), ground[:, 1].reshape(h, w))
    if photometric:
        image = photometric_jitter(image, rng if rng is not None else np.random.default_rng(), photometric)
    edge = intersect_terrain(origin, camera_rays(pose, (w, h), [0, w, w, 0, w / 2.0], [0, 0, h, h, h / 2.0],
                                                 lens), terrain)
    return View(image, valid, pose, (float(edge[4, 0]), float(edge[4, 1])), edge[:4])


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random brightness, contrast, gamma, saturation, colour cast, blur and sensor noise.

    ``strength`` scales every change (0 = none, 1 = a different camera on a different day)."""
    import cv2

    s = float(strength)
    x = image.astype(np.float32) / 255.0
    x = x * (1 + rng.uniform(-0.25, 0.25) * s) + rng.uniform(-0.08, 0.08) * s  # gain, offset
    mean = x.mean()
    x = (x - mean) * (1 + rng.uniform(-0.3, 0.3) * s) + mean  # contrast
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * (1 + rng.uniform(-0.4, 0.4) * s)  # saturation
    x = x * (1 + rng.uniform(-0.06, 0.06, size=3) * s)  # white balance
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-0.3, 0.3) * s)  # gamma
    if rng.random() < 0.5 * s:
        k = int(rng.choice([3, 5]))
        x = cv2.GaussianBlur(x, (k, k), 0)
    x = x + rng.normal(0, 0.015 * s, size=x.shape).astype(np.float32)
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
