"""The heading of the image top when the autopilot gives none, as the Localizer keeps it.

Two ways, chosen by ``LocalizerConfig.heading_track``:

- tracked (default, :class:`~runtime.localisation.heading_track.HeadingTracker`): the odometry on the
  camera frames carries the heading from frame to frame, registrations measure it, and the motion between
  two registrations settles registration's half-turn ambiguity; until it is known, the odometry moves the
  map filter by a distance in no direction;
- the last registration's (``--no-heading-track``): frames are turned north-up by the heading registration
  measured within ``registration_heading_s``.

:class:`CompasslessHeading` holds that state; the Localizer calls it with its own parts (odometry,
registration, track), never the other way round.
"""

from __future__ import annotations

import math
from dataclasses import replace

from runtime.localisation.heading_track import HeadingTracker


class CompasslessHeading:
    def __init__(self, cfg):
        self.cfg = cfg
        self.tracker = HeadingTracker(cfg.heading_settings)
        self._yaw: tuple[float, float] | None = None  # (t, heading) last measured by registration
        self.odometry_frames: str | None = None  # which frames the odometry compares: "north_up" or "camera"

    def reset(self) -> None:
        self.tracker.reset()
        self._yaw = None
        self.odometry_frames = None

    def tracking(self, telemetry, has_track: bool) -> bool:
        """The heading comes from the tracker: no compass heading, derotation and tracking on, a map track."""
        return telemetry.heading_deg is None and self.cfg.derotate and self.cfg.heading_track and has_track

    def use_frames(self, kind: str, odometry) -> None:
        """The odometry compares north-up frames (compass) or camera frames (none): a switch restarts it."""
        if odometry is not None and self.odometry_frames not in (None, kind):
            odometry.reset()
        self.odometry_frames = kind

    def measured_recently(self, telemetry):
        """Without a compass heading, the heading registration measured recently (source ``registration``)."""
        if telemetry.heading_deg is not None or self._yaw is None or not self.cfg.derotate:
            return telemetry
        t_yaw, yaw = self._yaw
        age = telemetry.t - t_yaw
        if not 0 <= age <= self.cfg.registration_heading_s:
            return telemetry
        return replace(telemetry, heading_deg=yaw, heading_source="registration", heading_age_s=age)

    def remember(self, t: float, yaw_deg: float) -> None:
        if math.isfinite(yaw_deg):
            self._yaw = (t, yaw_deg)

    def with_heading(self, telemetry):
        """The telemetry with the tracked heading (the prior after a jump: unconfirmed), if one is known."""
        tr = self.tracker
        heading, source = tr.heading, "registration+odometry"
        if heading is None and tr.prior is not None:  # after a jump: retrieval only, unconfirmed
            heading, source = tr.prior, "odometry-unconfirmed"
        if heading is None:
            return telemetry
        age = None if tr.t_reg is None else telemetry.t - tr.t_reg
        return replace(telemetry, heading_deg=heading, heading_source=source, heading_age_s=age)

    def try_hypotheses(self, image, telemetry, registration) -> object | None:
        """Register the frame where a pending registration and the odometry put the drone under each half-turn
        hypothesis; exactly one verifying settles the heading (:meth:`HeadingTracker.hypotheses`). Returns the
        registration that locked it (the track restarts there), else None."""
        hyps = self.tracker.hypotheses() if registration is not None else []
        if not hyps:
            return None
        found = registration.register_each(image, telemetry.altitude_m, hyps,
                                           self.cfg.heading_settings.hypothesis_tol_deg)
        if len(found) == 1 and self.tracker.measure(telemetry.t, found[0]) == "locked":
            return found[0]
        return None

    def measured(self, t: float, reg, info: dict) -> tuple[float, bool]:
        """A verified registration measures the heading (locks or corrects the tracker); returns the fix's yaw
        (the tracked heading, never registration's own, which may be a half turn off before the lock) and
        whether it just locked (the track restarts at the registration)."""
        locked = False
        if reg is not None and reg.ok and math.isfinite(reg.heading_deg):
            info["heading_update"] = self.tracker.measure(t, reg)
            locked = info["heading_update"] == "locked"
        known = self.tracker.known
        info["heading_sigma_deg"] = round(self.tracker.sigma, 2) if known else None
        return (self.tracker.heading if known else math.nan), locked
