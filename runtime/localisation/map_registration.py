"""Registration of frames to the map imagery, as the flight chain runs it: when, where, confirmed how, and
off the frame path.

:class:`MapRegistration` wraps the :class:`~runtime.localisation.registration.Registrar` of the tile
database's imagery for the :class:`~runtime.localisation.localizer.Localizer`:

- when: every ``registration_every`` keyframes; while a verified track is carried by the odometry, at most
  every ``registration_tracking_s`` of the flight's clock, so that a replay at 2 frames a second registers
  as often as the service at 30 (registration is the chain's most expensive stage);
- where: around the posterior's two strongest peaks (the evidence of every frame so far: right far more
  often than one frame's retrieval, measured: first fix at 300 m after 1-2 frames instead of 18-54), then
  the frame's top retrieved tiles, three windows at most;
- confirmed how: a registration that verifies alone is a precise position and heading measurement; one
  too small on the map for its parts to verify it (150 m on a 5 m/px map) is confirmed when the peaks of
  several frames agree once carried by the odometry (:class:`~runtime.localisation.frame_agreement.FrameAgreement`);
- off the frame path (:meth:`submit`, :meth:`collect`): a keyframe's registration is worked on while the
  next frames are fused, and its result is fused at a later keyframe, carried there from its own frame by
  the odometry measured since (by the Localizer, which keeps those motions). With ``worker`` a thread works
  on one registration at a time at its own pace (the service: a slow registration never stalls the
  stream; a keyframe due while it works waits for the next); without, the registration is computed when
  submitted and handed back at the next keyframe (replays and calibration: the same lag of one keyframe,
  deterministic).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace

from runtime.localisation.frame_agreement import AgreementConfig, FrameAgreement

CANDIDATE_MODES = 2  # posterior peaks tried before the frame's top retrieved tiles
MAX_WINDOWS = 3


@dataclass
class Job:
    key: int  # the keyframe it belongs to
    image: object
    altitude_m: float
    heading_deg: float | None
    candidates: list
    heading_tol_deg: float | None = None
    result: object = None  # the Registration
    tried: list | None = None  # every window's Registration (tentative ones are confirmed over frames)
    moved: tuple = (0.0, 0.0, 0.0)  # east, north, variance per axis: the odometry since its keyframe
    broken: bool = False  # a keyframe since had no odometry: its result cannot be carried to the present


class MapRegistration:
    """``registrar``: the database imagery's Registrar; ``cfg``: the LocalizerConfig."""

    def __init__(self, registrar, cfg, hfov_deg: float, *, worker: bool = False):
        self.registrar, self.hfov_deg = registrar, float(hfov_deg)
        self.every, self.tracking_s = int(cfg.registration_every), float(cfg.registration_tracking_s)
        self.agreement = None
        if cfg.registration_frames:
            self.agreement = FrameAgreement(AgreementConfig(frames=cfg.registration_frames,
                                                            min_span_footprints=cfg.registration_span))
        self.since = 0  # keyframes since registration was last tried
        self.t_last: float | None = None  # the flight's time it was last tried
        self._lock = threading.Condition()
        self._registrar_lock = threading.Lock()  # the worker's and this thread's registrations, one at a time
        self._job: Job | None = None  # submitted, not collected
        self._thread = None
        if worker:
            self._thread = threading.Thread(target=self._work, name="registration", daemon=True)
            self._closing = False
            self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.since, self.t_last = 0, None
            self._job = None
        if self.agreement is not None:
            self.agreement.reset()

    def close(self) -> None:
        if self._thread is not None:
            with self._lock:
                self._closing = True
                self._lock.notify_all()
            self._thread.join(timeout=5.0)

    def carry(self, motion) -> None:
        """The odometry's motion of this keyframe carries the pending peaks of earlier frames, and the
        registration being worked on (its result belongs to its own keyframe)."""
        if self.agreement is not None:
            self.agreement.carry(motion)
        with self._lock:
            job = self._job
            if job is None:
                return
            if motion is None or not motion.ok:
                job.broken = True
                return
            from runtime.localisation.track import motion_variance

            e, n, v = job.moved
            job.moved = (e + motion.dx_e_m, n + motion.dy_n_m, v + motion_variance(motion))

    def due(self, carried: bool, t: float) -> bool:
        """Whether the keyframe at ``t`` (the flight's clock) is registered (``carried``: the track is carried
        by the odometry from a verified registration); counts the keyframe. Never while an earlier
        registration is still worked on."""
        self.since += 1
        with self._lock:
            busy = self._job is not None and self._job.result is None
        if busy or self.since < self.every:
            return False
        if carried and self.t_last is not None and t - self.t_last < self.tracking_s - 1e-6:
            return False
        self.since, self.t_last = 0, t
        return True

    # ---- off the frame path --------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Register ``job``'s frame around its candidates (now without a worker, in the worker otherwise)."""
        with self._lock:
            self._job = job
            self._lock.notify_all()
        if self._thread is None:
            self._run(job)

    def collect(self, key_now: int, heading_now: float | None = None):
        """The finished registration of an earlier keyframe (once), carried to this keyframe by the odometry
        since (position moved, variance grown, heading turned as the compass turned) and confirmed over
        frames; None when none is finished or the odometry broke since."""
        with self._lock:
            job = self._job
            if job is None or job.result is None or job.key >= key_now:
                return None
            self._job = None
        if job.broken:
            return None
        turn = 0.0 if heading_now is None or job.heading_deg is None else heading_now - job.heading_deg

        def carried(r):
            e, n, v = job.moved
            sigma = math.sqrt(r.sigma_m**2 + v) if math.isfinite(r.sigma_m) else r.sigma_m
            return replace(r, x=r.x + e, y=r.y + n, sigma_m=sigma, heading_deg=(r.heading_deg + turn) % 360.0)

        return self.confirm(carried(job.result), [carried(r) for r in job.tried], job.altitude_m)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._closing and (self._job is None or self._job.result is not None):
                    self._lock.wait(0.5)
                if self._closing:
                    return
                job = self._job
            self._run(job)

    def _run(self, job: Job) -> None:
        tried: list = []
        with self._registrar_lock:
            reg = self.registrar.register_candidates(job.image, job.altitude_m, self.hfov_deg, job.candidates,
                                                     job.heading_deg, max_tries=MAX_WINDOWS,
                                                     heading_tol_deg=job.heading_tol_deg, tried_out=tried)
        with self._lock:
            job.tried, job.result = tried, reg

    # ---- fused where it is collected -------------------------------------------------------------------
    def register(self, image, altitude_m: float, heading_deg: float | None, candidates_xy,
                 heading_tol_deg: float | None = None):
        """The frame registered now around the first candidates that verify (``candidates_xy``: the
        posterior's peaks, then the frame's top tiles); a tentative registration confirmed over frames; None
        without candidates."""
        cands = list(candidates_xy)
        if not cands:
            return None
        job = Job(-1, image, altitude_m, heading_deg, cands, heading_tol_deg)
        self._run(job)
        return self.confirm(job.result, job.tried, altitude_m)

    def confirm(self, reg, tried: list, altitude_m: float):
        """``reg`` when it verified alone, else a tentative one among ``tried`` confirmed by earlier frames'
        (all carried to the present), else ``reg``."""
        if reg.ok or self.agreement is None:
            return reg
        footprint = 2.0 * altitude_m * math.tan(math.radians(self.hfov_deg) / 2.0)
        confirmed = self.agreement.offer(tried, self.registrar.imagery.gsd_m, footprint)
        return reg if confirmed is None else confirmed

    def register_each(self, image, altitude_m: float, hypotheses, tol_deg: float) -> list:
        """The frame registered around each (x, y, heading) hypothesis; the verified ones."""
        with self._registrar_lock:
            return [r for r in (self.registrar.register(image, altitude_m, self.hfov_deg, (x, y), h, tol_deg)
                                for x, y, h in hypotheses) if r.ok]
