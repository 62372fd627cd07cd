"""Checks on maps before work is spent on them: do two rasters cover the same ground, is a map fine enough.

Everything is compared in one CRS: the first raster's metric CRS (:attr:`GeoRaster.metric_crs`); the
second raster's outline is transformed into it (densified edges, so a raster in another UTM zone or in
degrees is placed correctly). Distances between far-apart maps are geodesic (WGS84 ellipsoid), never a
difference of coordinates from two zones.

- :func:`check_overlap(a, b)` raises :class:`tiles.raster.RasterError` when the rasters share no ground
  (or less than ``min_fraction`` of the smaller one) and returns the overlap otherwise.
- :func:`pixels_per_tile(raster, footprint_m)` is the map's native pixels across one tile;
  :func:`coarse_map_warning` is the warning text when that is below :data:`MIN_TILE_PX` (else None).
"""

from __future__ import annotations

import math

import numpy as np

from tiles.raster import GeoRaster, RasterError

# Below this many native map pixels across a tile the model sees an upsampled blur (scaled up 8x or
# more to a 128 px input): the texture retrieval relies on is not in the map. The floor is half of what
# the bundled demo works with (NAIP 5 m/px at 150 m, hfov 60: 35 px per tile); a 90 m/px map at 150 m
# gives 2 px.
MIN_TILE_PX = 16


def _outline_in(r: GeoRaster, crs, n: int = 16) -> np.ndarray:
    """(4n, 2) points along the raster's pixel outline, in ``crs`` (a pyproj CRS)."""
    from pyproj import Transformer

    t = np.linspace(0, 1, n, endpoint=False)
    cols = np.concatenate([t * r.width, np.full_like(t, r.width), (1 - t) * r.width, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * r.height, np.full_like(t, r.height), (1 - t) * r.height])
    a = r.transform
    rx, ry = a.a * cols + a.b * rows + a.c, a.d * cols + a.e * rows + a.f
    x, y = Transformer.from_crs(r._crs, crs, always_xy=True).transform(rx, ry)
    return np.stack([np.asarray(x), np.asarray(y)], axis=1)


def _area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return abs(0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _centre_ll(r: GeoRaster) -> tuple[float, float]:
    xmin, ymin, xmax, ymax = r.bounds_m
    return r.to_wgs84((xmin + xmax) / 2, (ymin + ymax) / 2)


def check_overlap(a: GeoRaster, b: GeoRaster, min_fraction: float = 0.0) -> dict:
    """The ground the two rasters share, compared in ``a``'s metric CRS.

    Returns ``{"crs", "overlap_m2", "fraction_a", "fraction_b"}`` (fractions of each raster's area).
    Raises :class:`RasterError` when there is no overlap, or when it is at most ``min_fraction`` of
    the smaller raster, naming both files, their CRSs and the geodesic distance between their centres.
    """
    import cv2
    from pyproj import Geod

    crs = a.metric_crs
    pa, pb = _outline_in(a, crs), _outline_in(b, crs)
    overlap, area_a, area_b = 0.0, _area(pa), math.inf
    if np.all(np.isfinite(pb)):  # a raster on the other side of the Earth may not project at all
        # convex hulls: an outline from another CRS bows slightly; OpenCV intersects convex polygons
        o = pa.mean(axis=0)  # local coordinates keep float32 precise
        ha, hb = (cv2.convexHull((p - o).astype(np.float32)) for p in (pa, pb))
        area, _ = cv2.intersectConvexConvex(ha, hb)
        overlap, area_b = max(0.0, float(area)), _area(pb)
    fa, fb = overlap / area_a, overlap / area_b
    if overlap <= 0.0 or max(fa, fb) <= min_fraction:  # max: the fraction of the smaller raster
        (lat_a, lon_a), (lat_b, lon_b) = _centre_ll(a), _centre_ll(b)
        _, _, dist = Geod(ellps="WGS84").inv(lon_a, lat_a, lon_b, lat_b)
        share = "share no ground" if overlap <= 0 else f"share only {100 * max(fa, fb):.1f}% of their area"
        raise RasterError(
            f"{a.path.name} ({a.crs.to_string()}) and {b.path.name} ({b.crs.to_string()}) {share}: their "
            f"centres are {dist / 1000:,.1f} km apart (lat/lon {lat_a:.5f}, {lon_a:.5f} and {lat_b:.5f}, "
            f"{lon_b:.5f}); give two rasters of the same area"
        )
    return {"crs": crs.to_string(), "overlap_m2": overlap, "fraction_a": fa, "fraction_b": fb}


def pixels_per_tile(raster: GeoRaster, footprint_m: float) -> float:
    """Native map pixels across one tile of ``footprint_m`` metres (``footprint_m / gsd_m``)."""
    return float(footprint_m) / raster.gsd_m


def coarse_map_warning(raster: GeoRaster, footprint_m: float, altitude_m: float | None = None,
                       min_px: int = MIN_TILE_PX) -> str | None:
    """A warning when a tile spans fewer than ``min_px`` map pixels, else None."""
    px = pixels_per_tile(raster, footprint_m)
    if px >= min_px:
        return None
    at = f" at {altitude_m:g} m" if altitude_m is not None else ""
    return (f"{raster.path.name} is too coarse for tiles of {footprint_m:.0f} m{at}: {raster.gsd_m:.3g} m/px gives "
            f"{px:.1f} px per tile (at least {min_px} wanted); use a finer map (<= {footprint_m / min_px:.2g} m/px) "
            "or fly higher")
