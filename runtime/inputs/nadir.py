"""A tilted frame turned into the nadir view of the same ground, and the offset to the point below the drone.

Over a ground plane ``height_m`` below the camera, a pixel ``x`` of the undistorted frame (camera matrix
``K``) looks along ``p = R K^-1 x`` (NED, ``R`` the camera's :class:`runtime.inputs.attitude.CameraAttitude`)
and meets the ground at ``(north, east) = height * (p_n, p_e) / p_d`` from the point below the drone:
the homography ``G = diag(h, h, 1) R K^-1``. The nadir view is what a camera of the same focal length
straight down at the same height would see, centred on the ground point the frame's centre sees (so it
holds the frame's ground, and its ground resolution is that of a nadir frame: ``height / f`` metres per
pixel): a similarity ``A`` of the ground, north-up or with its top towards a heading. The homography of
the frame is ``H = A G``.

The position of that nadir view's centre is the point the camera looks at; the drone is
:attr:`NadirView.offset_en_m` (east, north) from it: ``-height * tan(tilt)`` along the direction the
optical axis leans. A chain that localises the rectified frame adds the offset to report the point below
the drone. Pixel coordinates are OpenCV's (centre of the top-left pixel at 0), as ``cv2.warpPerspective``.
numpy and OpenCV only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.inputs.attitude import CameraAttitude


@dataclass(frozen=True)
class NadirView:
    """The rectification of one frame: ``H`` (frame pixels -> nadir pixels), the output ``size`` (w, h),
    its ``gsd_m`` (metres per pixel), ``offset_en_m`` (east, north metres from the point the frame's centre
    sees to the point below the drone), the camera's ``tilt_deg`` from nadir and ``heading_deg`` (the compass
    direction the output's top faces; 0 when north-up)."""

    H: np.ndarray
    size: tuple[int, int]
    gsd_m: float
    offset_en_m: tuple[float, float]
    tilt_deg: float
    heading_deg: float

    def warp(self, image: np.ndarray, interpolation: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(nadir image, validity uint8 0/1): pixels the frame does not cover are 0 and invalid."""
        import cv2

        interp = cv2.INTER_LINEAR if interpolation is None else interpolation
        w, h = self.size
        out = cv2.warpPerspective(image, self.H, (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT)
        src = np.ones(image.shape[:2], np.uint8)
        valid = cv2.warpPerspective(src, self.H, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
        return out, valid * self._in_front(w, h)

    def _in_front(self, w: int, h: int) -> np.ndarray:
        """1 where an output pixel's ground point is in front of the camera (a homography also maps points
        behind it, mirrored)."""
        Hi = np.linalg.inv(self.H)
        s = np.sign((Hi @ np.array([(w - 1) / 2.0, (h - 1) / 2.0, 1.0]))[2])
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        return ((Hi[2, 0] * u + Hi[2, 1] * v + Hi[2, 2]) * s > 0).astype(np.uint8)

    def frame_to_nadir(self, u, v) -> np.ndarray:
        """Nadir pixels (N, 2) of frame pixels."""
        p = self.H @ np.stack([np.ravel(u), np.ravel(v), np.ones(np.size(u))])
        return (p[:2] / p[2]).T

    def below_drone(self, x: float, y: float) -> tuple[float, float]:
        """The point below the drone (metric x east, y north) from the position found for the nadir
        view's centre."""
        return x + self.offset_en_m[0], y + self.offset_en_m[1]


def _ground_point(R: np.ndarray, Kinv: np.ndarray, height_m: float, u: float, v: float) -> np.ndarray:
    """(north, east) where frame pixel (u, v) meets the ground, from the point below the drone."""
    p = R @ Kinv @ np.array([u, v, 1.0])
    if p[2] <= 1e-6:
        raise ValueError(f"the frame's centre looks at or above the horizon (camera tilt "
                         f"{math.degrees(math.acos(max(-1.0, min(1.0, p[2] / np.linalg.norm(p))))):.1f} deg "
                         "from nadir): no ground to rectify")
    return height_m * p[:2] / p[2]


def nadir_view(K, size: tuple[int, int], attitude: CameraAttitude, height_m: float, *,
               north_up: bool = True, heading_deg: float | None = None) -> NadirView:
    """The :class:`NadirView` of an undistorted frame (camera matrix ``K``, OpenCV convention; ``size``
    (w, h)) taken at ``attitude``, ``height_m`` above the ground plane. ``north_up`` (default) puts north
    at the output's top; else its top faces ``heading_deg`` (default the camera's own: the compass
    direction of the frame's top, :meth:`CameraAttitude.view_angles`)."""
    if not (height_m > 0 and math.isfinite(height_m)):
        raise ValueError(f"height above ground must be > 0 metres, got {height_m}: check the altitude source")
    K = np.asarray(K, float)
    w, h = int(size[0]), int(size[1])
    f = float(math.sqrt(K[0, 0] * K[1, 1]))
    R = attitude.matrix
    Kinv = np.linalg.inv(K)
    n0, e0 = _ground_point(R, Kinv, height_m, K[0, 2], K[1, 2])
    if north_up:
        psi = 0.0
    else:
        psi = attitude.view_angles()[0] if heading_deg is None else float(heading_deg) % 360.0
    c, s_ = math.cos(math.radians(psi)), math.sin(math.radians(psi))
    up, right = np.array([c, s_]), np.array([-s_, c])  # (north, east) of the output's top and right
    s = f / height_m  # output pixels per metre
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    A = np.array([[s * right[0], s * right[1], cx - s * (n0 * right[0] + e0 * right[1])],
                  [-s * up[0], -s * up[1], cy + s * (n0 * up[0] + e0 * up[1])],
                  [0.0, 0.0, 1.0]])
    G = np.diag([height_m, height_m, 1.0]) @ R @ Kinv
    H = A @ G
    return NadirView(H / H[2, 2] if abs(H[2, 2]) > 1e-12 else H, (w, h), height_m / f,
                     (float(-e0), float(-n0)), attitude.tilt_deg, psi)
