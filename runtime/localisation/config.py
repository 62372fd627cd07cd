"""The knobs of the flight chain, each once: :class:`LocalizerConfig`.

``python -m runtime serve``, ``python -m runtime replay``, the export's calibration and the tools build
their options from these fields (:func:`common.cli.add_dataclass_options`): one name, one default, one
help text. The tables (``map_filter``, ``odometry_settings``, ``heading_settings``) are the parts' own
settings, given as tables in a config file.

Options of the first version that do nothing in the map filter are refused with the reason
(:data:`REMOVED_OPTIONS`), not silently accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from common import validate
from common.options import shared
from runtime.localisation.heading_track import HeadingTrackConfig
from runtime.localisation.map_filter import MapFilterConfig
from runtime.localisation.odometry import OdometryConfig

# options of the per-frame gate (the first version), removed with it: the map filter decides what is trusted
REMOVED_OPTIONS = {
    "fusion": "there is one fusion, the map filter over the layer (the per-frame gate trusted fixes off the "
              "map: 47 of 240 frames of a flight over another place)",
    "min_confidence": "trust comes from the map filter's posterior and registration, not a per-frame confidence",
    "acquire_frames": "the map filter needs two measured frames and a verified registration before trust "
                      "(map_filter.min_updates)",
    "search_radius_m": "the map filter searches near its posterior when it is concentrated, the whole layer "
                       "otherwise (map_filter.local_mass)",
    "coast_frames": "use --coast-s: a count of keyframes coasted a replay at 1 frame a second for 10 s and the "
                    "service (5 keyframes a second) for 2 s",
    "registration_every_tracking": "use --registration-tracking-s: a count of keyframes registered a replay at 2 "
                                   "frames a second every 2.5 s and the service (5 keyframes a second) every 1 s",
}


def add_localizer_options(parser, group: str = "localisation (the same options in serve and replay)") -> None:
    """The chain's options on a command line, and the removed ones refused with their reason."""
    from common.cli import add_dataclass_options, add_removed_options

    add_dataclass_options(parser, LocalizerConfig, group=group)
    add_removed_options(parser, REMOVED_OPTIONS)


def _opt(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class LocalizerConfig:
    """The knobs of the flight chain (command-line options are generated from these fields)."""

    keyframe_s: float = _opt(0.2, "the whole chain (descriptor, search, odometry, filter, registration) runs on a "
                                  "frame at most every this many seconds of the flight's clock; the frames "
                                  "between get the last keyframe's fix carried by its velocity (0: every "
                                  "frame)")
    hfov_deg: float | None = shared("hfov_deg")  # one definition for every command (common.options)
    camera_file: str | None = _opt(None, "the camera's calibration (OpenCV calibrateCamera YAML/JSON or ROS "
                                         "camera_info YAML, pinhole or fisheye): frames are undistorted into a "
                                         "pinhole of the tile database's field of view (default: a lens without "
                                         "distortion of --hfov-deg)", metavar="FILE")
    rectify: bool = _opt(True, "with the camera's attitude (from the autopilot through the camera mount): each "
                               "frame rectified to the nadir view of the ground it sees, the fix moved to the "
                               "point below the drone")
    max_tilt_deg: float = _opt(35.0, "a frame tilted more than this from nadir is not compared with the map; "
                                     "odometry still carries the track through it")
    attitude_sigma_deg: float = _opt(1.0, "uncertainty of the camera's reported attitude (1 sigma, degrees, "
                                          "with its delay): the radius of a rectified fix grows by height x it")
    height_sigma_m: float = _opt(3.0, "uncertainty of the height above ground the telemetry gives (1 sigma, "
                                      "metres: a barometer's bias, ground that is not flat): odometry's metres "
                                      "are as uncertain, one error for all the ground carried since a "
                                      "registration, and the fix's radius grows with it")
    height_from_map: bool = _opt(True, "correct the height above ground by the scale registration by features "
                                       "fits on the map (a barometer's bias, relief without a DEM)")
    odometry: bool = _opt(True, "visual odometry between consecutive frames")
    registration: bool = _opt(True, "register frames to the map imagery (when the database carries it)")
    registration_every: int = _opt(1, "register every N-th frame (cost)")
    registration_tracking_s: float = _opt(1.0, "while a verified track is carried by the odometry, register a "
                                              "keyframe at most every this many seconds of the flight's clock "
                                              "(cost; 0: every keyframe)")
    registration_heading_s: float = _opt(10.0, "with --no-heading-track: without a compass, turn frames north-up "
                                               "by the heading registration measured this recently")
    heading_track: bool = _opt(True, "without a compass: odometry on the camera frames carries registration's "
                                     "heading from frame to frame, the half-turn ambiguity of registration is "
                                     "settled by the motion between two registrations, and the odometry moves "
                                     "the filter only once the heading is known (before: by the distance in no "
                                     "direction)")
    heading_search_angles: int = _opt(12, "while no heading is known: embed the frame turned by this many "
                                          "headings (one batch) and keep the rotation whose best tile scores "
                                          "highest (0: embed it as it comes)")
    registration_frames: int = _opt(3, "a frame too small on the map for its parts to verify its registration "
                                       "(150 m on a 5 m/px map) is verified when this many frames' registrations "
                                       "agree, carried by the odometry over --registration-span footprints of "
                                       "ground (0: off)")
    registration_span: float = _opt(0.75, "ground moved, in footprints, between the first and last frame "
                                          "agreeing on a registration")
    coast_s: float = _opt(10.0, "a verified track stays trusted through this many seconds of the flight's clock "
                                "of bland ground (too few features for the odometry: water, a uniform field), "
                                "carried by its velocity, its radius growing; a picture that jumps breaks it at "
                                "once (0: untrusted on the first such keyframe)")
    map_sigma_m: float = _opt(4.0, "how far the map imagery's georeferencing may lie from the ground the camera "
                                   "sees (1 sigma per axis, metres): part of a registered fix's radius (measured "
                                   "between NAIP years: 1-7 m, up to 13)")
    verify_lock: bool = _opt(True, "trust a track only once registration verified it (when the database carries "
                                   "imagery)")
    map_filter: MapFilterConfig = field(default_factory=MapFilterConfig, metadata={"cli": False})
    odometry_settings: OdometryConfig = field(default_factory=OdometryConfig, metadata={"cli": False})
    heading_settings: HeadingTrackConfig = field(default_factory=HeadingTrackConfig, metadata={"cli": False})
    top_k: int = _opt(5, "tiles kept per frame (the record's matches, registration's candidates)")
    max_speed_mps: float = _opt(50.0, "fastest ground speed the drone can fly (bounds the motion without "
                                      "odometry)")
    margin_scale: float = _opt(0.05, "score margin to the best distant tile that gives a frame's own estimate "
                                     "confidence 1-1/e (the record's 'raw')")
    derotate: bool = _opt(True, "turn each frame north-up by the heading before embedding")
    layer_tolerance_frac: float = _opt(0.25, "an altitude farther than this fraction from every layer's "
                                             "altitude gets no fix")
    prior_lat: float | None = _opt(None, "a position known at the start (the last GPS fix before it was lost), "
                                         "WGS84 degrees: the map filter starts there instead of anywhere on the "
                                         "map (registration still verifies before any fix is trusted; a wrong "
                                         "prior is not trusted); with --prior-lon", metavar="DEG")
    prior_lon: float | None = _opt(None, "longitude of --prior-lat", metavar="DEG")
    prior_sigma_m: float = _opt(100.0, "1-sigma uncertainty of the prior position, metres (its age x the speed "
                                       "flown, at least)")

    def __post_init__(self):
        tables = {"map_filter": MapFilterConfig, "odometry_settings": OdometryConfig,
                  "heading_settings": HeadingTrackConfig}
        for name, kind in tables.items():  # a config file gives them as tables
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, kind(**v))
        validate.speed_mps(self.max_speed_mps, "--max-speed-mps")
        if self.hfov_deg is not None:
            validate.hfov_deg(self.hfov_deg, "--hfov-deg")
        self._check_prior()
        self._check_ranges()

    def _check_prior(self) -> None:
        if (self.prior_lat is None) != (self.prior_lon is None):
            raise ValueError(f"--prior-lat {self.prior_lat} --prior-lon {self.prior_lon}: give both (the last "
                             "known position) or neither")
        if self.prior_lat is not None:
            validate.latitude(self.prior_lat, "--prior-lat")
            validate.longitude(self.prior_lon, "--prior-lon")

    def _check_ranges(self) -> None:
        checks = {"registration_every": self.registration_every >= 1,
                  "registration_tracking_s": self.registration_tracking_s >= 0, "top_k": self.top_k >= 1,
                  "registration_frames": self.registration_frames == 0 or self.registration_frames >= 2,
                  "registration_span": self.registration_span >= 0, "coast_s": self.coast_s >= 0,
                  "map_sigma_m": self.map_sigma_m >= 0, "registration_heading_s": self.registration_heading_s >= 0,
                  "heading_search_angles": self.heading_search_angles >= 0, "max_speed_mps": self.max_speed_mps > 0,
                  "margin_scale": self.margin_scale > 0, "layer_tolerance_frac": self.layer_tolerance_frac > 0,
                  "prior_sigma_m": self.prior_sigma_m > 0, "keyframe_s": self.keyframe_s >= 0,
                  "max_tilt_deg": 0 <= self.max_tilt_deg < 80, "attitude_sigma_deg": 0 <= self.attitude_sigma_deg < 30,
                  "height_sigma_m": self.height_sigma_m >= 0,
}
        for name, ok in checks.items():
            v = getattr(self, name)
            if not ok or (isinstance(v, float) and not math.isfinite(v)):
                raise ValueError(f"--{name.replace('_', '-')} {v!r} is out of range: see `python -m runtime "
                                 "serve --help`")
