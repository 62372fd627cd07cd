"""What the chain looks at: a camera's frame turned into the view the tiles were cut as.

Tiles are nadir, north-up views of a distortion-free pinhole at the layer's height. A real frame comes
through a lens with distortion, tilted by the airframe or the gimbal. :class:`CameraView` makes the one
image that descriptor, odometry and registration all see:

1. **Lens**: with a calibrated camera (``camera_file``: OpenCV or ROS calibration,
   :mod:`runtime.inputs.camera`), the frame is undistorted into a centred pinhole of the tile database's
   field of view (remap tables made once per frame size). The chain's field of view is then the
   database's; without a calibration it is ``hfov_deg`` (default the database's), as before.
2. **Attitude**: when the frame's :class:`~runtime.localisation.frames.Telemetry` carries the camera's
   attitude (the autopilot's ``ATTITUDE`` at the capture time through the camera mount, or a gimbal's own
   report), the frame is rectified to the nadir, north-up view of the ground it sees at the height above
   ground (:func:`runtime.inputs.nadir.nadir_view`): the view is centred on the ground point the optical
   axis meets, and :attr:`View.offset_en_m` goes from that point to the point below the drone. The map
   track lives in the viewed point's coordinates (odometry between two rectified views measures its
   motion); the Localizer adds the offset to the fix it reports, and the offset's uncertainty (an attitude
   error of ``attitude_sigma_deg`` moves it by ``height x sigma / cos^2(tilt)`` per axis) to its radius.
   Without an attitude the frame is turned north-up by the compass heading, as a nadir camera's.

A frame tilted more than ``max_tilt_deg`` from nadir is not rectified well enough to be compared with the
map (the far side of the frame is seen at a slant, the near side is stretched, the view's corners are
empty): :attr:`View.too_tilted` says so, and the Localizer then lets it move the track by odometry only
(the rectified view still serves odometry, frame to frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from runtime.engines.preprocess import north_up
from runtime.localisation.geo import R95_PER_SIGMA, latlon_at


@dataclass(frozen=True)
class View:
    """One frame as the chain sees it (module docstring)."""

    image: np.ndarray | None
    offset_en_m: tuple[float, float] = (0.0, 0.0)  # east, north: from the viewed point to the point below
    tilt_deg: float | None = None  # the optical axis from straight down (None: no attitude known)
    offset_sigma_m: float = 0.0  # 1 sigma per axis of the offset, from the attitude's uncertainty
    too_tilted: bool = False
    frame: np.ndarray | None = None  # the frame undistorted, as the camera held it (registration turns it itself)

    @property
    def rectified(self) -> bool:
        return self.tilt_deg is not None


class CameraView:
    """Frames -> :class:`View` s for one camera (module docstring). ``camera``: a
    :class:`runtime.inputs.camera.CameraModel` (None: ``camera_file``'s, else a distortion-free lens of
    ``hfov_deg``); ``database_hfov_deg``: the field of view the tiles were cut for."""

    def __init__(self, cfg, database_hfov_deg: float, camera=None):
        if camera is None and cfg.camera_file:
            from runtime.inputs.camera import CameraModel

            camera = CameraModel.from_file(cfg.camera_file)
        self.cfg = cfg
        self.camera = camera
        self.undistort = camera.undistorter(database_hfov_deg) if camera is not None else None
        self.hfov_deg = float(database_hfov_deg if camera is not None else (cfg.hfov_deg or database_hfov_deg))
        self._K: dict[tuple[int, int], np.ndarray] = {}

    def describe(self) -> str:
        lens = (f"lens {self.camera.source or self.camera.model} undistorted to {self.hfov_deg:g} deg"
                if self.camera is not None else f"pinhole {self.hfov_deg:g} deg")
        att = (f"rectified by the attitude up to {self.cfg.max_tilt_deg:g} deg of tilt" if self.cfg.rectify
               else "not rectified (--no-rectify)")
        return f"{lens}, {att}"

    def K(self, w: int, h: int) -> np.ndarray:
        """The camera matrix of the chain's pinhole (the undistorted frame) at a frame size."""
        if (w, h) not in self._K:
            f = (w / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)
            self._K[(w, h)] = np.array([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]])
        return self._K[(w, h)]

    def __call__(self, image, heading_deg: float | None, attitude=None, height_m: float | None = None) -> View:
        """The :class:`View` of ``image`` (RGB) given the compass heading of its top, the camera's
        :class:`~runtime.inputs.attitude.CameraAttitude` and the height above ground (either may be None)."""
        if image is None:
            return View(None)
        if self.undistort is not None:
            image = self.undistort(image)
        if (self.cfg.rectify and attitude is not None and height_m is not None and height_m > 0
                and math.isfinite(height_m)):
            return self._rectified(image, attitude, float(height_m))
        if self.cfg.derotate and heading_deg is not None:
            return View(north_up(image, heading_deg), frame=image)
        return View(image, frame=image)

    def _rectified(self, image, attitude, height_m: float) -> View:
        import cv2

        from runtime.inputs.nadir import nadir_view

        tilt = attitude.tilt_deg
        h, w = image.shape[:2]
        try:
            nv = nadir_view(self.K(w, h), (w, h), attitude, height_m, north_up=True)
        except ValueError:  # the optical axis at or above the horizon: no ground to look at
            return View(None, tilt_deg=tilt, too_tilted=True, frame=image)
        out = cv2.warpPerspective(image, nv.H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        cos_t = max(math.cos(math.radians(tilt)), 0.2)
        sigma = height_m * math.radians(self.cfg.attitude_sigma_deg) / cos_t**2
        return View(out, nv.offset_en_m, tilt, sigma, too_tilted=tilt > self.cfg.max_tilt_deg, frame=image)


def drone_motion(motion, view: View, prev_offset_en_m):
    """The odometry's motion of the viewed point between two keyframes made the drone's: plus the change of
    the offset (the track lives below the drone, so its velocity is the drone's, not the wobble of the
    point the camera looks at), its noise grown by two offsets' uncertainty."""
    if motion is None or not motion.ok or prev_offset_en_m is None:
        return motion
    de, dn = view.offset_en_m[0] - prev_offset_en_m[0], view.offset_en_m[1] - prev_offset_en_m[1]
    if de == 0.0 and dn == 0.0:
        return motion
    s = motion.sigma_m if math.isfinite(motion.sigma_m) else 0.0
    return replace(motion, dx_e_m=motion.dx_e_m + de, dy_n_m=motion.dy_n_m + dn,
                   sigma_m=math.hypot(s, math.sqrt(2.0) * view.offset_sigma_m))


def below_drone(fix, view: View, db, grid, info: dict | None = None, *, moved: bool = False):
    """A fix of a rectified view: its radius grown by the offset's uncertainty (the track's fix is below the
    drone already); ``moved`` false: a fix of the view's centre (a frame's own match), moved below the drone
    too. ``info``: the fusion record gets the tilt and the offset."""
    if info is not None and view.rectified:
        info.update(tilt_deg=round(view.tilt_deg, 2), too_tilted=view.too_tilted,
                    offset_m=round(math.hypot(*view.offset_en_m), 2))
    if not fix.has_position or not view.rectified:
        return fix
    x, y = fix.x, fix.y
    if not moved:
        x, y = x + view.offset_en_m[0], y + view.offset_en_m[1]
    s0, g = fix.r95_m / R95_PER_SIGMA, view.offset_sigma_m**2
    vx, vy, cxy = fix.cov_xy if fix.cov_xy is not None else (s0**2, s0**2, 0.0)
    r95 = R95_PER_SIGMA * math.sqrt(s0**2 + g)
    lat, lon = latlon_at(db, grid, x, y)
    return replace(fix, x=x, y=y, lat=lat, lon=lon, cov_xy=(vx + g, vy + g, cxy), r95_m=r95, accuracy_m=r95 / 2.45)


def database_hfov(db) -> float:
    """The camera field of view a tile database was cut for (its manifest, else a layer's record, else
    from a layer's footprint and altitude)."""
    hfov = (getattr(db, "manifest", None) or {}).get("extra", {}).get("hfov_deg")
    for lay in db.layers:
        if hfov is None and lay.get("hfov_deg") is not None:
            hfov = lay["hfov_deg"]
        if hfov is None and lay.get("footprint_m") and lay.get("altitude_m"):
            hfov = math.degrees(2 * math.atan(float(lay["footprint_m"]) / 2 / float(lay["altitude_m"])))
    if hfov is None:
        raise ValueError(f"{getattr(db, 'path', 'the database')} does not record the camera's field of view: "
                         "give --hfov-deg")
    return float(hfov)
