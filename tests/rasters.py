"""Seeded tiny GeoTIFFs with a real CRS, written by the tests (never shipped).

Each raster carries a smooth random texture plus a few bright markers at known ground positions, so
geometry can be checked from pixels. Variants: projected (UTM north and south), geographic (EPSG:4326),
nodata, alpha, uint16 and float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def texture(h: int, w: int, seed: int = 0, bands: int = 3) -> np.ndarray:
    """(bands, h, w) float in [0, 1]: multi-scale smooth noise, different per band."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.zeros((bands, h, w), np.float32)
    for b in range(bands):
        acc = np.zeros((h, w), np.float32)
        for scale, weight in ((4, 0.5), (16, 0.3), (64, 0.2)):
            small = rng.random((max(2, h // scale), max(2, w // scale))).astype(np.float32)
            acc += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        out[b] = (acc - acc.min()) / (acc.max() - acc.min() + 1e-6)
    return out


def write_raster(
    path: Path,
    *,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    pixel_size: tuple[float, float] = (2.0, 2.0),
    size: tuple[int, int] = (128, 128),  # (width, height)
    dtype: str = "uint8",
    bands: int = 3,
    nodata: float | None = None,
    alpha: bool = False,
    invalid_box: tuple[int, int, int, int] | None = None,  # (col0, row0, col1, row1) set invalid
    seed: int = 0,
    data: np.ndarray | None = None,
) -> Path:
    """Write a north-up GeoTIFF whose top-left corner is ``origin`` (CRS units)."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin

    w, h = size
    if data is None:
        tex = texture(h, w, seed, bands)
        if dtype == "uint8":
            data = (tex * 200 + 30).astype(np.uint8)
        elif dtype == "uint16":
            data = (tex * 3000 + 500).astype(np.uint16)
        else:
            data = (tex * 0.8 + 0.1).astype(dtype)
    count = data.shape[0] + (1 if alpha else 0)
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype.name, crs=crs,
                   transform=from_origin(origin[0], origin[1], pixel_size[0], pixel_size[1]))
    if nodata is not None:
        profile["nodata"] = nodata
    if invalid_box is not None and not alpha:
        c0, r0, c1, r1 = invalid_box
        data = data.copy()
        data[:, r0:r1, c0:c1] = nodata if nodata is not None else 0
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, list(range(1, data.shape[0] + 1)))
        if alpha:
            a = np.full((h, w), 255, data.dtype if data.dtype == np.uint8 else np.uint8)
            if invalid_box is not None:
                c0, r0, c1, r1 = invalid_box
                a[r0:r1, c0:c1] = 0
            ds.write(a.astype(data.dtype), count)
            interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue][: data.shape[0]] + [ColorInterp.alpha]
            ds.colorinterp = interp
    return path


def with_marker(data: np.ndarray, col: int, row: int, radius: int = 2, value: float = 255) -> np.ndarray:
    """Copy of ``data`` (bands, h, w) with a bright square marker centred on pixel (col, row)."""
    out = data.copy()
    out[:, row - radius:row + radius + 1, col - radius:col + radius + 1] = value
    return out
