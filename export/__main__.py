"""`python -m export`: checkpoint -> bundle (+FP16/INT8, TensorRT engine, tile database).

Desktop::

    python -m export runs/x/checkpoint.pt --out bundle --fp16 --int8 --calib-tif map.tif \\
        --eval-tifs data/naip/..._2016.tif data/naip/..._2018.tif --max-r1-drop 2 \\
        --tiles map.tif --altitudes 150 200 250 300 --hfov 60 --likelihood-tif other_year.tif

Jetson (no torch needed)::

    python -m export --bundle bundle --trt --precision fp16

Large areas, several GPUs/processes (rank sharding; rank 0 writes the database)::

    torchrun --nproc-per-node 4 -m export --bundle bundle --tiles big.tif --hfov 60

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


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--eval-tifs", type=Path, nargs=2, metavar=("QUERY_TIF", "GALLERY_TIF"),
                    help="two held-out years of one area: parity check and FP16/INT8 accuracy gate")
    ap.add_argument("--max-r1-drop", type=float, help="fail when a variant's R@1 drops more (points) than this")
    ap.add_argument("--trt", action="store_true", help="build a TensorRT engine (run on the Jetson/GPU)")
    ap.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16", help="TensorRT precision")
    ap.add_argument("--max-batch", type=int, default=8, help="TensorRT profile max batch (min 1, opt 1)")
    ap.add_argument("--workspace-mib", type=int, default=1024)
    ap.add_argument("--tiles", type=Path, nargs="+", default=[], help="GeoTIFF(s) for the tile database")
    ap.add_argument("--altitudes", type=float, nargs="+", default=[150, 200, 250, 300])
    ap.add_argument("--hfov", type=float, default=60.0, help="camera horizontal field of view, degrees")
    ap.add_argument("--stride-frac", type=float, default=0.5, help="tile stride as a fraction of the footprint")
    ap.add_argument("--chunk-tiles", type=int, default=256, help="tiles per resumable chunk (default 256)")
    ap.add_argument("--db-out", type=Path, help="tile database folder (default BUNDLE/tiledb)")
    ap.add_argument("--likelihood-tif", type=Path, nargs="+", default=[],
                    help="GeoTIFF(s) of the database's area from other dates than those you evaluate on: fit the map "
                         "filter's likelihood on flights rendered from them (stored in the bundle manifest)")
    ap.add_argument("--gallery", type=Path, help="labelled gallery folder: SUES-200 root or satellite-view, University-1652 "
                                                    "gallery_satellite, or class folders")
    ap.add_argument("--gallery-out", type=Path, help="gallery database folder (default BUNDLE/gallerydb)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.ckpt is None and args.bundle is None:
        ap.error("give a checkpoint (python -m export CKPT --out BUNDLE) or an existing bundle (--bundle BUNDLE)")
    if args.ckpt is not None and args.out is None:
        ap.error("--out BUNDLE is required with a checkpoint")
    if args.ckpt is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        ap.error("under torchrun only the tile database runs in parallel: export once with "
                 "`python -m export CKPT --out BUNDLE`, then `torchrun ... -m export --bundle BUNDLE --tiles ...`")
    if args.int8 and not (args.calib or args.calib_tif):
        ap.error("--int8 needs calibration images: --calib DIR or --calib-tif MAP.tif")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("export")
    try:
        bundle = args.bundle
        if args.ckpt is not None:
            from .bundle_export import export_bundle

            bundle = export_bundle(
                args.ckpt, args.out, model_name=args.model_name, input_format=args.input_format, fp16=args.fp16,
                int8=args.int8, calib_dir=args.calib, calib_tifs=args.calib_tif, calib_n=args.calib_n,
                calib_method=args.calib_method, hfov_deg=args.hfov, eval_tifs=args.eval_tifs,
                max_r1_drop=args.max_r1_drop, int8_reduce_range=not args.int8_full_range,
                overwrite=args.overwrite)
        if args.trt:
            from .trt_build import build_bundle_engine

            entry = build_bundle_engine(bundle, args.precision, batch=(1, 1, args.max_batch),
                                        workspace_mib=args.workspace_mib)
            log.info("engine %s (%s, TensorRT %s, %s)", entry["path"], entry["precision"], entry["trt_version"],
                     entry["gpu"])
        if args.tiles:
            from .tiledb_build import build_tile_database

            db = build_tile_database(bundle, args.tiles, args.db_out or Path(bundle) / "tiledb",
                                     altitudes_m=args.altitudes, hfov_deg=args.hfov, stride_frac=args.stride_frac,
                                     chunk_tiles=args.chunk_tiles, overwrite=args.overwrite, progress=not args.no_progress)
            if db is not None:
                log.info("tile database %s", db)
        if args.likelihood_tif:
            from .calibrate_likelihood import calibrate_bundle

            db = args.db_out or Path(bundle) / "tiledb"
            lik = calibrate_bundle(bundle, db, args.likelihood_tif, hfov_deg=args.hfov)
            log.info("likelihood: temperature %.4f, offset %.4f, r95 scale %.2f", lik["temperature"], lik["offset"],
                     lik["r95_scale"])
        if args.gallery:
            from .tiledb_build import build_gallery_database

            db = build_gallery_database(bundle, args.gallery, args.gallery_out or Path(bundle) / "gallerydb",
                                        overwrite=args.overwrite, progress=not args.no_progress)
            log.info("gallery database %s", db)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        log.error("%s", e)
        return 2
    log.info("done: %s", bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
