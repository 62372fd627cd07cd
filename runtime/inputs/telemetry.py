"""Where the service's altitude and heading come from, frame by frame.

The altitude picks the database layer; the heading turns the frame north-up. Each comes from the autopilot
(:class:`runtime.inputs.autopilot.AutopilotReader`) while its reading is fresh, else from a fixed value given on
the command line, else from nowhere. :class:`TelemetryPolicy` applies that order, logs when the source
changes (a warning when there is none), and describes itself for the service's self-check and health
endpoint. Readings are :class:`~runtime.inputs.autopilot.AltitudeReading` / :class:`~runtime.inputs.autopilot.HeadingReading`;
a given value has source ``given`` and no age (``age_s`` None).
"""

from __future__ import annotations

import logging
import time

from runtime.inputs.autopilot import AltitudeReading, HeadingReading, compass_deg
from runtime.localisation.localizer import Telemetry

logger = logging.getLogger(__name__)


class TelemetryPolicy:
    """Altitude and heading for each frame. ``cfg`` is a :class:`runtime.config.ServiceConfig`. A reader
    on the same address as the GPS output shares its link (:func:`runtime.outputs.mavlink_link.shared_link`)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.altitude_reader = self._open_reader(cfg.altitude_from) if cfg.altitude_from else None
        self.heading_reader = self._open_heading_reader()
        self.frames_no_heading = 0
        self._logged_heading: object = ()  # the heading source the last log line named (() = none yet)
        self._logged_altitude: object = ()

    # ---- readers ------------------------------------------------------------------------------
    def _open_reader(self, url: str):
        from runtime.inputs.autopilot import AutopilotReader

        cfg = self.cfg
        return AutopilotReader(url, baud=cfg.altitude_from_baud or cfg.mavlink_baud,
                               stale_s=cfg.altitude_stale_s, request_hz=cfg.altitude_request_hz)

    def _open_heading_reader(self):
        cfg = self.cfg
        if not cfg.derotate:
            if cfg.heading_from or cfg.heading_deg is not None:
                logger.info("--no-derotate: the heading settings are not used")
            return None
        url = cfg.heading_from or cfg.altitude_from
        if not url:
            return None
        if url == cfg.altitude_from and self.altitude_reader is not None:
            return self.altitude_reader  # one reader, one link for both
        return self._open_reader(url)

    def readers(self) -> list:
        """The distinct autopilot readers (altitude and heading share one when their address is the same)."""
        out = []
        for r in (self.altitude_reader, self.heading_reader):
            if r is not None and all(r is not o for o in out):
                out.append(r)
        return out

    def wait_first(self, timeout_s: float) -> None:
        """Give the link a moment so the self-check shows real readings."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (
                (self.altitude_reader is not None and self.altitude_reader.current() is None)
                or (self.heading_reader is not None and self.heading_reader.heading() is None)):
            time.sleep(0.05)

    # ---- readings -----------------------------------------------------------------------------
    def altitude(self) -> AltitudeReading | None:
        if self.altitude_reader is not None:
            r = self.altitude_reader.current()
            if r is not None:
                return AltitudeReading(r.altitude_m, f"autopilot:{r.source}", r.age_s, r.system_id)
        if self.cfg.altitude_m is not None:
            return AltitudeReading(float(self.cfg.altitude_m), "given", None)
        return None

    def heading(self) -> HeadingReading | None:
        """The compass heading the image top faces: the autopilot's plus the camera's yaw offset, else the
        given heading; None when derotation is off."""
        cfg = self.cfg
        if not cfg.derotate:
            return None
        if self.heading_reader is not None:
            r = self.heading_reader.heading()
            if r is not None:
                return HeadingReading(compass_deg(r.heading_deg + (cfg.camera_yaw_offset_deg or 0.0)),
                                      f"autopilot:{r.source}", r.age_s, r.system_id)
        if cfg.heading_deg is not None:
            return HeadingReading(compass_deg(cfg.heading_deg), "given", None)
        return None

    def for_frame(self, t: float, capture_time_unix: float | None) -> Telemetry:
        """The telemetry of a frame captured now; logs source changes, counts frames without a heading."""
        alt, hdg = self.altitude(), self.heading()
        self._note(alt, hdg)
        reader = self.heading_reader or self.altitude_reader
        msl = reader.msl() if reader is not None and hasattr(reader, "msl") else None
        return Telemetry(t=t, altitude_m=alt.altitude_m if alt else None, altitude_source=alt.source if alt else None,
                         altitude_age_s=alt.age_s if alt else None,
                         heading_deg=hdg.heading_deg if hdg else None, heading_source=hdg.source if hdg else None,
                         heading_age_s=hdg.age_s if hdg else None, capture_time_unix=capture_time_unix,
                         camera_attitude=self.camera_attitude(capture_time_unix) if hdg else None,
                         altitude_msl_m=msl[0] if msl else None)

    def camera_attitude(self, capture_time_unix: float | None):
        """The camera's attitude at a frame's capture: the autopilot's ATTITUDE (a gimbal's own report on a
        gimbal mount) interpolated to that instant on this computer's clock, through the mount; None
        without an attitude near it (the frame is then turned north-up by the heading, as a nadir one)."""
        cfg, reader = self.cfg, self.heading_reader
        if not cfg.rectify or reader is None or not hasattr(reader, "attitude_at"):
            return None
        from runtime.inputs.attitude import CameraMount, quaternion_matrix

        now = time.monotonic()
        t = now - max(0.0, time.time() - capture_time_unix) if capture_time_unix is not None else now
        delay = cfg.attitude_delay_ms / 1000.0
        body = reader.attitude_at(t, delay)
        if body is None:
            return None
        gimbal = reader.gimbal_at(t, delay) if cfg.camera_mount == "gimbal" else None
        mount = CameraMount(cfg.camera_mount, cfg.camera_roll_deg, cfg.camera_pitch_deg, cfg.camera_yaw_offset_deg)
        return mount.camera_attitude(quaternion_matrix(body.q), gimbal.q if gimbal else None,
                                     gimbal.yaw_in_earth if gimbal else False)

    def _note(self, alt: AltitudeReading | None, hdg: HeadingReading | None) -> None:
        if self.cfg.derotate and hdg is None:
            self.frames_no_heading += 1
        src = hdg.source if hdg else None
        if src != self._logged_heading:
            self._logged_heading = src
            if hdg is not None:
                logger.info("heading %.1f deg from %s: frames turned north-up", hdg.heading_deg, hdg.source)
            elif self.cfg.derotate:
                logger.warning("no heading (%s): frames are embedded as the camera saw them, not north-up like "
                               "the tiles; give --heading-deg DEG or --heading-from MAVLINK_URL",
                               "autopilot silent or stale, no --heading-deg" if self.heading_reader is not None
                               else "no --heading-deg, --heading-from or --altitude-from")
        asrc = alt.source if alt else None
        if asrc != self._logged_altitude:
            self._logged_altitude = asrc
            if alt is not None:
                logger.info("altitude %.1f m from %s", alt.altitude_m, alt.source)
            else:
                logger.warning("no altitude (autopilot silent or stale, no --altitude-m): no fix on a database "
                               "with several layers until an altitude arrives")

    # ---- descriptions -------------------------------------------------------------------------
    def altitude_line(self, n_layers: int) -> str:
        """The self-check's line about the altitude."""
        cfg = self.cfg
        if self.altitude_reader is not None:
            r = self.altitude_reader.current()
            now = (f"now {r.altitude_m:.1f} m from autopilot:{r.source} ({r.age_s:.1f} s old)" if r is not None
                   else "no reading yet")
            fallback = (f"{cfg.altitude_m:g} m (--altitude-m)" if cfg.altitude_m is not None
                        else ("none: no fix while it is stale" if n_layers > 1 else "the only layer"))
            return f"altitude: {self.altitude_reader.describe()}, {now}; fallback {fallback}"
        if cfg.altitude_m is not None:
            return f"altitude: {cfg.altitude_m:g} m given (--altitude-m)"
        return "altitude: none given (the database has one layer)"

    def heading_line(self) -> str:
        """The self-check's line about the heading."""
        cfg = self.cfg
        if not cfg.derotate:
            return "heading: not used (--no-derotate): frames are embedded as the camera saw them"
        if self.heading_reader is not None:
            r, h = self.heading_reader.heading(), self.heading()
            offset = (f", camera yaw offset {cfg.camera_yaw_offset_deg:+g} deg" if cfg.camera_yaw_offset_deg
                      else "")
            now = (f"now {h.heading_deg:.1f} deg from autopilot:{r.source} ({r.age_s:.1f} s old)"
                   if r is not None and h is not None else "no reading yet")
            fallback = (f"{cfg.heading_deg:g} deg (--heading-deg)" if cfg.heading_deg is not None
                        else "none: frames not turned north-up while it is stale")
            return (f"heading: {self.heading_reader.describe('heading')} (ATTITUDE yaw, else VFR_HUD, else "
                    f"GLOBAL_POSITION_INT){offset}, {now}; fallback {fallback}")
        if cfg.heading_deg is not None:
            return f"heading: {cfg.heading_deg:g} deg given (--heading-deg): every frame turned north-up by it"
        return ("heading: none (no --heading-deg, --heading-from or --altitude-from): frames are NOT turned "
                "north-up although the tiles are; give --heading-deg DEG or --heading-from MAVLINK_URL")

    def status_text(self, tel: Telemetry | None, layer_name: str | None) -> str:
        """The periodic health line's part about altitude and heading."""
        if tel is None:
            return "no frame yet"
        if tel.altitude_source is None:
            alt = "altitude none"
        else:
            age = f", {tel.altitude_age_s:.1f} s old" if tel.altitude_age_s is not None else ""
            alt = f"altitude {tel.altitude_m:.1f} m ({tel.altitude_source}{age}) layer {layer_name}"
        if not self.cfg.derotate:
            hdg = "heading not used (--no-derotate)"
        elif tel.heading_source is None:
            hdg = f"heading none ({self.frames_no_heading} frames not turned north-up)"
        else:
            age = f", {tel.heading_age_s:.1f} s old" if tel.heading_age_s is not None else ""
            hdg = f"heading {tel.heading_deg:.1f} deg ({tel.heading_source}{age})"
        return f"{alt}; {hdg}"

    def health_info(self, tel: Telemetry | None, layer_name: str | None) -> dict:
        """Health's view of altitude and heading (replaced every loop turn, never mutated)."""
        cfg = self.cfg

        def rnd(v):
            return None if v is None else round(float(v), 3)

        alt = {"altitude_m": rnd(tel.altitude_m) if tel else None, "source": tel.altitude_source if tel else None,
               "age_s": rnd(tel.altitude_age_s) if tel else None, "layer": layer_name}
        if self.altitude_reader is not None:
            alt["autopilot"] = self.altitude_reader.status()
        hdg = {"heading_deg": rnd(tel.heading_deg) if tel else None, "source": tel.heading_source if tel else None,
               "age_s": rnd(tel.heading_age_s) if tel else None, "derotate": cfg.derotate,
               "given_deg": cfg.heading_deg, "camera_yaw_offset_deg": cfg.camera_yaw_offset_deg}
        if self.heading_reader is not None:
            st = self.heading_reader.status()
            hdg["autopilot"] = {"url": st["url"], "heading": st["heading"], "sources": st["heading_sources"]}
        return {"layer": layer_name, "altitude": alt, "heading": hdg}

    def close(self) -> None:
        for r in self.readers():
            r.close()


def telemetry_fields(tel, layer_name: str | None) -> dict:
    """The JSON line's fields about the frame's altitude, heading and layer."""
    def rnd(v):
        return None if v is None else round(float(v), 3)

    return {"altitude_source": tel.altitude_source, "altitude_age_s": rnd(tel.altitude_age_s), "layer": layer_name,
            "heading_deg": rnd(tel.heading_deg), "heading_source": tel.heading_source,
            "heading_age_s": rnd(tel.heading_age_s)}
