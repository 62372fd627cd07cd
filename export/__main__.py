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
from pathlib import Path

from common import validate
from common.cli import UserError


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_options(ap)
    _database_options(ap)
    args = ap.parse_args(argv)
    _check(ap, args)
    return args


def _model_options(ap: argparse.ArgumentParser) -> None:
    """The bundle: ONNX, FP16/INT8 with their gate, the compact descriptor, TensorRT."""
    ap.add_argument("ckpt", nargs="?", type=Path, help="checkpoint (ours or an official Sample4Geo state dict)")
    ap.add_argument("--out", type=Path, help="bundle folder to write")
    ap.add_argument("--bundle", type=Path, help="an existing bundle (for --trt / --tiles without a checkpoint)")
    ap.add_argument("--model-name", help="timm name, required for official Sample4Geo state dicts")
    ap.add_argument("--input-format", choices=("float32", "uint8"), default="float32",
                    help="graph input: float NCHW normalised (default) or uint8 NHWC, normalised in the graph")
    ap.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx")
    ap.add_argument("--int8", action="store_true", help="also write model.int8.onnx (Q/DQ), needs calibration")
    ap.add_argument("--calib", type=Path, help="folder of real drone frames for INT8 calibration")
    ap.add_argument("--calib-tif", type=Path, nargs="+", default=[], help="GeoTIFF(s) to render calibration views")
    ap.add_argument("--calib-n", type=int, default=128, help="number of calibration images (default 128)")
    ap.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    ap.add_argument("--int8-full-range", action="store_true",
                    help="8-bit weights (TensorRT or VNNI CPUs only; default 7-bit, exact on every ORT CPU)")
    ap.add_argument("--eval-tifs", type=Path, nargs="+", metavar="TIF",
                    help="held-out years of one area, the reference map last (QUERY.tif [QUERY2.tif ...] MAP.tif): "
                         "parity check and FP16/INT8 accuracy gate, at the footprints of --altitudes/--hfov")
    ap.add_argument("--eval-n", type=int, default=256, help="gate queries per altitude (default 256)")
    ap.add_argument("--max-r1-drop", type=float,
                    help="reject a variant unless its R@1 drop (points) is shown, at 95%% confidence, to be at most "
                         "this; a rejected variant is deleted, the rest is still built, and the exit code is 3")
    ap.add_argument("--int8-per-tensor", action="store_true", help="one INT8 weight scale per tensor (default "
                    "per channel)")
    ap.add_argument("--descriptor-dim", type=int, default=None,
                    help="compact descriptor size: a PCA-whitening projection appended to the graph (default 256 "
                         "when fitting images are given; 0 = the network's full embedding)")
    ap.add_argument("--projection-tifs", type=Path, nargs="+", default=[],
                    help="GeoTIFFs of the TRAINING years to fit the projection on (drone views rendered from them; "
                         "with the map tiles of --tiles); never the held-out years")
    ap.add_argument("--projection-n", type=int, default=2000, help="images to fit the projection on (default 2000)")
    ap.add_argument("--trt", action="store_true", help="build a TensorRT engine (run on the Jetson/GPU)")
    ap.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16", help="TensorRT precision")
    ap.add_argument("--max-batch", type=int, default=8, help="TensorRT profile max batch (min 1, opt 1)")
    ap.add_argument("--workspace-mib", type=int, default=1024)


def _database_options(ap: argparse.ArgumentParser) -> None:
    """The tile (or gallery) database: layers, indexes, map imagery, the map filter's calibration."""
    ap.add_argument("--tiles", type=Path, nargs="+", default=[], help="GeoTIFF(s) for the tile database")
    ap.add_argument("--altitudes-m", "--altitudes", dest="altitudes", type=float, nargs="+",
                    default=[150, 200, 250, 300], help="flight heights of the tile database's layers, metres")
    ap.add_argument("--hfov-deg", "--hfov", dest="hfov", type=float, default=60.0,
                    help="camera horizontal field of view, degrees")
    ap.add_argument("--stride-frac", type=float, default=0.5, help="tile stride as a fraction of the footprint")
    ap.add_argument("--chunk-tiles", type=int, default=256, help="tiles per resumable chunk (default 256)")
    ap.add_argument("--ann", choices=("auto", "ivfpq", "none"), default="auto",
                    help="approximate index for global search: auto = FAISS IVF-PQ on layers of >= --ann-min-rows "
                         "rows when faiss-cpu is installed (default), ivfpq = always (needs FAISS), none = exact only")
    ap.add_argument("--ann-min-rows", type=int, default=50_000, help="smallest layer given an ANN index")
    ap.add_argument("--imagery-px", type=int, default=512,
                    help="map imagery for registration at the resolution of a frame this many pixels wide at the "
                         "lowest altitude (never finer than the map; default 512)")
    ap.add_argument("--no-imagery", action="store_true", help="no map imagery in the database (retrieval only)")
    ap.add_argument("--db-out", type=Path, help="tile database folder (default BUNDLE/tiledb)")
    ap.add_argument("--dem", type=Path, help="DEM GeoTIFF of ground heights above mean sea level (any CRS): stored in "
                    "the tile database so the runtime knows the ground's height (without it the ground is flat)")
    ap.add_argument("--likelihood-tif", type=Path, nargs="+", default=[],
                    help="GeoTIFF(s) of the database's area from other dates than those you evaluate on: fit the map "
                         "filter's likelihood on flights rendered from them (stored in the bundle manifest)")
    ap.add_argument("--gallery", type=Path, help="labelled gallery folder: SUES-200 root or satellite-view, University-1652 "
                                                    "gallery_satellite, or class folders")
    ap.add_argument("--gallery-out", type=Path, help="gallery database folder (default BUNDLE/gallerydb)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")


def _check(ap: argparse.ArgumentParser, args) -> None:
    """Refuse what cannot work before any work starts (argparse's exit code 2 and message)."""
    validate.check_args(ap, args, {"altitudes": ("--altitudes-m", validate.altitude_m),
                                   "hfov": ("--hfov-deg", validate.hfov_deg),
                                   "stride_frac": ("--stride-frac", lambda v: validate.fraction("stride_frac", v))})
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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("export")
    gate_error = None
    try:
        bundle = args.bundle
        if args.ckpt is not None:
            from export.bundle_export import export_bundle

            bundle, gate_error = _gated(export_bundle)(
                args.ckpt, args.out, model_name=args.model_name, input_format=args.input_format, fp16=args.fp16,
                int8=args.int8, calib_dir=args.calib, calib_tifs=args.calib_tif, calib_n=args.calib_n,
                calib_method=args.calib_method, hfov_deg=args.hfov, eval_tifs=args.eval_tifs,
                max_r1_drop=args.max_r1_drop, int8_reduce_range=not args.int8_full_range,
                overwrite=args.overwrite, **_gate_options(args),
                descriptor_dim=args.descriptor_dim or None, projection_tifs=args.projection_tifs,
                projection_map_tifs=args.tiles, projection_n=args.projection_n)
        if args.trt:
            from export.trt_build import build_bundle_engine

            entry = build_bundle_engine(bundle, args.precision, batch=(1, 1, args.max_batch),
                                        workspace_mib=args.workspace_mib)
            log.info("engine %s (%s, TensorRT %s, %s)", entry["path"], entry["precision"], entry["trt_version"],
                     entry["gpu"])
        if args.tiles:
            from export.tiledb_build import build_tile_database

            db = build_tile_database(bundle, args.tiles, args.db_out or Path(bundle) / "tiledb",
                                     altitudes_m=args.altitudes, hfov_deg=args.hfov, stride_frac=args.stride_frac,
                                     chunk_tiles=args.chunk_tiles, overwrite=args.overwrite, progress=not args.no_progress,
                                     ann=args.ann, ann_min_rows=args.ann_min_rows,
                                     imagery_px=None if args.no_imagery else args.imagery_px)
            if db is not None:
                log.info("tile database %s", db)
        if args.dem:
            from export.terrain import attach_terrain

            attach_terrain(args.db_out or Path(bundle) / "tiledb", args.dem)
        if args.likelihood_tif:
            from export.calibrate import calibrate_bundle

            db = args.db_out or Path(bundle) / "tiledb"
            lik = calibrate_bundle(bundle, db, args.likelihood_tif, hfov_deg=args.hfov)
            acc = lik.get("fix_accuracy", {})
            log.info("likelihood: temperature %.4f, offset %.4f, r95 scale %.2f; reported accuracy scale %.2f (%s)",
                     lik["temperature"], lik["offset"], lik["r95_scale"], acc.get("r95_scale", 1.0), acc.get("note", ""))
        if args.gallery:
            from export.tiledb_build import build_gallery_database

            db = build_gallery_database(bundle, args.gallery, args.gallery_out or Path(bundle) / "gallerydb",
                                        overwrite=args.overwrite, progress=not args.no_progress)
            log.info("gallery database %s", db)
    except (UserError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        log.error("%s", e)
        return 2
    if gate_error is not None:
        log.error("done, but the accuracy gate failed (exit 3): %s holds %s only", bundle,
                  ", ".join(f["precision"] for f in _bundle_files(bundle)))
        return EXIT_GATE_FAILED
    log.info("done: %s", bundle)
    return 0


EXIT_GATE_FAILED = 3


def _gate_options(args) -> dict:
    return {"eval_altitudes_m": args.altitudes, "eval_n": args.eval_n, "int8_per_channel": not args.int8_per_tensor}


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
