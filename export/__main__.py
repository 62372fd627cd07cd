"""`python -m export`: checkpoint -> bundle (+FP16/INT8, TensorRT engine, tile database).

Desktop::

    python -m export runs/x/checkpoint.pt --out bundle --fp16 --int8 --calib-tif map.tif \\
        --eval-tifs data/naip/..._2016.tif data/naip/..._2020.tif data/naip/..._2018.tif --max-r1-drop 2 \\
        --tiles map.tif --altitudes 150 200 250 300 --hfov 60 \\
        --projection-tifs train_2010.tif train_2012.tif --descriptor-dim 256 --ann auto \\
        --likelihood-tif train_2014.tif

``--descriptor-dim`` appends a PCA-whitening projection fitted on views of ``--projection-tifs`` (training
years only) and tiles of ``--tiles`` (default 256 when those are given: docs/results/search.md); ``--ann``
adds a FAISS IVF-PQ index to layers of >= ``--ann-min-rows`` tiles for global search (auto: when
faiss-cpu is installed).
``--likelihood-tif`` calibrates the map filter's likelihood on flights rendered from training-year rasters
(never the held-out years) over the tile database just built, and stores it in the bundle's manifest.
Without it, ``--tiles`` calibrates anyway (:func:`calibration_rasters`: the ``--calib-tif`` rasters of
other dates, else the map itself) unless ``--no-calibrate``.

Jetson (no torch needed)::

    python -m export --bundle bundle --trt --precision fp16

Large areas, several GPUs/processes (rank sharding; rank 0 writes the database)::

    torchrun --nproc-per-node 4 -m export --bundle bundle --tiles big.tif --hfov 60

Exit codes: 0 done; 2 usage or build error (nothing after it ran); 3 the accuracy gate rejected a variant
(it is deleted from the bundle; the bundle and the tile database are still built without it).

These are the only builders of databases: ``python -m runtime replay geotiff ... --db bundle/tiledb`` and
``python -m runtime serve --db`` read the tile database, ``python -m runtime replay sues200 --db`` the
gallery database (``--gallery ROOT`` takes a SUES-200 root, its ``satellite-view`` or any folder of
class folders; label = folder name).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common import validate
from common.cli import add_dataclass_options, interrupted, run_main, setup_logging, with_defaults
from common.options import DEFAULT_ALTITUDES_M, DEFAULT_HFOV_DEG, option, shared

_whole = validate.int_rule


@dataclass
class BundleOptions:
    """The bundle: ONNX, FP16/INT8 with their gate, the compact descriptor, TensorRT."""

    ckpt: str | None = option(None, "checkpoint (ours or an official Sample4Geo state dict)", positional=True,
                              nargs="?")
    out: str | None = option(None, "bundle folder to write")
    bundle: str | None = shared("bundle")
    model_name: str | None = shared("model_name")
    input_format: str = option("float32", "graph input: float NCHW normalised, or uint8 NHWC normalised in the graph",
                               choices=("float32", "uint8"))
    fp16: bool = option(False, "also write model.fp16.onnx")
    int8: bool = option(False, "also write model.int8.onnx (Q/DQ), needs calibration")
    calib: str | None = option(None, "folder of real drone frames for INT8 calibration")
    calib_tif: list[str] = option([], "GeoTIFF(s) to render calibration views")
    calib_n: int | None = shared("calib_n")
    calib_method: str = option("minmax", "INT8 calibration method", choices=("minmax", "entropy", "percentile"))
    int8_full_range: bool = option(False, "8-bit weights (TensorRT or VNNI CPUs only; default 7-bit, exact on every "
                                          "ORT CPU)")
    eval_tifs: list[str] | None = option(None, "held-out years of one area, the reference map last (QUERY.tif "
                                               "[QUERY2.tif ...] MAP.tif): parity check and FP16/INT8 accuracy gate, "
                                               "at the footprints of --altitudes/--hfov", metavar="TIF")
    eval_n: int = shared("eval_n")
    max_r1_drop: float | None = option(None, "reject a variant unless its R@1 drop (points) is shown, at 95%% "
                                             "confidence, to be at most this; a rejected variant is deleted, the rest "
                                             "is still built, and the exit code is 3",
                                       check=validate.range_rule(0.0, 100.0))
    int8_per_tensor: bool = option(False, "one INT8 weight scale per tensor (default per channel)")
    descriptor_dim: int | None = option(None, "compact descriptor size: a PCA-whitening projection appended to the "
                                              "graph (default 256 when fitting images are given; 0 = the network's "
                                              "full embedding)", check=_whole(0))
    projection_tifs: list[str] = option([], "GeoTIFFs of the TRAINING years to fit the projection on (drone views "
                                            "rendered from them; with the map tiles of --tiles); never the held-out "
                                            "years")
    projection_n: int = option(2000, "images to fit the projection on", check=_whole(1))
    trt: bool = option(False, "build a TensorRT engine (run on the Jetson/GPU)")
    precision: str = shared("precision")
    max_batch: int = option(8, "TensorRT profile max batch (min 1, opt 1)", check=_whole(1))
    workspace_mib: int = option(1024, "TensorRT builder workspace, MiB", check=_whole(1))


@dataclass
class DatabaseOptions:
    """The tile (or gallery) database: layers, indexes, map imagery, the map filter's calibration."""

    tiles: list[str] = option([], "GeoTIFF(s) for the tile database")
    altitudes_m: list[float] | None = shared("altitudes_m")
    hfov_deg: float | None = shared("hfov_deg")
    stride_frac: float = shared("stride_frac")
    chunk_tiles: int = option(256, "tiles per resumable chunk", check=_whole(1))
    ann: str = option("auto", "approximate index for global search: auto = FAISS IVF-PQ on layers of >= "
                              "--ann-min-rows rows when faiss-cpu is installed, ivfpq = always (needs FAISS), none = "
                              "exact only", choices=("auto", "ivfpq", "none"))
    ann_min_rows: int = option(50_000, "smallest layer given an ANN index", check=_whole(1))
    imagery_px: int = shared("imagery_px")
    imagery: bool = option(True, "write the map imagery registration needs (--no-imagery: retrieval only)")
    db_out: str | None = option(None, "tile database folder (default BUNDLE/tiledb)")
    dem: str | None = shared("dem")
    likelihood_tif: list[str] = option([], "GeoTIFF(s) of the database's area from other dates than those you "
                                           "evaluate on: fit the map filter's likelihood on flights rendered from "
                                           "them (stored in the bundle manifest)")
    calibrate: bool = option(True, "with --tiles and no --likelihood-tif: calibrate the likelihood and the reported "
                                   "accuracy for this model anyway, on flights rendered from the --calib-tif rasters "
                                   "that are neither the map nor an --eval-tifs raster (other dates of the area), "
                                   "else from the map itself (optimistic: the tiles' own imagery); --no-calibrate "
                                   "leaves the bundle uncalibrated (serve warns at every start)")
    gallery: str | None = option(None, "labelled gallery folder: SUES-200 root or satellite-view, University-1652 "
                                       "gallery_satellite, or class folders")
    gallery_out: str | None = option(None, "gallery database folder (default BUNDLE/gallerydb)")
    overwrite: bool = shared("overwrite")
    progress: bool = shared("progress")
    verbose: bool = shared("verbose")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_options(ap, BundleOptions)
    add_dataclass_options(ap, DatabaseOptions, group="the tile database")
    return ap


def parse_args(argv=None):
    ap = build_parser()
    args = with_defaults(ap.parse_args(argv), BundleOptions, DatabaseOptions)
    args.hfov_deg = DEFAULT_HFOV_DEG if args.hfov_deg is None else args.hfov_deg
    args.altitudes_m = list(DEFAULT_ALTITUDES_M if args.altitudes_m is None else args.altitudes_m)
    args.calib_n = 128 if args.calib_n is None else args.calib_n
    if args.precision == "auto":
        args.precision = "fp16"  # a TensorRT build runs on a GPU: auto is fp16 there
    setup_logging(args.verbose)
    _check(ap, args)
    return args


def _check(ap: argparse.ArgumentParser, args) -> None:
    """Refuse what cannot work before any work starts (argparse's exit code 2 and message)."""
    if args.ckpt is None and args.bundle is None:
        ap.error("give a checkpoint (python -m export CKPT --out BUNDLE) or an existing bundle (--bundle BUNDLE)")
    if args.ckpt is not None and args.out is None:
        ap.error("--out BUNDLE is required with a checkpoint")
    if args.ckpt is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        ap.error("under torchrun only the tile database runs in parallel: export once with "
                 "`python -m export CKPT --out BUNDLE`, then `torchrun ... -m export --bundle BUNDLE --tiles ...`")
    if args.ckpt is not None:
        fit = bool(args.projection_tifs or args.tiles)
        if args.descriptor_dim is None:
            args.descriptor_dim = 256 if fit else 0
            if not fit:
                logging.getLogger("export").warning(
                    "no --projection-tifs/--tiles: the bundle emits the full embedding, not the compact 256-d "
                    "descriptor (give --projection-tifs TRAIN_YEARS.tif to get it)")
        elif args.descriptor_dim and not fit:
            ap.error(f"--descriptor-dim {args.descriptor_dim} needs images to fit the projection on: "
                     "--projection-tifs TRAIN_YEAR.tif ... (and/or --tiles MAP.tif); or --descriptor-dim 0")
    if args.int8 and not (args.calib or args.calib_tif):
        ap.error("--int8 needs calibration images: --calib DIR or --calib-tif MAP.tif")


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_main(_run, args, logger_name="export")


def _run(args) -> int:
    """The steps the options ask for, in order; a user error ends in one line (exit 2), a file that cannot
    be written in one line naming it (exit 1), Ctrl-C in 130 (common.cli.run_main)."""
    log = logging.getLogger("export")
    gate_error = None
    try:
        bundle = args.bundle
        if args.ckpt is not None:
            bundle, gate_error = _export_bundle(args)
        if args.trt:
            from export.trt_build import build_bundle_engine

            entry = build_bundle_engine(bundle, args.precision, batch=(1, 1, args.max_batch),
                                        workspace_mib=args.workspace_mib)
            log.info("engine %s (%s, TensorRT %s, %s)", entry["path"], entry["precision"], entry["trt_version"],
                     entry["gpu"])
        _databases(args, bundle, log)
    except (FileExistsError, RuntimeError) as e:  # an existing result, a missing toolkit: the user's to fix
        if interrupted():  # Ctrl-C inside ONNX Runtime comes out as its RuntimeError
            raise KeyboardInterrupt from e
        log.error("%s", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return 2
    if gate_error is not None:
        log.error("done, but the accuracy gate failed (exit 3): %s holds %s only", bundle,
                  ", ".join(f["precision"] for f in _bundle_files(bundle)))
        return EXIT_GATE_FAILED
    log.info("done: %s", bundle)
    return 0


def _export_bundle(args):
    from export.bundle_export import export_bundle

    return _gated(export_bundle)(
        args.ckpt, args.out, model_name=args.model_name, input_format=args.input_format, fp16=args.fp16,
        int8=args.int8, calib_dir=args.calib, calib_tifs=args.calib_tif, calib_n=args.calib_n,
        calib_method=args.calib_method, hfov_deg=args.hfov_deg, eval_tifs=args.eval_tifs,
        max_r1_drop=args.max_r1_drop, int8_reduce_range=not args.int8_full_range,
        overwrite=args.overwrite, **_gate_options(args),
        descriptor_dim=args.descriptor_dim or None, projection_tifs=args.projection_tifs,
        projection_map_tifs=args.tiles, projection_n=args.projection_n, progress=args.progress)


def _databases(args, bundle, log) -> None:
    """The tile database, the likelihood's calibration over it, the gallery database."""
    if args.tiles:
        from export.tiledb_build import build_tile_database

        db = build_tile_database(bundle, args.tiles, args.db_out or Path(bundle) / "tiledb",
                                 altitudes_m=args.altitudes_m, hfov_deg=args.hfov_deg, stride_frac=args.stride_frac,
                                 chunk_tiles=args.chunk_tiles, overwrite=args.overwrite, progress=args.progress,
                                 ann=args.ann, ann_min_rows=args.ann_min_rows,
                                 imagery_px=args.imagery_px if args.imagery else None)
        if db is not None:
            log.info("tile database %s", db)
    if args.dem:
        from export.terrain import attach_terrain

        attach_terrain(args.db_out or Path(bundle) / "tiledb", args.dem)
    rasters, source = calibration_rasters(args)
    if rasters:
        _calibrate(args, bundle, rasters, source, log)
    if args.gallery:
        from export.tiledb_build import build_gallery_database

        db = build_gallery_database(bundle, args.gallery, args.gallery_out or Path(bundle) / "gallerydb",
                                    overwrite=args.overwrite, progress=args.progress)
        log.info("gallery database %s", db)


def calibration_rasters(args) -> tuple[list[str], str | None]:
    """What the likelihood and the reported accuracy are calibrated on, and how it was chosen: the
    ``--likelihood-tif`` rasters; else, with ``--tiles`` (and not ``--no-calibrate``), the ``--calib-tif``
    rasters that are neither the map nor an evaluation raster (other dates of the area), else the map
    itself. None under torchrun (rank 0 writes the database after the others: calibrate afterwards)."""
    if args.likelihood_tif:
        return list(args.likelihood_tif), "likelihood-tif"
    if not (args.tiles and args.calibrate):
        return [], None
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        logging.getLogger("export").warning(
            "the bundle is not calibrated under torchrun: afterwards, `python -m export --bundle BUNDLE --db-out DB "
            "--likelihood-tif OTHER_YEAR.tif`")
        return [], None
    taken = {Path(p).resolve() for p in [*args.tiles, *(args.eval_tifs or [])]}
    others = [t for t in args.calib_tif or [] if Path(t).resolve() not in taken]
    return (others, "calib-tif") if others else (list(args.tiles), "map")


def _calibrate(args, bundle, rasters: list[str], source: str, log) -> None:
    """Calibrate the bundle over its database; a calibration nobody asked for that the model cannot give
    leaves the bundle uncalibrated with a warning (serve repeats it at every start)."""
    from export.calibrate import calibrate_bundle

    db = args.db_out or Path(bundle) / "tiledb"
    if source != "likelihood-tif":
        log.info("calibrating the likelihood and the reported accuracy on %s (%s; --no-calibrate skips it)",
                 ", ".join(Path(r).name for r in rasters),
                 "the map itself: optimistic, give --likelihood-tif OTHER_YEAR.tif" if source == "map"
                 else "--calib-tif: other dates of the area")
    try:
        lik = calibrate_bundle(bundle, db, rasters, hfov_deg=args.hfov_deg, source=source, progress=args.progress)
    except ValueError as e:
        if source == "likelihood-tif":
            raise
        log.warning("the bundle is UNCALIBRATED: the calibration on %s failed: %s",
                    ", ".join(Path(r).name for r in rasters), str(e).splitlines()[0])
        return
    acc = lik.get("fix_accuracy", {})
    log.info("likelihood: temperature %.4f, offset %.4f, r95 scale %.2f; reported accuracy scale %.2f (%s)",
             lik["temperature"], lik["offset"], lik["r95_scale"], acc.get("r95_scale", 1.0), acc.get("note", ""))


EXIT_GATE_FAILED = 3


def _gate_options(args) -> dict:
    return {"eval_altitudes_m": args.altitudes_m, "eval_n": args.eval_n, "int8_per_channel": not args.int8_per_tensor}


def _gated(export_bundle):
    """``export_bundle`` returning (bundle, None), or (bundle, error) when the accuracy gate rejected a
    variant: the bundle is written without it, and the steps after (tile database...) still run."""
    from export.accuracy import AccuracyGateError

    def run(*a, **kw):
        try:
            return export_bundle(*a, **kw), None
        except AccuracyGateError as e:
            if e.bundle is None:
                raise
            logging.getLogger("export").error("%s", e)
            return e.bundle, e
    return run


def _bundle_files(bundle) -> list:
    from runtime.engines.bundle import read_bundle

    return read_bundle(bundle).files


if __name__ == "__main__":
    sys.exit(main())
