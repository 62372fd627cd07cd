"""Verify a registration over several frames when one frame is too small on the map to verify itself.

On a coarse map a low flight's frame spans few map pixels (150 m over the 5 m/px NAIP: 35 px a
footprint): the whole frame's correlation peak is often right, but its parts (17 px each) are too small
to agree on it, so the single-frame check of :mod:`runtime.localisation.registration` refuses it (measured: 0 of 30
frames at 150 m registered around the true position, docs/results/localizer.md). A flight gives what a
frame lacks: the drone moves over new ground, and the odometry says by how much. A *tentative*
registration (every single-frame check passed but the parts' votes) is confirmed when the peaks of
``frames`` frames agree within ``tol_px`` map pixels and ``heading_tol_deg`` once each earlier peak is
carried by the odometry to the present, and the agreeing frames span at least ``min_span_footprints`` of
ground moved (consecutive frames overlap: only ground the first frame did not see is new evidence; at
one footprint the first and last frame share nothing).

A failed odometry step breaks the chain: what was pending is dropped (its carried position is unknown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass
class AgreementConfig:
    frames: int = 3  # tentative peaks that agree, the present one included
    tol_px: float = 2.5  # map pixels
    heading_tol_deg: float = 5.0
    min_span_footprints: float = 0.75  # ground moved between the first and the last agreeing frame (footprints)
    max_pending: int = 30  # tentative peaks kept (oldest dropped first)

    def __post_init__(self):
        if self.frames < 2:
            raise ValueError(f"agreement frames must be >= 2 (one frame is the single-frame check), got "
                             f"{self.frames}")


@dataclass
class _Pending:
    frame: int
    x: float  # carried by the odometry to the present frame
    y: float
    heading_deg: float
    moved_m: float = 0.0  # ground moved since it was registered


class FrameAgreement:
    def __init__(self, cfg: AgreementConfig | None = None):
        self.cfg = cfg or AgreementConfig()
        self.pending: list[_Pending] = []
        self.frame = 0

    def reset(self) -> None:
        self.pending = []

    def carry(self, motion) -> None:
        """Move the pending peaks with this frame's odometry (``runtime.localisation.odometry.Motion``); drop them when
        there is none."""
        self.frame += 1
        if motion is None or not motion.ok:
            self.pending = []
            return
        d = math.hypot(motion.dx_e_m, motion.dy_n_m)
        for p in self.pending:
            p.x, p.y, p.moved_m = p.x + motion.dx_e_m, p.y + motion.dy_n_m, p.moved_m + d

    def offer(self, registrations, gsd_m: float, footprint_m: float):
        """This frame's registrations (every window tried); returns a tentative one confirmed by earlier frames
        (``ok`` set, ``method`` names the frames), else None; the tentative ones are kept for later frames."""
        cfg = self.cfg
        tentative = sorted((r for r in registrations if r.tentative), key=lambda r: -r.score)
        for r in tentative:
            agree = self._agreeing(r, gsd_m)
            if len(agree) >= cfg.frames - 1 and max(p.moved_m for p in agree) >= cfg.min_span_footprints * footprint_m:
                self.pending = []
                return replace(r, ok=True, tentative=False, reason="",
                               method=f"{r.method} over {len(agree) + 1} frames")
        for r in tentative:
            self.pending.append(_Pending(self.frame, r.x, r.y, r.heading_deg))
        self.pending = self.pending[-cfg.max_pending:]
        return None

    def _agreeing(self, r, gsd_m: float) -> list[_Pending]:
        """The earlier peaks (one per frame, the closest) within the tolerances of ``r``."""
        cfg = self.cfg
        best: dict[int, tuple[float, _Pending]] = {}
        for p in self.pending:
            if p.frame == self.frame:
                continue
            dist = math.hypot(p.x - r.x, p.y - r.y)
            dh = abs((p.heading_deg - r.heading_deg + 180.0) % 360.0 - 180.0)
            if dist <= cfg.tol_px * gsd_m and dh <= cfg.heading_tol_deg:
                if p.frame not in best or dist < best[p.frame][0]:
                    best[p.frame] = (dist, p)
        return [p for _, p in best.values()]
