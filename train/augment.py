"""Training augmentations of a (drone, satellite) pair, with torchvision's v2 transforms.

Applied to RGB uint8 images before :class:`runtime.preprocess.Preprocess` resizes and normalises them
(the one preprocessing definition), following the paper: a horizontal flip of both views together
(p=0.5, keeps them matching), a random multiple of 90 degrees on the satellite view, colour jitter,
Gaussian blur and random erasing (coarse dropout). Randomness comes from torch's generator, which the
trainer seeds and DataLoader workers derive from it.
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
    color_jitter: float = 0.15
    blur_p: float = 0.3
    erase_p: float = 0.3


class PairAugment:
    """``aug(drone, satellite) -> (drone, satellite)``, RGB uint8 (H, W, 3) in and out."""

    def __init__(self, cfg: AugmentConfig | None = None):
        from torchvision.transforms import v2

        self.cfg = cfg or AugmentConfig()
        c = self.cfg.color_jitter
        per_view = []
        if c > 0:
            per_view.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c, 0.5) / 3))
        if self.cfg.blur_p > 0:
            per_view.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))],
                                           p=self.cfg.blur_p))
        if self.cfg.erase_p > 0:
            per_view.append(v2.RandomErasing(p=self.cfg.erase_p, scale=(0.02, 0.15), value=0))
        self.per_view = v2.Compose(per_view) if per_view else None
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
