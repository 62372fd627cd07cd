"""Visual odometry between consecutive nadir frames: how far the drone moved over the ground, and its turn.

Features are detected on a downscaled grey copy of each frame (ORB or SIFT, see
:class:`OdometryConfig`), matched to the previous frame (k=2 nearest neighbours, Lowe's ratio test) and a
similarity transform (rotation, uniform scale, translation) is fitted robustly
(``cv2.estimateAffinePartial2D`` with RANSAC or LMedS; OpenCV 5 offers no USAC there). The current frame's centre, carried back into
the previous frame by the inverse transform, is where the drone now is, in the previous frame's pixels;
times the ground sampling distance ``footprint / width`` with ``footprint = 2 * altitude * tan(hfov / 2)``
(flat ground, nadir camera) that is a displacement in metres along the previous frame's right/up axes,
turned into east/north with the previous frame's compass heading (``heading_deg``; None when the frames
are already north-up, so that right = east and up = north).

It refuses rather than guesses: too few features (water, blur, a uniform or black frame), too few or too
small a share of inliers (``min_inliers`` of any share, or ``consistent_inliers`` that make up
``consistent_ratio`` of the matches: a weakly textured frame whose few matches all agree; across 112
kidnappings of the held-out flights no refused pair had more than 58 % of its matches agree), a scale change beyond ``max_scale_change`` (a mismatch, or a climb the altitude
would have told), or frames too far apart in time all give ``Motion(ok=False, reason=...)``. A failure says what it means
for a track: ``jump`` when both frames are textured (``textured_features``) yet do not match (the picture
jumped: a kidnapping, a dropped stretch), ``bland`` when one of them sees too little ground texture to
measure (water, a uniform field: nothing contradicts the motion the filter predicts).
Black pixels (the unseen corners of a frame turned north-up) are masked out, since their borders do not
move with the ground.

    vo = VisualOdometry(OdometryConfig())
    m = vo.update(image_rgb, t, altitude_m=150, hfov_deg=60, heading_deg=None)
    if m.ok: m.dx_e_m, m.dy_n_m, m.dyaw_deg, m.inliers, m.sigma_m
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DETECTORS = ("orb", "sift")  # AKAZE left OpenCV 5's main modules (opencv-contrib)
ESTIMATORS = ("ransac", "lmeds")


@dataclass
class OdometryConfig:
    detector: str = "sift"  # orb | sift (measured on NAIP flights: docs/results/filter.md)
    max_side_px: int = 160  # frames are downscaled so that their longer side is at most this
    n_features: int = 1500  # feature budget
    ratio: float = 0.8  # Lowe's ratio test on the two nearest descriptors
    estimator: str = "ransac"  # ransac | lmeds
    reproj_px: float = 3.0  # inlier threshold, downscaled pixels
    min_inliers: int = 15
    min_inlier_ratio: float = 0.2  # inliers / ratio-test matches
    # a frame with few features (a weakly textured field at 150 m) still measures when its few matches all
    # agree: at least this many inliers making up at least ``consistent_ratio`` of the matches
    consistent_inliers: int = 12
    consistent_ratio: float = 0.7
    textured_features: int = 45  # frames with fewer features see bland ground: a failed match there is not a jump
    # fewer agreeing inliers than consistent_inliers are too few to measure, but this many making up
    # consistent_ratio of the matches show the two pictures are of the same ground: not a jump (measured: a
    # 10 deg wobble at 300 m, 11 of 14 matches agreeing, broke the registered track and left the filter's
    # grid-wide mean trusted 30-40 m off for 14 frames)
    agreeing_few: int = 8
    max_scale_change: float = 0.15  # |scale - 1| above this: refused
    max_gap_s: float = 5.0  # frames further apart than this are not compared
    clahe_clip: float = 3.0  # local contrast equalisation before detection (0: off)
    mask_erode_px: int = 7  # black (unseen) pixels, grown by this, get no features

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"odometry detector {self.detector!r} is not one of {DETECTORS}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"odometry estimator {self.estimator!r} is not one of {ESTIMATORS}")
        if self.max_side_px < 32:
            raise ValueError(f"odometry max_side_px must be >= 32, got {self.max_side_px}")


@dataclass
class Motion:
    """The drone's motion since the previous frame (ground metres; east/north; heading change)."""

    ok: bool
    dx_e_m: float = math.nan
    dy_n_m: float = math.nan
    dyaw_deg: float = math.nan  # change of the image top's compass heading (clockwise positive)
    dt_s: float = math.nan
    inliers: int = 0
    matches: int = 0
    sigma_m: float = math.nan  # 1-sigma of each displacement component from the fit's residuals
    scale: float = math.nan  # > 1: the ground looks bigger (the drone descended)
    reason: str = ""
    jump: bool = False  # both frames textured, yet they do not match: the picture jumped (or a blur)
    bland: bool = False  # too few features to measure (water, a uniform field): nothing seen, nothing contradicted

    @property
    def distance_m(self) -> float:
        return math.hypot(self.dx_e_m, self.dy_n_m) if self.ok else math.nan


@dataclass
class _Keyframe:
    t: float
    kps: np.ndarray  # (N, 2) float32, downscaled pixels
    desc: np.ndarray | None
    size: tuple[int, int]  # downscaled (w, h)
    gsd_m: float  # metres per downscaled pixel
    heading_deg: float | None


def _detector(cfg: OdometryConfig):
    import cv2

    if cfg.detector == "orb":
        return cv2.ORB_create(nfeatures=cfg.n_features, fastThreshold=5), cv2.NORM_HAMMING
    return cv2.SIFT_create(nfeatures=cfg.n_features, contrastThreshold=0.01), cv2.NORM_L2


class VisualOdometry:
    """Frame-to-frame motion (module docstring). One instance per camera stream; not thread-safe."""

    def __init__(self, cfg: OdometryConfig | None = None, features: dict | None = None):
        """``features``: a dict kept by a caller that flies the same frames several times (the export's
        calibration tries several likelihoods on one set of flights): each frame's features are detected once
        and found there again (keyed by the image object, alive as long as the caller keeps the frames)."""
        import cv2

        self.cfg = cfg or OdometryConfig()
        self.features = features
        self._cv2 = cv2
        self._det, norm = _detector(self.cfg)
        self._matcher = cv2.BFMatcher(norm)
        self._prev: _Keyframe | None = None

    def reset(self) -> None:
        self._prev = None

    def _keyframe(self, image: np.ndarray, t: float, altitude_m: float, hfov_deg: float,
                  heading_deg: float | None) -> _Keyframe:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"odometry expects an RGB uint8 (H, W, 3) frame, got {image.dtype} {image.shape}")
        footprint = 2.0 * float(altitude_m) * math.tan(math.radians(float(hfov_deg)) / 2.0)
        key = (id(image), image.shape)
        found = self.features.get(key) if self.features is not None else None
        if found is None:
            found = self._detect(image)
            if self.features is not None:
                self.features[key] = found
        pts, desc, size = found
        return _Keyframe(float(t), pts, desc, size, footprint / size[0], heading_deg)

    def _detect(self, image: np.ndarray):
        """(keypoints (N, 2), descriptors, downscaled size) of a frame."""
        cv2 = self._cv2
        h, w = image.shape[:2]
        f = min(1.0, self.cfg.max_side_px / max(h, w))
        size = (max(1, round(w * f)), max(1, round(h * f)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if f < 1.0 else image
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        if self.cfg.clahe_clip > 0:  # lifts the faint texture of fields and water
            grey = cv2.createCLAHE(self.cfg.clahe_clip, (4, 4)).apply(grey)
        mask = (small.max(axis=2) > 0).astype(np.uint8) * 255
        if self.cfg.mask_erode_px > 0:
            k = 2 * self.cfg.mask_erode_px + 1
            mask = cv2.erode(mask, np.ones((k, k), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=255)
        kps, desc = self._det.detectAndCompute(grey, mask)
        return np.array([k.pt for k in kps], np.float32).reshape(-1, 2), desc, size

    def update(self, image_rgb: np.ndarray, t: float, altitude_m: float, hfov_deg: float,
               heading_deg: float | None = None) -> Motion:
        """Motion from the previous frame to this one; the first frame (or after a gap) has none."""
        if not (altitude_m and math.isfinite(altitude_m) and altitude_m > 0):
            self._prev = None
            return Motion(False, reason=f"no altitude ({altitude_m}): no scale for the odometry")
        if heading_deg is not None and not math.isfinite(heading_deg):
            heading_deg = None
        cur = self._keyframe(image_rgb, t, altitude_m, hfov_deg, heading_deg)
        prev, self._prev = self._prev, cur
        if prev is None:
            return Motion(False, reason="first frame")
        dt = cur.t - prev.t
        if not 0 < dt <= self.cfg.max_gap_s:
            return Motion(False, dt_s=dt, reason=f"frames {dt:.2f} s apart (limit {self.cfg.max_gap_s} s)")
        if prev.size != cur.size:
            return Motion(False, dt_s=dt, reason="frame size changed")
        return self._estimate(prev, cur, dt)

    def _estimate(self, prev: _Keyframe, cur: _Keyframe, dt: float) -> Motion:
        cv2, cfg = self._cv2, self.cfg
        need = min(cfg.min_inliers, cfg.consistent_inliers)
        if prev.desc is None or cur.desc is None or len(prev.kps) < need or len(cur.kps) < need:
            return Motion(False, dt_s=dt, reason=f"too few features ({len(prev.kps)}, {len(cur.kps)})", bland=True)
        pairs = self._matcher.knnMatch(prev.desc, cur.desc, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < cfg.ratio * p[1].distance]
        # both frames textured, yet unmatched: the picture jumped; one of them bland (entering water, a field):
        # nothing contradicts the motion, nothing measured it
        jump = min(len(prev.kps), len(cur.kps)) >= cfg.textured_features
        if len(good) < need:
            return Motion(False, dt_s=dt, matches=len(good), reason=f"too few matches ({len(good)})", jump=jump,
                          bland=not jump)
        src = prev.kps[[m.queryIdx for m in good]]
        dst = cur.kps[[m.trainIdx for m in good]]
        method = cv2.LMEDS if cfg.estimator == "lmeds" else cv2.RANSAC
        a, inl = cv2.estimateAffinePartial2D(src, dst, method=method, ransacReprojThreshold=cfg.reproj_px,
                                             maxIters=2000, confidence=0.999)
        n_in = int(inl.sum()) if inl is not None else 0
        many = n_in >= cfg.min_inliers and n_in >= cfg.min_inlier_ratio * len(good)
        agreeing = n_in >= cfg.consistent_inliers and n_in >= cfg.consistent_ratio * len(good)
        if a is None or not (many or agreeing):
            same_ground = n_in >= cfg.agreeing_few and n_in >= cfg.consistent_ratio * len(good)
            jump = jump and not same_ground
            return Motion(False, dt_s=dt, inliers=n_in, matches=len(good),
                          reason=f"no consistent motion ({n_in} inliers of {len(good)} matches)", jump=jump,
                          bland=not jump)
        scale = float(math.hypot(a[0, 0], a[1, 0]))
        if abs(scale - 1.0) > cfg.max_scale_change:
            return Motion(False, dt_s=dt, inliers=n_in, matches=len(good), scale=scale,
                          reason=f"scale change {scale:.2f} (limit 1 +- {cfg.max_scale_change})")
        theta = math.atan2(a[1, 0], a[0, 0])  # clockwise on screen (image y points down)
        w, h = cur.size
        c = np.array([w / 2.0 - 0.5, h / 2.0 - 0.5])
        m, tvec = a[:, :2], a[:, 2]
        p_prev = np.linalg.solve(m, c - tvec)  # the current centre, in the previous frame's pixels
        d = p_prev - c
        right_m, up_m = float(d[0]) * prev.gsd_m, -float(d[1]) * prev.gsd_m
        east, north = _to_east_north(right_m, up_m, prev.heading_deg)
        resid = np.linalg.norm((src[inl.ravel() > 0] @ m.T + tvec) - dst[inl.ravel() > 0], axis=1)
        # the centre is fitted from n_in points: its error shrinks with their number
        sigma = float(np.sqrt(np.mean(resid**2)) / math.sqrt(n_in) * 2.0 + 0.5) * prev.gsd_m
        return Motion(True, east, north, -math.degrees(theta), dt, n_in, len(good), sigma, scale, "ok")


def frame_texture(image_rgb: np.ndarray, max_side_px: int = 160) -> float:
    """Standard deviation of the grey level over the seen (non-black) pixels of a downscaled frame: below a
    few grey levels a frame shows nothing to localise by (fog, a lens cap, a uniform roof)."""
    import cv2

    h, w = image_rgb.shape[:2]
    f = min(1.0, max_side_px / max(h, w))
    small = cv2.resize(image_rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    seen = cv2.erode((small.max(axis=2) > 0).astype(np.uint8), np.ones((5, 5), np.uint8),
                     borderType=cv2.BORDER_CONSTANT, borderValue=1) > 0  # not the blended rim of the black
    return float(grey[seen].std()) if seen.sum() > 16 else 0.0


def _to_east_north(right_m: float, up_m: float, heading_deg: float | None) -> tuple[float, float]:
    """A displacement along a frame's right/up axes to east/north, the frame top facing ``heading_deg``."""
    if heading_deg is None:
        return right_m, up_m
    h = math.radians(heading_deg)
    return (right_m * math.cos(h) + up_m * math.sin(h), -right_m * math.sin(h) + up_m * math.cos(h))
