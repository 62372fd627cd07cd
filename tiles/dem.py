"""A DEM GeoTIFF (any CRS GDAL knows) resampled onto a north-up metric grid: a :class:`tiles.terrain.TerrainGrid`.

Used at export time (``python -m export ... --dem DEM.tif`` stores the grid in the tile database) and by the
replays that drape a map on relief. rasterio is imported here only when a DEM is read. The grid is in the
metric CRS given (the tile database's), else the DEM's own when projected in metres, else the UTM zone of
its centre (as :mod:`tiles.raster` does for imagery). Heights are resampled bilinearly; the DEM's nodata
becomes NaN. A DEM whose vertical unit is not the metre is refused by name.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from tiles.terrain import TerrainError, TerrainGrid

MAX_GRID_SIDE = 8192  # 256 MiB of float32 at most; a finer DEM over a wide area is coarsened to fit


def _metric_crs(src_crs):
    """The DEM's own CRS when it is projected in metres, else None."""
    from pyproj import CRS

    crs = CRS.from_wkt(src_crs.to_wkt())
    if crs.is_projected and all(abs(ax.unit_conversion_factor - 1.0) < 1e-12 for ax in crs.axis_info[:2]):
        return crs
    return None


def read_dem(path: str | os.PathLike, crs=None, bounds_m=None, gsd_m: float | None = None,
             margin_m: float = 0.0) -> TerrainGrid:
    """The DEM at ``path`` on a grid in ``crs`` (pyproj-readable; see the module docstring) over
    ``bounds_m`` (xmin, ymin, xmax, ymax; default the DEM's extent) grown by ``margin_m``, at ``gsd_m``
    metres per cell (default the DEM's own resolution, coarsened to at most :data:`MAX_GRID_SIDE` cells a
    side)."""
    from pyproj import CRS
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from tiles.raster import _rasterio, utm_crs_for

    rasterio = _rasterio()
    path = Path(path)
    if not path.is_file():
        raise TerrainError(f"{path}: no such DEM file (give a GeoTIFF of ground heights, e.g. SRTM or a lidar DTM)")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise TerrainError(f"{path} is not a raster GDAL can read ({e}); give the DEM as a GeoTIFF") from e
    with src:
        if src.crs is None:
            raise TerrainError(f"{path} has no coordinate reference system: georeference the DEM "
                               "(gdal_edit.py -a_srs EPSG:XXXX)")
        _check_units(path, src)
        if crs is None:
            crs = _metric_crs(src.crs)
            if crs is None:
                lon, lat = _centre_lonlat(src)
                crs = utm_crs_for(lon, lat)
        dst_crs = CRS.from_user_input(crs)
        tr, w, h = calculate_default_transform(src.crs, dst_crs.to_wkt(), src.width, src.height, *src.bounds)
        native = (abs(tr.a) + abs(tr.e)) / 2.0
        if bounds_m is None:
            bounds_m = (tr.c, tr.f + tr.e * h, tr.c + tr.a * w, tr.f)
        xmin, ymin, xmax, ymax = (float(v) for v in bounds_m)
        xmin, ymin, xmax, ymax = xmin - margin_m, ymin - margin_m, xmax + margin_m, ymax + margin_m
        gsd = float(gsd_m or native)
        gsd = max(gsd, (xmax - xmin) / MAX_GRID_SIDE, (ymax - ymin) / MAX_GRID_SIDE)
        cols, rows = max(2, math.ceil((xmax - xmin) / gsd)), max(2, math.ceil((ymax - ymin) / gsd))
        heights = np.full((rows, cols), np.nan, np.float32)
        dst_tr = rasterio.transform.from_origin(xmin, ymax, gsd, gsd)
        reproject(source=rasterio.band(src, 1), destination=heights, src_transform=src.transform,
                  src_crs=src.crs, src_nodata=src.nodata, dst_transform=dst_tr, dst_crs=dst_crs.to_wkt(),
                  dst_nodata=np.nan, resampling=Resampling.bilinear)
        if not np.isfinite(heights).any():
            raise TerrainError(f"{path} has no height inside the area {[round(v) for v in bounds_m]} m of "
                               f"{dst_crs.to_string()}: give a DEM that covers the map")
        source = {"name": path.name, "crs": src.crs.to_string(), "native_gsd_m": round(native, 4)}
    from tiles.io import file_sha256

    source["sha256"] = file_sha256(path)
    return TerrainGrid(heights, xmin, ymax, gsd, dst_crs.to_string(), source)


def _centre_lonlat(src) -> tuple[float, float]:
    from pyproj import Transformer

    cx, cy = (src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2
    return Transformer.from_crs(src.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(cx, cy)


def _check_units(path: Path, src) -> None:
    unit = (src.units[0] if src.units else "") or ""
    if unit and unit.lower() not in ("m", "metre", "meter", "metres", "meters"):
        raise TerrainError(f"{path}: heights are in {unit!r}; give a DEM in metres (gdal_calc.py can convert)")
