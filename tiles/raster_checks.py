"""What is wrong with a raster file, said before GDAL says it vaguely: missing, a folder, unreadable, empty,
truncated."""

from __future__ import annotations

import os
from pathlib import Path

from tiles.raster_errors import RasterError


def check_file(path: Path) -> None:
    """Refuse, with the reason, what is not a readable raster file before GDAL gives a vaguer message."""
    if not path.exists():
        raise RasterError(f"{path}: no such file; give the path of a GeoTIFF of your area")
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".vrt"))[:5]
        found = f" (it holds {', '.join(inside)})" if inside else ""
        raise RasterError(f"{path} is a folder, not a raster file{found}; give the path of one GeoTIFF "
                          "(several maps: build a mosaic with gdalbuildvrt and give the .vrt)")
    if not os.access(path, os.R_OK):
        raise RasterError(f"{path}: permission denied; make it readable by this user (chmod a+r)")
    if path.stat().st_size == 0:
        raise RasterError(f"{path} is empty (0 bytes): an interrupted download or copy; copy it again")


def corrupt_message(path: Path, err) -> str:
    err = err.__cause__ or err  # rasterio's own message only says "see previous exception"
    return (f"{path}: reading pixels failed ({err}): the file is truncated or damaged (e.g. an interrupted "
            "copy); copy it again, and check it with `gdalinfo -checksum`")


def check_complete(ds, path: Path) -> None:
    """Read the last block of each band: a file cut short fails here, at open, not mid-build."""
    import rasterio
    from rasterio.windows import Window

    try:
        ds.read(window=Window(ds.width - 1, ds.height - 1, 1, 1))
    except rasterio.errors.RasterioIOError as e:
        ds.close()
        raise RasterError(corrupt_message(path, e)) from e
