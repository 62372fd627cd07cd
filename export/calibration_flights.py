"""The flights every calibration flies: rendered once, embedded once, flown through the Localizer as often
as a fit needs.

A calibration must describe the chain that flies, so it flies it: each candidate setting runs the
:class:`runtime.localisation.localizer.Localizer` itself (odometry, map filter, registration, the trust
rule) over the same frames (:func:`fly`, through :func:`runtime.replay.geotiff.replay_flight`). What does
not depend on the setting is done once: rendering the frames from the calibration rasters (another year of
the map, never a year used to measure), and their descriptors (:meth:`Localizer.embed_ahead`, exactly what
the service's embed thread computes).

Flights off the map are flown too: over the western half of the area against a database of its eastern
half (:func:`half_database`), which carries the whole map's imagery, so that registration may verify only
where the filter's candidates are.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.progress import counted, progress_bar

log = logging.getLogger(__name__)


@dataclass
class CalibrationFlight:
    name: str
    frames: list  # (t, image, meta) with the truth (x, y in the database's CRS) in meta
    in_map: bool = True  # False: the database does not hold the ground flown (no fix may be trusted)
    aheads: list = field(default_factory=list)  # each frame's Localizer.embed_ahead
    features: dict = field(default_factory=dict)  # each frame's odometry features, detected once


def _where(in_map: bool) -> str:
    return "calibration flights" if in_map else "calibration flights off the map"


def render_flights(db, rasters, *, hfov_deg: float, frames: int = 40, speed_mps: float = 40.0,
                   photometric: float = 0.3, flights_per_raster: int = 1, seed: int = 1000,
                   outside_x: float | None = None, tag: str = "",
                   progress: bool = True) -> list[CalibrationFlight]:
    """Flights rendered from ``rasters`` at each layer's altitude, the same for every calibration.
    ``outside_x``: flown west of this x (with a footprint of margin): off the map of ``db``. ``progress``: a
    bar of the frames rendered (``calibration flights: rendering``)."""
    from runtime.replay.flights import GeoTiffFlight, curve_waypoints
    from tiles.raster import open_raster

    planned = []
    for ri, raster in enumerate(rasters):
        for layer in db.layers:
            for k in range(flights_per_raster):
                s = seed + 100 * ri + 10 * k + int(layer["altitude_m"])
                wp = None
                if outside_x is not None:
                    fp = float(layer["footprint_m"])
                    with open_raster(raster) as r:
                        b = r.bounds_m
                    wp = curve_waypoints((b[0], b[1], outside_x - fp, b[3]), margin_m=0.75 * fp, seed=s)
                fl = GeoTiffFlight(raster, float(layer["altitude_m"]), pattern="curve", waypoints=wp,
                                   hfov_deg=hfov_deg, speed_mps=speed_mps, fps=1.0, photometric=photometric,
                                   max_frames=frames, seed=s)
                planned.append((f"{tag}{Path(raster).stem}@{fl.altitude_m:g}-{k}", fl))
    with progress_bar(desc=f"{_where(outside_x is None)}: rendering", total=sum(len(fl) for _, fl in planned),
                      unit="frame", enabled=progress) as bar:
        return [CalibrationFlight(name, list(counted(fl, bar)), in_map=outside_x is None) for name, fl in planned]


def embed_flights(engine, db, cfg, flights: list[CalibrationFlight],
                  progress: bool = True) -> list[CalibrationFlight]:
    """Each frame's descriptor as the service's embed thread computes it (north-up by the compass);
    ``progress``: a bar of the frames embedded (``calibration flights: embedding``)."""
    from runtime.localisation.localizer import Localizer
    from runtime.replay.geotiff import flight_telemetry

    loc = Localizer(engine, db, cfg)
    where = _where(all(fl.in_map for fl in flights))
    with progress_bar(desc=f"{where}: embedding", total=sum(len(fl.frames) for fl in flights), unit="frame",
                      enabled=progress) as bar:
        for fl in flights:
            fl.aheads = [loc.embed_ahead(image, flight_telemetry(t, meta))
                         for t, image, meta in counted(fl.frames, bar)]
    return flights


def fly(engine, db, flight: CalibrationFlight, cfg, *, likelihood=None, fix_r95_scale: float | None = None,
        bar=None) -> list[dict]:
    """One flight through a fresh Localizer with ``cfg`` (and the candidate ``likelihood``); its records
    (:func:`runtime.replay.geotiff.frame_record`), each marked ``in_map`` as the flight is. ``bar``
    (:func:`common.progress.progress_bar`) is advanced by each frame flown."""
    from runtime.localisation.localizer import Localizer
    from runtime.replay.geotiff import replay_flight

    loc = Localizer(engine, db, cfg, likelihood=likelihood, fix_r95_scale=fix_r95_scale,
                    odometry_features=flight.features)
    frames = flight.frames if bar is None else counted(flight.frames, bar)
    records = replay_flight(loc, frames, aheads=flight.aheads or None)
    for r in records:
        r["in_map"], r["flight"] = flight.in_map, flight.name
    return records


def half_database(db, out, side: str = "west", imagery: bool = True) -> Path:
    """The tiles of ``db`` whose centre lies in the western (or eastern) half of its area, same embeddings:
    a map that does not hold the other half (flights off the map, for calibration and evaluation). With
    ``imagery``, the whole map's imagery is carried along (registration verifies only around the filter's
    candidates, which lie in the half)."""
    from tiles.db import write_database
    from tiles.io import atomic_write_json

    out = Path(out)
    if not (out / "manifest.json").is_file():
        x = np.asarray(db.entries["x"])
        xmid = 0.5 * (float(x.min()) + float(x.max()))
        keep = x < xmid if side == "west" else x >= xmid
        m = db.manifest
        note = f"{side}ern half of {db.path.name}: tiles with x {'<' if side == 'west' else '>='} {xmid:.0f}"
        write_database(out, np.asarray(db.embeddings, np.float32)[keep], db.entries[keep], layers=m["layers"],
                       model=m["model"], preprocess=m["preprocess"], crs=m["crs"], sources=m["sources"],
                       extra=dict(m.get("extra", {}), note=note))
    src = Path(db.path) / "imagery"
    man_path = out / "manifest.json"
    man = json.loads(man_path.read_text())
    if imagery and src.is_dir() and "imagery" not in man and "imagery" in db.manifest:
        shutil.copytree(src, out / "imagery", dirs_exist_ok=True)
        man["imagery"] = db.manifest["imagery"]
        atomic_write_json(man_path, man)
    return out
