"""The camera's compass heading without a compass: registration measures it, the odometry carries it.

A drone without a (trustworthy) compass still sees the ground turn between frames: the visual odometry
on the camera frames measures each turn (``Motion.dyaw_deg``) and each displacement along the camera's
own right/up axes. :class:`HeadingTracker` turns that into an absolute heading in three steps:

1. While no heading is known, the odometry's turns and displacements are integrated in a frame of the
   chain's own (its first frame's camera axes, ``psi`` the turn since): the path is known up to one
   unknown rotation ``theta`` (the heading of that first frame). Displacements reach the map filter as a
   distance in an unknown direction (:func:`undirected`: the posterior is blurred by it, never moved
   the wrong way).
2. Registration to the map imagery measures a position and a heading, but on a coarse map the
   correlation's heading can be off by a half turn (fields look the same turned 180 degrees). Two verified
   registrations of one odometry chain at least ``min_baseline_m`` apart settle it: the registered
   displacement is the chain's displacement turned by ``theta`` (its length agreeing within
   ``max_scale_error``), and each registration's heading, or its half turn, must agree with that
   ``theta`` within ``agree_deg``; the newest registration must form ``min_pairs`` such pairs that agree
   (a registration verified in a wrong window can pair with a right one by chance). Then the heading is
   known (``locked``), from the registrations.
3. Known, it is carried frame to frame by the odometry's turn (uncertainty ``yaw_sigma_deg`` per frame,
   ``turn_rate_dps`` per second without odometry; forgotten above ``lose_sigma_deg``) and corrected by each
   registration, which then searches only around it (no half turn possible).
4. A jump (two textured frames that do not match: a fast turn, a glitch, the drone carried elsewhere)
   makes the heading unconfirmed: it is kept as a ``prior`` (still carried by the odometry's turns) for
   ``prior_frames`` frames that show ground, used to turn frames for retrieval (no worse than a guessed
   rotation) and by registration, which searches +- ``search_tol_max_deg`` around it, but never to move
   the filter; a registration that verifies there measures the heading again (the half turn lies outside
   the search). Otherwise the prior is dropped and the lock starts over as in 2. A kidnapped drone thus
   never flies on the heading of the flight it was taken from.

Between 1 and 2: a verified registration that is still pending predicts, through the odometry chain, where
the drone is now under each of its two half-turn hypotheses (:meth:`HeadingTracker.hypotheses`);
registering the frame there, around the hypothesis' heading, is the cheap way to the second registration
(retrieval without a heading rarely offers the right tile). If both verify, neither is taken.

Pure numpy/math: runs on board.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass
class HeadingTrackConfig:
    yaw_sigma_deg: float = 0.5  # the odometry's turn error per frame (1 sigma)
    turn_rate_dps: float = 10.0  # heading uncertainty added per second without odometry (random walk)
    lose_sigma_deg: float = 45.0  # the heading is forgotten when its uncertainty exceeds this
    reg_sigma_deg: float = 2.0  # a verified registration's heading error (1 sigma)
    min_baseline_m: float = 60.0  # heading from motion: registered points at least this far apart
    max_scale_error: float = 0.25  # |odometry path length / registered distance - 1| allowed
    agree_deg: float = 20.0  # registrations' headings (or half turns) within this of the motion's
    search_tol_min_deg: float = 10.0  # registration searches +- max(this, 3 sigma) around a known heading
    search_tol_max_deg: float = 60.0  # ... and never wider (a half turn stays out of reach)
    max_chain_regs: int = 12  # registrations kept per odometry chain for the lock
    min_pairs: int = 2  # the newest registration must form this many agreeing pairs with earlier ones
    dead_reckon_m: float = 800.0  # a pending registration predicts where the drone is this far along the chain
    hypothesis_tol_deg: float = 15.0  # ... and registration searches +- this around each half-turn hypothesis
    restart_filter: bool = True  # at the lock, the map filter starts again at the registered point
    prior_frames: int = 10  # after a jump, registration searches around the old heading this many frames

    def __post_init__(self):
        for name in ("yaw_sigma_deg", "turn_rate_dps", "lose_sigma_deg", "reg_sigma_deg", "min_baseline_m",
                     "max_scale_error", "agree_deg", "search_tol_min_deg", "search_tol_max_deg", "dead_reckon_m",
                     "hypothesis_tol_deg"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"heading_settings.{name}={v!r}: must be a positive number")
        if not self.search_tol_min_deg <= self.search_tol_max_deg < 90:
            raise ValueError(f"heading_settings search_tol_min_deg={self.search_tol_min_deg} must be <= "
                             f"search_tol_max_deg={self.search_tol_max_deg} < 90 (a half turn must stay out)")
        if self.prior_frames < 0:
            raise ValueError(f"heading_settings.prior_frames={self.prior_frames}: must be >= 0")
        if self.min_pairs < 1:
            raise ValueError(f"heading_settings.min_pairs={self.min_pairs}: must be >= 1")
        if self.max_chain_regs < 2:
            raise ValueError(f"heading_settings.max_chain_regs={self.max_chain_regs}: must be >= 2")


def wrap180(a: float) -> float:
    """An angle difference in [-180, 180)."""
    return (float(a) + 180.0) % 360.0 - 180.0


def compass_angle(east: float, north: float) -> float:
    """The compass direction (clockwise from north, degrees) of a displacement."""
    return math.degrees(math.atan2(east, north)) % 360.0


def turn(right: float, up: float, heading_deg: float) -> tuple[float, float]:
    """A displacement along a frame's right/up axes to east/north, the frame top facing ``heading_deg``."""
    h = math.radians(heading_deg)
    return right * math.cos(h) + up * math.sin(h), -right * math.sin(h) + up * math.cos(h)


def undirected(motion):
    """The odometry's motion with its direction unknown: no displacement, its length as the uncertainty
    (the map filter then spreads the posterior by the distance flown instead of moving it)."""
    if motion is None or not motion.ok:
        return motion
    dist = math.hypot(motion.dx_e_m, motion.dy_n_m)
    sigma = math.hypot(dist, motion.sigma_m if math.isfinite(motion.sigma_m) else 0.0)
    return replace(motion, dx_e_m=0.0, dy_n_m=0.0, sigma_m=sigma, reason="ok; direction unknown (no heading)")


@dataclass
class _Reg:
    chain_xy: np.ndarray  # position in the chain's frame (metres)
    psi: float  # the chain's turn at that frame
    x: float
    y: float
    heading: float  # registration's heading (maybe a half turn off)


class HeadingTracker:
    """The heading of the image top without a compass (module docstring). One per camera stream."""

    def __init__(self, cfg: HeadingTrackConfig | None = None):
        self.cfg = cfg or HeadingTrackConfig()
        self.reset()

    def reset(self) -> None:
        self.heading: float | None = None
        self.prior: float | None = None  # the heading before a jump, unconfirmed
        self.prior_age = 0
        self.sigma = math.inf
        self.t_reg: float | None = None  # when a registration last measured it
        self.locks = 0
        self._new_chain()

    def _new_chain(self) -> None:
        self.psi = 0.0
        self.chain_xy = np.zeros(2)
        self.regs: list[_Reg] = []

    @property
    def known(self) -> bool:
        return self.heading is not None

    def registration_prior(self) -> tuple[float | None, float | None]:
        """(heading, +- degrees) registration should search around: the known heading, the prior after a
        jump (widest search), or (None, None): every heading."""
        if self.heading is not None:
            return self.heading, self.search_tol_deg()
        if self.prior is not None:
            return self.prior, self.cfg.search_tol_max_deg
        return None, None

    def search_tol_deg(self) -> float:
        """How far around the known heading registration should search."""
        c = self.cfg
        return float(min(c.search_tol_max_deg, max(c.search_tol_min_deg, 3.0 * self.sigma)))

    def predict(self, motion, dt_s: float):
        """Carry the heading to this frame with the odometry's ``motion`` on the camera frames (displacement
        along the previous frame's right/up, ``dyaw_deg``) or None/failed; returns the motion the map filter
        should use: east/north when the previous frame's heading was known, else :func:`undirected`."""
        c = self.cfg
        if motion is None or not motion.ok:
            self._new_chain()  # the turn across this gap is unknown: the chain's frame breaks
            if self.heading is not None and getattr(motion, "jump", False):
                self.prior, self.heading, self.prior_age = self.heading, None, 0  # unconfirmed
            if self.heading is not None or self.prior is not None:
                self.sigma = math.hypot(self.sigma, c.turn_rate_dps * max(0.0, float(dt_s)))
                if self.sigma > c.lose_sigma_deg:
                    self.heading, self.prior, self.sigma = None, None, math.inf
            return motion
        right, up = motion.dx_e_m, motion.dy_n_m
        self.chain_xy = self.chain_xy + np.array(turn(right, up, self.psi))
        self.psi = (self.psi + motion.dyaw_deg) % 360.0
        if self.heading is None:
            if self.prior is not None:
                self.prior = (self.prior + motion.dyaw_deg) % 360.0
                self.sigma = math.hypot(self.sigma, c.yaw_sigma_deg)
                self.prior_age += 1  # frames that show ground
                if self.prior_age > c.prior_frames:
                    self.prior, self.sigma = None, math.inf  # no registration confirmed it: start over
            return undirected(motion)
        east, north = turn(right, up, self.heading)
        self.heading = (self.heading + motion.dyaw_deg) % 360.0
        self.sigma = math.hypot(self.sigma, c.yaw_sigma_deg)
        return replace(motion, dx_e_m=east, dy_n_m=north)

    def measure(self, t: float, reg) -> str:
        """A verified registration (``x``, ``y``, ``heading_deg``) of this frame; returns what it did:
        "fused", "locked", "confirmed" (the prior after a jump), "pending" (no heading yet), "rejected" (too
        far from the known heading)."""
        c = self.cfg
        if self.heading is None and self.prior is not None:
            if abs(wrap180(reg.heading_deg - self.prior)) <= c.search_tol_max_deg + c.reg_sigma_deg:
                self.heading, self.prior, self.sigma, self.t_reg = reg.heading_deg % 360.0, None, c.reg_sigma_deg, t
                return "confirmed"  # registration searched around the prior: its heading is the measurement
            self.prior = None  # it turned elsewhere: the lock starts over
        if self.heading is not None:
            innov = wrap180(reg.heading_deg - self.heading)
            if abs(innov) > self.search_tol_deg() + c.reg_sigma_deg:
                return "rejected"
            k = self.sigma**2 / (self.sigma**2 + c.reg_sigma_deg**2)
            self.heading = (self.heading + k * innov) % 360.0
            self.sigma = math.sqrt(k) * c.reg_sigma_deg
            self.t_reg = float(t)
            return "fused"
        self.regs = (self.regs + [_Reg(self.chain_xy.copy(), self.psi, float(reg.x), float(reg.y),
                                       float(reg.heading_deg))])[-c.max_chain_regs:]
        theta = self._lock()
        if theta is None:
            return "pending"
        self.heading, self.sigma = (theta + self.psi) % 360.0, c.reg_sigma_deg
        self.t_reg, self.locks = float(t), self.locks + 1
        return "locked"

    def hypotheses(self) -> list[tuple[float, float, float]]:
        """While no heading is known: (x, y, heading) where the newest pending registration of this chain
        puts the drone now, one per half-turn hypothesis (none beyond ``dead_reckon_m``)."""
        if self.heading is not None or not self.regs:
            return []
        r = self.regs[-1]
        d = self.chain_xy - r.chain_xy
        if float(np.hypot(*d)) > self.cfg.dead_reckon_m:
            return []
        out = []
        for theta in ((r.heading - r.psi) % 360.0, (r.heading - r.psi + 180.0) % 360.0):
            de, dn = turn(float(d[0]), float(d[1]), theta)
            out.append((r.x + de, r.y + dn, (theta + self.psi) % 360.0))
        return out

    def _lock(self) -> float | None:
        """The chain frame's heading ``theta`` when the newest registration forms ``min_pairs`` pairs with
        earlier ones (far enough away, motion and headings agreeing: module docstring) that agree with each
        other within ``agree_deg / 2``, else None. More than one pair: a registration verified in a wrong
        window (measured without a heading at 150 m) pairs with a right one by chance, two such chances
        rarely agree."""
        c = self.cfg
        found = self._pairs()
        for a in found:
            near = [b for b in found if abs(wrap180(b - a)) <= c.agree_deg / 2]
            if len(near) >= c.min_pairs:
                return (a + float(np.mean([wrap180(b - a) for b in near]))) % 360.0
        return None

    def _pairs(self) -> list[float]:
        """``theta`` of every valid pair of the newest registration with an earlier one."""
        c = self.cfg
        new, out = self.regs[-1], []
        for old in reversed(self.regs[:-1]):
            de, dn = new.x - old.x, new.y - old.y
            dist = math.hypot(de, dn)
            d_chain = new.chain_xy - old.chain_xy
            path = float(np.hypot(*d_chain))
            if dist < c.min_baseline_m or abs(path / dist - 1.0) > c.max_scale_error:
                continue
            theta_motion = wrap180(compass_angle(de, dn) - compass_angle(*d_chain)) % 360.0
            thetas = []
            for r in (old, new):
                th = (r.heading - r.psi) % 360.0
                if abs(wrap180(th - theta_motion)) > 90.0:
                    th = (th + 180.0) % 360.0  # the correlation's half-turn ambiguity, settled by the motion
                if abs(wrap180(th - theta_motion)) > c.agree_deg:
                    break
                thetas.append(th)
            else:
                if abs(wrap180(thetas[1] - thetas[0])) <= c.agree_deg / 2:
                    out.append((thetas[0] + wrap180(thetas[1] - thetas[0]) / 2.0) % 360.0)
        return out
