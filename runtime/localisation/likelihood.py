"""How much a frame's similarity to a tile says that the frame was taken there: the map filter's likelihood.

:class:`Likelihood` turns a similarity into a log likelihood ratio "this frame was taken here" against
"this frame is of somewhere else"::

    log LR(s) = clip((s - offset) / temperature, -clip_low, +clip)

``offset`` is the similarity at which both are equally likely and ``temperature`` how fast the evidence
grows with the similarity. Both depend on the model (how its similarities of true and false matches are
distributed), so they are fitted per model at export, through the Localizer itself, on flights over the
map (``export.calibrate_likelihood``), and stored in the bundle manifest under ``"likelihood"``;
:meth:`Likelihood.from_manifest` reads them. A bundle without them gets :data:`FALLBACK` (logged):
values measured for the demo's lite0 model, far from right for another model. ``centre="median"``
subtracts the frame's median similarity first (a frame of fields is similar to every field; what counts
is how far a tile stands out).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

log = logging.getLogger(__name__)

CENTRES = ("none", "median")


@dataclass(frozen=True)
class Likelihood:
    temperature: float
    offset: float
    centre: str = "median"  # none | median: subtract the frame's median similarity first
    clip: float = 6.0  # bound on a frame's log LR for a place (one odd frame cannot lock the filter)
    clip_low: float = 6.0  # bound on its evidence against a place (a kidnapping must show at once)
    r95_scale: float = 1.0  # the filter's 95 % radius is multiplied by this (calibrated)
    source: str = "fallback"  # "bundle" when read from a manifest

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"likelihood temperature must be > 0, got {self.temperature}; re-run the calibration")
        if self.centre not in CENTRES:
            raise ValueError(f"likelihood centre {self.centre!r} is not one of {CENTRES}")
        if not (self.clip > 0 and self.clip_low > 0 and self.r95_scale > 0 and math.isfinite(self.offset)):
            raise ValueError(f"likelihood clip, r95_scale must be > 0 and offset finite: {self}")

    def log_lr(self, scores: np.ndarray, reference: float) -> np.ndarray:
        """Log likelihood ratios of ``scores`` (reference: the frame's median similarity)."""
        s = np.asarray(scores, np.float32)
        if self.centre == "median":
            s = s - np.float32(reference)
        return np.clip((s - np.float32(self.offset)) / np.float32(self.temperature), -self.clip_low, self.clip)

    @staticmethod
    def fix_r95_scale(manifest: dict | None, registration: bool) -> float:
        """The calibrated scale of the fixes' reported 95 % radius (export.calibrate_accuracy), when it was
        fitted with the same registration setting as now; 1 otherwise."""
        acc = ((manifest or {}).get("likelihood") or {}).get("fix_accuracy") or {}
        if "r95_scale" not in acc:
            return 1.0
        if bool(acc.get("registration")) != bool(registration):
            log.info("the fix accuracy was calibrated %s registration and now it is %s: reported radius unscaled",
                     "with" if acc.get("registration") else "without", "on" if registration else "off")
            return 1.0
        return float(acc["r95_scale"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "bundle") -> Likelihood:
        names = {f.name for f in fields(cls)} - {"source"}
        missing = {"temperature", "offset"} - set(d)
        if missing:
            raise ValueError(f"likelihood calibration lacks {sorted(missing)}: re-run `python -m export` to calibrate")
        return cls(**{k: v for k, v in d.items() if k in names}, source=source)

    @classmethod
    def from_manifest(cls, manifest: dict | None) -> Likelihood:
        """The bundle's calibrated likelihood, or :data:`FALLBACK` (with a warning) when it has none."""
        d = (manifest or {}).get("likelihood")
        if not d:
            log.warning("the model bundle has no calibrated likelihood: using the fallback %s (measured for the "
                        "demo's lite0 model); re-export with calibration for trustworthy accuracy", FALLBACK)
            return FALLBACK
        return cls.from_dict(d)


# Used only when a bundle carries no calibration: what the export-time calibration fitted for the demo's
# trained lite0 model (flights from NAIP 2010/2012/2014 over the 2018 map); see docs/results/filter.md.
FALLBACK = Likelihood(temperature=0.068, offset=0.129, centre="median", clip=2.0, clip_low=6.0, r95_scale=1.13)
