"""GeoTIFF flights: frames rendered from one raster, localised against the tile database of another.

Per altitude, a flight rendered from the flight raster along a path (:mod:`runtime.replay.flights`), each
frame through the onboard chain. Reports the error in metres per frame (median, p95), the fix rate,
R@1/R@5 (the true position inside the top-1 / a top-5 tile) and the latency of each stage.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common import validate
from common.cli import check_fields, whole_writes
from common.options import shared
from runtime.localisation.camera_view import database_hfov
from runtime.localisation.localizer import Localizer, LocalizerConfig
from runtime.replay.common import bundle_path, jsonable, load_engine_or_use, rnd, write_csv
from runtime.replay.figures import reliability, summarize_flight
from runtime.replay.flights import PATTERNS
from runtime.replay.real_camera import CameraEffects, lens_for, terrain_for
from tiles.io import atomic_write_json

log = logging.getLogger(__name__)

FRAME_CSV_FIELDS = ("altitude_m", "index", "t", "true_x", "true_y", "est_x", "est_y", "fix_x", "fix_y",
                    "trusted", "confidence", "accuracy_m", "error_raw_m", "error_m", "top1_hit", "top5_hit",
                    "top1_score", "reason", "r95_m", "vel_e_mps", "vel_n_mps", "yaw_deg", "odometry_ok",
                    "registered", "rows_scored", "heading_source", "heading_error_deg", "preprocess_ms", "inference_ms", "search_ms", "fusion_ms")



def export_tiles_command(bundle, map_path, altitudes, hfov_deg: float, db="DB") -> str:
    """The ``python -m export`` command that builds the tile database a GeoTIFF replay needs."""
    alts = " ".join(f"{float(a):g}" for a in altitudes)
    return (f"python -m export --bundle {shlex.quote(str(bundle))} --tiles {shlex.quote(str(map_path))} "
            f"--altitudes-m {alts} --hfov-deg {float(hfov_deg):g} --db-out {shlex.quote(str(db))}")


def _check_map_database(tdb, altitudes, hfov_deg: float, map_path) -> None:
    """Refuse a database without tile positions; warn where it was cut for other settings than this
    replay's (it still runs)."""
    if len(tdb.entries) and not bool(np.any(tdb.entries["has_geo"])):
        raise ValueError(f"{tdb.path} has no tile positions (a gallery database?): a GeoTIFF replay needs the "
                         f"map's tile database, `{export_tiles_command('B', map_path, altitudes, hfov_deg)}`")
    db_hfov = tdb.manifest.get("extra", {}).get("hfov_deg")
    if db_hfov is not None and abs(float(db_hfov) - float(hfov_deg)) > 1e-6:
        log.warning("%s was cut for hfov %g deg, the flight uses %g deg: tiles and frames cover different "
                    "ground", tdb.path, db_hfov, hfov_deg)
    have = [lay.get("altitude_m") for lay in tdb.layers]
    lacking = [a for a in altitudes if not any(h is not None and abs(float(h) - a) < 1e-6 for h in have)]
    if lacking:
        log.warning("%s has no layer for altitudes %s (it has %s): the nearest layer is used", tdb.path,
                    lacking, have)
    names = [src.get("name") for src in tdb.manifest.get("sources", [])]
    if names and Path(map_path).name not in names:
        log.warning("%s was built from %s, not from the map %s", tdb.path, names, Path(map_path).name)


def _tile_hit(db, rows, x: float, y: float) -> bool:
    """True position inside one of the tiles ``rows`` (north-up squares of footprint_m)."""
    for i in rows:
        if i < 0:
            continue
        e = db.entries[int(i)]
        half = float(e["footprint_m"]) / 2.0
        if abs(float(e["x"]) - x) <= half and abs(float(e["y"]) - y) <= half:
            return True
    return False


def flight_telemetry(t: float, meta: dict, altitude_m: float | None = None, compass: bool = True,
                     mount_tilt_deg: float = 0.0):
    """What an autopilot would report with a replayed frame: ``meta["altitude_m"]`` (else ``altitude_m``) and,
    with a compass, ``meta["heading_deg"]`` (the compass heading of the image top); where the frame's meta
    has the autopilot's ``reported`` attitude (a real camera's flight, a tilted mount), the camera's attitude
    through the mount (fixed, tilted ``mount_tilt_deg`` forward from nadir) and the altitude above mean sea
    level."""
    from runtime.localisation.localizer import Telemetry

    alt = meta.get("altitude_m", altitude_m)
    hdg = meta.get("heading_deg") if compass else None
    rep, att = meta.get("reported"), None
    if rep is not None and compass:
        from runtime.inputs.attitude import CameraMount, camera_attitude_deg

        att = camera_attitude_deg(rep["roll_deg"], rep["pitch_deg"], rep["yaw_deg"],
                                  CameraMount("fixed", pitch_deg=-90.0 + mount_tilt_deg))
    return Telemetry(t=float(t), altitude_m=alt, altitude_source="flight" if alt is not None else None,
                     heading_deg=hdg, heading_source="flight" if hdg is not None else None, camera_attitude=att,
                     altitude_msl_m=(rep or {}).get("altitude_msl_m"))


def replay_flight(localizer, frames, *, altitude_m: float | None = None, compass: bool = True,
                  aheads=None, keep: list | None = None, mount_tilt_deg: float = 0.0) -> list[dict]:
    """Run frames (Frame tuples with ground truth in meta) through ``localizer`` (a
    :class:`runtime.localisation.localizer.Localizer`, the service's own chain) and compare with the truth.
    ``aheads``: each frame's :meth:`~runtime.localisation.localizer.Localizer.embed_ahead` when computed
    before (a calibration flies the same frames with several settings; None where not). ``keep``: a list
    that gets, per frame, what an autopilot recording needs (:func:`runtime.replay.autopilot_record.record_flight`)."""
    db = localizer.db
    records = []
    for k, (t, image, meta) in enumerate(frames):
        tel = flight_telemetry(t, meta, altitude_m, compass, mount_tilt_deg)
        t0 = time.perf_counter()
        loc = localizer.locate(image, tel, ahead=aheads[k] if aheads is not None else None)
        if keep is not None:
            keep.append({"t": float(t), "processing_ms": (time.perf_counter() - t0) * 1000.0, "fix": loc.fix,
                         "height_m": tel.altitude_m, "true_lat": meta.get("lat", math.nan),
                         "true_lon": meta.get("lon", math.nan)})
        rec = frame_record(db, loc, meta, len(records))
        true_hdg = meta.get("truth", {}).get("camera_heading_deg", meta.get("heading_deg"))
        used = loc.telemetry.heading_deg
        rec["heading_source"] = loc.telemetry.heading_source
        if "truth" in meta:  # a real camera's flight: how far off nadir and how high it really was
            rec["true_off_nadir_deg"] = rnd(meta["truth"]["camera_off_nadir_deg"], 2)
            rec["true_hag_m"] = rnd(meta["truth"]["height_above_ground_m"], 2)
        rec["heading_error_deg"] = (rnd(abs((used - true_hdg + 180.0) % 360.0 - 180.0), 2)
                                    if used is not None and true_hdg is not None else None)
        records.append(rec)
    return records


def frame_record(db, loc, meta: dict, index: int) -> dict:
    """One replayed frame: the Localizer's answer next to the ground truth in ``meta``."""
    raw, fix, m = loc.raw, loc.fix, loc.matches
    tx, ty = meta.get("x", math.nan), meta.get("y", math.nan)
    has_truth = math.isfinite(tx) and math.isfinite(ty)
    searched = has_truth and loc.fusion.get("keyframe", True)  # frames between keyframes search nothing
    err_raw = math.hypot(raw.x - tx, raw.y - ty) if has_truth and raw.has_position else math.nan
    err = math.hypot(fix.x - tx, fix.y - ty) if has_truth and fix.trusted else math.nan
    ms = loc.timings_ms
    return {
        "altitude_m": loc.telemetry.altitude_m, "index": meta.get("index", index), "t": rnd(loc.telemetry.t, 3),
        "true_x": rnd(tx), "true_y": rnd(ty), "est_x": rnd(raw.x), "est_y": rnd(raw.y),
        "fix_x": rnd(fix.x) if fix.trusted else None, "fix_y": rnd(fix.y) if fix.trusted else None,
        "trusted": bool(fix.trusted), "confidence": rnd(fix.confidence, 4), "accuracy_m": rnd(fix.accuracy_m, 1),
        "error_raw_m": rnd(err_raw), "error_m": rnd(err),
        "top1_hit": _tile_hit(db, m.indices[0, :1], tx, ty) if searched else None,
        "top5_hit": _tile_hit(db, m.indices[0, :5], tx, ty) if searched else None,
        "top1_score": rnd(float(m.scores[0, 0]), 4), "reason": fix.reason,
        "r95_m": rnd(fix.r95_m, 1), "vel_e_mps": rnd(fix.vel_e_mps, 3), "vel_n_mps": rnd(fix.vel_n_mps, 3),
        "yaw_deg": rnd(fix.yaw_deg, 2), "footprint_m": rnd(_footprint(db, loc.layer), 1),
        "in_map": bool(meta.get("in_map", True)), **{k: v for k, v in loc.fusion.items() if k != "registration_reason"},
        "preprocess_ms": rnd(ms["preprocess"], 3), "inference_ms": rnd(ms["inference"], 3),
        "search_ms": rnd(ms["search"], 3), "fusion_ms": rnd(ms["fusion"], 3),
    }


def _footprint(db, layer) -> float:
    if layer is None:
        return math.nan
    lay = db.layers[layer]
    return float(lay.get("footprint_m") or np.median(db.entries["footprint_m"][db.layer_slice(layer)]))


@dataclass
class FlightSpec(CameraEffects):
    """How the replayed flights are rendered (command-line options are generated from these fields; those of
    a real camera, :class:`runtime.replay.real_camera.CameraEffects`, come first)."""

    pattern: str = field(default="curve", metadata={"help": "flight path", "choices": PATTERNS})
    waypoints: str | None = field(default=None, metadata={"help": "'x,y;x,y;...' in metres of the map's CRS "
                                                                  "(overrides --pattern)"})
    speed_mps: float = field(default=15.0, metadata={"help": "ground speed, m/s", "check": validate.speed_mps})
    fps: float = field(default=1.0, metadata={"help": "frames per second",
                                              "check": validate.range_rule(0.0, 1000.0, lo_open=True)})
    size_px: int = field(default=256, metadata={"help": "rendered frame side in pixels",
                                                "check": validate.int_rule(16, 8192)})
    tilt_deg: float = shared("tilt_deg")
    photometric: float | None = shared("photometric")
    max_frames: int | None = shared("max_frames")
    seed: int = shared("seed")
    compass: bool = shared("compass")

    def __post_init__(self):
        check_fields(self)


def replay_geotiff(bundle, map_path, *, flight_raster=None, altitudes=None, db=None, out_dir=None,
                   hfov_deg: float | None = None, localizer: LocalizerConfig | None = None, plots: bool = True,
                   precision: str = "auto", backend: str = "auto", threads: int | None = None,
                   record_autopilot=None, **flight) -> dict:
    """GeoTIFF flight replay (see the module docstring); returns per-altitude summaries and frames.

    ``altitudes`` and ``hfov_deg`` default to the database's (its layers, the field of view it was cut
    for); ``localizer`` holds the chain's knobs (the service's defaults); ``flight`` any
    :class:`FlightSpec` field. ``record_autopilot``: an :class:`runtime.outputs.settings.OutputConfig`:
    each flight's autopilot streams are recorded under ``out_dir/autopilot_<alt>m``
    (:mod:`runtime.replay.autopilot_record`) and summarized as the flight's ``autopilot``."""
    if record_autopilot is not None and out_dir is None:
        raise ValueError("--record-autopilot writes its recordings under --out DIR: give --out")
    from runtime.engines.engine import check_engine_database
    from runtime.search.searcher import Searcher
    from tiles.db import TileDatabase

    cfg = localizer or LocalizerConfig()
    spec = FlightSpec(**{"camera_file": cfg.camera_file, **flight})  # the chain's camera is the one rendered
    if db is None:
        raise ValueError(
            "a GeoTIFF replay needs the tile database of the map (--db DB); build it once with "
            f"`{export_tiles_command(bundle_path(bundle), map_path, altitudes or (150, 200, 250, 300), hfov_deg or 60)}`"
            " and pass --db DB")
    tdb = db if isinstance(db, TileDatabase) else TileDatabase.open(db)
    engine = load_engine_or_use(bundle, precision, backend, threads)
    check_engine_database(engine, tdb)
    altitudes, hfov_deg = database_flight_defaults(tdb, altitudes, hfov_deg)
    _check_map_database(tdb, altitudes, hfov_deg, map_path)
    flight_raster = flight_raster or map_path
    to_db = _check_flight_raster(map_path, flight_raster, tdb)
    searcher = Searcher(tdb)
    results: dict = {"map": str(map_path), "flight_raster": str(flight_raster), "engine": engine.name,
                     "database": str(tdb.path), "settings": {"hfov_deg": hfov_deg, **asdict(spec)},
                     "localizer": asdict(cfg), "altitudes": {}}
    all_records, files = [], {}
    out = Path(out_dir) if out_dir is not None else None
    for alt in altitudes:
        frames = _truth_in_db_crs(_flight(flight_raster, alt, hfov_deg, spec), to_db)
        t0, kept = time.perf_counter(), ([] if record_autopilot is not None else None)
        start_unix = round(time.time())
        lens = lens_for(CameraEffects.from_spec(spec), (spec.size_px, spec.size_px), hfov_deg)  # calibrated: known
        loc = Localizer(engine, tdb, cfg, searcher=searcher, camera=lens, terrain=_flight_terrain(flight_raster, spec))
        records = replay_flight(loc, frames, altitude_m=alt, compass=spec.compass, keep=kept,
                                mount_tilt_deg=spec.tilt_deg)
        summary = summarize_flight(records, time.perf_counter() - t0)
        if kept:
            from runtime.replay.autopilot_record import record_flight

            summary["autopilot"] = record_flight(out / f"autopilot_{alt:g}m", kept, record_autopilot,
                                                 accel_mps2=cfg.map_filter.accel_mps2, start_unix=start_unix)
        results["altitudes"][f"{alt:g}"] = summary
        all_records += records
        med = summary["error_m_median"]
        log.info("flight at %g m: %d frames, %d trusted (%d wrong), median error %s, R@1 %s%%", alt,
                 summary["n_frames"], summary["trusted"], summary["wrong_trusted"],
                 "-" if med is None else f"{med:.1f} m", summary["R@1"])
        if out is not None and plots:
            files.update(_plot_flight(out, alt, records, summary, map_path))
        results["frames"] = all_records
        results["reliability"] = reliability(all_records)
        results["complete"] = alt == altitudes[-1]
        if out is not None:  # after each flight: a replay stopped later keeps the flights it finished
            files.update(_write_results(out, results, all_records, plots and results["complete"]))
            results["files"] = files
    return results


def database_flight_defaults(tdb, altitudes, hfov_deg):
    """(altitudes, hfov) of a replay: the given ones, else the database's layers and field of view."""
    if altitudes is None:
        altitudes = [float(lay["altitude_m"]) for lay in tdb.layers if lay.get("altitude_m") is not None]
        if not altitudes:
            raise ValueError(f"{tdb.path} records no layer altitude: give --altitudes-m")
    if hfov_deg is None:
        hfov_deg = database_hfov(tdb)
    return [float(a) for a in altitudes], float(hfov_deg)


def _check_flight_raster(map_path, flight_raster, tdb):
    """Refuse a flight raster that shares no ground with the map (compared in one CRS); returns a function
    taking the flight's ground truth (x, y in the flight raster's CRS) into the database's CRS, or None."""
    from pyproj import CRS, Transformer

    from tiles.mapcheck import check_overlap
    from tiles.raster import open_raster

    with open_raster(map_path) as m, open_raster(flight_raster) as f:
        _check_database_on_map(tdb, m)
        if str(flight_raster) != str(map_path):
            check_overlap(m, f)
        flight_crs = f.metric_crs
    if CRS.from_user_input(flight_crs) == CRS.from_user_input(tdb.crs):
        return None
    return Transformer.from_crs(flight_crs, tdb.crs, always_xy=True).transform


def _check_database_on_map(tdb, raster, sample: int = 4096) -> None:
    """Refuse a map that shows another place than the database's tiles (none of their centres on it): the
    flights would be rendered where the database has no tile."""
    geo = np.flatnonzero(np.asarray(tdb.entries["has_geo"]))
    if not len(geo):
        return
    rows = geo[np.linspace(0, len(geo) - 1, min(sample, len(geo))).astype(int)]
    lat, lon = np.asarray(tdb.entries["lat"][rows], float), np.asarray(tdb.entries["lon"][rows], float)
    x, y = raster.from_wgs84(lat, lon)
    xmin, ymin, xmax, ymax = raster.bounds_m
    inside = np.isfinite(x) & np.isfinite(y) & (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
    if inside.any():
        return
    names = [src.get("name") for src in tdb.manifest.get("sources", [])]
    la0, lo0, la1, lo1 = raster.describe()["bounds_wgs84"]
    raise ValueError(f"the map {raster.path.name} (lat {la0}..{la1}, lon {lo0}..{lo1}) holds none of the tiles of "
                     f"{tdb.path} (built from {', '.join(map(str, names)) or 'unknown maps'}, around lat "
                     f"{np.median(lat):.5f}, lon {np.median(lon):.5f}): they show different places; give --map the "
                     "GeoTIFF the database was cut from, or --db the database of this map")


def _truth_in_db_crs(frames, to_db):
    """The frames with ``meta["x"], meta["y"]`` in the database's CRS (every distance in one CRS)."""
    for t, image, meta in frames:
        if to_db is not None and "x" in meta:
            meta = {**meta}
            meta["x"], meta["y"] = to_db(meta["x"], meta["y"])
        yield t, image, meta


def _flight_terrain(flight_raster, spec: FlightSpec):
    """The ground the frames are rendered over (a DEM, synthetic hills), given to the chain as ``export --dem``
    gives a database its terrain; None over flat ground."""
    effects = CameraEffects.from_spec(spec)
    if not (effects.dem or effects.relief_m):
        return None
    from tiles.raster import open_raster

    with open_raster(flight_raster) as raster:
        return terrain_for(effects, raster, spec.seed)


def _flight(raster, alt: float, hfov_deg: float, spec: FlightSpec):
    from runtime.replay.flights import GeoTiffFlight

    if spec.compass is not True and spec.compass is not False:
        raise ValueError(f"compass={spec.compass!r} must be true or false")
    return GeoTiffFlight(raster, alt, waypoints=parse_waypoints(spec.waypoints), pattern=spec.pattern,
                         hfov_deg=hfov_deg, size_px=spec.size_px, speed_mps=spec.speed_mps, fps=spec.fps,
                         tilt_deg=spec.tilt_deg, photometric=spec.photometric, max_frames=spec.max_frames,
                         seed=spec.seed, effects=CameraEffects.from_spec(spec))


def parse_waypoints(text: str | None):
    if not text:
        return None
    try:
        pts = [tuple(float(v) for v in p.split(",")) for p in text.split(";") if p.strip()]
    except ValueError as e:
        raise ValueError(f"--waypoints {text!r}: expected 'x,y;x,y;...' in metres of the map's CRS") from e
    if len(pts) < 2 or any(len(p) != 2 for p in pts):
        raise ValueError(f"--waypoints {text!r}: expected at least two 'x,y' points separated by ';'")
    return np.array(pts)


def _plot_flight(out: Path, alt: float, records: list[dict], summary: dict, map_path) -> dict:
    from runtime.replay.plots import plot_error, plot_track

    nan = float("nan")
    truth = [(r["true_x"], r["true_y"]) for r in records]
    est = [(r["fix_x"] if r["trusted"] else (r["est_x"] if r["est_x"] is not None else nan),
            r["fix_y"] if r["trusted"] else (r["est_y"] if r["est_y"] is not None else nan)) for r in records]
    trusted = [r["trusted"] for r in records]
    med = summary["error_m_median"]
    track = plot_track(out / f"track_{alt:g}m.png", truth, est, trusted, raster_path=map_path,
                       title=f"{alt:g} m: fix rate {summary['fix_rate']}%, median error "
                             f"{'-' if med is None else med} m")
    error = plot_error(out / f"error_{alt:g}m.png", [r["t"] for r in records],
                       [r["error_raw_m"] if r["error_raw_m"] is not None else nan for r in records], trusted,
                       title=f"{alt:g} m: error of each frame's estimate")
    return {f"track_{alt:g}": str(track), f"error_{alt:g}": str(error)}


SUMMARY_CSV_FIELDS = ("altitude_m", "n_frames", "fix_rate", "availability_pct", "ttff_frames", "wrong_trusted",
                      "calibration_pct", "registered_pct", "error_m_median", "error_m_p95", "error_m_max",
                      "error_raw_m_median", "error_raw_m_p95", "R@1", "R@5", "total_ms_median", "total_ms_p95",
                      "fps_pipeline", "fps_wall")


def _write_results(out: Path, results: dict, all_records: list[dict], plots: bool) -> dict:
    with whole_writes():  # a SIGTERM waits until the JSON and both CSVs are written
        return _write_result_files(out, results, all_records, plots)


def _write_result_files(out: Path, results: dict, all_records: list[dict], plots: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "replay_geotiff.json", jsonable(results))
    write_csv(out / "replay_geotiff_frames.csv", all_records, FRAME_CSV_FIELDS)
    rows = [{"altitude_m": a, **{k: v for k, v in s.items() if not isinstance(v, dict)}}
            for a, s in results["altitudes"].items()]
    write_csv(out / "replay_geotiff_summary.csv", rows, SUMMARY_CSV_FIELDS)
    files = {"json": str(out / "replay_geotiff.json"), "csv": str(out / "replay_geotiff_frames.csv"),
             "summary_csv": str(out / "replay_geotiff_summary.csv")}
    if plots:
        from runtime.replay.plots import plot_altitude_bars

        bars = [{"altitude_m": a, "series": key, "value": s[key]} for a, s in results["altitudes"].items()
                for key in ("fix_rate", "R@1", "R@5") if s.get(key) is not None]
        files["bars"] = str(plot_altitude_bars(out / "geotiff_altitudes.png", bars, "value",
                                               title="GeoTIFF flights: fix rate and tile recall (%)"))
        if results.get("reliability"):
            from runtime.replay.plots import plot_reliability

            files["reliability"] = str(plot_reliability(out / "reliability.png", results["reliability"]))
    return files
