"""The autopilot outputs' knobs, once: :class:`OutputConfig`.

``python -m runtime serve`` takes them as part of its :class:`runtime.config.ServiceConfig`, and
``python -m runtime replay geotiff --record-autopilot`` with the same names, so a recording is made with
the settings that fly (:mod:`runtime.outputs.scheduler`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from runtime.outputs.vertical import SOURCES


def _opt(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


MAX_DELAY_MS = 250.0  # ArduPilot's GPSn_DELAY_MS and VISO_DELAY_MS go to 250 ms (PX4's EKF2_GPS_DELAY to 300)


@dataclass
class OutputConfig:
    """What the autopilot outputs (GPS_INPUT, ODOMETRY, UBX, NMEA) send, and when."""

    output_rate_hz: float = _opt(10.0, "autopilot messages per second (GPS_INPUT, ODOMETRY, UBX/NMEA epochs), the "
                                       "track predicted between frames; 5-50 (ArduPilot calls a GPS slower than "
                                       "about 5 Hz unhealthy, PX4's driver reconfigures one silent for 500 ms)")
    output_delay_ms: float = _opt(200.0, "each autopilot message gives the track this long before it leaves; tell "
                                         "the autopilot the same delay: GPSn_DELAY_MS (0 means 200), VISO_DELAY_MS, "
                                         "EKF2_GPS_DELAY; 0-250, near the capture-to-fix latency the health record "
                                         "shows plus half a frame interval")
    output_max_age_s: float = _opt(2.0, "the autopilot outputs say 'no fix' once the last frame's fix is older than "
                                        "this (frames stopped coming): the one rule besides the filter's trust")
    gps_id: int = _opt(0, "GPS_INPUT gps_id: the ArduPilot GPS instance whose GPSn_TYPE is 14 (0 = GPS1, 1 = GPS2); "
                          "ArduPilot drops messages for another instance")
    satellites_visible: int = _opt(10, "satellites reported with a fix (a stand-in: ArduPilot and PX4 want >= 6)")
    altitude_msl_from: str = _opt("auto", "the MSL altitude sent: home (--home-alt-msl-m plus the height above "
                                          "it), autopilot (its GLOBAL_POSITION_INT.alt), none; auto: home when "
                                          "--home-alt-msl-m is given, else none", choices=SOURCES)
    home_alt_msl_m: float | None = _opt(None, "the take-off point's altitude above mean sea level, metres: the MSL "
                                              "altitude sent is this plus the height above it (the autopilot's "
                                              "relative altitude, else the flight height)", metavar="METRES")
    altitude_msl_sigma_m: float = _opt(3.0, "1-sigma of the MSL altitude sent, metres (the home altitude's error "
                                            "and the barometer's drift together): every vertical accuracy field")

    def check_outputs(self) -> None:
        """Refuse out-of-range output settings, naming the option and the range."""
        rules = {"output_rate_hz": (1.0, 50.0), "output_delay_ms": (0.0, MAX_DELAY_MS),
                 "output_max_age_s": (0.1, 60.0), "gps_id": (0, 255), "satellites_visible": (0, 99),
                 "altitude_msl_sigma_m": (0.01, 1000.0)}
        for name, (lo, hi) in rules.items():
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"--{name.replace('_', '-')} {v!r}: must be within {lo:g}..{hi:g}")
        if self.altitude_msl_from not in SOURCES:
            raise ValueError(f"--altitude-msl-from {self.altitude_msl_from!r}: one of {', '.join(SOURCES)}")
        if self.altitude_msl_from == "home" and self.home_alt_msl_m is None:
            raise ValueError("--altitude-msl-from home needs --home-alt-msl-m METRES (the take-off point's MSL "
                             "altitude)")
        if self.home_alt_msl_m is not None and not (math.isfinite(self.home_alt_msl_m)
                                                    and -500.0 <= self.home_alt_msl_m <= 9000.0):
            raise ValueError(f"--home-alt-msl-m {self.home_alt_msl_m!r}: an altitude above mean sea level, "
                             "-500..9000 m")
