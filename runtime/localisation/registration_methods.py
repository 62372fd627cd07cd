"""The two ways :mod:`runtime.localisation.registration` aligns a prepared frame with a map window (OpenCV only).

- :func:`match_features`: local features (SIFT, RootSIFT, ORB, AKAZE), ratio test and mutual check, then a
  robust similarity (RANSAC with Levenberg-Marquardt refinement: OpenCV's partial affine has no USAC) or a
  homography (USAC MAGSAC++). For maps fine enough that a footprint spans hundreds of pixels.
- :func:`match_correlation`: normalised cross-correlation of gradient images over a disc of the frame,
  searched over headings, with a sub-pixel peak and a distinctiveness test (best peak against the best one
  elsewhere). For coarse maps where a footprint spans tens of pixels and local features find too few points.

Both take grey float/uint8 images in the same ground resolution, with validity masks, and return an
:class:`Estimate` mapping prepared-frame pixels to window pixels (OpenCV convention: pixel centres at
integers), or None when nothing can be estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Estimate:
    A: np.ndarray  # 2x3 (similarity) or 3x3 (homography): prepared-frame px -> window px
    inliers: int
    inlier_ratio: float
    score: float  # features: inlier count; correlation: peak NCC
    distinct: float  # features: inlier ratio; correlation: best peak minus the best one elsewhere
    angle_deg: float = 0.0  # correlation: the heading offset found (clockwise)
    psr: float = math.nan  # correlation: peak-to-sidelobe ratio (peak - mean elsewhere) / std elsewhere


# ---- local features ------------------------------------------------------------------------------------
def _detector(kind: str, n_features: int):
    if kind in ("sift", "rootsift"):
        return cv2.SIFT_create(nfeatures=n_features), cv2.NORM_L2
    if kind == "orb":
        return cv2.ORB_create(nfeatures=n_features, fastThreshold=5), cv2.NORM_HAMMING
    if kind == "akaze":
        if not hasattr(cv2, "AKAZE_create"):
            raise ValueError(f"AKAZE is not in this OpenCV ({cv2.__version__}: OpenCV 5 moved it to "
                             "opencv-contrib-python); use features 'sift', 'rootsift' or 'orb'")
        return cv2.AKAZE_create(threshold=1e-4), cv2.NORM_HAMMING
    raise ValueError(f"unknown feature kind {kind!r}: use 'sift', 'rootsift', 'orb' or 'akaze'")


def detect(image: np.ndarray, mask: np.ndarray, kind: str, n_features: int):
    """Keypoint coordinates (N, 2) and descriptors of a grey uint8 image inside ``mask``."""
    det, _ = _detector(kind, n_features)
    m = cv2.erode(mask.astype(np.uint8) * 255, np.ones((5, 5), np.uint8))
    kps, desc = det.detectAndCompute(image, m)
    if desc is None or len(kps) == 0:
        return np.zeros((0, 2), np.float32), None
    if kind == "rootsift":
        desc = np.sqrt(desc / (np.abs(desc).sum(axis=1, keepdims=True) + 1e-7)).astype(np.float32)
    return np.array([k.pt for k in kps], np.float32), desc


def mutual_ratio_matches(d1, d2, norm: int, ratio: float, mutual: bool = True) -> np.ndarray:
    """Index pairs (M, 2) passing Lowe's ratio test (and, with ``mutual``, best both ways)."""
    if d1 is None or d2 is None or len(d1) < 2 or len(d2) < 2:
        return np.zeros((0, 2), int)
    bf = cv2.BFMatcher(norm)
    fwd = bf.knnMatch(d1, d2, k=2)
    pairs = [(m[0].queryIdx, m[0].trainIdx) for m in fwd if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if mutual and pairs:
        back = {m.queryIdx: m.trainIdx for m in bf.match(d2, d1)}
        pairs = [(q, t) for q, t in pairs if back.get(t) == q]
    return np.array(pairs, int).reshape(-1, 2)


def match_features(frame, frame_mask, window, window_mask, *, kind="sift", ratio=0.8, mutual=True,
                   n_features=2000, thresh_px=3.0, homography=False) -> Estimate | None:
    p1, d1 = detect(frame, frame_mask, kind, n_features)
    p2, d2 = detect(window, window_mask, kind, n_features * 2)
    pairs = mutual_ratio_matches(d1, d2, _detector(kind, 1)[1], ratio, mutual)
    if len(pairs) < 4:
        return None
    src, dst = p1[pairs[:, 0]], p2[pairs[:, 1]]
    if homography:
        A, inl = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, thresh_px, maxIters=5000, confidence=0.999)
    else:
        A, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=thresh_px,
                                             maxIters=5000, confidence=0.999, refineIters=10)
    if A is None or inl is None:
        return None
    n = int(inl.sum())
    return Estimate(A, n, n / len(pairs), float(n), n / len(pairs))


# ---- correlation ---------------------------------------------------------------------------------------
def gradient_image(grey: np.ndarray, blur_px: float) -> np.ndarray:
    """Gradient magnitude of a grey image after a Gaussian blur (more stable across seasons than grey)."""
    g = grey.astype(np.float32)
    if blur_px > 0:
        g = cv2.GaussianBlur(g, (0, 0), blur_px)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)  # not cv2.magnitude: its last bit depends on where the arrays lie in memory


def _subpixel(r: np.ndarray, y: int, x: int) -> tuple[float, float]:
    def fit(a, b, c):
        d = a - 2 * b + c
        return 0.0 if abs(d) < 1e-9 else float(np.clip(0.5 * (a - c) / d, -0.5, 0.5))

    dx = fit(r[y, x - 1], r[y, x], r[y, x + 1]) if 0 < x < r.shape[1] - 1 else 0.0
    dy = fit(r[y - 1, x], r[y, x], r[y + 1, x]) if 0 < y < r.shape[0] - 1 else 0.0
    return x + dx, y + dy


def _second_peak(r: np.ndarray, y: int, x: int, radius: int) -> float:
    r2 = r.copy()
    r2[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1] = -1.0
    return float(r2.max()) if r2.size else -1.0


def match_correlation(template, disc, window, window_mask, angles_deg, *, exclusion_px: int, vote_grid: int = 2,
                      vote_tol_px: int = 2) -> Estimate | None:
    """Best NCC placement of ``template`` (square, valid on the ``disc`` mask) turned by each of
    ``angles_deg`` (clockwise) over ``window``; the winner's surface gives a sub-pixel peak and the
    distinctiveness (best minus the best peak farther than ``exclusion_px``)."""
    d = template.shape[0]
    if window.shape[0] <= d or window.shape[1] <= d:
        return None
    c = ((d - 1) / 2.0, (d - 1) / 2.0)
    mask = disc.astype(np.float32)
    win = window.astype(np.float32)
    best = None
    for a in angles_deg:
        R = cv2.getRotationMatrix2D(c, -float(a), 1.0)
        t = cv2.warpAffine(template.astype(np.float32), R, (d, d), flags=cv2.INTER_LINEAR)
        r = cv2.matchTemplate(win, t, cv2.TM_CCOEFF_NORMED, mask=mask)
        r = np.nan_to_num(r, nan=-1.0, posinf=-1.0, neginf=-1.0)
        if window_mask is not None:  # placements touching missing map pixels do not count
            r[_invalid_placements(window_mask, d, mask) > 0] = -1.0
        y, x = np.unravel_index(int(np.argmax(r)), r.shape)
        if best is None or r[y, x] > best[0]:
            best = (float(r[y, x]), float(a), r, int(y), int(x), R, t)
    peak, a, r, y, x, R, t = best
    if peak <= -1.0:
        return None
    sx, sy = _subpixel(r, y, x)
    second = _second_peak(r, y, x, exclusion_px)
    side = r.copy()
    side[max(0, y - exclusion_px):y + exclusion_px + 1, max(0, x - exclusion_px):x + exclusion_px + 1] = np.nan
    side = side[np.isfinite(side) & (side > -1.0)]
    psr = (peak - float(side.mean())) / (float(side.std()) + 1e-6) if side.size > 10 else 0.0
    votes = _quadrant_votes(win, t, mask, x, y, vote_tol_px, vote_grid)
    # prepared-frame px -> window px: turn by a about the template centre, then shift to the peak
    A = np.vstack([R, [0, 0, 1]])
    A = np.array([[1, 0, sx], [0, 1, sy], [0, 0, 1]]) @ A
    return Estimate(A[:2], votes, math.nan, peak, peak - second, a, psr)


def _invalid_placements(window_mask: np.ndarray, d: int, disc: np.ndarray) -> np.ndarray:
    bad = (window_mask == 0).astype(np.float32)
    if not bad.any():
        return np.zeros((window_mask.shape[0] - d + 1, window_mask.shape[1] - d + 1), np.float32)
    return cv2.matchTemplate(bad, disc, cv2.TM_CCORR)


def _quadrant_votes(win, t, mask, x: int, y: int, tol_px: int, grid: int = 2) -> int:
    """How many parts of the template (a ``grid`` x ``grid`` split into cells half its side, overlapping
    when ``grid`` > 2), each correlated alone over the whole window, peak within ``tol_px`` of the whole
    template's peak. A true match is consistent geometry (its parts agree); a chance peak of the whole in
    a wrong window rarely gets the parts to agree (measured: docs/results/registration.md)."""
    d = t.shape[0]
    h = d // 2
    starts = np.linspace(0, d - h, grid).round().astype(int)
    votes = 0
    for r0 in starts:
        for c0 in starts:
            m = np.zeros_like(mask)
            m[r0:r0 + h, c0:c0 + h] = 1
            m *= mask
            if m.sum() < 16:
                continue
            r = np.nan_to_num(cv2.matchTemplate(win, t, cv2.TM_CCOEFF_NORMED, mask=m), nan=-1.0)
            qy, qx = np.unravel_index(int(np.argmax(r)), r.shape)
            votes += int(abs(qx - x) <= tol_px and abs(qy - y) <= tol_px)
    return votes
