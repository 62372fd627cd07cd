"""The flight path, written once: frame + telemetry -> north-up -> descriptor -> layer -> track -> fix.

:class:`Localizer` is what the service runs for every camera frame and what every replay and calibration
runs for every recorded frame, so what is measured is what flies. One call, :meth:`Localizer.locate`, takes
the image and its :class:`Telemetry` (capture time, height above ground, compass heading of the image top,
each with where it came from) and returns a :class:`Localization`: the frame's own estimate (``raw``), the
fused fix the outputs send (``fix``), the matched tiles, the layer and the time spent in each stage.

The Localizer owns the chain's parts and is the only one that calls them, through their public methods:
the visual odometry (:mod:`runtime.localisation.odometry`), the track over the map (the map filter and the
registered point, :mod:`runtime.localisation.track`), registration to the map imagery
(:mod:`runtime.localisation.map_registration`) and, without a compass, the heading
(:mod:`runtime.localisation.compassless`). Every knob lives once in
:class:`~runtime.localisation.config.LocalizerConfig`.

Per frame:

1. ``preprocess``: the frame made the view the tiles were cut as (camera_view: undistorted, rectified by the
   camera's attitude, else turned north-up by the heading unless ``derotate`` is off; the height above
   ground from height.py), resized and normalised by the engine's preprocessing; while no heading is known,
   it is embedded at ``heading_search_angles`` rotations, the best kept (rotation_search).
2. ``inference``: the engine's descriptor (skipped when the caller passes one, or embedded ahead).
3. ``search``: the altitude picks the layer (:meth:`Localizer.choose_layer`; an altitude far from every
   layer gets no fix: a frame matched at the wrong scale is worse than none); the track asks for the
   tiles it needs scored.
4. ``fusion``: odometry moves the track, the scores weigh it, registration verifies it, the track gives the
   fix. A gallery database (labelled images, no positions: SUES-200, University-1652) has no map to track
   over: the fix is the frame's own match and never trusted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace

import numpy as np

from runtime.localisation.camera_view import CameraView, View, below_drone, database_hfov, drone_motion
from runtime.localisation.compassless import CompasslessHeading
from runtime.localisation.config import LocalizerConfig
from runtime.localisation.fix import Fix, estimate_fix
from runtime.localisation.frames import Ahead, Localization, Telemetry
from runtime.localisation.height import ground_point
from runtime.localisation.map_registration import Job
from runtime.localisation.odometry import VisualOdometry, frame_texture
from runtime.localisation.prediction import KeyframeClock, predict_fix
from runtime.localisation.rotation_search import best_rotation
from runtime.search.layers import layer_for_height
from runtime.search.searcher import Matches, Searcher

logger = logging.getLogger(__name__)


class Localizer:
    """The chain (module docstring). ``likelihood`` and ``fix_r95_scale``: what the bundle's manifest says
    unless given (the export's calibration flies candidate likelihoods, and the reported radius unscaled).
    ``registration_worker``: registrations are worked on in a thread of their own, each fused at the first
    keyframe after it finished (the service); without, at the next keyframe (replays: deterministic).
    ``odometry_features``: see :class:`~runtime.localisation.odometry.VisualOdometry` (a calibration)."""

    def __init__(self, engine, db, cfg: LocalizerConfig | None = None, *, searcher: Searcher | None = None,
                 likelihood=None, fix_r95_scale: float | None = None, registration_worker: bool = False,
                 odometry_features: dict | None = None, camera=None, terrain=None):
        self.engine, self.db = engine, db
        self.cfg = cfg or LocalizerConfig()
        self.searcher = searcher or Searcher(db)
        self.track = self.odometry = self.registration = self.height = None
        self.hfov_deg: float | None = None
        geo = bool(len(db.entries) and np.all(db.entries["has_geo"]))
        self.camera_view = CameraView(self.cfg, database_hfov(db) if geo else (self.cfg.hfov_deg or 60.0), camera)
        if geo:
            self._build_chain(likelihood, fix_r95_scale, registration_worker, odometry_features, terrain)
        else:  # a gallery of labelled images (SUES-200, University-1652): no map to track over
            logger.warning("%s holds no tile positions (a gallery database): each frame's own match, never "
                           "trusted", getattr(db, "path", "the database"))
        self.heading = CompasslessHeading(self.cfg)
        self.last_registration = None  # the last fused frame's registration (None: not attempted)
        self._view_now, self._offset_prev = View(None), None  # this keyframe's view, the last one's offset
        self._t_prev: float | None = None
        self.clock, self._embed_clock = KeyframeClock(self.cfg.keyframe_s), KeyframeClock(self.cfg.keyframe_s)
        self._key, self._key_layer = 0, None  # keyframes located, the last one's layer
        self.last_fix: Fix | None = None  # the last keyframe's fix (what frames between keyframes predict from)
        self._engine_lock = threading.Lock()  # embed_ahead() in another thread; a TensorRT context is not shared

    def _build_chain(self, likelihood, fix_r95_scale: float | None, registration_worker: bool,
                     odometry_features: dict | None, terrain=None) -> None:
        from runtime.localisation.height import HeightAboveGround
        from runtime.localisation.likelihood import Likelihood
        from runtime.localisation.map_registration import MapRegistration
        from runtime.localisation.registration import Registrar
        from runtime.localisation.track import MapTrack

        cfg = self.cfg
        self.hfov_deg = self.camera_view.hfov_deg
        self.height = HeightAboveGround(cfg, self.db, terrain)
        manifest = getattr(getattr(self.engine, "bundle", None), "manifest", None)
        registrar = Registrar.from_database(self.db) if cfg.registration else None
        if cfg.registration and registrar is None:
            logger.info("the tile database %s carries no map imagery: retrieval and odometry only, no "
                        "registration (rebuild it with python -m export --tiles, or add it with "
                        "python -m export.map_imagery DB MAP.tif)", getattr(self.db, "path", "?"))
        if registrar is not None:
            self.registration = MapRegistration(registrar, cfg, self.hfov_deg, worker=registration_worker)
        self.odometry = VisualOdometry(cfg.odometry_settings, odometry_features) if cfg.odometry else None
        if fix_r95_scale is None:
            fix_r95_scale = Likelihood.fix_r95_scale(manifest, registrar is not None)
        self.track = MapTrack(self.db, likelihood or Likelihood.from_manifest(manifest), cfg,
                              verify=cfg.verify_lock and registrar is not None, fix_r95_scale=fix_r95_scale)

    def close(self) -> None:
        """Stop the registration worker (the service at its end)."""
        if self.registration is not None:
            self.registration.close()

    def reset(self) -> None:
        """Forget the track (a new flight)."""
        for part in (self.track, self.odometry, self.registration, self.height):
            if part is not None:
                part.reset()
        self.heading.reset()
        self.last_registration = self._t_prev = self.last_fix = self._offset_prev = None
        self._view_now = View(None)
        self._key = 0
        self.clock.reset()
        self._embed_clock.reset()

    def choose_layer(self, altitude_m: float | None) -> tuple[int | None, str]:
        """(layer, "") or (None, why there is no layer for this altitude)."""
        return layer_for_height(self.db, altitude_m, self.cfg.layer_tolerance_frac)

    # ---- the engine ---------------------------------------------------------------------------------
    def embed_ahead(self, image, telemetry: Telemetry) -> Ahead | None:
        """The frame's descriptor, computed before :meth:`locate` (the service embeds frame n+1 in its own
        thread while frame n is fused) when it does not depend on earlier frames: a compass heading (or no
        derotation). ``None`` without one (the heading is the track's, or searched): :meth:`locate` embeds."""
        if not self._embed_clock.is_key(telemetry.t):
            return None  # between keyframes: nothing to embed
        if image is None or (self.cfg.derotate and telemetry.heading_deg is None):
            return None
        t0 = time.perf_counter()
        view = self._view(image, self._with_height(telemetry))
        if view.image is None or view.too_tilted:
            return None
        x = self.engine.prepare([view.image])
        t1 = time.perf_counter()
        with self._engine_lock:
            emb = self.engine.embed_prepared(x)
        t2 = time.perf_counter()
        return Ahead(emb, view.image, telemetry.heading_deg, {"preprocess": (t1 - t0) * 1e3,
                                                              "inference": (t2 - t1) * 1e3}, view)

    def _view(self, image, telemetry: Telemetry) -> View:
        """The frame as the engine, odometry and registration see it (runtime.localisation.camera_view)."""
        return self.camera_view(image, telemetry.heading_deg, telemetry.camera_attitude, telemetry.altitude_m)

    def _with_height(self, telemetry: Telemetry) -> Telemetry:
        """The telemetry with the height above ground the chain works at (runtime.localisation.height)."""
        if self.height is None:
            return telemetry
        h, src = self.height.of(telemetry, ground_point(self.last_fix, telemetry.t))
        if h == telemetry.altitude_m:
            return telemetry
        return replace(telemetry, altitude_m=h, altitude_source=src)

    def _embed(self, image, up, layer, embedding, heading_known: bool):
        """(descriptor (1, D), heading searched or None, rows registration should try or None, the time the
        preprocessing ended)."""
        cfg = self.cfg
        if embedding is not None:
            return np.asarray(embedding, np.float32).reshape(1, -1), None, None, time.perf_counter()
        if not heading_known and cfg.derotate and cfg.heading_search_angles > 0:
            t1 = time.perf_counter()  # the rotations' preprocessing counts as inference here
            with self._engine_lock:
                emb, heading, rows = best_rotation(self.engine, self.searcher, image, layer,
                                                   cfg.heading_search_angles, k=3)
            return emb, heading, rows, t1
        x = self.engine.prepare([up])
        t1 = time.perf_counter()
        with self._engine_lock:
            return self.engine.embed_prepared(x), None, None, t1

    # ---- one frame ----------------------------------------------------------------------------------
    def locate(self, image, telemetry: Telemetry, embedding: np.ndarray | None = None,
               ahead: Ahead | None = None) -> Localization:
        """One frame through the chain. ``embedding``: the frame's descriptor when the caller computed it
        already (a replay embedding in batches); then ``image`` is not used for it. ``ahead``: what
        :meth:`embed_ahead` computed for this frame and telemetry (its times are added to this frame's)."""
        if ahead is not None:
            if ahead.heading_deg != telemetry.heading_deg:
                raise ValueError(f"embedded ahead at heading {ahead.heading_deg}, located at {telemetry.heading_deg}")
            embedding = ahead.embedding
        telemetry = self._with_height(telemetry)
        if not self._keyframe(telemetry):
            return self._between_keyframes(telemetry)
        self._key += 1
        t, t_heading = telemetry.t, time.perf_counter()
        compassless = self.heading.tracking(telemetry, self.track is not None)
        motion, reg_tol = None, None
        if compassless:  # the tracked heading; the odometry's motion turned east/north by it
            telemetry, motion = self._track_heading(image, telemetry)
            reg_heading, reg_tol = self.heading.tracker.registration_prior()
        else:
            telemetry = self.heading.measured_recently(telemetry)
            self.heading.use_frames("north_up", self.odometry)
            reg_heading = telemetry.heading_deg if self.cfg.derotate else None
        self._t_prev = t
        t0 = time.perf_counter()
        heading_ms = (t0 - t_heading) * 1e3  # odometry and registrations without a compass: counted as fusion
        layer, why = self.choose_layer(telemetry.altitude_m)
        view = self._view_now = (ahead.view if ahead is not None and ahead.view is not None
                                 else self._view(image, telemetry))
        up, observe = view.image, not view.too_tilted
        reg_image = view.image if view.rectified else view.frame  # a rectified view is north-up already
        reg_heading = 0.0 if view.rectified and not compassless else reg_heading
        known = self.cfg.derotate and telemetry.heading_deg is not None
        if observe:
            emb, search_heading, reg_rows, t1 = self._embed(image, up, layer, embedding, known)
        else:  # too tilted to compare with the map: odometry only
            emb, search_heading, reg_rows, t1 = None, None, None, time.perf_counter()
        t2 = time.perf_counter()
        info: dict = {}
        if layer is None:
            fused, raw, matches, search_ms = self._no_layer(t, why)
        elif self.track is not None:
            fused, matches, info = self._fuse(t, up, reg_image, emb, layer, telemetry.altitude_m, reg_heading,
                                              motion=motion, measure=not compassless, reg_tol=reg_tol,
                                              reg_rows=reg_rows, compass=not compassless, observe=observe)
            search_ms = info.pop("search_ms")
            raw = estimate_fix(self.db, matches.indices[0], matches.scores[0], t, margin_scale=self.cfg.margin_scale)
            grid = self.track.filter.grid if self.track.filter else None
            fused, raw = below_drone(fused, view, self.db, grid, info, moved=True), below_drone(raw, view, self.db, grid)
        else:
            fused, raw, matches, search_ms = self._own_match(t, emb, layer)
        if compassless:
            fused = self._heading_measured(t, fused, info)
        if search_heading is not None and math.isfinite(search_heading):
            info["heading_search_deg"] = search_heading
            if telemetry.heading_deg is None:  # what the embedded frame was turned by
                telemetry = replace(telemetry, heading_deg=search_heading, heading_source="retrieval")
        if telemetry.capture_time_unix is not None:
            fused = replace(fused, capture_time_unix=telemetry.capture_time_unix)
        self.heading.remember(t, fused.yaw_deg)
        self.last_fix, self._key_layer = fused, layer
        fusion_ms = (time.perf_counter() - t2) * 1e3 - search_ms + heading_ms
        timings = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "search": search_ms,
                   "fusion": fusion_ms}
        if ahead is not None:
            timings = {k: v + ahead.timings_ms.get(k, 0.0) for k, v in timings.items()}
        return Localization(raw=raw, fix=fused, matches=matches, layer=layer, timings_ms=timings,
                            telemetry=telemetry, fusion=info)

    def _keyframe(self, telemetry: Telemetry) -> bool:
        """A keyframe: ``keyframe_s`` after the last one, or on another layer than the last one's (the altitude
        moved: the prediction belongs to the other layer)."""
        moved = self.last_fix is not None and self.choose_layer(telemetry.altitude_m)[0] != self._key_layer
        return self.clock.is_key(telemetry.t) or (moved and self.clock.is_key(telemetry.t, force=True))

    def _between_keyframes(self, telemetry: Telemetry) -> Localization:
        """A frame between keyframes: the last keyframe's fix predicted to its time (runtime.localisation.prediction)."""
        t0 = time.perf_counter()
        t, k = telemetry.t, self.cfg.top_k
        last, grid = self.last_fix, self.track.filter.grid if self.track is not None and self.track.filter else None
        fix = Fix(t=t, reason="no keyframe yet") if last is None else predict_fix(last, t, self.db, grid)
        if telemetry.capture_time_unix is not None:
            fix = replace(fix, capture_time_unix=telemetry.capture_time_unix)
        matches = _no_matches(k)
        timings = {"preprocess": 0.0, "inference": 0.0, "search": 0.0, "fusion": (time.perf_counter() - t0) * 1e3}
        return Localization(raw=Fix(t=t, reason="between keyframes"), fix=fix, matches=matches,
                            layer=self.choose_layer(telemetry.altitude_m)[0], timings_ms=timings,
                            telemetry=telemetry, fusion={"keyframe": False})

    def _own_match(self, t: float, emb, layer: int):
        """A gallery database: the frame's own top-k, never trusted (no positions to track)."""
        t0 = time.perf_counter()
        matches = self.searcher.search(emb, k=self.cfg.top_k, layer=layer)
        search_ms = (time.perf_counter() - t0) * 1e3
        raw = estimate_fix(self.db, matches.indices[0], matches.scores[0], t, margin_scale=self.cfg.margin_scale)
        return replace(raw, trusted=False), raw, matches, search_ms

    def _no_layer(self, t: float, why: str):
        matches = _no_matches(self.cfg.top_k)
        raw = Fix(t=t, reason=why)
        return replace(raw, trusted=False), raw, matches, 0.0

    def _fuse(self, t, up, image, emb, layer: int, altitude_m, reg_heading, *, motion, measure: bool, reg_tol,
              reg_rows, compass: bool, observe: bool = True):
        """Odometry -> track -> scores -> registration -> fix (module docstring, step 4); ``observe`` false:
        odometry alone moves the track (a frame too tilted to compare with the map)."""
        track = self.track
        if measure and self.odometry is not None and up is not None:
            motion = self.odometry.update(up, t, altitude_m, self.hfov_deg, None)
        view = self._view_now  # the track lives below the drone: the odometry's motion made the drone's
        motion, self._offset_prev = drone_motion(motion, view, self._offset_prev), view.offset_en_m
        track.predict(t, layer, motion, self.height.scale_sigma(altitude_m))
        if measure:
            self.height.moved(motion, track.filter.last_displacement)
        if self.registration is not None:
            self.registration.carry(motion)
        rows = track.rows_to_score() if observe else None
        t0 = time.perf_counter()
        if observe:
            scores, matches = self._scores(emb, layer, rows)
        else:
            matches = _no_matches(self.cfg.top_k)
        search_ms = (time.perf_counter() - t0) * 1e3
        textured = observe and (up is None or frame_texture(up) >= track.filter.cfg.min_texture)
        reg = None
        if textured:
            track.update(rows, scores, view.offset_en_m)
            reg = self._register(t, image, altitude_m, reg_heading, matches.indices[0] if reg_rows is None
                                 else reg_rows, reg_tol, compass)
        self.last_registration = reg
        if reg is not None and reg.ok:
            track.register(reg)
            self.height.registered(reg)
        fix, est = track.fix(t, reg, compass)
        info = {"odometry_ok": bool(motion is not None and motion.ok),
                "odometry_reason": motion.reason if motion is not None else "off",
                "rows_scored": 0 if not observe else len(track.filter.grid) if rows is None else len(rows),
                "registered": None if reg is None else bool(reg.ok),
                "registration_reason": None if reg is None else reg.reason,
                "p_out": round(float(est.p_out), 4), "mass": round(float(est.mass), 4), "height_m": altitude_m,
                "posterior_x": float(est.x), "posterior_y": float(est.y), "posterior_r95_m": float(est.r95_m),
                "search_ms": search_ms}
        return fix, matches, info

    def _scores(self, emb: np.ndarray, layer: int, rows):
        """The similarities the track asked for, and the frame's top-k of the layer: derived from them when the
        track scored the whole layer, else a global search (approximate on big layers)."""
        q, k = np.asarray(emb, np.float32).reshape(-1), self.cfg.top_k
        if rows is None:
            scores = self.searcher.score_layer(q, layer)
            return scores, self.searcher.top_k(scores, layer, k)
        return self.searcher.score_rows(q, rows), self.searcher.search_global(q, k=k, layer=layer)

    def _register(self, t, image, altitude_m, heading_deg, top_rows, heading_tol_deg, compass: bool):
        """The registration fused at this keyframe (None: none): with a compass, an earlier keyframe's,
        carried here by the odometry (the registration runs off the frame path: map_registration); without
        one, this frame's own (the tracked heading needs it now). Registered around the posterior's peaks,
        then the frame's top tiles."""
        reg = self.registration
        if reg is None:
            return None
        earlier = reg.collect(self._key, heading_deg) if compass else None  # before a new one replaces it
        due = reg.due(self.track.carried, t) and image is not None
        cands = []
        if due:
            ent = self.db.entries
            oe, on = self._view_now.offset_en_m  # the view's centre lies the offset before the drone
            cands = [(x - oe, y - on) for x, y, _ in self.track.modes(2)]
            cands += [(float(ent["x"][r]), float(ent["y"][r])) for r in top_rows if r >= 0]
        if not compass:
            return reg.register(image, altitude_m, heading_deg, cands, heading_tol_deg) if cands else None
        if cands:
            oe, on = self._view_now.offset_en_m  # the registered view's centre, moved below the drone
            reg.submit(Job(self._key, image, altitude_m, heading_deg, cands, heading_tol_deg, moved=(oe, on, 0.0)))
        return earlier

    # ---- without a compass (runtime.localisation.compassless) -------------------------------------------
    def _track_heading(self, image, telemetry: Telemetry):
        """The odometry on the camera frames carries the tracked heading to this frame; while none is known a
        pending registration may settle it; returns the telemetry with the heading (if known) and the
        filter's motion (east/north, or a distance in no direction)."""
        self.heading.use_frames("camera", self.odometry)
        raw = None
        if self.odometry is not None and image is not None:
            raw = self.odometry.update(image, telemetry.t, telemetry.altitude_m, self.hfov_deg, None)
        dt = telemetry.t - self._t_prev if self._t_prev is not None else 0.0
        motion = self.heading.tracker.predict(raw, dt)
        alt = telemetry.altitude_m
        if (not self.heading.tracker.known and image is not None and alt is not None and alt > 0
                and self.choose_layer(alt)[0] is not None):
            locked = self.heading.try_hypotheses(image, telemetry, self.registration)
            if locked is not None:
                self._restart_track(locked, self.choose_layer(alt)[0], None)
        return self.heading.with_heading(telemetry), motion

    def _restart_track(self, reg, layer, t: float | None) -> None:
        """The heading just locked on registrations the odometry agrees with: what the filter gathered came
        from frames embedded at guessed rotations, so the track starts again at the registered point. Trust
        still needs the filter's own concentration and a verified registration."""
        if not self.cfg.heading_settings.restart_filter or layer is None or self.track.layer != layer:
            return
        self.track.restart_at(reg.x, reg.y, float(reg.sigma_m), t)

    def _heading_measured(self, t: float, fused: Fix, info: dict) -> Fix:
        yaw, locked = self.heading.measured(t, self.last_registration, info)
        if locked:
            self._restart_track(self.last_registration, self.track.layer, t)
        return replace(fused, yaw_deg=yaw)


def _no_matches(k: int) -> Matches:
    return Matches(np.full((1, k), -1, np.int64), np.full((1, k), -np.inf, np.float32))
