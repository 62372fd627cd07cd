"""Frames of a real camera on a real airframe over real ground, for the GeoTIFF replays.

:class:`CameraEffects` holds what a replay may render beyond a perfect nadir pinhole over flat ground
(its fields are :class:`runtime.replay.geotiff.FlightSpec`'s too, so ``python -m runtime replay geotiff``
has an option for each): the airframe's attitude (:mod:`runtime.replay.airframe`), lens distortion (a
:class:`runtime.inputs.camera.CameraModel`), terrain relief (a DEM, or synthetic hills) with the map draped
on it, the barometer's error, motion blur and exposure changes.

The drone holds its barometric altitude: ``altitude_m`` above the take-off point (the first frame's
ground), so over relief its height above ground changes. Each frame's ``meta`` carries the truth and,
apart, what the autopilot would report; the chain is given only the latter:

- ``x``, ``y``, ``lat``, ``lon``: the point below the drone (the truth the errors are measured against);
- ``truth``: the body's ``roll_deg``, ``pitch_deg``, ``yaw_deg``; the camera's view angles
  ``camera_heading_deg``, ``camera_tilt_deg``, ``camera_roll_deg`` and ``camera_off_nadir_deg`` (the
  optical axis's angle from straight down); ``height_above_ground_m``,
  ``ground_msl_m``, ``altitude_msl_m``;
- ``reported``: ``roll_deg``, ``pitch_deg``, ``yaw_deg`` as the autopilot sends them (the truth
  ``report_delay_s`` earlier, plus ``report_noise_deg`` of noise), ``attitude_t`` (the instant they
  describe), ``altitude_rel_m`` (barometric, above the take-off point), ``altitude_msl_m`` (that plus
  the take-off point's known height), ``heading_deg`` (the image top by the reported yaw and the mount);
- ``altitude_m`` and ``heading_deg``: the reported relative altitude and heading (what the chain reads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from common.options import shared
from runtime.replay.airframe import AIRFRAMES, attitude_series, baro_altitude, synthetic_relief

FINE_DT_S = 0.05  # the attitude series' time step


@dataclass
class CameraEffects:
    """What a replayed flight renders of a real camera (all off by default: a nadir pinhole, flat ground)."""

    airframe: str = field(default="none", metadata={
        "help": "attitude of the airframe: multirotor (pitched by drag, rolled in turns), fixed_wing (banked "
                "turns), none (level)", "choices": AIRFRAMES})
    attitude_noise_deg: float = field(default=0.0, metadata={
        "help": "airframe wobble: standard deviation of roll, pitch and yaw, degrees (correlated over 0.5 s)"})
    bank_deg: float = field(default=25.0, metadata={
        "help": "fixed wing: the most it banks, and the bank of the weave pattern's turns, degrees"})
    report_noise_deg: float = field(default=0.5, metadata={
        "help": "error of the attitude the autopilot reports, degrees (standard deviation)"})
    report_delay_s: float = field(default=0.02, metadata={
        "help": "how late the reported attitude is against the frame's capture, seconds: what the matching of "
                "the camera's and the autopilot's clocks leaves (the service interpolates ATTITUDE to the capture "
                "time; 0.1: an attitude taken as it arrives, uncompensated)"})
    lens_k1: float = field(default=0.0, metadata={
        "help": "radial distortion k1 of the lens (OpenCV model; -0.2: a strong barrel)"})
    camera_file: str | None = field(default=None, metadata={
        "help": "render through this calibrated camera (OpenCV or ROS calibration file) instead of a pinhole",
        "cli": False})  # on the command line: the chain's --camera-file, the one camera of the flight
    dem: str | None = shared("dem")
    relief_m: float = field(default=0.0, metadata={
        "help": "without --dem: synthetic hills of this height from lowest to highest, metres"})
    baro_bias_m: float = field(default=0.0, metadata={"help": "barometer bias, metres"})
    baro_drift_m_per_min: float = field(default=0.0, metadata={"help": "barometer drift, metres per minute"})
    baro_noise_m: float = field(default=0.0, metadata={"help": "barometer noise, metres (standard deviation)"})
    motion_blur_px: float = field(default=0.0, metadata={"help": "motion blur along the track, pixels"})
    exposure_jitter: float = field(default=0.0, metadata={
        "help": "auto-exposure changes: standard deviation of the log gain from frame to frame (0.3: +-35 %%)"})

    def __post_init__(self):
        if self.airframe not in AIRFRAMES:
            raise ValueError(f"airframe {self.airframe!r} is not one of {AIRFRAMES}")
        for name in ("attitude_noise_deg", "report_noise_deg", "report_delay_s", "relief_m", "baro_noise_m",
                     "motion_blur_px", "exposure_jitter"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v}")
        if not 0 < self.bank_deg < 80:
            raise ValueError(f"bank_deg must be in (0, 80) degrees, got {self.bank_deg}")

    @property
    def active(self) -> bool:
        """True when anything differs from the perfect camera (the replay then renders ray by ray)."""
        return bool(self.airframe != "none" or self.attitude_noise_deg or self.lens_k1 or self.camera_file
                    or self.dem or self.relief_m or self.baro_bias_m or self.baro_drift_m_per_min
                    or self.baro_noise_m or self.motion_blur_px or self.exposure_jitter)

    @classmethod
    def from_spec(cls, spec) -> CameraEffects:
        return cls(**{f.name: getattr(spec, f.name) for f in fields(cls)})


def lens_for(effects: CameraEffects, size_px: tuple[int, int], hfov_deg: float):
    """The camera the frames are rendered through, or None for the pinhole of ``hfov_deg``."""
    from runtime.inputs.camera import CameraModel

    w, h = size_px
    if effects.camera_file:
        cam = CameraModel.from_file(effects.camera_file)
        return cam.scaled(w, int(round(w * cam.height / cam.width)))
    if effects.lens_k1:
        base = CameraModel.from_hfov(w, h, hfov_deg)
        return CameraModel(w, h, base.K, (effects.lens_k1, 0.0, 0.0, 0.0, 0.0), source=f"k1 {effects.lens_k1:g}")
    return None


def terrain_for(effects: CameraEffects, raster, seed: int):
    """Heights above mean sea level over the raster's area: the DEM, synthetic hills, or None (flat)."""
    if effects.dem:
        from tiles.dem import read_dem

        return read_dem(effects.dem, crs=raster.metric_crs, bounds_m=raster.bounds_m, margin_m=500.0)
    if effects.relief_m > 0:
        return synthetic_relief(raster.bounds_m, effects.relief_m, seed=seed)
    return None


def motion_blur(image: np.ndarray, length_px: float, angle_deg: float) -> np.ndarray:
    """A linear blur of ``length_px`` along ``angle_deg`` (image x axis = 0, clockwise as image y is down)."""
    import cv2

    n = int(math.ceil(length_px))
    if n < 1:
        return image
    size = 2 * n + 1
    k = np.zeros((size, size), np.float32)
    a = math.radians(angle_deg)
    for s in np.linspace(-length_px / 2, length_px / 2, 4 * n + 1):
        k[int(round(n + s * math.sin(a))), int(round(n + s * math.cos(a)))] = 1.0
    return cv2.filter2D(image, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)


def exposure_gains(n: int, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Per-frame gains of an auto-exposure that keeps changing (log gain: an AR(1) of std ``jitter``)."""
    g = np.zeros(n)
    for i in range(1, n):
        g[i] = 0.7 * g[i - 1] + math.sqrt(1 - 0.49) * rng.normal()
    return np.exp(jitter * g)


class _Series:
    """The airframe's attitude as a function of time (interpolated from a fine grid)."""

    def __init__(self, effects: CameraEffects, t_frames, yaw_frames, track_frames, speed_mps, rng):
        pad = 1.0 + effects.report_delay_s
        self.t = np.arange(-pad, float(t_frames[-1]) + 1.0, FINE_DT_S)
        unwrap = lambda a: np.degrees(np.unwrap(np.radians(a)))  # noqa: E731
        yaw = np.interp(self.t, t_frames, unwrap(yaw_frames))
        track = np.interp(self.t, t_frames, unwrap(track_frames))
        self.rpy = attitude_series(self.t, yaw, speed_mps, effects.airframe, track_deg=track,
                                   max_bank_deg=effects.bank_deg, noise_deg=effects.attitude_noise_deg, rng=rng)

    def __call__(self, t: float) -> np.ndarray:
        return np.array([np.interp(t, self.t, self.rpy[:, k]) for k in range(3)])


def render_frames(flight, effects: CameraEffects, raster, pts: np.ndarray, track_deg: np.ndarray):
    """``Frame`` s of ``flight`` (a :class:`runtime.replay.flights.GeoTiffFlight`) through ``effects``
    (see the module docstring); ``pts``, ``track_deg`` are its path."""
    from runtime.inputs.attitude import CameraMount, camera_attitude_deg
    from runtime.inputs.sources import Frame
    from tiles.views import CameraPose, photometric_jitter, render_view

    n = len(pts)
    rng = np.random.default_rng([flight.seed, 26])
    t_frames = np.arange(n) / flight.fps
    yaw_frames = track_deg if flight.heading_deg is None else np.full(n, float(flight.heading_deg))
    series = _Series(effects, t_frames, yaw_frames, track_deg, flight.speed_mps, rng) if n > 1 else None
    mount = CameraMount("fixed", pitch_deg=-90.0 + flight.tilt_deg)
    lens = lens_for(effects, flight.size_px, flight.hfov_deg)
    size = lens.size if lens is not None else flight.size_px
    terrain = terrain_for(effects, raster, flight.seed)
    g0 = _ground(terrain, *pts[0]) if n else 0.0
    rel_terrain = None if terrain is None else (lambda gx, gy: terrain(gx, gy) - g0)
    baro = baro_altitude(np.full(n, flight.altitude_m), t_frames, effects.baro_bias_m, effects.baro_drift_m_per_min,
                         effects.baro_noise_m, rng)
    gains = exposure_gains(n, effects.exposure_jitter, rng)
    look_seed = int(np.random.default_rng(flight.seed).integers(2**31))
    for i, ((x, y), trk) in enumerate(zip(pts, track_deg)):
        t = float(t_frames[i])
        true = series(t) if series is not None else np.array([0.0, 0.0, float(yaw_frames[0])])
        cam_att = camera_attitude_deg(*true, mount)
        heading, tilt, roll = cam_att.view_angles()
        ground = _ground(terrain, x, y)
        hag = flight.altitude_m - (ground - g0)
        if hag < 0.2 * flight.altitude_m:
            raise ValueError(f"the ground at frame {i} is {ground - g0:.0f} m above the take-off point: flying "
                             f"{flight.altitude_m:g} m above take-off leaves {hag:.0f} m; fly higher or lower the relief")
        pose = CameraPose(float(x), float(y), flight.altitude_m, heading, tilt, flight.hfov_deg, roll_deg=roll)
        view = render_view(raster, pose, size, lens=lens, terrain=rel_terrain)
        image = view.image
        if flight.photometric:
            image = photometric_jitter(image, np.random.default_rng(look_seed), flight.photometric)
        if effects.exposure_jitter:
            image = np.clip(image.astype(np.float32) * gains[i] + 0.5, 0, 255).astype(np.uint8)
        if effects.motion_blur_px:
            image = motion_blur(image, effects.motion_blur_px, float(trk) - heading - 90.0)
        rep = true if series is None else series(t - effects.report_delay_s)
        rep = rep + rng.normal(0.0, effects.report_noise_deg, 3) if effects.report_noise_deg else rep
        lat, lon = raster.to_wgs84(float(x), float(y))
        truth = {"x": float(x), "y": float(y), "roll_deg": float(true[0]), "pitch_deg": float(true[1]),
                 "yaw_deg": float(true[2] % 360.0), "camera_heading_deg": heading, "camera_tilt_deg": tilt,
                 "camera_roll_deg": roll, "camera_off_nadir_deg": cam_att.tilt_deg, "height_above_ground_m": float(hag), "ground_msl_m": float(ground),
                 "altitude_msl_m": float(g0 + flight.altitude_m)}
        reported = {"t": t, "roll_deg": float(rep[0]), "pitch_deg": float(rep[1]), "yaw_deg": float(rep[2] % 360.0),
                    "attitude_t": t - effects.report_delay_s, "altitude_rel_m": float(baro[i]),
                    "altitude_msl_m": float(g0 + baro[i]), "heading_deg": float((rep[2] + mount.yaw_deg) % 360.0)}
        yield Frame(t, image, {
            "index": i, "x": float(x), "y": float(y), "lat": float(lat), "lon": float(lon),
            "altitude_m": reported["altitude_rel_m"], "heading_deg": reported["heading_deg"],
            "valid_fraction": view.valid_fraction, "source": flight.name, "truth": truth, "reported": reported})


def _ground(terrain, x: float, y: float) -> float:
    if terrain is None:
        return 0.0
    z = float(terrain(np.array([x]), np.array([y]))[0])
    if not math.isfinite(z):
        raise ValueError(f"the terrain has no height at ({x:.0f}, {y:.0f}): give a DEM that covers the flight")
    return z
