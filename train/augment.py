"""Training augmentations of a (drone, satellite) pair: the official Sample4Geo set, in torchvision v2.

Applied to RGB uint8 images before :class:`runtime.engines.preprocess.Preprocess` resizes and normalises them
(the one preprocessing definition). Following the official code (which uses albumentations), each view
independently gets JPEG compression (quality 90-100, p=0.5), colour jitter (0.15 brightness, contrast,
saturation and hue, p=0.5), blur or sharpen (p=0.3), and grid dropout (ratio 0.4) or coarse dropout
(10-25 holes of 10-20 % of the side) (p=0.3); both views are flipped together (p=0.5, keeps them
matching) and the satellite view is turned by a random multiple of 90 degrees where the recipe asks
(``satellite_rot90``). Randomness comes from torch's generator, which the trainer seeds per rank and
DataLoader workers derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class AugmentConfig:
    enabled: bool = True
    flip_p: float = 0.5
    satellite_rot90: bool = True
    jpeg_p: float = 0.5
    jpeg_min_quality: int = 90
    color_jitter: float = 0.15
    color_jitter_p: float = 0.5
    blur_p: float = 0.3  # blur or sharpen
    dropout_p: float = 0.3  # grid dropout or coarse dropout


class JpegCompression(torch.nn.Module):
    """Re-encode as JPEG with a random quality in ``quality`` (OpenCV's codec; the view stays uint8 CHW)."""

    def __init__(self, quality=(90, 100)):
        super().__init__()
        self.quality = quality

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        import cv2

        q = int(torch.randint(self.quality[0], self.quality[1] + 1, ()))
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(t.permute(1, 2, 0).numpy()), [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
            return t
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        return torch.from_numpy(out.reshape(t.shape[1], t.shape[2], -1)).permute(2, 0, 1).contiguous()


class GridDropout(torch.nn.Module):
    """Zero a regular grid of squares: cells of a random size, holes ``ratio`` of the cell, random shift."""

    def __init__(self, ratio: float = 0.4, cells=(4, 10)):
        super().__init__()
        self.ratio, self.cells = ratio, cells

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h, w = t.shape[-2:]
        unit = max(2, min(h, w) // int(torch.randint(self.cells[0], self.cells[1] + 1, ())))
        hole = max(1, int(round(unit * self.ratio)))
        dy, dx = (int(torch.randint(0, unit, ())) for _ in range(2))
        t = t.clone()
        for y in range(dy - unit, h, unit):
            for x in range(dx - unit, w, unit):
                t[..., max(0, y):max(0, y + hole), max(0, x):max(0, x + hole)] = 0
        return t


class CoarseDropout(torch.nn.Module):
    """Zero ``holes`` random rectangles with sides between ``size`` fractions of the image side."""

    def __init__(self, holes=(10, 25), size=(0.1, 0.2)):
        super().__init__()
        self.holes, self.size = holes, size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h, w = t.shape[-2:]
        t = t.clone()
        lo, hi = (max(1, int(f * min(h, w))) for f in self.size)
        for _ in range(int(torch.randint(self.holes[0], self.holes[1] + 1, ()))):
            hh, ww = (int(torch.randint(lo, hi + 1, ())) for _ in range(2))
            y, x = int(torch.randint(0, max(1, h - hh + 1), ())), int(torch.randint(0, max(1, w - ww + 1), ()))
            t[..., y:y + hh, x:x + ww] = 0
        return t


def per_view_transforms(cfg: AugmentConfig):
    """The per-view part (JPEG, colour, blur/sharpen, dropout) as one v2 transform, or None."""
    from torchvision.transforms import v2

    steps = []
    if cfg.jpeg_p > 0:
        steps.append(v2.RandomApply([JpegCompression((cfg.jpeg_min_quality, 100))], p=cfg.jpeg_p))
    c = cfg.color_jitter
    if c > 0 and cfg.color_jitter_p > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c, 0.5))],
                                    p=cfg.color_jitter_p))
    if cfg.blur_p > 0:
        steps.append(v2.RandomApply([v2.RandomChoice([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5)),
                                                      v2.RandomAdjustSharpness(2.0, p=1.0)])], p=cfg.blur_p))
    if cfg.dropout_p > 0:
        steps.append(v2.RandomApply([v2.RandomChoice([GridDropout(), CoarseDropout()])], p=cfg.dropout_p))
    return v2.Compose(steps) if steps else None


class PairAugment:
    """``aug(drone, satellite) -> (drone, satellite)``, RGB uint8 (H, W, 3) in and out."""

    def __init__(self, cfg: AugmentConfig | None = None):
        from torchvision.transforms import v2

        self.cfg = cfg or AugmentConfig()
        self.per_view = per_view_transforms(self.cfg)
        self._v2 = v2

    def _apply(self, t: torch.Tensor) -> torch.Tensor:
        return self.per_view(t) if self.per_view is not None else t

    def __call__(self, drone: np.ndarray, satellite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.cfg.enabled:
            return drone, satellite
        F = self._v2.functional
        d = torch.from_numpy(np.ascontiguousarray(drone)).permute(2, 0, 1)
        s = torch.from_numpy(np.ascontiguousarray(satellite)).permute(2, 0, 1)
        if torch.rand(()) < self.cfg.flip_p:
            d, s = F.horizontal_flip(d), F.horizontal_flip(s)
        if self.cfg.satellite_rot90:
            s = torch.rot90(s, int(torch.randint(0, 4, ())), dims=(1, 2))
        d, s = self._apply(d), self._apply(s)
        return (np.ascontiguousarray(d.permute(1, 2, 0).numpy()),
                np.ascontiguousarray(s.permute(1, 2, 0).numpy()))
