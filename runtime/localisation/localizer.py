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
   wherever the drone flies) unless ``derotate`` is off, then resized and normalised by the engine's own
   preprocessing. Without a compass heading (``heading_track``, :mod:`runtime.localisation.heading_track`) the heading
   is the tracked one (registration's, carried by the odometry's turns); while none is known the frame is
   embedded at ``heading_search_angles`` rotations and the best kept (:mod:`runtime.localisation.rotation_search`).
2. ``inference``: the engine's descriptor (skipped when the caller passes one it computed in a batch).
3. ``search``: the altitude picks the database layer (:meth:`Localizer.choose_layer`): the only layer of a
   one-layer database, else the layer nearest the altitude when it lies within ``layer_tolerance_frac`` of
   it; otherwise there is no fix (a frame matched at the wrong scale is worse than none). With
   ``search_radius_m``, only tiles around the last trusted fix are searched, and the whole layer when none
   lies there.
4. ``fusion``: :func:`runtime.localisation.fix.estimate_fix` turns the matches into a position with a confidence,
   and :class:`runtime.localisation.fix.PositionFilter` decides whether it is trusted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from runtime.engines.preprocess import north_up
from runtime.localisation.fix import Fix, PositionFilter, estimate_fix
from runtime.localisation.fusion import MEASURE
from runtime.localisation.heading_track import HeadingTrackConfig, HeadingTracker
from runtime.localisation.map_filter import MapFilterConfig
from runtime.localisation.odometry import OdometryConfig
from runtime.localisation.rotation_search import best_rotation
from runtime.search.searcher import Matches, Searcher

logger = logging.getLogger(__name__)
FUSIONS = ("map_filter", "gate")


@dataclass
class LocalizerConfig:
    """The knobs of the flight chain (command-line options are generated from these fields)."""

    fusion: str = field(default="map_filter", metadata={
        "help": "map_filter: the sequential filter over the map (odometry, registration); gate: each frame's "
                "own fix, trusted after consistent frames (the first version)", "choices": FUSIONS})
    hfov_deg: float | None = field(default=None, metadata={
        "help": "camera horizontal field of view, degrees (default: the tile database's)"})
    odometry: bool = field(default=True, metadata={"help": "visual odometry between consecutive frames"})
    registration: bool = field(default=True, metadata={
        "help": "register frames to the map imagery (when the database carries it)"})
    registration_every: int = field(default=1, metadata={"help": "register every N-th frame (cost)"})
    registration_every_tracking: int = field(default=5, metadata={
        "help": "while a verified track is carried by the odometry, register every N-th frame (cost; 1: every)"})
    registration_heading_s: float = field(default=10.0, metadata={
        "help": "with --no-heading-track: without a compass, turn frames north-up by the heading registration "
                "measured this recently"})
    heading_track: bool = field(default=True, metadata={
        "help": "without a compass: odometry on the camera frames carries registration's heading from frame to "
                "frame, the half-turn ambiguity of registration is settled by the motion between two "
                "registrations, and the odometry moves the filter only once the heading is known (before: by "
                "the distance in no direction)"})
    heading_search_angles: int = field(default=12, metadata={
        "help": "while no heading is known: embed the frame turned by this many headings (one batch) and keep "
                "the rotation whose best tile scores highest (0: embed it as it comes)"})
    registration_frames: int = field(default=3, metadata={
        "help": "a frame too small on the map for its parts to verify its registration (150 m on a 5 m/px map) "
                "is verified when this many frames' registrations agree, carried by the odometry over "
                "--registration-span footprints of ground (0: off)"})
    registration_span: float = field(default=0.75, metadata={
        "help": "ground moved, in footprints, between the first and last frame agreeing on a registration"})
    coast_frames: int = field(default=10, metadata={
        "help": "a verified track stays trusted through this many frames in a row of bland ground (too few "
                "features for the odometry: water, a uniform field), carried by its velocity, its radius "
                "growing; a picture that jumps breaks it at once (0: untrusted on the first such frame)"})
    map_sigma_m: float = field(default=4.0, metadata={
        "help": "how far the map imagery's georeferencing may lie from the ground the camera sees (1 sigma per "
                "axis, metres): part of a registered fix's radius (measured between NAIP years: 1-7 m, up to 13)"})
    verify_lock: bool = field(default=True, metadata={
        "help": "trust a track only once registration verified it (when the database carries imagery)"})
    map_filter: MapFilterConfig = field(default_factory=MapFilterConfig, metadata={"cli": False})
    odometry_settings: OdometryConfig = field(default_factory=OdometryConfig, metadata={"cli": False})
    heading_settings: HeadingTrackConfig = field(default_factory=HeadingTrackConfig, metadata={"cli": False})
    top_k: int = field(default=5, metadata={"help": "tiles kept per frame"})
    search_radius_m: float | None = field(default=None, metadata={
        "help": "search only tiles within this radius of the last trusted fix (default: the whole layer)"})
    max_speed_mps: float = field(default=50.0, metadata={
        "help": "fastest ground speed the drone can fly (bounds the motion without odometry)"})
    min_confidence: float = field(default=0.3, metadata={"help": "gate: confidence (0..1) a fix needs"})
    acquire_frames: int = field(default=3, metadata={
        "help": "gate: consecutive consistent fixes before a track starts (or restarts after a jump)"})
    margin_scale: float = field(default=0.05, metadata={
        "help": "score margin to the best distant tile that gives confidence 1-1/e (each frame's own fix)"})
    derotate: bool = field(default=True, metadata={
        "help": "turn each frame north-up by the heading before embedding"})
    layer_tolerance_frac: float = field(default=0.25, metadata={
        "help": "an altitude farther than this fraction from every layer's altitude gets no fix"})
    prior_lat: float | None = field(default=None, metadata={
        "help": "a position known at the start (the last GPS fix before it was lost), WGS84 degrees: the map "
                "filter starts there instead of anywhere on the map (registration still verifies before any "
                "fix is trusted; a wrong prior is not trusted); with --prior-lon", "metavar": "DEG"})
    prior_lon: float | None = field(default=None, metadata={"help": "longitude of --prior-lat", "metavar": "DEG"})
    prior_sigma_m: float = field(default=100.0, metadata={
        "help": "1-sigma uncertainty of the prior position, metres (its age x the speed flown, at least)"})

    def __post_init__(self):
        from common import validate

        validate.speed_mps(self.max_speed_mps, "--max-speed-mps")
        if self.search_radius_m is not None:
            validate.radius_m(self.search_radius_m, "--search-radius-m")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r} is not one of {FUSIONS}")
        if self.hfov_deg is not None:
            validate.hfov_deg(self.hfov_deg, "--hfov-deg")
        tables = {"map_filter": MapFilterConfig, "odometry_settings": OdometryConfig,
                  "heading_settings": HeadingTrackConfig}
        for name, kind in tables.items():  # a config file gives them as tables
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, kind(**v))
        if (self.prior_lat is None) != (self.prior_lon is None):
            raise ValueError(f"--prior-lat {self.prior_lat} --prior-lon {self.prior_lon}: give both (the last "
                             "known position) or neither")
        if self.prior_lat is not None:
            validate.latitude(self.prior_lat, "--prior-lat")
            validate.longitude(self.prior_lon, "--prior-lon")
        checks = {"registration_every": self.registration_every >= 1,
                  "registration_every_tracking": self.registration_every_tracking >= 1, "top_k": self.top_k >= 1,
                  "registration_frames": self.registration_frames == 0 or self.registration_frames >= 2,
                  "registration_span": self.registration_span >= 0, "coast_frames": self.coast_frames >= 0,
                  "map_sigma_m": self.map_sigma_m >= 0,
                  "heading_search_angles": self.heading_search_angles >= 0, "max_speed_mps": self.max_speed_mps > 0,
                  "min_confidence": 0.0 <= self.min_confidence <= 1.0, "acquire_frames": self.acquire_frames >= 1,
                  "margin_scale": self.margin_scale > 0, "layer_tolerance_frac": self.layer_tolerance_frac > 0,
                  "search_radius_m": self.search_radius_m is None or self.search_radius_m > 0,
                  "prior_sigma_m": self.prior_sigma_m > 0}
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
    fusion: dict = field(default_factory=dict)  # what the sequential fusion did (odometry, registration...)


@dataclass
class Ahead:
    """A frame embedded ahead of :meth:`Localizer.locate` (:meth:`Localizer.embed_ahead`)."""

    embedding: np.ndarray
    north_up: np.ndarray  # the frame turned north-up by ``heading_deg`` (what registration compares)
    heading_deg: float | None
    timings_ms: dict[str, float]


class Localizer:
    def __init__(self, engine, db, cfg: LocalizerConfig | None = None, *, searcher: Searcher | None = None):
        self.engine, self.db = engine, db
        self.cfg = cfg or LocalizerConfig()
        self.searcher = searcher or Searcher(db)
        self.filter = PositionFilter(max_speed_mps=self.cfg.max_speed_mps, min_confidence=self.cfg.min_confidence,
                                     acquire_frames=self.cfg.acquire_frames,
                                     reacquire_frames=self.cfg.acquire_frames)
        self.fusion = None
        if self.cfg.fusion == "map_filter":
            if len(db.entries) and bool(np.all(db.entries["has_geo"])):
                self.fusion = self._map_fusion()
            else:  # a gallery of labelled images (SUES-200, University-1652): no map to filter over
                logger.warning("%s holds no tile positions (a gallery database): each frame's own match, "
                               "no map filter", getattr(db, "path", "the database"))
        self._yaw: tuple[float, float] | None = None  # (t, heading) last measured by registration
        self.heading = HeadingTracker(self.cfg.heading_settings)  # without a compass (heading_track)
        self._odo_frames: str | None = None  # which frames the odometry compares: "north_up" or "camera"
        self._t_prev: float | None = None
        self._engine_lock = threading.Lock()  # embed_ahead() in another thread; a TensorRT context is not shared

    def _map_fusion(self):
        from runtime.localisation.fusion import MapFusion
        from runtime.search.layer_grid import Likelihood

        cfg = self.cfg
        bundle = getattr(self.engine, "bundle", None)
        lik = Likelihood.from_manifest(getattr(bundle, "manifest", None))
        registrar = None
        if cfg.registration:
            from runtime.localisation.registration import Registrar

            registrar = Registrar.from_database(self.db)
            if registrar is None:
                logger.info("the tile database %s carries no map imagery: retrieval and odometry only, no "
                            "registration (rebuild it with python -m export --tiles, or add it with "
                            "python -m export.map_imagery DB MAP.tif)", getattr(self.db, "path", "?"))
        scale = Likelihood.fix_r95_scale(getattr(bundle, "manifest", None), registrar is not None)
        agreement = None
        if cfg.registration_frames:
            from runtime.localisation.frame_agreement import AgreementConfig

            agreement = AgreementConfig(frames=cfg.registration_frames, min_span_footprints=cfg.registration_span)
        return MapFusion(self.db, self.searcher, lik, filter_cfg=replace(cfg.map_filter, max_speed_mps=cfg.max_speed_mps),
                         odometry_cfg=cfg.odometry_settings, hfov_deg=cfg.hfov_deg or database_hfov(self.db),
                         use_odometry=cfg.odometry, registrar=registrar, registration_every=cfg.registration_every,
                         registration_every_tracking=cfg.registration_every_tracking, verify_lock=cfg.verify_lock,
                         fix_r95_scale=scale, agreement=agreement, coast_frames=cfg.coast_frames,
                         map_sigma_m=cfg.map_sigma_m,
                         prior=None if cfg.prior_lat is None else (cfg.prior_lat, cfg.prior_lon, cfg.prior_sigma_m))

    def reset(self) -> None:
        """Forget the track (a new flight)."""
        self.filter.reset()
        if self.fusion is not None:
            self.fusion.reset()
        self._yaw = None
        self.heading.reset()
        self._odo_frames = self._t_prev = None

    def _heading(self, telemetry: Telemetry) -> Telemetry:
        """Without a compass heading, the heading registration measured recently (source ``registration``)."""
        if telemetry.heading_deg is not None or self._yaw is None or not self.cfg.derotate:
            return telemetry
        t_yaw, yaw = self._yaw
        age = telemetry.t - t_yaw
        if not 0 <= age <= self.cfg.registration_heading_s:
            return telemetry
        return replace(telemetry, heading_deg=yaw, heading_source="registration", heading_age_s=age)

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

    def embed_ahead(self, image, telemetry: Telemetry) -> Ahead | None:
        """The frame's descriptor, computed before :meth:`locate` (the service embeds frame n+1 in its own
        thread while frame n is fused) when it does not depend on earlier frames: a compass heading (or no
        derotation). ``None`` without one (the heading is the track's, or searched): :meth:`locate` embeds."""
        if image is None or (self.cfg.derotate and telemetry.heading_deg is None):
            return None
        t0 = time.perf_counter()
        up = self._north_up(image, telemetry.heading_deg)
        x = self.engine.prepare([up])
        t1 = time.perf_counter()
        with self._engine_lock:
            emb = self.engine.embed_prepared(x)
        t2 = time.perf_counter()
        return Ahead(emb, up, telemetry.heading_deg, {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3})

    def _north_up(self, image, heading_deg: float | None):
        """The frame as the engine and registration see it: turned north-up by a known heading (``derotate``)."""
        if image is None or not (self.cfg.derotate and heading_deg is not None):
            return image
        return north_up(image, heading_deg)

    def locate(self, image, telemetry: Telemetry, embedding: np.ndarray | None = None,
               ahead: Ahead | None = None) -> Localization:
        """One frame through the chain. ``embedding``: the frame's descriptor when the caller computed it
        already (a replay embedding in batches); then ``image`` is not used for it. ``ahead``: what
        :meth:`embed_ahead` computed for this frame and telemetry (its times are added to this frame's)."""
        if ahead is not None:
            if ahead.heading_deg != telemetry.heading_deg:
                raise ValueError(f"embedded ahead at heading {ahead.heading_deg}, located at {telemetry.heading_deg}")
            embedding = ahead.embedding
        cfg, t = self.cfg, telemetry.t
        track = self._tracking(telemetry)
        motion, reg_tol, track_s = MEASURE, None, time.perf_counter()
        if track:  # no compass: the tracked heading, the odometry's motion turned east/north by it
            telemetry, motion = self._track_heading(image, telemetry)
            reg_heading, reg_tol = self.heading.registration_prior()
        else:
            telemetry = self._heading(telemetry)
            self._odometry_frames("north_up")
        self._t_prev = t
        t0 = time.perf_counter()
        track_s = t0 - track_s  # odometry and heading registrations without a compass: counted as fusion
        layer, why = self.choose_layer(telemetry.altitude_m)
        known = cfg.derotate and telemetry.heading_deg is not None
        if not track:
            reg_heading = telemetry.heading_deg if cfg.derotate else None
        up = ahead.north_up if ahead is not None else self._north_up(image, telemetry.heading_deg)
        search_heading, reg_rows = None, None
        if embedding is not None:
            t1 = time.perf_counter()
            emb = np.asarray(embedding, np.float32).reshape(1, -1)
        elif not known and cfg.derotate and cfg.heading_search_angles > 0:
            t1 = time.perf_counter()  # the rotations' preprocessing counts as inference here
            with self._engine_lock:
                emb, search_heading, reg_rows = best_rotation(self.engine, self.searcher, image, layer,
                                                              cfg.heading_search_angles, k=3)
        else:
            x = self.engine.prepare([up])
            t1 = time.perf_counter()
            with self._engine_lock:
                emb = self.engine.embed_prepared(x)
        t2 = time.perf_counter()
        info: dict = {}
        if layer is None:
            k = cfg.top_k
            matches = Matches(np.full((1, k), -1, np.int64), np.full((1, k), -np.inf, np.float32))
            raw = Fix(t=t, reason=why)
            fused = replace(raw, trusted=False) if self.fusion is not None else self.filter.update(raw)
            t3 = time.perf_counter()
        elif self.fusion is not None:  # the filter scores the tiles; the frame's top-k come from the same scores
            fused, matches, info = self.fusion.step(t, up, image, emb, layer, telemetry.altitude_m,
                                                    reg_heading, cfg.top_k, motion=motion, heading_tol_deg=reg_tol,
                                                    register_rows=reg_rows, compass=not track)
            raw = estimate_fix(self.db, matches.indices[0], matches.scores[0], t, margin_scale=cfg.margin_scale)
            t3 = t2 + info.pop("search_ms") / 1e3
        else:
            matches = self._search(emb, layer)
            raw = estimate_fix(self.db, matches.indices[0], matches.scores[0], t, margin_scale=cfg.margin_scale)
            t3 = time.perf_counter()
            fused = self.filter.update(raw)
        if track:
            fused, info = self._heading_measured(t, fused, info)
        if search_heading is not None and math.isfinite(search_heading):
            info["heading_search_deg"] = search_heading
            if telemetry.heading_deg is None:  # what the embedded frame was turned by
                telemetry = replace(telemetry, heading_deg=search_heading, heading_source="retrieval")
        if telemetry.capture_time_unix is not None:
            fused = replace(fused, capture_time_unix=telemetry.capture_time_unix)
        if math.isfinite(fused.yaw_deg):
            self._yaw = (t, fused.yaw_deg)
        t4 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "search": (t3 - t2) * 1e3,
                   "fusion": (t4 - t3 + track_s) * 1e3}
        if ahead is not None:
            timings = {k: v + ahead.timings_ms.get(k, 0.0) for k, v in timings.items()}
        return Localization(raw=raw, fix=fused, matches=matches, layer=layer, timings_ms=timings,
                            telemetry=telemetry, fusion=info)

    # ---- without a compass (runtime.localisation.heading_track) ----------------------------------------------------
    def _tracking(self, telemetry: Telemetry) -> bool:
        """The heading comes from the tracker: no compass heading, derotation and tracking on, a map filter."""
        return (telemetry.heading_deg is None and self.cfg.derotate and self.cfg.heading_track
                and self.fusion is not None)

    def _odometry_frames(self, kind: str) -> None:
        """The odometry compares north-up frames (compass) or camera frames (none): a switch restarts it."""
        odo = self.fusion.odometry if self.fusion is not None else None
        if odo is not None and self._odo_frames not in (None, kind):
            odo.reset()
        self._odo_frames = kind

    def _track_heading(self, image, telemetry: Telemetry):
        """The odometry on the camera frames carries the tracked heading to this frame; returns the
        telemetry with it (if known) and the motion for the filter (east/north, or undirected)."""
        self._odometry_frames("camera")
        fusion, odo, raw = self.fusion, self.fusion.odometry, None
        if odo is not None and image is not None:
            raw = odo.update(image, telemetry.t, telemetry.altitude_m, fusion.hfov_deg, None)
        dt = telemetry.t - self._t_prev if self._t_prev is not None else 0.0
        motion = self.heading.predict(raw, dt)
        if not self.heading.known and image is not None:
            self._try_hypotheses(image, telemetry)
        heading, source = self.heading.heading, "registration+odometry"
        if heading is None and self.heading.prior is not None:  # after a jump: retrieval only, unconfirmed
            heading, source = self.heading.prior, "odometry-unconfirmed"
        if heading is not None:
            age = None if self.heading.t_reg is None else telemetry.t - self.heading.t_reg
            telemetry = replace(telemetry, heading_deg=heading, heading_source=source, heading_age_s=age)
        return telemetry, motion

    def _try_hypotheses(self, image, telemetry: Telemetry) -> None:
        """Register the frame where a pending registration and the odometry put the drone under each half-turn
        hypothesis; exactly one verifying settles the heading (:meth:`HeadingTracker.hypotheses`)."""
        registrar = self.fusion.registrar
        hyps = self.heading.hypotheses() if registrar is not None else []
        alt = telemetry.altitude_m
        if not hyps or alt is None or not alt > 0 or self.choose_layer(alt)[0] is None:
            return
        tol = self.cfg.heading_settings.hypothesis_tol_deg
        found = [r for r in (registrar.register(image, alt, self.fusion.hfov_deg, (x, y), h, tol)
                             for x, y, h in hyps) if r.ok]
        if len(found) == 1 and self.heading.measure(telemetry.t, found[0]) == "locked":
            self._restart_filter(found[0], self.choose_layer(alt)[0], None)

    def _restart_filter(self, reg, layer, t: float | None) -> None:
        """The heading just locked on two registrations the odometry agrees with: what the filter gathered
        before came from frames embedded at guessed rotations, so it starts again at the registered point
        (``t``: the time that point belongs to when the filter already moved to it; None: before this
        frame's predict). Trust still needs the filter's own concentration and a verified registration."""
        if not self.cfg.heading_settings.restart_filter or layer is None:
            return
        mf = self.fusion.filter
        if mf is None or self.fusion.layer != layer:
            return
        try:
            mf.reset(prior=(reg.x, reg.y, max(float(reg.sigma_m), mf.cell_m)))
        except ValueError:  # the point lies off this layer's grid
            return
        mf.t = t

    def _heading_measured(self, t: float, fused: Fix, info: dict):
        """A verified registration measures the heading (locks or corrects the tracker); the fix's yaw is the
        tracked heading (never registration's own, which may be a half turn off before the lock)."""
        reg = self.fusion.last_registration
        if reg is not None and reg.ok and math.isfinite(reg.heading_deg):
            info["heading_update"] = self.heading.measure(t, reg)
            if info["heading_update"] == "locked":
                self._restart_filter(reg, self.fusion.layer, t)
        yaw = self.heading.heading if self.heading.known else math.nan
        info["heading_sigma_deg"] = round(self.heading.sigma, 2) if self.heading.known else None
        return replace(fused, yaw_deg=yaw), info

    def _search(self, emb: np.ndarray, layer: int) -> Matches:
        """Top-k of the layer, around the last trusted fix when ``search_radius_m`` is set (the whole layer
        when nothing lies within the radius)."""
        k, radius, last = self.cfg.top_k, self.cfg.search_radius_m, self.filter.last
        if radius and last is not None and last.has_position:
            m = self.searcher.search(emb, k=k, layer=layer, centre_xy=(last.x, last.y), radius_m=radius)
            if m.indices[0, 0] >= 0:
                return m
        return self.searcher.search(emb, k=k, layer=layer)


def database_hfov(db) -> float:
    """The camera field of view a tile database was cut for (its manifest, else a layer's record, else
    from a layer's footprint and altitude)."""
    hfov = (getattr(db, "manifest", None) or {}).get("extra", {}).get("hfov_deg")
    for lay in db.layers:
        if hfov is None and lay.get("hfov_deg") is not None:
            hfov = lay["hfov_deg"]
        if hfov is None and lay.get("footprint_m") and lay.get("altitude_m"):
            hfov = math.degrees(2 * math.atan(float(lay["footprint_m"]) / 2 / float(lay["altitude_m"])))
    if hfov is None:
        raise ValueError(f"{getattr(db, 'path', 'the database')} does not record the camera's field of view: "
                         "give --hfov-deg")
    return float(hfov)
