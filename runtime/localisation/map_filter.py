"""A Bayesian filter over one altitude layer of the map: where the drone is, given every frame so far.

One frame's retrieval is ambiguous (fields look alike); a flight is not: the drone moves continuously and
the odometry says how. The posterior is held on a regular grid of cells ``cell_frac * stride`` wide over
the layer's tiles (a histogram filter: exact, multimodal, no sampling noise; what a particle filter
approximates), plus one number, ``p_out``: the probability that the drone is not over this map at all
(off its edge, over another place, or the frames show nothing of the ground).

- predict (per frame): the grid moves with the odometry's displacement (carried as a sub-cell offset, so
  moving it adds no numerical blur) and is blurred by the motion noise (``odo_rel_sigma`` of the distance,
  plus ``odo_abs_sigma_m``); without odometry it moves with the velocity estimate, its noise growing with
  the velocity's uncertainty, never faster than ``max_speed_mps``. Then a share ``kidnap_rate`` per second
  of the probability is spread anywhere (over the map with ``in_map_prior``, else off it): that is what
  lets the filter notice a kidnapping and start again; ``jump_spread`` of it when the odometry reports
  that two textured frames do not match (``Motion.jump``: the picture jumped).
- update (per frame): every grid cell is weighted by the likelihood ratio of the similarity of the tile
  there (bilinear between tile centres; :class:`runtime.search.layer_grid.Likelihood`, calibrated per model), the
  off-map hypothesis by 1 (its ratio by definition). Similarities are taken relative to the frame's
  median similarity over the layer (what the likelihood was calibrated on): when only the tiles near the
  posterior are scored, ``reference_tiles`` fixed tiles spread over the layer (at most a tenth) give that
  median (the nearby tiles' is higher and would push the posterior off the map on every frame). Tiles not
  scored this frame count as that median.
- the estimate: the mode's cluster (cells within one footprint of the most probable cell); its mean, covariance,
  the radius around the mean holding 95 % of its probability (``r95_m``, times the calibrated ``r95_scale``)
  and its share of all probability. ``trusted`` only when that share is at least ``trust_mass`` (one mode,
  on the map), ``r95_m`` at most ``trust_r95_frac`` footprints, and the odometry saw the ground move on
  this frame (``max_blind_frames``).
- search cost: :meth:`MapFilter.rows_to_score` asks for the tiles near a concentrated posterior (``local_mass``
  within the cluster), for the whole layer otherwise and every ``global_every`` frames (a kidnapping).

The velocity (east, north) is a Kalman state of its own, measured by the odometry (displacement / dt), with
a random-walk acceleration ``accel_mps2``; its measurement noise is the scatter of the measured velocities
(the second difference of three has 6 times a measurement's variance), never more than the odometry's fit
claims (``Motion.sigma_m`` / dt): on held-out flights that claim is 4-8 times the displacements' error, and
the posterior's blur made the speed accuracy 2.2-2.5 m/s for errors of 0.2-0.5 (docs/results/autopilot.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.localisation.likelihood import Likelihood
from runtime.search.layer_grid import LayerGrid

CHI2_2D_95 = 5.991  # 95 % quantile of chi-square with 2 degrees of freedom
VEL_NOISE_FLOOR_MPS = 0.1  # a velocity measurement is never trusted beyond this (1 sigma per axis)
VEL_NOISE_GAIN = 0.1  # weight of each new second difference in the measurements' scatter


@dataclass
class MapFilterConfig:
    cell_frac: float = 0.25  # grid cell, fraction of the tile stride
    odo_rel_sigma: float = 0.1  # odometry noise: share of the distance (1 sigma per axis)
    odo_abs_sigma_m: float = 3.0  # plus this (metres, 1 sigma per axis)
    accel_mps2: float = 2.0  # velocity random walk (1 sigma per second)
    kidnap_rate: float = 0.005  # share of the probability spread anywhere, per second
    in_map_prior: float = 0.1  # at start and for "anywhere": the share on the map (the rest: off the map)
    trust_mass: float = 0.95  # trusted only when the mode's cluster holds this share of all probability
    trust_r95_frac: float = 0.5  # ... and its 95 % radius is at most this many footprints
    min_updates: int = 2  # frames measured before anything is trusted
    local_mass: float = 0.9  # score only tiles near the posterior when its cluster holds this share
    global_every: int = 10  # ... but the whole layer every this many frames
    prior_out: float = 0.05  # with a prior position: the probability it is wrong (off the map)
    max_blind_frames: int = 1  # untrusted after this many frames in a row without odometry: frames that
    # do not move with the ground (noise, a frozen or uniform picture) can match one map tile every time,
    # and a picture that jumped (a kidnapping, a dropped stretch) must not be trusted at the old place
    jump_spread: float = 0.3  # share spread anywhere when the odometry says the picture jumped
    min_texture: float = 4.0  # frames whose grey level varies less (std) carry no position: no update
    independent_frac: float = 0.5  # frames this many footprints apart count as independent evidence; a frame
    # nearer its predecessor weighs by its share of that distance (consecutive frames see mostly the same
    # ground: counted whole, the filter's confidence would grow with the frame rate); 0: every frame whole
    min_evidence: float = 0.1  # ... but never less than this (a hovering drone still refines)
    reference_tiles: int = 256  # at most this many tiles (a tenth of the layer, >= 64) spread over it are
    # scored with a local search: they give the frame's median similarity over the layer

    def __post_init__(self):
        if not 0 < self.cell_frac <= 1:
            raise ValueError(f"cell_frac must be in (0, 1], got {self.cell_frac}")
        if not 0 < self.in_map_prior < 1 or not 0 < self.trust_mass < 1:
            raise ValueError(f"in_map_prior and trust_mass must be in (0, 1): {self.in_map_prior}, {self.trust_mass}")
        if self.kidnap_rate < 0:
            raise ValueError(f"kidnap_rate must be >= 0, got {self.kidnap_rate}")


@dataclass
class Estimate:
    x: float  # metres, database CRS (east)
    y: float  # (north)
    cov_xy: tuple[float, float, float]  # var_x, var_y, cov (m^2)
    r95_m: float
    mass: float  # probability share of the mode's cluster (of everything, off-map included)
    p_out: float  # probability of not being over this map
    vel_e_mps: float
    vel_n_mps: float
    speed_accuracy_mps: float  # 1 sigma
    trusted: bool
    reason: str
    doubt: str = ""  # why not trusted, as a code: acquiring | blind | off_map | ambiguous | spread ("" trusted)


class MapFilter:
    """Posterior over one layer (module docstring). Per frame: predict, rows_to_score, update, estimate."""

    def __init__(self, db, layer: int | str, cfg: MapFilterConfig | None = None,
                 likelihood: Likelihood | None = None, seed: int = 0, *, max_speed_mps: float = 50.0):
        self.cfg = cfg or MapFilterConfig()
        if not max_speed_mps > 0:
            raise ValueError(f"max_speed_mps must be > 0, got {max_speed_mps}")
        self.max_speed_mps = float(max_speed_mps)  # bound of the random walk without odometry
        self.lik = likelihood or Likelihood.from_manifest(None)
        self.grid = LayerGrid(db, layer)
        self.seed = seed  # the filter is deterministic; kept for the API's sake
        g = self.grid
        self.cell_m = g.stride_m * self.cfg.cell_frac
        pad = g.stride_m / 2.0  # the drone may be half a stride beyond the outer tile centres
        self.gx0, self.gy1 = g.x0 - pad, g.y1 + pad  # centre of cell (0, 0)
        self.shape = (int(math.ceil((g.y1 - g.y0 + 2 * pad) / self.cell_m)) + 1,
                      int(math.ceil((g.x1 - g.x0 + 2 * pad) / self.cell_m)) + 1)
        jj, ii = np.meshgrid(np.arange(self.shape[1]), np.arange(self.shape[0]))
        self._cx, self._cy = jj * self.cell_m, -ii * self.cell_m  # cell offsets from (gx0, gy1)
        n_ref = min(len(g), int(self.cfg.reference_tiles), max(64, len(g) // 10))
        self.reference_rows = g.rows[np.unique(np.linspace(0, len(g) - 1, n_ref).round().astype(np.int64))]
        self.reset()

    # ---- state ----------------------------------------------------------------------------------
    def reset(self, prior: tuple[float, float, float] | None = None, t: float | None = None) -> None:
        """Start again: global (no prior) or from a position (x, y, sigma_m) that may be wrong; ``t``: the
        time the filter stands at (None: the next predict starts it)."""
        self.off = np.zeros(2)  # sub-cell offset of the grid (metres, east/north)
        self.t: float | None = t
        self.v, self.pv = np.zeros(2), np.eye(2) * (self.max_speed_mps / 2.0) ** 2
        self.vel_known = False
        self._vel_z: list[np.ndarray] = []  # the last measured velocities of an unbroken run (for their scatter)
        self._vel_r2: float | None = None  # a velocity measurement's variance per axis, from that scatter
        self.n_updates, self.since_global, self.blind = 0, 10**9, 0
        self.moved_m: float | None = None  # ground distance since the last update (None: unknown)
        self.last_displacement = np.zeros(2)  # what the last predict moved the posterior by (m, east/north)
        self.last_sigma_m = 0.0
        n = self.shape[0] * self.shape[1]
        if prior is None:
            self.p = np.full(self.shape, self.cfg.in_map_prior / n)
            self.p_out = 1.0 - self.cfg.in_map_prior
        else:
            if (g := self._gaussian(*prior)) is None:
                raise ValueError(f"the prior ({prior[0]:.0f}, {prior[1]:.0f}) +- {prior[2]:.0f} m lies off this map layer")
            self.p, self.p_out = (1.0 - self.cfg.prior_out) * g, self.cfg.prior_out

    def move_to(self, x: float, y: float, sigma_m: float) -> bool:
        """The posterior on the map becomes a Gaussian at (x, y) of ``sigma_m``, its mass and the velocity kept
        (the registered track corrects where the drone is, not its motion); False off this layer."""
        g = self._gaussian(x, y, sigma_m)
        self.p = self.p if g is None else (1.0 - self.p_out) * g
        return g is not None

    def _gaussian(self, x: float, y: float, sigma_m: float):
        """A Gaussian of ``sigma_m`` (at least half a cell) at (x, y) over the grid, summing to 1; None off it."""
        cx, cy = self.cell_xy()
        g = np.exp(-((cx - float(x)) ** 2 + (cy - float(y)) ** 2) / (2 * max(float(sigma_m), self.cell_m / 2) ** 2))
        return g / g.sum() if g.sum() > 0 else None

    def cell_xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Metric x, y of every grid cell's centre (now: the grid moves with the drone)."""
        return self.gx0 + self.off[0] + self._cx, self.gy1 + self.off[1] + self._cy

    # ---- predict --------------------------------------------------------------------------------
    def predict(self, t: float, motion=None) -> None:
        """Move the posterior to time ``t`` with the odometry ``motion`` (runtime.localisation.odometry.Motion) or none."""
        if self.t is None:
            self.t = float(t)
            return
        dt = float(t) - self.t
        self.t = float(t)
        if dt <= 0:
            return
        cfg = self.cfg
        self.pv = self.pv + np.eye(2) * (cfg.accel_mps2 * dt) ** 2
        moved = motion is not None and getattr(motion, "ok", False)
        self.blind = 0 if moved else self.blind + 1
        if moved:
            d = np.array([motion.dx_e_m, motion.dy_n_m], float)
            ms = motion.sigma_m if math.isfinite(motion.sigma_m) else 0.0
            sigma = math.sqrt(cfg.odo_abs_sigma_m**2 + (cfg.odo_rel_sigma * float(np.hypot(*d))) ** 2 + ms**2)
            self._velocity_update(d / dt, (ms if ms > 0 else sigma) / dt)
        elif self.vel_known:
            d = self.v * dt
            sigma = min(math.sqrt(float(np.trace(self.pv)) / 2.0) * dt + cfg.odo_abs_sigma_m,
                        self.max_speed_mps * dt)
        else:
            d, sigma = np.zeros(2), self.max_speed_mps * dt / 2.0
        if not moved:
            self._vel_z.clear()  # the next measurement starts a new run
        self.last_displacement = np.asarray(d, float)
        self.last_sigma_m = float(sigma)  # its 1-sigma per axis
        self._translate(d)
        self._blur(sigma)
        if moved or self.vel_known:
            self.moved_m = (self.moved_m or 0.0) + float(np.hypot(*d))
        else:
            self.moved_m = None
        jumped = bool(getattr(motion, "jump", False))  # textured frames that do not match: a kidnapping?
        self._spread(max(min(1.0, cfg.kidnap_rate * dt), cfg.jump_spread if jumped else 0.0))

    def _velocity_update(self, z: np.ndarray, sigma: float) -> None:
        """Fuse a measured velocity ``z`` (east, north, m/s) whose error the odometry bounds by ``sigma``
        (1-sigma per axis): its noise is the scatter of the run's measurements (module docstring), at most
        ``sigma``, at least ``VEL_NOISE_FLOOR_MPS``."""
        run = self._vel_z
        if len(run) == 2:
            dd = z - 2.0 * run[1] + run[0]
            s2 = float(dd @ dd) / 12.0  # per axis: a second difference has 6 measurements' variance
            self._vel_r2 = s2 if self._vel_r2 is None else (1 - VEL_NOISE_GAIN) * self._vel_r2 + VEL_NOISE_GAIN * s2
        run.append(np.asarray(z, float))
        del run[:-2]
        if self._vel_r2 is not None:
            sigma = min(sigma, max(math.sqrt(self._vel_r2), VEL_NOISE_FLOOR_MPS))
        k = self.pv @ np.linalg.inv(self.pv + np.eye(2) * sigma**2)
        self.v = self.v + k @ (z - self.v)
        self.pv = (np.eye(2) - k) @ self.pv
        self.vel_known = True

    def _translate(self, d: np.ndarray) -> None:
        self.off += d
        k = np.rint(self.off / self.cell_m).astype(int)  # whole cells: east = +columns, north = -rows
        if not k.any():
            return
        self.off -= k * self.cell_m
        before = self.p.sum()
        self.p = _shift(self.p, -int(k[1]), int(k[0]))
        self.p_out += before - self.p.sum()  # what moved off the map

    def _blur(self, sigma_m: float) -> None:
        import cv2

        s = sigma_m / self.cell_m
        if s < 0.3:
            return
        before = self.p.sum()
        self.p = cv2.GaussianBlur(self.p, (0, 0), s, borderType=cv2.BORDER_CONSTANT)
        self.p_out += max(0.0, before - self.p.sum())

    def _spread(self, h: float) -> None:
        if h <= 0:
            return
        n = self.p.size
        self.p = (1.0 - h) * self.p + h * self.cfg.in_map_prior / n
        self.p_out = (1.0 - h) * self.p_out + h * (1.0 - self.cfg.in_map_prior)

    # ---- measure --------------------------------------------------------------------------------
    def rows_to_score(self) -> np.ndarray | None:
        """Database rows to score this frame: near the posterior when concentrated (with the layer's
        reference sample, for the frame's median), None = the whole layer."""
        if self.since_global >= self.cfg.global_every:
            return None
        mx, my, mass, r95 = self._cluster()[:4]
        if mass < self.cfg.local_mass:
            return None
        near = self.grid.rows_near(mx, my, r95 + 1.5 * self.grid.footprint_m)
        return np.union1d(near, self.reference_rows)

    def update(self, rows: np.ndarray | None, scores: np.ndarray, offset_en_m=(0.0, 0.0)) -> None:
        """Weigh the posterior by the frame's similarities ``scores`` to the tiles ``rows`` (None: all).
        ``offset_en_m``: from the ground point the frame's view is centred on to the drone (a tilted camera,
        runtime.localisation.camera_view): a cell's drone position sees the tiles at the cell less it."""
        import cv2

        scores = np.asarray(scores, np.float32).ravel()
        n = len(self.grid) if rows is None else len(rows)
        if len(scores) != n or n == 0:
            raise ValueError(f"{len(scores)} scores for {n} rows: pass the scores of the rows rows_to_score gave")
        ref = self._reference(rows, scores)
        img = self.grid.score_image(rows, scores, fill=ref)
        cx, cy = self.cell_xy()
        cx, cy = cx - offset_en_m[0], cy - offset_en_m[1]
        u = ((cx - self.grid.x0) / self.grid.stride_m).astype(np.float32)
        v = ((self.grid.y1 - cy) / self.grid.stride_m).astype(np.float32)
        s = cv2.remap(img, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self.p = self.p * np.exp(self.evidence_weight() * self.lik.log_lr(s, ref).astype(np.float64))
        self.moved_m = 0.0
        self._normalise()
        self.n_updates += 1
        self.since_global = 0 if rows is None else self.since_global + 1

    def evidence_weight(self) -> float:
        """How much of a whole independent frame this one is: the ground moved since the last update over
        ``independent_frac`` footprints, in [min_evidence, 1]; 1 when the motion is unknown."""
        cfg = self.cfg
        if cfg.independent_frac <= 0 or self.moved_m is None or self.n_updates == 0:
            return 1.0
        return float(np.clip(self.moved_m / (cfg.independent_frac * self.grid.footprint_m), cfg.min_evidence, 1.0))

    def _reference(self, rows: np.ndarray | None, scores: np.ndarray) -> float:
        """The frame's median similarity over the layer: of every tile, or of the reference sample among
        ``rows`` (rows without the whole sample, from a caller that chose its own: their median)."""
        if rows is not None:
            in_ref = np.isin(rows, self.reference_rows)
            if int(in_ref.sum()) == len(self.reference_rows):
                scores = scores[in_ref]
        return float(np.median(scores))

    def update_position(self, x: float, y: float, sigma_m: float, p_wrong: float = 0.01) -> None:
        """Weigh by a precise position measurement (registration): Gaussian ``sigma_m``; ``p_wrong``: the
        chance the measurement is an outlier (keeps the rest of the posterior alive)."""
        cx, cy = self.cell_xy()
        s2 = sigma_m**2 + self.cell_m**2 / 12.0
        like = (1 - p_wrong) * np.exp(-((cx - x) ** 2 + (cy - y) ** 2) / (2 * s2)) + p_wrong
        self.p = self.p * like
        self.p_out *= p_wrong
        self._normalise()

    def _normalise(self) -> None:
        z = float(self.p.sum()) + self.p_out
        if not z > 0 or not math.isfinite(z):
            self.reset()
            return
        self.p /= z
        self.p_out /= z

    # ---- estimate -------------------------------------------------------------------------------
    def _cluster(self):
        """(mean x, mean y, mass, r95 (scaled), cov) of the cells within one footprint of the mode."""
        i, j = np.unravel_index(int(np.argmax(self.p)), self.shape)
        rad = int(math.ceil(self.grid.footprint_m / self.cell_m))
        sl = (slice(max(0, i - rad), i + rad + 1), slice(max(0, j - rad), j + rad + 1))
        p = self.p[sl]
        cx, cy = self.cell_xy()
        cx, cy = cx[sl], cy[sl]
        mode_x, mode_y = self.gx0 + self.off[0] + j * self.cell_m, self.gy1 + self.off[1] - i * self.cell_m
        inside = (cx - mode_x) ** 2 + (cy - mode_y) ** 2 <= self.grid.footprint_m**2
        w = np.where(inside, p, 0.0)
        mass = float(w.sum())
        if mass <= 0:
            return mode_x, mode_y, 0.0, math.inf, (math.inf, math.inf, 0.0)
        mx, my = float((w * cx).sum() / mass), float((w * cy).sum() / mass)
        q = self.cell_m**2 / 12.0  # a cell's own spread
        vx = float((w * (cx - mx) ** 2).sum() / mass) + q
        vy = float((w * (cy - my) ** 2).sum() / mass) + q
        cxy = float((w * (cx - mx) * (cy - my)).sum() / mass)
        d = np.hypot(cx - mx, cy - my)[inside]
        order = np.argsort(d)
        cum = np.cumsum(w[inside][order]) / mass
        r_emp = float(d[order][min(int(np.searchsorted(cum, 0.95)), len(d) - 1)])
        r95 = math.hypot(r_emp, self.cell_m / 2.0) * self.lik.r95_scale
        return mx, my, mass, r95, (vx, vy, cxy)

    def modes(self, n: int = 3, min_mass: float = 0.02) -> list[tuple[float, float, float]]:
        """Up to ``n`` separate peaks of the posterior on the map, most probable first: (x, y, share of the
        on-map probability within one footprint of the peak); peaks a footprint apart, each >= ``min_mass``."""
        import cv2

        rad = int(math.ceil(self.grid.footprint_m / self.cell_m))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1)).astype(np.float32)
        on_map = max(1e-30, float(self.p.sum()))
        local = cv2.filter2D((self.p / on_map).astype(np.float32), -1, disc, borderType=cv2.BORDER_CONSTANT)
        out = []
        for _ in range(n):
            i, j = np.unravel_index(int(np.argmax(local)), self.shape)
            mass = float(local[i, j])
            if mass < min_mass:
                break
            out.append((self.gx0 + self.off[0] + j * self.cell_m, self.gy1 + self.off[1] - i * self.cell_m, mass))
            r0, c0 = max(0, i - 2 * rad), max(0, j - 2 * rad)
            local[r0:i + 2 * rad + 1, c0:j + 2 * rad + 1] = 0.0  # the next peak at least a footprint away
        return out

    def estimate(self) -> Estimate:
        cfg = self.cfg
        mx, my, mass, r95, cov = self._cluster()
        max_r95 = cfg.trust_r95_frac * self.grid.footprint_m
        if self.n_updates < cfg.min_updates:
            doubt, reason = "acquiring", f"acquiring ({self.n_updates} of {cfg.min_updates} frames)"
        elif self.blind >= cfg.max_blind_frames:
            doubt, reason = "blind", f"no ground motion seen for {self.blind} frames (odometry failed)"
        elif self.p_out > 1.0 - cfg.trust_mass:
            doubt, reason = "off_map", f"possibly off the map (p={self.p_out:.2f})"
        elif mass < cfg.trust_mass:
            doubt, reason = "ambiguous", f"ambiguous: the best mode holds {mass:.0%} (needs {cfg.trust_mass:.0%})"
        elif r95 > max_r95:
            doubt, reason = "spread", f"spread: r95 {r95:.0f} m > {max_r95:.0f} m"
        else:
            doubt, reason = "", "ok"
        sp = math.sqrt(float(np.linalg.eigvalsh(self.pv).max())) if self.vel_known else math.nan
        ve, vn = (float(self.v[0]), float(self.v[1])) if self.vel_known else (math.nan, math.nan)
        return Estimate(mx, my, cov, r95, mass, self.p_out, ve, vn, sp, doubt == "", reason, doubt)


def _shift(a: np.ndarray, drow: int, dcol: int) -> np.ndarray:
    """``a`` moved by whole cells (rows down, columns right), zeros coming in."""
    out = np.zeros_like(a)
    h, w = a.shape
    if abs(drow) >= h or abs(dcol) >= w:
        return out
    src_r = slice(max(0, -drow), h - max(0, drow))
    dst_r = slice(max(0, drow), h - max(0, -drow))
    src_c = slice(max(0, -dcol), w - max(0, dcol))
    dst_c = slice(max(0, dcol), w - max(0, -dcol))
    out[dst_r, dst_c] = a[src_r, src_c]
    return out
