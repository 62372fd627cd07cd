"""Real images for parity checks, calibration and the accuracy gate: GeoTIFF crops and image folders.

Every function returns RGB ``uint8`` arrays ``(H, W, 3)``, the project's one image convention
(CONTRACTS §1); the caller applies :class:`runtime.engines.preprocess.Preprocess`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from common.image_files import IMAGE_SUFFIXES

_log = logging.getLogger(__name__)



def grid_windows(width: int, height: int, crop_px: int, n_max: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners (col, row) of non-overlapping ``crop_px`` squares covering a raster, row-major.

    With ``n_max`` the corners are thinned evenly (every k-th) to at most ``n_max``.
    """
    if crop_px < 8 or crop_px > min(width, height):
        raise ValueError(f"crop_px={crop_px} must be between 8 and the raster's smaller side {min(width, height)}")
    corners = [(c, r) for r in range(0, height - crop_px + 1, crop_px) for c in range(0, width - crop_px + 1, crop_px)]
    if n_max is not None and len(corners) > n_max:
        idx = np.linspace(0, len(corners) - 1, n_max).round().astype(int)
        corners = [corners[i] for i in idx]
    return corners


def read_crops(tif: str | os.PathLike, corners: list[tuple[int, int]], crop_px: int) -> list[np.ndarray]:
    """RGB uint8 crops of ``crop_px`` at pixel corners (col, row) of a GeoTIFF, read window by window
    (colour bands, alpha/nodata and 8-bit scaling as :mod:`tiles.raster` does them everywhere)."""
    from tiles.raster import open_raster

    with open_raster(tif) as r:
        return [r.read_pixels(c, row, crop_px, crop_px)[0] for c, row in corners]


def raster_grid_crops(tif: str | os.PathLike, crop_px: int, n_max: int | None = None) -> list[np.ndarray]:
    """Evenly spread non-overlapping crops of a GeoTIFF (the same corners for every year of an area)."""
    import rasterio

    with rasterio.open(tif) as src:
        corners = grid_windows(src.width, src.height, crop_px, n_max)
    return read_crops(tif, corners, crop_px)


def random_crops(tif: str | os.PathLike, n: int, crop_px: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` crops at random positions (seeded), e.g. for parity checks."""
    import rasterio

    rng = np.random.default_rng(seed)
    with rasterio.open(tif) as src:
        w, h = src.width, src.height
    if crop_px > min(w, h):
        raise ValueError(f"crop_px={crop_px} exceeds the raster {tif} ({w}x{h} px)")
    corners = [(int(rng.integers(0, w - crop_px + 1)), int(rng.integers(0, h - crop_px + 1))) for _ in range(n)]
    return read_crops(tif, corners, crop_px)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted, so the order and hence hashes are stable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; give a folder of drone frames (jpg/png)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    return files


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One image file as RGB uint8 (OpenCV reads BGR; converted once here)."""
    import cv2

    from runtime.engines.preprocess import bgr_to_rgb

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}: not an image OpenCV understands, or unreadable")
    return bgr_to_rgb(img)


def folder_images(folder: str | os.PathLike, n_max: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Up to ``n_max`` images of a folder (an evenly spaced selection of the sorted list)."""
    files = list_images(folder)
    if n_max is not None and len(files) > n_max:
        idx = np.linspace(0, len(files) - 1, n_max).round().astype(int)
        files = [files[i] for i in idx]
    return [read_image(p) for p in files]


def rendered_views(tif: str | os.PathLike, n: int, altitudes_m=(150, 200, 250, 300), hfov_deg: float = 60.0,
                   size_px: int = 256, seed: int = 0) -> list[np.ndarray]:
    """``n`` drone-like views rendered from a GeoTIFF (random position, heading, altitude; CONTRACTS §8)."""
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    rng = np.random.default_rng(seed)
    raster = open_raster(tif)
    xmin, ymin, xmax, ymax = raster.bounds_m
    views = []
    for _ in range(n):
        alt = float(rng.choice(np.asarray(altitudes_m, float)))
        half = alt * np.tan(np.radians(hfov_deg) / 2)
        pad = min(half * 1.5, (xmax - xmin) / 2 - 1, (ymax - ymin) / 2 - 1)
        pose = CameraPose(x=float(rng.uniform(xmin + pad, xmax - pad)), y=float(rng.uniform(ymin + pad, ymax - pad)),
                          altitude_m=alt, heading_deg=float(rng.uniform(0, 360)), hfov_deg=hfov_deg)
        views.append(render_view(raster, pose, size_px=(size_px, size_px), rng=rng).image)
    return views
