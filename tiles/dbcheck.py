"""Checks that a tile database can be trusted and fits the flight: integrity at open, the altitude layer.

- :func:`verify_files`: every file the manifest lists has its size and sha256 (``hashes=False``: sizes only).
- :func:`check_finite`: no NaN/inf embedding (float16 checked by exponent bits, in chunks of rows).
- :func:`check_layer_altitude`: the current altitude is within :data:`ALTITUDE_TOLERANCE_FRAC` of its
  layer's, else :class:`NoLayerError` ("no fix: altitude N m has no layer ...").

numpy only (the onboard reader uses it). The error classes live here so :mod:`tiles.db` and this module
share them without a cycle; :mod:`tiles.db` re-exports them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common.cli import UserError
from tiles.io import file_sha256 as sha256_file


class DatabaseError(UserError, ValueError):
    """A tile database that cannot be read: missing, truncated, wrong version, inconsistent."""


class DatabaseMismatchError(DatabaseError):
    """A readable database built for another model or preprocessing than the engine in use."""


def listed_files(manifest: dict) -> dict[str, dict]:
    """Every file a database manifest lists, by path inside the database: the arrays and indexes
    (``files``) and the map imagery's (``imagery.files``, under its folder)."""
    files = dict(manifest.get("files", {}))
    imagery = manifest.get("imagery") or {}
    for name, info in (imagery.get("files") or {}).items():
        files[f"{imagery.get('dir', 'imagery')}/{name}"] = info
    return files


def unverifiable_imagery(manifest: dict) -> bool:
    """True for imagery recorded without its files' hashes (a database built before they were recorded)."""
    imagery = manifest.get("imagery")
    return bool(imagery) and not imagery.get("files")


def verify_files(path: Path, manifest: dict, *, hashes: bool = True) -> None:
    """Every file the manifest lists (:func:`listed_files`: arrays, indexes, map imagery) exists with its
    size and (``hashes``) its sha256.

    Hashing reads each file once: about 0.2 s per 100 MB measured on a shared 2-core machine (sha256
    runs at 0.6 GB/s in memory there); a database already verified may be reopened with
    ``TileDatabase.open(path, verify=False)``, which checks sizes only."""
    for name, info in listed_files(manifest).items():
        fpath = path / name
        if not fpath.is_file():
            raise DatabaseError(f"{path}: {name} is missing; copy the database again or rebuild it")
        size = fpath.stat().st_size
        if size != info["bytes"]:
            raise DatabaseError(
                f"{fpath} has {size} bytes, the manifest says {info['bytes']}: the file is truncated "
                "or was replaced; rebuild the database"
            )
        if hashes and info.get("sha256") and sha256_file(fpath) != info["sha256"]:
            raise DatabaseError(
                f"{fpath}: sha256 differs from the manifest: the file is corrupted (a bad copy or a failing "
                "disk); copy the database again or rebuild it"
            )


def imagery_note(path: Path, manifest: dict) -> tuple[int, str] | None:
    """(log level, message) when a database's imagery cannot be trusted or is missing by accident, or None:
    imagery without hashes cannot be checked for changes, and a build stopped before its imagery step leaves
    a database without registration (fixes from retrieval alone, several times less precise)."""
    import logging

    fix = f"`python -m export.map_imagery {path} MAP.tif`"
    if unverifiable_imagery(manifest):
        return logging.WARNING, (f"{path}: its map imagery carries no hashes (built before they were recorded), so a "
                                 f"change to it cannot be detected; rewrite it with {fix}")
    extra = manifest.get("extra", {})
    if manifest.get("imagery") or not extra.get("imagery_px"):
        return None  # the Localizer says when a database has none (built --no-imagery, or before imagery existed)
    return logging.WARNING, (f"{path}: its map imagery was never written (the build stopped before that step): "
                             "registration to the map is off and fixes come from retrieval alone (several times "
                             "less precise); re-run the same `python -m export` command to complete it")


def check_finite(embeddings: np.ndarray, path: Path | str = "embeddings", chunk_rows: int = 1 << 16) -> None:
    """Refuse NaN/inf embeddings (read in chunks of rows, so a memory map is not loaded whole)."""
    bad = 0
    first = -1
    for s in range(0, len(embeddings), chunk_rows):
        block = np.asarray(embeddings[s:s + chunk_rows])
        if block.dtype == np.float16:  # exponent bits all set = inf or NaN: 4x faster than np.isfinite
            rows = ((block.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=1)
        else:
            rows = ~np.isfinite(block).all(axis=1)
        if rows.any():
            first = s + int(np.argmax(rows)) if first < 0 else first
            bad += int(rows.sum())
    if bad:
        raise DatabaseError(f"{path}: {bad} embeddings hold NaN or inf (first at row {first}); every score "
                            "against them would be NaN: rebuild the database")


# An altitude may differ from its layer's by this fraction (the scale of the view differs by as much):
# half the 50 m spacing of the usual 150/200/250/300 m layers is 8-17 %, so a flight between layers always
# finds one, while 1000 m against a 300 m layer (3.3x off in scale) does not.
ALTITUDE_TOLERANCE_FRAC = 0.25


class NoLayerError(DatabaseError):
    """No layer of the database was cut for the current altitude (the frame gets no fix)."""


def check_layer_altitude(layers: list[dict], index: int, altitude_m: float,
                         tolerance_frac: float = ALTITUDE_TOLERANCE_FRAC) -> None:
    """Raise :class:`NoLayerError` when ``altitude_m`` is more than ``tolerance_frac`` away from the
    altitude of ``layers[index]`` (a layer that records no altitude, e.g. a gallery, always passes)."""
    alt = layers[index].get("altitude_m")
    if alt is None or not math.isfinite(alt):
        return
    if abs(altitude_m - alt) > tolerance_frac * alt:
        known = sorted(a for a in (lay.get("altitude_m") for lay in layers) if a is not None and math.isfinite(a))
        raise NoLayerError(
            f"no fix: altitude {altitude_m:g} m has no layer (layers: {', '.join(f'{a:g}' for a in known)} m, "
            f"each used within +-{100 * tolerance_frac:g} %); add a layer with "
            f"`python -m export --bundle BUNDLE --tiles MAP.tif --altitudes ... {altitude_m:.0f}`"
        )
