"""The flight path, written once: frame + telemetry -> north-up -> descriptor -> layer -> search -> fix.

:class:`Localizer` is what the service runs for every camera frame and what every replay runs for every
recorded frame, so a replay measures what flies. One call, :meth:`Localizer.locate`, takes the image and its
:class:`Telemetry` (capture time, height above ground, compass heading of the image top, each with where it
came from) and returns a :class:`Localization`: the single-frame estimate (``raw``), the fused fix the
outputs send (``fix``), the matched tiles, the layer and the time spent in each stage.

Every knob of that chain lives in :class:`LocalizerConfig`, once; ``python -m runtime serve`` and
``python -m runtime replay`` generate their options from it (:func:`runtime.cli.add_dataclass_options`).

The stages:

1. ``preprocess``: the frame is turned north-up by the heading (tiles are north-up; the camera faces
   wherever the drone flies) unless ``derotate`` is off or no heading is known, then resized and normalised
   by the engine's own preprocessing.
2. ``inference``: the engine's descriptor (skipped when the caller passes one it computed in a batch).
3. ``search``: the altitude picks the database layer (:meth:`Localizer.choose_layer`): the only layer of a
   one-layer database, else the layer nearest the altitude when it lies within ``layer_tolerance_frac`` of
   it; otherwise there is no fix (a frame matched at the wrong scale is worse than none). With
   ``search_radius_m``, only tiles around the last trusted fix are searched, and the whole layer when none
   lies there.
4. ``fusion``: :func:`runtime.position.estimate_fix` turns the matches into a position with a confidence,
   and :class:`runtime.position.PositionFilter` decides whether it is trusted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .position import Fix, PositionFilter, estimate_fix
from .preprocess import north_up
from .search import Matches, Searcher


@dataclass
class LocalizerConfig:
    """The knobs of the flight chain (command-line options are generated from these fields)."""

    top_k: int = field(default=5, metadata={"help": "tiles kept per frame"})
    search_radius_m: float | None = field(default=None, metadata={
        "help": "search only tiles within this radius of the last trusted fix (default: the whole layer)"})
    max_speed_mps: float = field(default=30.0, metadata={
        "help": "fastest ground speed the drone can fly; a fix farther from the track is not trusted"})
    min_confidence: float = field(default=0.3, metadata={"help": "confidence (0..1) a fix needs to be trusted"})
    acquire_frames: int = field(default=3, metadata={
        "help": "consecutive consistent fixes before a track starts (or restarts after a jump)"})
    margin_scale: float = field(default=0.05, metadata={
        "help": "score margin to the best distant tile that gives confidence 1-1/e"})
    derotate: bool = field(default=True, metadata={
        "help": "turn each frame north-up by the heading before embedding"})
    layer_tolerance_frac: float = field(default=0.25, metadata={
        "help": "an altitude farther than this fraction from every layer's altitude gets no fix"})

    def __post_init__(self):
        from tiles import validate

        validate.speed_mps(self.max_speed_mps, "--max-speed-mps")
        if self.search_radius_m is not None:
            validate.radius_m(self.search_radius_m, "--search-radius-m")
        checks = {"top_k": self.top_k >= 1, "max_speed_mps": self.max_speed_mps > 0,
                  "min_confidence": 0.0 <= self.min_confidence <= 1.0, "acquire_frames": self.acquire_frames >= 1,
                  "margin_scale": self.margin_scale > 0, "layer_tolerance_frac": self.layer_tolerance_frac > 0,
                  "search_radius_m": self.search_radius_m is None or self.search_radius_m > 0}
        for name, ok in checks.items():
            v = getattr(self, name)
            if not ok or (isinstance(v, float) and not math.isfinite(v)):
                raise ValueError(f"{name}={v!r} is out of range: see `python -m runtime serve --help`")


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


@dataclass
class Localization:
    raw: Fix  # this frame alone
    fix: Fix  # fused over the flight: what the outputs send
    matches: Matches  # (1, k) rows and scores, -1 / -inf where nothing was found
    layer: int | None
    timings_ms: dict[str, float]
    telemetry: Telemetry


class Localizer:
    def __init__(self, engine, db, cfg: LocalizerConfig | None = None, *, searcher: Searcher | None = None):
        self.engine, self.db = engine, db
        self.cfg = cfg or LocalizerConfig()
        self.searcher = searcher or Searcher(db)
        self.filter = PositionFilter(max_speed_mps=self.cfg.max_speed_mps, min_confidence=self.cfg.min_confidence,
                                     acquire_frames=self.cfg.acquire_frames,
                                     reacquire_frames=self.cfg.acquire_frames)

    def reset(self) -> None:
        """Forget the track (a new flight)."""
        self.filter.reset()

    def choose_layer(self, altitude_m: float | None) -> tuple[int | None, str]:
        """(layer, "") or (None, why there is no layer for this altitude)."""
        layers = self.db.layers
        if altitude_m is None or not math.isfinite(altitude_m):
            if len(layers) == 1:
                return 0, ""
            return None, "no altitude"
        if altitude_m <= 0:
            return None, f"altitude {altitude_m:g} m is not above ground"
        alts = [lay.get("altitude_m") for lay in layers]
        if len(layers) == 1 and alts[0] is None:
            return 0, ""
        layer = self.db.layer_for_altitude(altitude_m)
        have = alts[layer]
        if have is not None and abs(altitude_m - float(have)) > self.cfg.layer_tolerance_frac * float(have):
            listed = ", ".join(f"{a:g}" for a in alts if a is not None)
            return None, f"altitude {altitude_m:g} m has no layer (layers: {listed} m)"
        return layer, ""

    def locate(self, image, telemetry: Telemetry, embedding: np.ndarray | None = None) -> Localization:
        """One frame through the chain. ``embedding``: the frame's descriptor when the caller computed it
        already (a replay embedding in batches); then ``image`` is not used."""
        cfg, t = self.cfg, telemetry.t
        t0 = time.perf_counter()
        if embedding is None:
            if cfg.derotate and telemetry.heading_deg is not None:
                image = north_up(image, telemetry.heading_deg)
            x = self.engine.prepare([image])
            t1 = time.perf_counter()
            emb = self.engine.embed_prepared(x)
        else:
            t1 = time.perf_counter()
            emb = np.asarray(embedding, np.float32).reshape(1, -1)
        t2 = time.perf_counter()
        layer, why = self.choose_layer(telemetry.altitude_m)
        if layer is None:
            k = cfg.top_k
            matches = Matches(np.full((1, k), -1, np.int64), np.full((1, k), -np.inf, np.float32))
            raw = Fix(t=t, reason=why)
        else:
            matches = self._search(emb, layer)
            raw = estimate_fix(self.db, matches.indices[0], matches.scores[0], t, margin_scale=cfg.margin_scale)
        t3 = time.perf_counter()
        fused = self.filter.update(raw)
        if telemetry.capture_time_unix is not None:
            fused = replace(fused, capture_time_unix=telemetry.capture_time_unix)
        t4 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "search": (t3 - t2) * 1e3,
                   "fusion": (t4 - t3) * 1e3}
        return Localization(raw=raw, fix=fused, matches=matches, layer=layer, timings_ms=timings,
                            telemetry=telemetry)

    def _search(self, emb: np.ndarray, layer: int) -> Matches:
        """Top-k of the layer, around the last trusted fix when ``search_radius_m`` is set (the whole layer
        when nothing lies within the radius)."""
        k, radius, last = self.cfg.top_k, self.cfg.search_radius_m, self.filter.last
        if radius and last is not None and last.has_position:
            m = self.searcher.search(emb, k=k, layer=layer, centre_xy=(last.x, last.y), radius_m=radius)
            if m.indices[0, 0] >= 0:
                return m
        return self.searcher.search(emb, k=k, layer=layer)
