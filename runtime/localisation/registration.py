"""Register a drone frame to the map imagery around a candidate position: metres, heading, and a check.

Retrieval says which tile; registration says where in it. The frame is scaled to a working ground
resolution from the altitude and the horizontal field of view (frame ground width ``2 * altitude *
tan(hfov / 2)``), turned north-up when a heading is given, and matched against the map window of
``window_footprints`` footprints around the candidate (:class:`tiles.map_imagery.MapImagery`):

- ``features`` (maps fine enough that a footprint spans >= ``min_feature_px`` map pixels): SIFT/RootSIFT/
  ORB/AKAZE, ratio + mutual checks, RANSAC similarity (nadir) or MAGSAC++ homography (``homography``);
  the frame is worked at ``work_px`` pixels across at most, so a map much finer than the frame is
  resampled down, not matched at a resolution it cannot use;
- ``correlation`` (coarse maps, e.g. 5 m/px NAIP: a 150 m footprint is 35 map pixels): normalised
  cross-correlation of gradient images over a disc of the frame, upsampled ``upsample`` times, searched
  over headings (all of them every ``heading_step_deg`` without a compass, +-``compass_tol_deg`` with one).

Verification: a wrong window has no consistent geometry, so a registration is ``ok`` only with enough
inliers and inlier ratio (features) or a high and distinct correlation peak (correlation), a scale
within ``max_scale_error`` of the altitude's, and a centre inside the window. Thresholds come from the
measurements in docs/results/registration.md.

Output (:class:`Registration`): the ground point under the image centre in the map's metric CRS, the
heading the image top faces (compass degrees), the scale (ground seen / ground expected: true altitude ~
``altitude_m * scale``), inliers, inlier ratio, ``sigma_m`` and ``reason`` when not ok.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("auto", "features", "correlation")


@dataclass
class RegistrationConfig:
    method: str = "auto"  # auto: features when a footprint spans >= min_feature_px map pixels
    features: str = "sift"  # sift | rootsift | orb | akaze
    min_feature_px: int = 150
    window_footprints: float = 2.0  # side of the map window, in footprints
    work_px: int = 512  # features: the frame is worked at most this many pixels across
    ratio: float = 0.8
    mutual: bool = True
    n_features: int = 2000
    thresh_px: float = 3.0  # RANSAC inlier threshold, working pixels
    homography: bool = False  # tilted camera / non-flat view: homography instead of similarity
    min_inliers: int = 12
    min_inlier_ratio: float = 0.2
    max_scale_error: float = 0.25
    upsample: float = 2.0  # correlation: working pixel = map pixel / upsample
    corr_max_px: int = 160  # correlation: the footprint spans at most this many working pixels (cost)
    blur_px: float = 1.0
    signal: str = "both"  # correlation on: gradient magnitude | grey | both (two channels)
    heading_step_deg: float = 10.0  # correlation without a compass: coarse search step, then refined
    compass_tol_deg: float = 10.0  # correlation with a compass: searched +- this around it
    min_peak: float = 0.3  # correlation: NCC of the best placement
    min_distinct: float = 0.0  # correlation: best minus the best placement elsewhere
    vote_grid: int = 2  # correlation: the frame split into vote_grid x vote_grid parts (half its side each)
    vote_tol: float = 0.03  # correlation: a part agrees within this fraction of the frame's side (>= 2 px)
    min_votes: int = 3  # correlation: parts that peak alone where the whole frame does

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"registration method {self.method!r} is not one of {METHODS}")
        if self.signal not in ("gradient", "grey", "both", "local"):
            raise ValueError(f"registration signal {self.signal!r} is not 'gradient', 'grey', 'both' or 'local'")
        if self.window_footprints < 1.05:
            raise ValueError(f"window_footprints must be > 1 (the window must hold the frame), got "
                             f"{self.window_footprints}")


@dataclass
class Registration:
    ok: bool
    x: float = math.nan  # ground under the image centre, map metric CRS
    y: float = math.nan
    heading_deg: float = math.nan  # where the image top faces, clockwise from north
    scale: float = math.nan  # ground seen / ground expected from altitude and hfov
    inliers: int = 0
    inlier_ratio: float = math.nan
    sigma_m: float = math.nan
    score: float = math.nan  # features: inliers; correlation: peak NCC
    distinct: float = math.nan  # features: inlier ratio; correlation: peak minus the runner-up
    psr: float = math.nan  # correlation: peak-to-sidelobe ratio
    method: str = ""
    reason: str = ""
    tentative: bool = False  # correlation: every check passed but the parts' votes (confirmed over frames:
    #                          runtime.localisation.frame_agreement)

    def to_dict(self) -> dict:
        return asdict(self)


def _grey(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb


def _blurred(grey: np.ndarray, blur_px: float) -> np.ndarray:
    import cv2

    g = grey.astype(np.float32)
    return cv2.GaussianBlur(g, (0, 0), blur_px) if blur_px > 0 else g


def _grey_and_gradient(grey: np.ndarray, blur_px: float) -> np.ndarray:
    from runtime.localisation.registration_methods import gradient_image

    a, b = _blurred(grey, blur_px), gradient_image(grey, blur_px)
    return np.dstack([(a - a.mean()) / (a.std() + 1e-6), (b - b.mean()) / (b.std() + 1e-6)])


def _local_and_gradient(grey: np.ndarray, blur_px: float) -> np.ndarray:
    """Grey normalised by its local mean and spread (8 px), and the gradient magnitude."""
    import cv2

    from runtime.localisation.registration_methods import gradient_image

    a = _blurred(grey, blur_px)
    mu = cv2.GaussianBlur(a, (0, 0), 8.0)
    sd = np.sqrt(np.maximum(cv2.GaussianBlur((a - mu) ** 2, (0, 0), 8.0), 1.0))
    a = (a - mu) / sd
    b = gradient_image(grey, blur_px)
    return np.dstack([a, (b - b.mean()) / (b.std() + 1e-6)])


def _half(img: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    interp = cv2.INTER_NEAREST if img.dtype == np.uint8 else cv2.INTER_AREA
    return cv2.resize(img, (max(1, w // 2), max(1, h // 2)), interpolation=interp)


def prepare_frame(frame_rgb, frame_gsd_m: float, work_gsd_m: float, heading_deg: float | None):
    """The grey frame scaled to ``work_gsd_m`` and turned north-up by ``heading_deg`` (if given) on a
    canvas that holds all of it; its validity mask; and P (2x3): frame px -> canvas px."""
    import cv2

    h, w = frame_rgb.shape[:2]
    s = frame_gsd_m / work_gsd_m
    angle = 0.0 if heading_deg is None else float(heading_deg)
    ca, sa = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    cw, ch = int(math.ceil(s * (w * ca + h * sa))) + 2, int(math.ceil(s * (w * sa + h * ca))) + 2
    P = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), -angle, s)
    P[:, 2] += np.array([(cw - 1) / 2.0, (ch - 1) / 2.0]) - np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    grey = _grey(frame_rgb)
    if s < 0.5:  # area-average first so the rotation does not alias
        grey = cv2.resize(grey, (max(1, round(w * s * 2)), max(1, round(h * s * 2))), interpolation=interp)
        k = np.diag([grey.shape[1] / w, grey.shape[0] / h])
        Pk = P.copy()
        Pk[:, :2] = P[:, :2] @ np.linalg.inv(k)
        Pk[:, 2] = P[:, 2] + (P[:, :2] @ (np.linalg.inv(k) @ np.array([0.5, 0.5]) - np.array([0.5, 0.5])))
        img = cv2.warpAffine(grey, Pk, (cw, ch), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.full(grey.shape, 255, np.uint8), Pk, (cw, ch), flags=cv2.INTER_NEAREST)
    else:
        img = cv2.warpAffine(grey, P, (cw, ch), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.full((h, w), 255, np.uint8), P, (cw, ch), flags=cv2.INTER_NEAREST)
    return img, (mask > 0).astype(np.uint8), P


def pose_from_affine(L: np.ndarray) -> tuple[float, float]:
    """(heading_deg, scale) of the 2x2 linear part mapping frame px to north-up map px."""
    heading = math.degrees(math.atan2(-L[0, 1], L[1, 1])) % 360.0
    scale = math.sqrt(abs(np.linalg.det(L)))
    return heading, scale


class Registrar:
    """Registers frames against one :class:`tiles.map_imagery.MapImagery` (see the module docstring)."""

    def __init__(self, imagery, cfg: RegistrationConfig | None = None):
        self.imagery = imagery
        self.cfg = cfg or RegistrationConfig()

    @classmethod
    def from_database(cls, db, cfg: RegistrationConfig | None = None) -> Registrar | None:
        """A registrar on a tile database's imagery (a ``TileDatabase`` or its folder); None when the
        database has none (built with ``--no-imagery`` or before imagery existed: retrieval only)."""
        from tiles.map_imagery import open_database_imagery

        imagery = open_database_imagery(db)
        if imagery is None:
            return None
        db_crs = (getattr(db, "manifest", None) or {}).get("crs")
        if db_crs and imagery.crs and db_crs != imagery.crs:
            raise ValueError(f"the map imagery is in {imagery.crs}, the tile database in {db_crs}: rebuild the "
                             "database with `python -m export` so both share one metric CRS")
        return cls(imagery, cfg)

    def method_for(self, footprint_m: float) -> str:
        if self.cfg.method != "auto":
            return self.cfg.method
        return "features" if footprint_m / self.imagery.gsd_m >= self.cfg.min_feature_px else "correlation"

    def register(self, frame_rgb: np.ndarray, altitude_m: float, hfov_deg: float, around_xy,
                 heading_deg: float | None = None, heading_tol_deg: float | None = None) -> Registration:
        """Register ``frame_rgb`` (RGB uint8, nadir) taken at ``altitude_m`` above ground with horizontal
        field of view ``hfov_deg`` against the map around metric ``around_xy``; ``heading_deg`` is the
        compass heading the image top faces, or None when unknown (then it is estimated); correlation
        searches +- ``heading_tol_deg`` around it (default: ``compass_tol_deg``)."""
        if not altitude_m > 0 or not 0 < hfov_deg < 180:
            raise ValueError(f"altitude_m must be > 0 and hfov_deg in (0, 180), got {altitude_m}, {hfov_deg}")
        if heading_deg is not None and not np.isfinite(heading_deg):
            heading_deg = None
        h, w = frame_rgb.shape[:2]
        footprint = 2.0 * altitude_m * math.tan(math.radians(hfov_deg) / 2.0)
        frame_gsd = footprint / w
        method = self.method_for(footprint)
        cfg, g = self.cfg, self.imagery.gsd_m
        if method == "features":
            work_gsd = max(g, footprint / cfg.work_px)
        else:
            work_gsd = max(g / cfg.upsample, frame_gsd, footprint / cfg.corr_max_px)
        win = self.imagery.window(float(around_xy[0]), float(around_xy[1]),
                                  cfg.window_footprints * footprint, work_gsd)
        if win.valid.mean() < 0.5:
            return Registration(False, method=method, reason="candidate is off the map imagery")
        img, mask, P = prepare_frame(frame_rgb, frame_gsd, win.gsd_m, heading_deg)
        if method == "features":
            from runtime.localisation.registration_methods import match_features

            est = match_features(img, mask, _grey(win.rgb), win.valid, kind=cfg.features, ratio=cfg.ratio,
                                 mutual=cfg.mutual, n_features=cfg.n_features, thresh_px=cfg.thresh_px,
                                 homography=cfg.homography)
        else:
            tol = None if heading_deg is None else (heading_tol_deg or cfg.compass_tol_deg)
            est = self._correlate(img, mask, win, tol)
        if est is None:
            return Registration(False, method=method, reason="no geometry could be estimated")
        return self._result(est, P, (w, h), win, frame_gsd, method, footprint)

    def register_candidates(self, frame_rgb: np.ndarray, altitude_m: float, hfov_deg: float, candidates_xy,
                            heading_deg: float | None = None, max_tries: int = 3,
                            heading_tol_deg: float | None = None, tried_out: list | None = None) -> Registration:
        """Try candidates in order (the filter's mode first, then the top retrieved tiles), skipping one
        within half a footprint of a tried one (its window was already searched); return the first
        verified registration, else the last failure (``reason`` names how many were tried). Every
        window's result is appended to ``tried_out`` when given."""
        footprint = 2.0 * altitude_m * math.tan(math.radians(hfov_deg) / 2.0)
        tried: list[tuple[float, float]] = []
        last = Registration(False, reason="no candidate position")
        for c in candidates_xy:
            c = (float(c[0]), float(c[1]))
            if len(tried) >= max_tries:
                break
            if any(math.hypot(c[0] - t[0], c[1] - t[1]) < footprint / 2 for t in tried):
                continue
            tried.append(c)
            r = self.register(frame_rgb, altitude_m, hfov_deg, c, heading_deg, heading_tol_deg)
            if tried_out is not None:
                tried_out.append(r)
            if r.ok:
                return r
            last = r
        if tried:
            last.reason = f"{last.reason} ({len(tried)} candidate windows tried)"
        return last

    def _correlate(self, img, mask, win, tol_deg: float | None):
        import cv2

        from runtime.localisation.registration_methods import gradient_image, match_correlation

        cfg = self.cfg
        hh, ww = img.shape
        d = self._disc_side(mask)
        y0, x0 = (hh - d) // 2, (ww - d) // 2
        signal = {"gradient": gradient_image, "grey": _blurred, "both": _grey_and_gradient,
                  "local": _local_and_gradient}[cfg.signal]
        tmpl = signal(img, cfg.blur_px)[y0:y0 + d, x0:x0 + d]
        disc = np.zeros((d, d), np.uint8)
        cv2.circle(disc, (d // 2, d // 2), max(1, d // 2 - 1), 1, -1)
        wgrad = signal(_grey(win.rgb), cfg.blur_px)
        excl = max(2, int(d * 0.25))
        if tol_deg is not None:  # around the heading given (+- tol_deg)
            step = max(1.0, tol_deg / 4)
            angles = np.arange(-tol_deg, tol_deg + 1e-6, step)
        else:
            angles = np.arange(0.0, 360.0, cfg.heading_step_deg)
        kw = {"exclusion_px": excl, "vote_grid": cfg.vote_grid, "vote_tol_px": max(2, round(cfg.vote_tol * d))}
        step = angles[1] - angles[0] if len(angles) > 1 else 0.0
        if step <= 1.0:
            est = match_correlation(tmpl, disc, wgrad, win.valid, angles, **kw)
        else:  # coarse heading search at half resolution, then refined around the winner at full
            half = _half(tmpl), _half(disc), _half(wgrad), _half(win.valid)
            coarse = match_correlation(*half, angles, exclusion_px=max(2, excl // 2), vote_grid=0)
            if coarse is None:
                return None
            fine = coarse.angle_deg + np.arange(-step / 2, step / 2 + 1e-6, max(0.5, step / 4))
            est = match_correlation(tmpl, disc, wgrad, win.valid, fine, **kw)
        if est is None:
            return None
        shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], float)  # canvas px -> template px
        est.A = (np.vstack([est.A, [0, 0, 1]]) @ shift)[:2]
        return est

    @staticmethod
    def _disc_side(mask: np.ndarray) -> int:
        """Odd side of the square around the canvas centre holding the largest disc of valid pixels."""
        import cv2

        hh, ww = mask.shape
        dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)
        r = int(dist[hh // 2 + 1, ww // 2 + 1])
        return max(9, 2 * r - 1)

    def _result(self, est, P, wh, win, frame_gsd, method, footprint) -> Registration:
        cfg = self.cfg
        A = est.A if est.A.shape == (3, 3) else np.vstack([est.A, [0, 0, 1]])
        M = A @ np.vstack([P, [0, 0, 1]])  # frame px -> window px (pixel centres at integers)
        w, h = wh
        c = M @ np.array([(w - 1) / 2.0, (h - 1) / 2.0, 1.0])
        cx, cy = c[0] / c[2], c[1] / c[2]
        J = M[:2, :2] - np.outer(c[:2] / c[2], M[2, :2]) if est.A.shape == (3, 3) else M[:2, :2]
        if est.A.shape == (3, 3):
            J = J / c[2]
        heading, s = pose_from_affine(J)
        scale = s * win.gsd_m / frame_gsd
        x, y = win.to_metric(cx + 0.5, cy + 0.5)
        n = est.inliers
        if method == "features":
            sigma = win.gsd_m * max(1.0, 6.0 / math.sqrt(max(n, 1)))
        else:
            sigma = max(self.imagery.gsd_m * 0.5, win.gsd_m) * (1.0 + 4.0 * max(0.0, 0.7 - est.score))
        r = Registration(False, float(x), float(y), heading, float(scale), n, est.inlier_ratio, float(sigma),
                         est.score, est.distinct, est.psr, method)
        side = win.rgb.shape[0]
        if not (0 <= cx < side and 0 <= cy < side):
            r.reason = "the frame centre falls outside the map window"
        elif abs(scale - 1.0) > cfg.max_scale_error:
            r.reason = f"scale {scale:.2f} is not the altitude's (1 +- {cfg.max_scale_error})"
        elif method == "features" and n < cfg.min_inliers:
            r.reason = f"{n} inliers < {cfg.min_inliers}"
        elif method == "features" and est.inlier_ratio < cfg.min_inlier_ratio:
            r.reason = f"inlier ratio {est.inlier_ratio:.2f} < {cfg.min_inlier_ratio}"
        elif method == "correlation" and est.score < cfg.min_peak:
            r.reason = f"correlation peak {est.score:.2f} < {cfg.min_peak}"
        elif method == "correlation" and est.distinct < cfg.min_distinct:
            r.reason = f"correlation peak not distinct ({est.distinct:.2f} < {cfg.min_distinct})"
        elif method == "correlation" and n < cfg.min_votes:
            r.reason = f"inconsistent geometry: {n} of {cfg.vote_grid ** 2} frame parts agree (< {cfg.min_votes})"
            r.tentative = True
        else:
            r.ok = True
        return r
