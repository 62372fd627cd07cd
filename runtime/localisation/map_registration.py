"""Registration of frames to the map imagery, as the flight chain runs it: when, where, and confirmed how.

:class:`MapRegistration` wraps the :class:`~runtime.localisation.registration.Registrar` of the tile
database's imagery for the :class:`~runtime.localisation.localizer.Localizer`:

- when: every ``registration_every`` frames, every ``registration_every_tracking`` frames while a
  verified track is carried by the odometry (registration is the chain's most expensive stage);
- where: around the posterior's two strongest peaks (the evidence of every frame so far: right far more
  often than one frame's retrieval, measured: first fix at 300 m after 1-2 frames instead of 18-54), then
  the frame's top retrieved tiles, three windows at most;
- confirmed how: a registration that verifies alone is a precise position and heading measurement; one
  too small on the map for its parts to verify it (150 m on a 5 m/px map) is confirmed when the peaks of
  several frames agree once carried by the odometry (:class:`~runtime.localisation.frame_agreement.FrameAgreement`).
"""

from __future__ import annotations

import math

from runtime.localisation.frame_agreement import AgreementConfig, FrameAgreement

CANDIDATE_MODES = 2  # posterior peaks tried before the frame's top retrieved tiles
MAX_WINDOWS = 3


class MapRegistration:
    """``registrar``: the database imagery's Registrar; ``cfg``: the LocalizerConfig."""

    def __init__(self, registrar, cfg, hfov_deg: float):
        self.registrar, self.hfov_deg = registrar, float(hfov_deg)
        self.every, self.every_tracking = int(cfg.registration_every), int(cfg.registration_every_tracking)
        self.agreement = None
        if cfg.registration_frames:
            self.agreement = FrameAgreement(AgreementConfig(frames=cfg.registration_frames,
                                                            min_span_footprints=cfg.registration_span))
        self.since = 0  # frames since registration was last tried

    def reset(self) -> None:
        self.since = 0
        if self.agreement is not None:
            self.agreement.reset()

    def carry(self, motion) -> None:
        """The odometry's motion of this frame carries the pending peaks of earlier frames."""
        if self.agreement is not None:
            self.agreement.carry(motion)

    def due(self, carried: bool) -> bool:
        """Whether this frame is registered (``carried``: the track is carried by the odometry from a
        verified registration); counts the frame."""
        self.since += 1
        if self.since < (self.every_tracking if carried else self.every):
            return False
        self.since = 0
        return True

    def register(self, image, altitude_m: float, heading_deg: float | None, candidates_xy,
                 heading_tol_deg: float | None = None):
        """The frame registered around the first candidates that verify (``candidates_xy``: the posterior's
        peaks, then the frame's top tiles); a tentative registration confirmed over frames; None without
        candidates."""
        cands = list(candidates_xy)
        if not cands:
            return None
        tried: list = []
        reg = self.registrar.register_candidates(image, altitude_m, self.hfov_deg, cands, heading_deg,
                                                 max_tries=MAX_WINDOWS, heading_tol_deg=heading_tol_deg,
                                                 tried_out=tried)
        if reg.ok or self.agreement is None:
            return reg
        footprint = 2.0 * altitude_m * math.tan(math.radians(self.hfov_deg) / 2.0)
        confirmed = self.agreement.offer(tried, self.registrar.imagery.gsd_m, footprint)
        return reg if confirmed is None else confirmed

    def register_each(self, image, altitude_m: float, hypotheses, tol_deg: float) -> list:
        """The frame registered around each (x, y, heading) hypothesis; the verified ones."""
        return [r for r in (self.registrar.register(image, altitude_m, self.hfov_deg, (x, y), h, tol_deg)
                            for x, y, h in hypotheses) if r.ok]
