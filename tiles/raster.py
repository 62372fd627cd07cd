"""Reading GeoTIFFs (any raster GDAL opens) as RGB imagery placed on a metric ground plane.

All ground geometry in this project is expressed in a *metric CRS*: the raster's own CRS when it is
projected in metres (UTM, national grids), otherwise the UTM zone of the raster's centre (for EPSG:4326
and other geographic or non-metre rasters). So a tile "150 m wide" is 150 m wide on the ground wherever
the raster comes from, and tiles are square on the ground even for a raster in degrees.

Pixels are read by window (``rasterio`` windows around what is asked), never the whole file, so rasters
larger than memory work. Colour: bands tagged red/green/blue by the file (else bands 1-3; a single band
is grey), alpha and nodata become a validity mask, 16-bit and float data are stretched to 8 bits between
the 2nd and 98th percentiles of each band (estimated once from a decimated read).

Coordinate conventions: ``(col, row)`` pixel coordinates are continuous, with the *corner* of the
top-left pixel at (0, 0) and its centre at (0.5, 0.5) (rasterio's convention).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from tiles.io import file_sha256
from tiles.raster_checks import check_complete, check_file, corrupt_message
from tiles.raster_errors import RasterError

_logger = logging.getLogger(__name__)

STRETCH_PERCENTILES = (2.0, 98.0)
_STATS_MAX_SIDE = 1024  # decimated read used for percentile statistics and coarse validity


def _rasterio():
    try:
        import rasterio
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "reading GeoTIFFs needs rasterio: pip install 'geoloc-edge[geo]' (or pip install rasterio pyproj)"
        ) from e
    return rasterio


def utm_crs_for(lon: float, lat: float):
    """The pyproj CRS of the UTM zone containing (lon, lat) (WGS84 / UTM north or south)."""
    from pyproj import CRS

    zone = int(math.floor((lon + 180.0) / 6.0)) % 60 + 1
    epsg = (32600 if lat >= 0 else 32700) + zone
    return CRS.from_epsg(epsg)


class GeoRaster:
    """An open raster with its metric ground frame. Use :func:`open_raster`; close with ``close()``."""

    def __init__(self, path: str | os.PathLike):
        rasterio = _rasterio()
        from pyproj import CRS, Transformer

        self.path = Path(path)
        check_file(self.path)
        try:
            self.ds = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as e:
            raise RasterError(
                f"{self.path} is not a raster GDAL can read ({e}); give a GeoTIFF (e.g. from your GIS, "
                "or gdal_translate another format to GeoTIFF); a file cut short by a copy shows the same"
            ) from e
        ds = self.ds
        check_complete(ds, self.path)
        if ds.crs is None:
            self.ds.close()
            raise RasterError(
                f"{self.path} has no coordinate reference system, so its pixels cannot be placed on Earth; "
                "georeference it (e.g. gdal_edit.py -a_srs EPSG:XXXX, or export it from your GIS as a GeoTIFF)"
            )
        if ds.transform.is_identity:
            self.ds.close()
            raise RasterError(
                f"{self.path} has a CRS but an identity geotransform (no pixel-to-map mapping); "
                "georeference it with control points or gdal_translate -a_ullr"
            )
        self.crs = ds.crs
        self.transform = ds.transform
        self.width, self.height = ds.width, ds.height
        self.dtype = np.dtype(ds.dtypes[0])
        self._crs = CRS.from_wkt(ds.crs.to_wkt())

        native_metric = self._crs.is_projected and all(
            abs(ax.unit_conversion_factor - 1.0) < 1e-12 for ax in self._crs.axis_info[:2]
        )
        if native_metric:
            self.metric_crs = self._crs
        else:
            cx, cy = ds.xy(ds.height / 2, ds.width / 2, offset='ul')
            to_ll = Transformer.from_crs(self._crs, "EPSG:4326", always_xy=True)
            lon, lat = to_ll.transform(cx, cy)
            self.metric_crs = utm_crs_for(lon, lat)
        self.native_metric = native_metric
        self._to_metric = None if native_metric else Transformer.from_crs(self._crs, self.metric_crs, always_xy=True)
        self._from_metric = None if native_metric else Transformer.from_crs(self.metric_crs, self._crs, always_xy=True)
        self._to_ll = Transformer.from_crs(self.metric_crs, "EPSG:4326", always_xy=True)
        self._from_ll = Transformer.from_crs("EPSG:4326", self.metric_crs, always_xy=True)
        self._inv = ~ds.transform

        self.rgb_bands, self.alpha_band = self._pick_bands()
        self._stretch = None  # (lo, hi) per band, lazily for non-uint8 data
        self.bounds_m = self._metric_bounds()
        # ground metres per pixel at the centre (mean of the two axes)
        c0 = self.pixel_to_metric(self.width / 2, self.height / 2)
        c1 = self.pixel_to_metric(self.width / 2 + 1, self.height / 2)
        c2 = self.pixel_to_metric(self.width / 2, self.height / 2 + 1)
        self.gsd_m = float((math.dist(c0, c1) + math.dist(c0, c2)) / 2)
        self._sha = None

    # ---- bands -------------------------------------------------------------------------------
    def _pick_bands(self) -> tuple[list[int], int | None]:
        from rasterio.enums import ColorInterp

        ci = list(self.ds.colorinterp)
        idx = {c: i + 1 for i, c in enumerate(ci)}
        alpha = idx.get(ColorInterp.alpha)
        if all(c in idx for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
            rgb = [idx[ColorInterp.red], idx[ColorInterp.green], idx[ColorInterp.blue]]
        elif self.ds.count >= 3:
            rgb = [1, 2, 3]  # e.g. NAIP R, G, B, NIR with undefined tags
        else:
            rgb = [1, 1, 1]  # grey
        if alpha in rgb:
            alpha = None
        return rgb, alpha

    # ---- coordinates -------------------------------------------------------------------------
    def _metric_bounds(self) -> tuple[float, float, float, float]:
        n = 16  # densified edges: a geographic raster's outline is curved in UTM
        t = np.linspace(0, 1, n + 1)
        cols = np.concatenate([t * self.width, np.full_like(t, self.width), t * self.width, np.zeros_like(t)])
        rows = np.concatenate([np.zeros_like(t), t * self.height, np.full_like(t, self.height), t * self.height])
        xs, ys = self.pixel_to_metric(cols, rows)
        return float(np.min(xs)), float(np.min(ys)), float(np.max(xs)), float(np.max(ys))

    def raster_to_metric(self, rx, ry):
        if self.native_metric:
            return rx, ry
        return self._to_metric.transform(rx, ry)

    def metric_to_raster(self, x, y):
        if self.native_metric:
            return x, y
        return self._from_metric.transform(x, y)

    def pixel_to_metric(self, col, row):
        col, row = np.asarray(col, float), np.asarray(row, float)
        a = self.transform
        rx = a.a * col + a.b * row + a.c
        ry = a.d * col + a.e * row + a.f
        x, y = self.raster_to_metric(rx, ry)
        if np.ndim(x) == 0:
            return float(x), float(y)
        return np.asarray(x), np.asarray(y)

    def metric_to_pixel(self, x, y):
        rx, ry = self.metric_to_raster(np.asarray(x, float), np.asarray(y, float))
        a = self._inv
        col = a.a * np.asarray(rx) + a.b * np.asarray(ry) + a.c
        row = a.d * np.asarray(rx) + a.e * np.asarray(ry) + a.f
        if np.ndim(col) == 0:
            return float(col), float(row)
        return col, row

    def to_wgs84(self, x, y):
        """Metric (x, y) -> (lat, lon) degrees."""
        lon, lat = self._to_ll.transform(x, y)
        return lat, lon

    def from_wgs84(self, lat, lon):
        """(lat, lon) degrees -> metric (x, y)."""
        return self._from_ll.transform(lon, lat)

    @property
    def extent_m(self) -> tuple[float, float]:
        xmin, ymin, xmax, ymax = self.bounds_m
        return xmax - xmin, ymax - ymin

    def sha256(self) -> str:
        if self._sha is None:
            self._sha = file_sha256(self.path)
        return self._sha

    # ---- pixels ------------------------------------------------------------------------------
    def _stretch_params(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.dtype == np.uint8:
            return None
        if self._stretch is None:
            data, valid = self._read_decimated(_STATS_MAX_SIDE, scale=False)
            lo, hi = [], []
            for b in range(3):
                vals = data[b][valid > 0]
                vals = vals[np.isfinite(vals)]
                if vals.size == 0:
                    lo.append(0.0)
                    hi.append(1.0)
                    continue
                p_lo, p_hi = np.percentile(vals, STRETCH_PERCENTILES)
                if p_hi <= p_lo:
                    p_hi = p_lo + 1.0
                lo.append(float(p_lo))
                hi.append(float(p_hi))
            self._stretch = (np.array(lo, np.float32), np.array(hi, np.float32))
            _logger.debug("%s: %s data stretched per band %s..%s", self.path.name, self.dtype, lo, hi)
        return self._stretch

    def _to_uint8(self, data: np.ndarray) -> np.ndarray:
        """(3, h, w) raw band data -> (h, w, 3) uint8."""
        params = self._stretch_params()
        if params is None:
            out = data
        else:
            lo, hi = params
            x = (data.astype(np.float32) - lo[:, None, None]) / (hi - lo)[:, None, None]
            out = np.clip(np.nan_to_num(x, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.moveaxis(out, 0, -1))

    def _read(self, window, out_shape=None):
        """Raw bands (3, h, w) and validity (h, w) uint8 0/1 for a rasterio Window; a read error (a file
        truncated or damaged after it was opened) is a :class:`RasterError` naming the file."""
        rasterio = _rasterio()
        try:
            return self._read_raw(window, out_shape)
        except rasterio.errors.RasterioIOError as e:
            raise RasterError(corrupt_message(self.path, e)) from e

    def _read_raw(self, window, out_shape=None):
        from rasterio.enums import Resampling

        kw = {"window": window}
        uniq = sorted(set(self.rgb_bands))
        if out_shape is not None:  # (h, w): read decimated, averaging
            kw.update(out_shape=tuple(out_shape), resampling=Resampling.average)
        raw = self.ds.read(uniq, **{**kw, "out_shape": (len(uniq), *out_shape)} if out_shape else kw)
        data = np.stack([raw[uniq.index(b)] for b in self.rgb_bands])
        if self.alpha_band is not None:
            valid = self.ds.read(self.alpha_band, **kw) > 0
        else:
            # read_masks folds nodata, per-dataset masks and NaN handling for each band; a pixel is
            # valid when all of its colour bands are.
            valid = np.ones(data.shape[1:], bool)
            for b in uniq:
                valid &= self.ds.read_masks(b, **kw) > 0
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.all(np.isfinite(data), axis=0)
        return data, valid.astype(np.uint8)

    def _read_decimated(self, max_side: int, scale: bool = True):
        from rasterio.windows import Window

        f = max(1, math.ceil(max(self.width, self.height) / max_side))
        shape = (math.ceil(self.height / f), math.ceil(self.width / f))
        data, valid = self._read(Window(0, 0, self.width, self.height), out_shape=shape)
        if scale:
            return self._to_uint8(data), valid
        return data, valid

    def overview(self, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray, float]:
        """A decimated RGB image of the whole raster, its validity, and the decimation factor."""
        rgb, valid = self._read_decimated(max_side)
        return rgb, valid, self.width / rgb.shape[1]

    def valid_fraction(self) -> float:
        _, valid = self._read_decimated(_STATS_MAX_SIDE, scale=False)
        return float(valid.mean())

    def read_pixels(self, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """A pixel window at native resolution as RGB uint8 (h, w, 3) and validity uint8 (h, w), with this
        raster's colour bands, alpha/nodata and 8-bit scaling."""
        from rasterio.windows import Window

        data, valid = self._read(Window(col_off, row_off, width, height))
        return self._to_uint8(data), valid

    def sample_quad(self, ground_xy, out_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Warp the ground quadrilateral ``ground_xy`` (4 metric points: the output image's top-left,
        top-right, bottom-right, bottom-left corners) into an image of ``out_wh`` = (width, height).

        Returns RGB uint8 (h, w, 3) and validity float32 (h, w) in [0, 1] (0 outside the raster, on
        nodata or transparent pixels). Only the window that covers the quadrilateral is read; when the
        output is much coarser than the raster the window is read decimated (area average) first.
        """
        import cv2
        from rasterio.windows import Window

        w, h = int(out_wh[0]), int(out_wh[1])
        if w < 1 or h < 1:
            raise ValueError(f"output size must be positive, got {out_wh}")
        gxy = np.asarray(ground_xy, float).reshape(4, 2)
        cols, rows = self.metric_to_pixel(gxy[:, 0], gxy[:, 1])
        src = np.stack([cols, rows], axis=1)  # continuous pixel coords of the 4 corners
        dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)

        c0 = max(0, math.floor(src[:, 0].min()) - 2)
        r0 = max(0, math.floor(src[:, 1].min()) - 2)
        c1 = min(self.width, math.ceil(src[:, 0].max()) + 2)
        r1 = min(self.height, math.ceil(src[:, 1].max()) + 2)
        if c1 <= c0 or r1 <= r0:
            return np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.float32)

        # source pixels per output pixel (geometric mean of the two directions)
        scale = math.sqrt(abs(_polygon_area(src)) / (w * h))
        f = max(1, int(scale / 1.5)) if scale > 2.0 else 1
        win_w, win_h = c1 - c0, r1 - r0
        out_shape = None
        if f > 1:
            out_shape = (max(1, math.ceil(win_h / f)), max(1, math.ceil(win_w / f)))
        data, valid = self._read(Window(c0, r0, win_w, win_h), out_shape=out_shape)
        rgb = self._to_uint8(data)
        sx, sy = rgb.shape[1] / win_w, rgb.shape[0] / win_h  # window pixels -> read pixels

        # continuous coords in the read buffer; OpenCV puts pixel centres at integers, hence -0.5
        src_buf = np.stack([(src[:, 0] - c0) * sx - 0.5, (src[:, 1] - r0) * sy - 0.5], axis=1)
        H = cv2.getPerspectiveTransform((dst - 0.5).astype(np.float32), src_buf.astype(np.float32))
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        img = cv2.warpPerspective(rgb, H, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        val = cv2.warpPerspective(valid.astype(np.float32), H, (w, h), flags=flags,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return img, np.clip(val, 0.0, 1.0)

    def read_ground_square(self, x: float, y: float, side_m: float, size_px: int, heading_deg: float = 0.0):
        """A square of ``side_m`` metres centred on metric (x, y), its top edge facing ``heading_deg``
        (0 = north, clockwise), as ``size_px`` x ``size_px`` RGB and validity."""
        return self.sample_quad(square_corners(x, y, side_m, heading_deg), (size_px, size_px))

    # ---- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        self.ds.close()

    def __enter__(self) -> GeoRaster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GeoRaster({self.path.name}, {self.width}x{self.height}, crs={self.crs.to_string()}, "
                f"gsd={self.gsd_m:.3g} m)")

    def describe(self) -> dict:
        ex, ey = self.extent_m
        xmin, ymin, xmax, ymax = self.bounds_m
        lat0, lon0 = self.to_wgs84(xmin, ymin)
        lat1, lon1 = self.to_wgs84(xmax, ymax)
        return {
            "path": str(self.path),
            "crs": self.crs.to_string(),
            "metric_crs": self.metric_crs.to_string(),
            "size_px": [self.width, self.height],
            "bands": self.ds.count,
            "dtype": str(self.dtype),
            "rgb_bands": self.rgb_bands,
            "alpha_band": self.alpha_band,
            "nodata": self.ds.nodata,
            "gsd_m": round(self.gsd_m, 4),
            "extent_m": [round(ex, 1), round(ey, 1)],
            "bounds_wgs84": [round(lat0, 7), round(lon0, 7), round(lat1, 7), round(lon1, 7)],
            "valid_fraction": round(self.valid_fraction(), 4),
        }


def open_raster(path: str | os.PathLike) -> GeoRaster:
    """Open a GeoTIFF (or any GDAL raster with a CRS) for tiling and view synthesis."""
    return GeoRaster(path)


def square_corners(x: float, y: float, side_m: float, heading_deg: float = 0.0) -> np.ndarray:
    """Ground corners (TL, TR, BR, BL) of a square centred on (x, y) whose top faces ``heading_deg``."""
    h = math.radians(heading_deg)
    fwd = np.array([math.sin(h), math.cos(h)])  # image up, in (east, north)
    right = np.array([math.cos(h), -math.sin(h)])
    c = np.array([x, y], float)
    s = side_m / 2.0
    return np.stack([c + s * fwd - s * right, c + s * fwd + s * right, c - s * fwd + s * right, c - s * fwd - s * right])


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
