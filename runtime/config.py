"""The service's settings: one dataclass, read from a JSON or TOML file and overridden by the command line.

A config file holds any of the fields of :class:`ServiceConfig` at its top level (or under ``[serve]``
in TOML); an unknown key is an error that lists the known ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class ServiceConfig:
    bundle: str = ""
    db: str = ""
    source: str = ""
    altitude_m: float | None = None  # selects the database layer; None: the only layer
    altitude_from: str | None = None  # MAVLink address of the autopilot to read the altitude from (wins when fresh)
    altitude_from_baud: int | None = None  # serial baud for altitude_from (default: mavlink_baud)
    altitude_stale_s: float = 2.0  # autopilot altitude older than this is not used
    altitude_request_hz: float = 5.0  # ask the autopilot to stream altitude messages at this rate (0: do not ask)
    heading_deg: float | None = None  # fixed compass heading the image top faces (e.g. a gimbal locked north: 0)
    heading_from: str | None = None  # MAVLink address to read the heading from (default: altitude_from)
    camera_yaw_offset_deg: float = 0.0  # camera image top turned clockwise from the airframe's nose, degrees
    derotate: bool = True  # turn frames north-up by the heading before embedding
    precision: str = "auto"
    backend: str = "auto"
    providers: list[str] | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads
    spin: bool = False  # ONNX Runtime idle threads spin (lower latency alone, steals CPU from capture/search)
    jsonl: str | None = None  # path or '-'
    udp_json: str | None = None  # HOST:PORT
    mavlink: str | None = None  # udpout:127.0.0.1:14550, /dev/ttyTHS1, ...
    mavlink_baud: int = 57600
    satellites_visible: int = 10
    health_port: int | None = None
    health_log_s: float = 10.0
    top_k: int = 5
    search_radius_m: float | None = None  # search only around the last trusted fix
    max_speed_mps: float = 30.0
    min_confidence: float = 0.3
    acquire_frames: int = 3  # consecutive consistent fixes before a track starts (or restarts after a jump)
    margin_scale: float = 0.05
    loop: bool = False  # restart a video file at its end
    drop_frames: bool | None = None  # newest frame wins; default: true for live sources, false for files
    max_frames: int | None = None  # stop after this many processed frames
    backoff_max_s: float = 8.0
    read_timeout_s: float = 3.0
    mavlink_mode: str = "gps_input"  # gps_input (a GPS, ArduPilot GPS1_TYPE=14) or external_position (sparse resets)
    gnss_serial: str | None = None  # emulated GNSS receiver (UBX/NMEA) on this serial port or pty (PX4)
    gnss_baud: int = 115200
    gnss_protocols: str = "ubx,nmea"  # comma-separated: ubx, nmea


FIELD_NAMES = tuple(f.name for f in fields(ServiceConfig))


def load_config_file(path) -> dict:
    """The settings of a .json or .toml file as a dict (validated names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
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
        raise ValueError(f"config file {path} must end in .json or .toml")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; known: {', '.join(FIELD_NAMES)}")
    return data


def build_config(file_values: dict | None = None, overrides: dict | None = None) -> ServiceConfig:
    """Defaults < file < command line (entries that are None in ``overrides`` do not override)."""
    values = dict(file_values or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None and k in FIELD_NAMES})
    cfg = ServiceConfig(**values)
    missing = [n for n in ("bundle", "db", "source") if not getattr(cfg, n)]
    if missing:
        raise ValueError(f"missing settings {missing}: give --{' --'.join(missing)} or put them in --config")
    return cfg


def config_dict(cfg: ServiceConfig) -> dict:
    return asdict(cfg)
