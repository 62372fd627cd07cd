"""The embedded demo: the whole product on the bundled real imagery, on a CPU, in minutes.

    python -m tools.demo [--out demo-out] [--quick] [--fresh]      (or: make demo)

Steps (each skipped when its output already exists, so an interrupted demo continues where it stopped):

1. ``frozen``: ``tf_efficientnet_lite0`` with the offline ImageNet weights, untrained: the baseline.
2. ``trained``: the same network trained with the hard-negative InfoNCE recipe (GPS-neighbour batches,
   re-mined by visual similarity) on drone views rendered from the 2010/2012/2014 NAIP images against
   tiles of the 2018 map (``train`` preset ``demo``).
3. Each model is exported to a bundle (ONNX FP32, checked against torch on real images), and the tile
   database of the 2018 map is built for 150, 200, 250 and 300 m.
4. Flights rendered from 2016 and 2020 — years neither model saw — are replayed through the onboard
   runtime (engine -> search -> position fusion) at each altitude.
5. A table per altitude is printed; ``<out>/report/`` holds JSON, CSV and PNG plots (tracks over the map,
   error along each flight, frozen vs trained per altitude).

Both models fly their FP32 engine: on this CPU INT8 is no faster and its default (7-bit weights) lost 7.7
points of held-out R@1 (docs/results/export.md), so the measured choice for a CPU is FP32.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import options_parser, parse_options
from common.kernels import pin_cpu_kernels
from common.options import option, shared
from tools.demo_report import report

REPO = Path(__file__).resolve().parents[1]
NAIP = REPO / "data" / "naip"

_log = logging.getLogger("demo")


def naip(year: int) -> Path:
    hits = sorted(NAIP.glob(f"*_{year}*.tif"))
    if not hits:
        raise FileNotFoundError(f"bundled NAIP image for {year} missing from {NAIP}; the repository is incomplete")
    return hits[0]


@dataclass
class DemoConfig:
    out: str = "demo-out"
    reference_year: int = 2018
    train_years: tuple = (2010, 2012, 2014)
    flight_years: tuple = (2016, 2020)
    altitudes_m: tuple = (150, 200, 250, 300)
    # per (year, altitude) flight: frames along a smooth curve across the map
    flight_frames: int = 60
    flight_speed_mps: float = 40.0
    flight_fps: float = 1.0
    flight_photometric: float = 0.3
    stride_frac: float = 0.5  # tile database: centres every half footprint
    train_overrides: list = field(default_factory=list)
    threads: int = 2
    calib_frames: int = 40  # per training year and altitude, for the map filter's likelihood
    kidnap_altitude_m: float = 200.0  # one extra flight per year: carried elsewhere in mid-flight

    @classmethod
    def quick(cls, out: str) -> DemoConfig:
        """A reduced run for CI (about a third of the work): a third of the training locations, tile
        databases without overlap, shorter flights; the same steps and code paths."""
        return cls(out=out, flight_frames=16, stride_frac=1.0, calib_frames=12, train_overrides=[
            "data.max_locations=160", "eval.max_queries=20", "eval.stride_frac=1.0"])


def _stage(name: str):
    _log.info("== %s", name)
    return time.perf_counter()


def make_frozen_checkpoint(path: Path, img_size: int) -> Path:
    from train.model import GeoModel, save_checkpoint

    if path.is_file():
        return path
    model = GeoModel("tf_efficientnet_lite0", pretrained="lite0-offline", img_size=img_size)
    return save_checkpoint(path, model, config={"note": "frozen ImageNet features, no training"}, epoch=0, step=0)


def train_config(cfg: DemoConfig, run_dir: Path):
    """The resolved training config: the ``demo`` preset on this demo's years, plus overrides."""
    from train.config import apply_overrides, preset

    tcfg = preset("demo")
    tcfg.run_dir = str(run_dir)
    tcfg.threads = cfg.threads
    tcfg.data.reference = str(naip(cfg.reference_year))
    tcfg.data.train_rasters = [str(naip(y)) for y in cfg.train_years]
    tcfg.data.eval_rasters = [str(naip(y)) for y in cfg.flight_years]
    tcfg.data.altitudes_m = list(cfg.altitudes_m)
    return apply_overrides(tcfg, cfg.train_overrides)


def train_model(cfg: DemoConfig, run_dir: Path) -> Path:
    from train.trainer import train

    ckpt = run_dir / "checkpoint.pt"
    done = run_dir / "DONE"
    if done.is_file() and ckpt.is_file():
        return ckpt
    tcfg = train_config(cfg, run_dir)
    resume = ckpt.is_file()
    train(tcfg, resume=resume, overwrite=not resume, command=["python", "-m", "tools.demo"])
    done.write_text("finished\n")
    return ckpt


def held_out_eval(cfg: DemoConfig, ckpt: Path, out: Path, progress: bool = True) -> dict:
    """Cross-year retrieval on the held-out years with the training's own evaluation (same queries for
    every model: fixed seed), cached as JSON; ``progress``: its bars (``evaluation 150 m``, ...)."""
    import torch

    from tiles.io import atomic_write_json
    from train.evaluate import evaluate_config
    from train.model import load_checkpoint

    if out.is_file():
        return json.loads(out.read_text())
    torch.set_num_threads(cfg.threads)
    model, _ = load_checkpoint(ckpt)
    model.eval()
    _log.info("held-out evaluation of the %s model", out.parent.name)
    result = evaluate_config(train_config(cfg, out.parent), model, progress=progress)
    atomic_write_json(out, result)
    return json.loads(out.read_text())  # as a cached run reads it (altitude keys are strings in JSON)


def export_and_index(cfg: DemoConfig, ckpt: Path, work: Path, progress: bool = True) -> tuple[Path, Path]:
    """The bundle, its tile database and its calibration (``progress``: their bars)."""
    from export.bundle_export import export_bundle
    from export.tiledb_build import build_tile_database
    from runtime.engines.bundle import MANIFEST
    from train.config import preset

    hfov = preset("demo").data.hfov_deg
    bundle, db = work / "bundle", work / "tiledb"
    if not (bundle / MANIFEST).is_file():
        export_bundle(ckpt, bundle, hfov_deg=hfov, overwrite=True,
                      eval_tifs=(naip(cfg.flight_years[0]), naip(cfg.reference_year)))  # parity on real crops
    if not (db / "manifest.json").is_file():
        build_tile_database(bundle, [naip(cfg.reference_year)], db, altitudes_m=list(cfg.altitudes_m),
                            hfov_deg=hfov, stride_frac=cfg.stride_frac, overwrite=True, progress=progress)
    if "likelihood" not in json.loads((bundle / MANIFEST).read_text()):
        # the map filter's likelihood, calibrated for this model on flights of the training years only
        from export.calibrate import calibrate_bundle

        _log.info("calibration of the %s model: likelihood and reported accuracy", work.name)
        calibrate_bundle(bundle, db, [naip(y) for y in cfg.train_years], hfov_deg=hfov, precision="fp32",
                         frames=cfg.calib_frames, progress=progress)
    return bundle, db


def replay(cfg: DemoConfig, bundle: Path, db: Path, out: Path, precision: str, plots: bool) -> dict:
    """Replay the flight years through the runtime; return {year: results} (cached as JSON)."""
    from runtime.replay.geotiff import replay_geotiff
    from train.config import preset

    hfov = preset("demo").data.hfov_deg
    results = {}
    for year in cfg.flight_years:
        ydir = out / str(year)
        cached = ydir / "replay_geotiff.json"
        if cached.is_file():
            results[year] = json.loads(cached.read_text())
            continue
        _log.info("replay of the %s model: flights rendered from %d at %s m", out.name, year,
                  "/".join(map(str, cfg.altitudes_m)))
        results[year] = replay_geotiff(
            bundle, naip(cfg.reference_year), flight_raster=naip(year), altitudes=cfg.altitudes_m, db=db,
            out_dir=ydir, hfov_deg=hfov, pattern="curve", speed_mps=cfg.flight_speed_mps, fps=cfg.flight_fps,
            photometric=cfg.flight_photometric, max_frames=cfg.flight_frames, precision=precision,
            threads=cfg.threads, plots=plots, seed=year)
    return results


def kidnap_flights(cfg: DemoConfig, bundle: Path, db: Path, out: Path, precision: str,
                   progress: bool = True) -> list[list[dict]]:
    """Per flight year, a flight whose second half is another flight over the map (the drone carried
    elsewhere between two frames), through the same Localizer; the frames' records (cached as JSON).
    ``progress``: a bar per flight (``kidnap flight 2016``)."""
    from common.progress import progress_bar
    from runtime.engines.engine import load_engine
    from runtime.localisation.camera_view import database_hfov
    from runtime.localisation.localizer import Localizer
    from runtime.replay.flights import GeoTiffFlight, Kidnapping
    from runtime.replay.geotiff import replay_flight
    from tiles.db import TileDatabase
    from tiles.io import atomic_write_json

    cached = out / "kidnap.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    engine, tdb = load_engine(bundle, precision=precision, threads=cfg.threads), TileDatabase.open(db)
    kw = dict(hfov_deg=database_hfov(tdb), speed_mps=cfg.flight_speed_mps, fps=cfg.flight_fps,
              photometric=cfg.flight_photometric, max_frames=cfg.flight_frames, pattern="curve")
    alt, flights = cfg.kidnap_altitude_m, []
    for year in cfg.flight_years:
        a = GeoTiffFlight(naip(year), alt, seed=year, **kw)
        b = GeoTiffFlight(naip(year), alt, seed=year + 7, **kw)
        cut = cfg.flight_frames // 2
        frames = progress_bar(Kidnapping(a, b, cut), desc=f"kidnap flight {year}", unit="frame",
                              total=min(cut, len(a)) + max(0, len(b) - cut), enabled=progress)
        flights.append(replay_flight(Localizer(engine, tdb), frames))
    engine.close()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cached, flights)
    return flights


def pooled_by_altitude(results: dict, altitudes) -> dict:
    """Per altitude, the frames of every flight year pooled into one summary."""
    from runtime.replay.figures import flight_frames, pooled_figures, summarize_flight

    out = {}
    by_year = [flight_frames(res) for res in results.values()]  # by the flight, not by each record's altitude
    for alt in altitudes:                                         # (the chain's height estimate)
        flights = [f.get(f"{alt:g}", []) for f in by_year]
        out[int(alt)] = {**summarize_flight([r for f in flights for r in f]), **pooled_figures(flights)}
    return out


def run(cfg: DemoConfig, progress: bool = True) -> dict:
    """The whole demo; returns {"summaries": {model: {alt: summary}}, "report_dir": Path, "table": str}.
    ``progress``: bars of the long steps on stderr (training, evaluation, tile databases, calibration)."""
    from train.config import preset

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report_dir = out / "report"
    img_size = preset("demo").model.img_size
    timings = {}

    t = _stage("1/5 frozen baseline: tf_efficientnet_lite0 with offline ImageNet weights")
    frozen_ckpt = make_frozen_checkpoint(out / "frozen" / "checkpoint.pt", img_size)
    timings["frozen checkpoint"] = time.perf_counter() - t

    years = "/".join(map(str, cfg.train_years))
    t = _stage(f"2/5 training: hard-negative InfoNCE on NAIP {years} against the {cfg.reference_year} map")
    trained_ckpt = train_model(cfg, out / "train")
    timings["training"] = time.perf_counter() - t
    t = time.perf_counter()
    # the trainer evaluated the trained model at its end (train/eval.json); the frozen one gets the same
    # evaluation, same config and seed, hence the very same queries
    evals = {"frozen": held_out_eval(cfg, frozen_ckpt, out / "frozen" / "eval.json", progress),
             "trained": held_out_eval(cfg, trained_ckpt, out / "train" / "eval.json", progress)}
    timings["held-out evaluation"] = time.perf_counter() - t

    alts = "/".join(map(str, cfg.altitudes_m))
    t = _stage(f"3/5 export (ONNX FP32) and tile databases for {alts} m")
    frozen_bundle, frozen_db = export_and_index(cfg, frozen_ckpt, out / "frozen", progress)
    trained_bundle, trained_db = export_and_index(cfg, trained_ckpt, out / "trained", progress)
    timings["export + tile databases"] = time.perf_counter() - t

    flights = "/".join(map(str, cfg.flight_years))
    t = _stage(f"4/5 replay of flights rendered from {flights} through the runtime")
    res_frozen = replay(cfg, frozen_bundle, frozen_db, report_dir / "frozen", "fp32", plots=False)
    res_trained = replay(cfg, trained_bundle, trained_db, report_dir / "trained", "fp32", plots=True)
    kidnap = kidnap_flights(cfg, trained_bundle, trained_db, report_dir / "trained", "fp32", progress)
    timings["replay"] = time.perf_counter() - t

    _stage("5/5 report")
    from runtime.replay.figures import pooled_figures, summarize_flight

    summaries = {"frozen": pooled_by_altitude(res_frozen, cfg.altitudes_m),
                 "trained": pooled_by_altitude(res_trained, cfg.altitudes_m)}
    summaries["trained"][f"kidnap {cfg.kidnap_altitude_m:g}"] = {
        **summarize_flight([r for f in kidnap for r in f]), **pooled_figures(kidnap)}
    engines = {"frozen": next(iter(res_frozen.values()))["engine"],
               "trained": next(iter(res_trained.values()))["engine"]}
    table = report(cfg, summaries, report_dir, timings, engines, evals)
    return {"summaries": summaries, "report_dir": report_dir, "table": table, "timings": timings,
            "evals": evals}


@dataclass
class Options:
    out: str = option("demo-out", "output folder")
    quick: bool = option(False, "a reduced run (about a tenth of the work)")
    fresh: bool = option(False, "delete the output folder first")
    set: list[str] = shared("set")
    native_kernels: bool = option(False, "train with the CPU's own kernels (faster on AVX-512; the figures then "
                                         "differ from the README's: common/kernels.py)")
    progress: bool = shared("progress")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__, prog="python -m tools.demo")


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("runtime.replay", "export", "train"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.native_kernels:
        pinned = pin_cpu_kernels()  # before torch is imported: the same weights on every x86 machine
        _log.info("CPU kernels pinned for reproducible figures: %s", pinned or "nothing to pin here")
    logging.getLogger("runtime.replay.geotiff").setLevel(logging.INFO)  # a line per replayed flight: progress
    cfg = DemoConfig.quick(args.out) if args.quick else DemoConfig(out=args.out)
    cfg.train_overrides = list(cfg.train_overrides) + args.set
    if args.fresh and Path(args.out).exists():
        shutil.rmtree(args.out)
    t0 = time.perf_counter()
    result = run(cfg, progress=args.progress)
    print()
    print(result["table"])
    print()
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min; report: {result['report_dir'].resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
