"""What goes into the flight chain with a frame, and what comes out of it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.localisation.fix import Fix
from runtime.search.searcher import Matches


@dataclass(frozen=True)
class Telemetry:
    """What is known about a frame besides its pixels; every field may be unknown (None)."""

    t: float  # seconds on the flight's clock (monotonic within a flight)
    altitude_m: float | None = None  # height above ground
    altitude_source: str | None = None  # "given", "autopilot:<message>", "flight" ...
    altitude_age_s: float | None = None
    heading_deg: float | None = None  # compass heading the image top faces
    heading_source: str | None = None
    heading_age_s: float | None = None
    capture_time_unix: float | None = None  # when the frame was captured (UTC)
    camera_attitude: object | None = None  # runtime.inputs.attitude.CameraAttitude at the capture (None: unknown)
    altitude_msl_m: float | None = None  # above mean sea level (with the database's terrain: the height above ground)


@dataclass
class Localization:
    raw: Fix  # this frame alone
    fix: Fix  # fused over the flight: what the outputs send
    matches: Matches  # (1, k) rows and scores, -1 / -inf where nothing was found
    layer: int | None
    timings_ms: dict[str, float]
    telemetry: Telemetry
    fusion: dict = field(default_factory=dict)  # what the fusion did (odometry, registration, heading...)


@dataclass
class Ahead:
    """A frame embedded ahead of :meth:`Localizer.locate` (:meth:`Localizer.embed_ahead`)."""

    embedding: np.ndarray
    north_up: np.ndarray  # the frame's view (north-up; rectified by the attitude when known): what is compared
    heading_deg: float | None
    timings_ms: dict[str, float]
    view: object = None  # its runtime.localisation.camera_view.View
