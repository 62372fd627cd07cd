"""The service's settings: one dataclass, read from a JSON or TOML file and overridden by the command line.

:class:`ServiceConfig` is the :class:`~runtime.localisation.localizer.LocalizerConfig` (the knobs of the flight chain,
shared with ``python -m runtime replay``) plus what only the service has: the bundle, database and frame
source, where altitude and heading come from, the engine, the outputs. A config file holds any of its
fields at its top level (or under ``[serve]`` in TOML): the key is the command-line option without its
leading ``--``, with ``_`` or ``-`` (``--altitude-m 150`` is ``altitude_m = 150``). An unknown key is an
error that lists the known ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from common.cli import UserError
from common.options import shared
from runtime.localisation.config import REMOVED_OPTIONS, LocalizerConfig
from runtime.outputs.settings import OutputConfig


def _opt(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class ServiceConfig(LocalizerConfig, OutputConfig):
    bundle: str | None = shared("bundle")
    db: str | None = shared("db")
    source: str = _opt("", "camera index, video file, rtsp://, udp://, GStreamer pipeline, or image folder")
    altitude_m: float | None = shared("altitude_m")
    altitude_from: str | None = _opt(None, "read the height above ground from the autopilot: udpin:0.0.0.0:14551, "
                                           "udpout:HOST:PORT, tcp:HOST:PORT or a serial device (the same address "
                                           "as --mavlink shares that connection)", metavar="MAVLINK_URL")
    altitude_from_baud: int | None = _opt(None, "serial baud for --altitude-from (default: --mavlink-baud)")
    altitude_stale_s: float = _opt(2.0, "autopilot altitude or heading older than this is not used")
    altitude_request_hz: float = _opt(5.0, "ask the autopilot to stream its altitude/attitude messages at this "
                                           "rate (0: do not ask)")
    heading_deg: float | None = shared("heading_deg")
    heading_from: str | None = _opt(None, "read the heading (ATTITUDE yaw) from the autopilot at this address "
                                          "(default: the --altitude-from link)", metavar="MAVLINK_URL")
    camera_yaw_offset_deg: float = _opt(0.0, "camera image top turned clockwise from the airframe's nose, degrees")
    camera_mount: str = _opt("fixed", "how the camera is held: fixed to the airframe at --camera-pitch-deg and "
                                      "--camera-roll-deg, or on a gimbal that reports its attitude "
                                      "(GIMBAL_DEVICE_ATTITUDE_STATUS)", choices=("fixed", "gimbal"))
    camera_pitch_deg: float = _opt(-90.0, "fixed mount: the camera's pitch against the airframe, degrees (gimbal "
                                          "convention: -90 looks straight down, -80 ten degrees forward of it)")
    camera_roll_deg: float = _opt(0.0, "fixed mount: the camera's roll against the airframe, degrees")
    attitude_delay_ms: float = _opt(0.0, "the MAVLink link's one-way delay, milliseconds: the autopilot's "
                                         "attitude is put on this computer's clock with it before it is "
                                         "interpolated to each frame's capture time")
    precision: str = shared("precision")
    backend: str = shared("backend")
    providers: list[str] | None = _opt(None, "ONNX Runtime providers, e.g. CUDAExecutionProvider")
    pipeline: bool = _opt(True, "embed frame n+1 in its own thread while frame n is fused (odometry, filter, "
                                "registration); --no-pipeline: one frame at a time")
    threads: int | None = shared("threads")
    spin: bool = _opt(False, "ONNX Runtime idle threads spin (lower latency alone, steals CPU from capture)")
    jsonl: str | None = _opt(None, "write JSON lines to PATH (its folder is created), or '-' for stdout")
    udp_json: str | None = _opt(None, "send JSON datagrams to HOST:PORT")
    mavlink: str | None = _opt(None, "the track to an ArduPilot autopilot (--mavlink-mode) over udpout:HOST:PORT, "
                                     "udpin:HOST:PORT, tcp:HOST:PORT or a serial device")
    mavlink_baud: int = _opt(57600, "serial baud for --mavlink")
    mavlink_mode: str = _opt("gps_input", "gps_input: GPS_INPUT, a GPS (GPSn_TYPE=14, instance --gps-id); odometry: "
                                          "ODOMETRY, external navigation (VISO_TYPE=1, EK3_SRC1_POSXY=6) from an "
                                          "origin set with SET_GPS_GLOBAL_ORIGIN; external_position: "
                                          "MAV_CMD_EXTERNAL_POSITION_ESTIMATE (resets while dead-reckoning only)",
                             choices=("gps_input", "odometry", "external_position"))
    gnss_serial: str | None = _opt(None, "emulated GNSS receiver (UBX/NMEA) on this serial port or pseudo-terminal "
                                         "(PX4, or any autopilot's GPS port)", metavar="PORT")
    gnss_baud: int = _opt(115200, "serial baud for --gnss-serial")
    gnss_protocols: str = _opt("ubx,nmea", "what --gnss-serial speaks: ubx, nmea or ubx,nmea")
    health_port: int | None = _opt(None, "serve health on 127.0.0.1:PORT/health")
    health_log_s: float = _opt(10.0, "seconds between health log lines")
    loop: bool = _opt(False, "restart a video file or folder at its end")
    drop_frames: bool | None = _opt(None, "newest frame wins (default: on for live sources, off for files)")
    max_frames: int | None = shared("max_frames")
    backoff_max_s: float = _opt(8.0, "longest wait between attempts to reopen a dropped camera")
    read_timeout_s: float = _opt(3.0, "a camera silent this long is reopened")
    verify_db: bool = _opt(True, "check the tile database's file hashes and embeddings at start (--no-verify-db "
                                 "for a fast restart of a database already checked)")

    def __post_init__(self):
        super().__post_init__()
        self.check_outputs()
        from common import validate

        if self.altitude_m is not None:
            self.altitude_m = validate.altitude_m(self.altitude_m, "--altitude-m")
        if self.heading_deg is not None:
            self.heading_deg = validate.heading_deg(self.heading_deg, "--heading-deg")
        for name in ("camera_yaw_offset_deg", "camera_pitch_deg", "camera_roll_deg", "attitude_delay_ms"):
            validate.finite(f"--{name.replace('_', '-')}", getattr(self, name))
        validate.positive("--altitude-stale-s", self.altitude_stale_s, "s")
        validate.positive("--health-log-s", self.health_log_s, "s")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames {self.max_frames}: must be >= 1")
        if self.health_port is not None and not 0 <= self.health_port <= 65535:
            raise ConfigError(f"--health-port {self.health_port}: a TCP port is 0-65535 (0 picks a free one)")

    def localizer_config(self) -> LocalizerConfig:
        names = {f.name for f in fields(LocalizerConfig)}
        return LocalizerConfig(**{k: v for k, v in asdict(self).items() if k in names})


FIELD_NAMES = tuple(f.name for f in fields(ServiceConfig))


class ConfigError(UserError, ValueError):
    pass


def load_config_file(path) -> dict:
    """The settings of a .json or .toml file as a dict (validated names)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10 (JetPack 6)
            import tomli as tomllib
        data = tomllib.loads(path.read_text())
        data = data.get("serve", data)
    elif path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
    else:
        raise ConfigError(f"config file {path} must end in .json or .toml")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    removed = [k for k in data if k in REMOVED_OPTIONS]
    if removed:
        raise ConfigError(f"{path}: the setting {removed[0]!r} was removed: {REMOVED_OPTIONS[removed[0]]}; "
                          "delete it from the file")
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; known: {', '.join(FIELD_NAMES)}")
    return data


def build_config(file_values: dict | None = None, overrides: dict | None = None) -> ServiceConfig:
    """Defaults < file < command line (entries that are None in ``overrides`` do not override)."""
    values = dict(file_values or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None and k in FIELD_NAMES})
    cfg = ServiceConfig(**values)
    missing = [n for n in ("bundle", "db", "source") if not getattr(cfg, n)]
    if missing:
        raise ConfigError(f"missing settings {missing}: give --{' --'.join(missing)} or put them in --config")
    return cfg


def config_dict(cfg) -> dict:
    return asdict(cfg)
