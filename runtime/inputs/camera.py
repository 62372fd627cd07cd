"""The camera: image size, intrinsics and lens distortion, and the undistortion every frame goes through.

A :class:`CameraModel` comes from the calibration file a user already has
(:meth:`CameraModel.from_file`: OpenCV ``calibrateCamera`` YAML/JSON, ROS ``camera_info``; see
:mod:`runtime.inputs.camera_files`) or, for a distortion-free lens, from its horizontal field of view
(:meth:`CameraModel.from_hfov`, what the project assumed so far). ``model`` is ``"pinhole"`` (OpenCV's
standard model, ``dist`` = k1, k2, p1, p2[, k3[, k4, k5, k6 ...]]) or ``"fisheye"`` (``cv2.fisheye``, the
equidistant model, ``dist`` = k1..k4).

:meth:`CameraModel.undistorter` gives an :class:`Undistorter`: frames come out as an ideal pinhole camera
with the principal point at the image centre, square pixels and no distortion, the same size as they came
in. Its focal length is chosen so every output pixel sees the scene (the largest centred rectangle inside
the lens's undistorted field, like ``cv2.getOptimalNewCameraMatrix`` with ``alpha=0``), unless a field of
view is asked for. The remap tables are computed once per frame size (a stream at another resolution of
the same aspect ratio scales the intrinsics). :attr:`Undistorter.hfov_deg` is the horizontal field of view
of what comes out: the number the tile database's footprints and the chain's scale use.

:meth:`CameraModel.fingerprint` is a short stable hash of the geometry (size, K, distortion, model) to
record in a bundle or database which camera it assumes. numpy and OpenCV only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

MODELS = ("pinhole", "fisheye")


@dataclass(frozen=True)
class CameraModel:
    """A calibrated camera. ``K`` is the 3x3 camera matrix in OpenCV's pixel convention (the centre of the
    top-left pixel at (0, 0), as every calibration file has it) and ``dist`` the distortion coefficients,
    as tuples (hashable, immutable); :attr:`K_matrix` / :attr:`dist_array` are numpy copies. Image points
    taken or returned by the methods are continuous with the top-left pixel's *corner* at 0 (the
    convention of :mod:`tiles.views`)."""

    width: int
    height: int
    K: tuple
    dist: tuple = ()
    model: str = "pinhole"
    source: str = ""  # where it came from: a file, or "hfov"

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"camera model {self.model!r} is not one of {MODELS}")
        if not (int(self.width) > 0 and int(self.height) > 0):
            raise ValueError(f"camera image size must be positive, got {self.width}x{self.height}")
        k = np.asarray(self.K, float)
        if k.shape != (3, 3) or not np.all(np.isfinite(k)) or not (k[0, 0] > 0 and k[1, 1] > 0):
            raise ValueError(f"camera matrix must be 3x3 with fx, fy > 0, got {self.K!r}")
        object.__setattr__(self, "K", tuple(tuple(float(v) for v in row) for row in k))
        object.__setattr__(self, "dist", tuple(float(v) for v in np.ravel(self.dist)))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def from_hfov(cls, width: int, height: int, hfov_deg: float) -> CameraModel:
        """A distortion-free pinhole of horizontal field ``hfov_deg``, principal point at the centre."""
        from common import validate

        hfov = validate.hfov_deg(hfov_deg)
        f = (width / 2.0) / math.tan(math.radians(hfov) / 2.0)
        K = ((f, 0.0, (width - 1) / 2.0), (0.0, f, (height - 1) / 2.0), (0.0, 0.0, 1.0))
        return cls(width, height, K, (), "pinhole", source=f"hfov {hfov:g} deg")

    @classmethod
    def from_file(cls, path: str | os.PathLike, model: str | None = None) -> CameraModel:
        """From an OpenCV or ROS calibration file (:func:`runtime.inputs.camera_files.read_calibration`);
        ``model`` overrides the file's distortion model."""
        from runtime.inputs.camera_files import read_calibration

        c = read_calibration(path)
        return cls(c["width"], c["height"], c["K"], c["dist"], model or c["model"], source=os.fspath(path))

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "K": [list(r) for r in self.K],
                "dist": list(self.dist), "model": self.model, "fingerprint": self.fingerprint()}

    @classmethod
    def from_dict(cls, d: dict) -> CameraModel:
        return cls(d["width"], d["height"], d["K"], d.get("dist", ()), d.get("model", "pinhole"),
                   source=d.get("source", "manifest"))

    # ---- properties -------------------------------------------------------------------------------
    @property
    def K_matrix(self) -> np.ndarray:
        return np.array(self.K, float)

    @property
    def dist_array(self) -> np.ndarray:
        n = 4 if self.model == "fisheye" else max(4, len(self.dist))
        d = np.zeros(n)
        d[: len(self.dist)] = self.dist
        return d

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def distorted(self) -> bool:
        return any(abs(v) > 0 for v in self.dist)

    def fingerprint(self) -> str:
        """16 hex digits of sha256 over the geometry (numbers at 9 significant digits): equal for the same
        camera read from any file layout, different for any other size, K, distortion or model."""
        key = {"model": self.model, "size": [self.width, self.height],
               "K": [f"{v:.9g}" for row in self.K for v in row],
               "dist": [f"{v:.9g}" for v in self.dist_array]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def scaled(self, width: int, height: int) -> CameraModel:
        """The same camera streaming at ``width`` x ``height`` (same aspect ratio: intrinsics scaled)."""
        if (width, height) == self.size:
            return self
        sx, sy = width / self.width, height / self.height
        if abs(sx / sy - 1.0) > 0.01:
            raise ValueError(f"a {width}x{height} frame does not have the aspect ratio of the calibration "
                             f"{self.width}x{self.height} ({self.source or 'camera'}): calibrate the camera at "
                             "the resolution it streams")
        K = self.K_matrix  # OpenCV's pixel centres sit at integers: scale about the top-left corner
        K[0, :2] *= sx
        K[1, :2] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return CameraModel(width, height, K, self.dist, self.model, self.source)

    # ---- rays -------------------------------------------------------------------------------------
    def normalized(self, u, v) -> np.ndarray:
        """Undistorted normalised coordinates (N, 2) (x right, y down, at unit depth) of image points
        (u, v) (continuous, corner of the top-left pixel at 0)."""
        import cv2

        pts = np.stack([np.ravel(u), np.ravel(v)], 1).astype(np.float64) - 0.5  # OpenCV: centres at integers
        pts = pts.reshape(-1, 1, 2)
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)
        if self.model == "fisheye":
            out = cv2.fisheye.undistortPoints(pts, self.K_matrix, self.dist_array, criteria=crit)
        elif self.distorted:
            out = cv2.undistortPoints(pts, self.K_matrix, self.dist_array, None, None, None, crit)
        else:
            out = cv2.undistortPoints(pts, self.K_matrix, None)
        return out.reshape(-1, 2)

    def pixel_rays(self, u, v) -> np.ndarray:
        """Unit rays (N, 3) in the camera frame (OpenCV: x right, y down, z along the optical axis) through
        image points (u, v); what :func:`tiles.views.render_view` casts to render through this lens."""
        xy = self.normalized(u, v)
        rays = np.concatenate([xy, np.ones((len(xy), 1))], 1)
        return rays / np.linalg.norm(rays, axis=1, keepdims=True)

    def project(self, rays) -> np.ndarray:
        """Image points (N, 2) (continuous, corner at 0) of camera-frame rays (N, 3) with z > 0."""
        import cv2

        r = np.asarray(rays, float).reshape(-1, 1, 3)
        z = np.zeros(3)
        if self.model == "fisheye":
            pts, _ = cv2.fisheye.projectPoints(r, z, z, self.K_matrix, self.dist_array)
        else:
            pts, _ = cv2.projectPoints(r, z, z, self.K_matrix, self.dist_array)
        return pts.reshape(-1, 2) + 0.5

    # ---- undistortion -----------------------------------------------------------------------------
    def undistorter(self, hfov_deg: float | None = None) -> Undistorter:
        return Undistorter(self, hfov_deg)

    def undistorted_hfov_deg(self) -> float:
        """Horizontal field of view of the undistorted frame (:attr:`Undistorter.hfov_deg`)."""
        return self.undistorter().hfov_deg

    def inscribed_half_fov(self) -> tuple[float, float]:
        """(tan of the half-width, tan of the half-height) of the largest rectangle centred on the optical
        axis that the whole lens sees (undistorted edge points of the image)."""
        w, h = self.width, self.height
        n = 64
        s = np.linspace(0.0, 1.0, n)
        left = self.normalized(np.zeros(n), s * h)
        right = self.normalized(np.full(n, w), s * h)
        top = self.normalized(s * w, np.zeros(n))
        bottom = self.normalized(s * w, np.full(n, h))
        x_in = min(np.nanmin(-left[:, 0]), np.nanmin(right[:, 0]))
        y_in = min(np.nanmin(-top[:, 1]), np.nanmin(bottom[:, 1]))
        if not (x_in > 0 and y_in > 0):
            raise ValueError(f"the lens of {self.source or 'this camera'} does not see around its optical axis "
                             "(principal point at an image edge?): check the calibration")
        return float(x_in), float(y_in)


class Undistorter:
    """Frames of ``camera`` -> an ideal centred pinhole of the same size (see the module docstring).

    ``hfov_deg``: the output's horizontal field of view; default the widest with no empty pixel."""

    def __init__(self, camera: CameraModel, hfov_deg: float | None = None):
        self.camera = camera
        self.requested_hfov_deg = hfov_deg
        w, h = camera.size
        if hfov_deg is None:
            x_in, y_in = camera.inscribed_half_fov()
            margin = 1.0 + 1e-3 if camera.distorted else 1.0  # a hair inside a lens's edge: no black rim
            f = max((w / 2.0) / x_in, (h / 2.0) / y_in) * margin
        else:
            from common import validate

            f = (w / 2.0) / math.tan(math.radians(validate.hfov_deg(hfov_deg)) / 2.0)
        self.focal_ratio = f / w  # focal length in output widths, kept for any frame size
        self._maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray] | None] = {}

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(0.5 / self.focal_ratio))

    def output_camera(self, width: int | None = None, height: int | None = None) -> CameraModel:
        """The distortion-free pinhole the frames come out as, at a frame size (default the camera's)."""
        w, h = width or self.camera.width, height or self.camera.height
        f = self.focal_ratio * w
        return CameraModel(w, h, ((f, 0, (w - 1) / 2.0), (0, f, (h - 1) / 2.0), (0, 0, 1)), (), "pinhole",
                           source=f"undistorted {self.camera.source}".strip())

    def maps(self, width: int, height: int):
        """The remap tables for frames of this size (None: nothing to do), computed once per size."""
        key = (int(width), int(height))
        if key not in self._maps:
            self._maps[key] = self._compute_maps(*key)
        return self._maps[key]

    def _compute_maps(self, w: int, h: int):
        import cv2

        cam = self.camera.scaled(w, h)
        out = self.output_camera(w, h)
        K, newK = cam.K_matrix, out.K_matrix
        if not cam.distorted and np.allclose(K, newK, rtol=1e-9, atol=1e-6):
            return None  # an ideal centred pinhole already: frames pass untouched
        if cam.model == "fisheye":
            return cv2.fisheye.initUndistortRectifyMap(K, cam.dist_array, np.eye(3), newK, (w, h), cv2.CV_16SC2)
        return cv2.initUndistortRectifyMap(K, cam.dist_array, np.eye(3), newK, (w, h), cv2.CV_16SC2)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The undistorted frame (same size and type); the tables for its size are made on first use."""
        import cv2

        h, w = image.shape[:2]
        maps = self.maps(w, h)
        if maps is None:
            return image
        return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
