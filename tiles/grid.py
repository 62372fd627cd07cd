"""The tile grid for a flight altitude: which ground squares of the map become database entries.

A nadir camera with horizontal field of view ``hfov`` at height ``h`` above ground sees a ground width of

    footprint_m = 2 * altitude_m * tan(hfov_deg / 2)

so the database for altitude ``h`` holds map tiles of that ground size. Tiles are laid on the metric
ground plane (see :mod:`tiles.raster`) with centres ``stride_m`` apart. Along an axis of extent ``E``,

    n = floor((E - footprint_m) / stride_m) + 1        (0 when E < footprint_m)

tiles fit entirely inside; the leftover ``E - footprint_m - (n - 1) * stride_m`` is split evenly between
both ends so the grid is centred. (Floor, not ceiling: a tile hanging off the map would be mostly
nodata; the validity threshold would drop it anyway.) Tiles whose valid fraction (not nodata, not
transparent, inside the raster) is below ``min_valid`` are skipped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from common import validate
from tiles.db import empty_entries
from tiles.raster import GeoRaster, RasterError, square_corners

PROGRESS_MIN_TILES = 20000  # about 10 s of grid work: below it a bar is noise


def footprint_m(altitude_m: float, hfov_deg: float) -> float:
    """Ground width seen by a nadir camera: ``2 * altitude_m * tan(hfov_deg / 2)``."""
    altitude_m, hfov_deg = validate.altitude_m(altitude_m), validate.hfov_deg(hfov_deg)
    return 2.0 * altitude_m * math.tan(math.radians(hfov_deg) / 2.0)


def grid_counts(extent_x_m: float, extent_y_m: float, footprint: float, stride_m: float) -> tuple[int, int]:
    """(columns, rows) of tiles of side ``footprint`` every ``stride_m`` inside the extent."""
    if footprint <= 0 or stride_m <= 0:
        raise ValueError(f"footprint and stride must be > 0, got {footprint}, {stride_m}")

    def n(extent):
        return 0 if extent < footprint else int(math.floor((extent - footprint) / stride_m + 1e-9)) + 1

    return n(extent_x_m), n(extent_y_m)


@dataclass(frozen=True)
class Tile:
    index: int
    row: int  # 0 = northmost row
    col: int  # 0 = westmost column
    x: float  # centre, metric CRS
    y: float
    raster_x: float  # centre, raster CRS
    raster_y: float
    lat: float
    lon: float
    footprint_m: float
    window: tuple[int, int, int, int]  # (col_off, row_off, width, height) pixel window covering the tile
    valid_fraction: float

    def label(self, altitude_m: float | None = None) -> str:
        prefix = f"a{int(round(altitude_m))}_" if altitude_m is not None else ""
        return f"{prefix}r{self.row:04d}_c{self.col:04d}"

    def as_dict(self) -> dict:
        return asdict(self)


def tile_grid(
    raster: GeoRaster,
    footprint: float,
    stride_m: float | None = None,
    min_valid: float = 0.9,
    progress: bool = False,
) -> list[Tile]:
    """Tiles of ``footprint`` metres every ``stride_m`` (default: half the footprint) over the raster;
    ``progress`` shows a bar (tqdm) on grids of more than :data:`PROGRESS_MIN_TILES` tiles."""
    stride_m = footprint / 2.0 if stride_m is None else float(stride_m)
    ex, ey = raster.extent_m
    ncols, nrows = grid_counts(ex, ey, footprint, stride_m)
    if ncols == 0 or nrows == 0:
        raise RasterError(
            f"a tile of {footprint:.0f} m does not fit in {raster.path.name} ({ex:.0f} x {ey:.0f} m on the "
            "ground); fly lower, use a narrower field of view, or use a larger map"
        )
    if not 0.0 <= min_valid <= 1.0:
        raise ValueError(f"min_valid is a fraction in [0, 1], got {min_valid}")
    xmin, ymin, xmax, ymax = raster.bounds_m
    x0 = xmin + (ex - footprint - (ncols - 1) * stride_m) / 2 + footprint / 2
    y0 = ymax - (ey - footprint - (nrows - 1) * stride_m) / 2 - footprint / 2
    cols, rows = np.meshgrid(np.arange(ncols), np.arange(nrows))
    xs = x0 + cols.ravel() * stride_m
    ys = y0 - rows.ravel() * stride_m

    # validity from a decimated mask of the whole raster: cheap, and exact enough for a threshold
    _, valid_img, factor = raster.overview(max_side=1024)
    fy = raster.height / valid_img.shape[0]
    rxs, rys = raster.metric_to_raster(xs, ys)
    lats, lons = raster.to_wgs84(xs, ys)
    tiles = []
    cells = zip(rows.ravel(), cols.ravel(), xs, ys)
    if progress and len(xs) > PROGRESS_MIN_TILES:
        from common.progress import progress_bar

        cells = progress_bar(cells, total=len(xs), desc=f"tile grid {raster.path.name} ({footprint:.0f} m)",
                             unit="tile")
    for i, (r, c, x, y) in enumerate(cells):
        corners = square_corners(x, y, footprint)
        pc, pr = raster.metric_to_pixel(corners[:, 0], corners[:, 1])
        c0, c1 = math.floor(pc.min()), math.ceil(pc.max())
        r0, r1 = math.floor(pr.min()), math.ceil(pr.max())
        valid = _fraction_valid(valid_img, pc / factor, pr / fy)
        if valid < min_valid:
            continue
        tiles.append(Tile(
            index=len(tiles), row=int(r), col=int(c), x=float(x), y=float(y),
            raster_x=float(np.ravel(rxs)[i]), raster_y=float(np.ravel(rys)[i]),
            lat=float(np.ravel(lats)[i]), lon=float(np.ravel(lons)[i]), footprint_m=float(footprint),
            window=(c0, r0, c1 - c0, r1 - r0), valid_fraction=round(valid, 4),
        ))
    return tiles


def _fraction_valid(valid_img: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> float:
    """Mean validity inside a quadrilateral given in the decimated image's pixel coordinates."""
    import cv2

    h, w = valid_img.shape
    c0, c1 = math.floor(cols.min()), math.ceil(cols.max())
    r0, r1 = math.floor(rows.min()), math.ceil(rows.max())
    bw, bh = max(1, c1 - c0), max(1, r1 - r0)
    poly = np.zeros((bh, bw), np.uint8)
    pts = np.round(np.stack([cols - c0, rows - r0], 1)).astype(np.int32)
    cv2.fillConvexPoly(poly, pts, 1)
    if poly.sum() == 0:
        poly[:] = 1
    inside = np.zeros((bh, bw), np.uint8)  # pixels outside the raster count as invalid
    ic0, ir0, ic1, ir1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
    if ic1 > ic0 and ir1 > ir0:
        inside[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = valid_img[ir0:ir1, ic0:ic1]
    return float((inside * poly).sum() / poly.sum())


def read_tile(raster: GeoRaster, tile: Tile, size_px: int) -> np.ndarray:
    """The tile's ground square, north up, as RGB uint8 ``(size_px, size_px, 3)``."""
    rgb, _ = raster.read_ground_square(tile.x, tile.y, tile.footprint_m, size_px)
    return rgb


def tiles_to_entries(tiles: list[Tile], layer: int, altitude_m: float | None, source: int = 0) -> np.ndarray:
    """Database entries (:data:`tiles.db.ENTRY_DTYPE`) for ``tiles`` in layer ``layer``."""
    e = empty_entries(len(tiles))
    for i, t in enumerate(tiles):
        e[i]["label"] = t.label(altitude_m)
    e["layer"] = layer
    e["has_geo"] = True
    e["x"] = [t.x for t in tiles]  # metric CRS: the database's "crs" is raster.metric_crs
    e["y"] = [t.y for t in tiles]
    e["lat"] = [t.lat for t in tiles]
    e["lon"] = [t.lon for t in tiles]
    e["footprint_m"] = [t.footprint_m for t in tiles]
    e["altitude_m"] = np.nan if altitude_m is None else altitude_m
    e["col_off"] = [t.window[0] for t in tiles]
    e["row_off"] = [t.window[1] for t in tiles]
    e["width"] = [t.window[2] for t in tiles]
    e["height"] = [t.window[3] for t in tiles]
    e["source"] = source
    return e
