"""Checkpoint -> model bundle (ARCHITECTURE.md, runtime/bundle.py): the steps of `python -m export`.

``export_bundle`` loads the checkpoint, exports the FP32 ONNX and checks it against torch on real images,
optionally makes the FP16 and INT8 variants, gates them by retrieval accuracy on held-out real images,
and writes ``manifest.json`` last (so a bundle with a manifest is always complete).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from export.onnx_export import (
    INPUT_FORMATS,
    OPSET,
    PARITY_TOLERANCE,
    check_parity,
    export_onnx,
    input_spec,
    prepare,
)
from runtime.engines.bundle import MANIFEST, new_manifest, write_manifest
from tiles.io import file_sha256

_log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geoloc-edge" / "calib"


def _onnx_entry(path: Path, precision: str, **extra) -> dict:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = {o.domain: o.version for o in proto.opset_import}.get("", None)
    return {"path": path.name, "kind": "onnx", "precision": precision, "sha256": file_sha256(path),
            "bytes": path.stat().st_size, "opset": opset, **extra}


def calibration_images(calib_dir=None, calib_tifs=(), n: int = 128, hfov_deg: float = 60.0,
                       altitudes_m=(150, 200, 250, 300), seed: int = 0) -> list:
    """Real frames from a folder, or drone-like views rendered from GeoTIFF(s), ``n`` in all."""
    from export.images import folder_images, rendered_views

    if calib_dir:
        return folder_images(calib_dir, n_max=n)
    if calib_tifs:
        per = -(-n // len(calib_tifs))
        return [im for i, t in enumerate(calib_tifs)
                for im in rendered_views(t, per, altitudes_m=altitudes_m, hfov_deg=hfov_deg, seed=seed + i)][:n]
    raise ValueError("INT8 needs calibration images: --calib DIR (real drone frames) or --calib-tif MAP.tif")


def check_map_pair(query_tif, gallery_tif) -> dict:
    """Refuse two rasters that share no ground (compared in one CRS, the first one's), before anything is
    exported; return their overlap (:func:`tiles.mapcheck.check_overlap`)."""
    from tiles.mapcheck import check_overlap
    from tiles.raster import open_raster

    with open_raster(query_tif) as a, open_raster(gallery_tif) as b:
        return check_overlap(a, b)


def export_bundle(ckpt, out, *, model_name: str | None = None, input_format: str = "float32",
                  fp16: bool = False, int8: bool = False, calib_dir=None, calib_tifs=(), calib_n: int = 128,
                  calib_method: str = "minmax", hfov_deg: float = 60.0, eval_tifs=None, eval_crop_px: int = 128,
                  eval_n: int = 256, max_r1_drop: float | None = None, parity_tolerance: float = PARITY_TOLERANCE,
                  cache_dir=None, int8_reduce_range: bool = True, overwrite: bool = False,
                  eval_altitudes_m=None, int8_per_channel: bool = True, descriptor_dim: int | None = None,
                  projection_tifs=(), projection_map_tifs=(), projection_n: int = 2000, progress: bool = True) -> Path:
    """Write the bundle for checkpoint ``ckpt`` into folder ``out``; return ``out``.

    ``eval_tifs`` = (query GeoTIFF, ..., gallery GeoTIFF): years of one area held out from training, the
    last one the reference map; they drive the parity check (real crops) and the accuracy gate of
    FP16/INT8 (``max_r1_drop`` in percentage points of R@1; ``eval_n`` queries per altitude of
    ``eval_altitudes_m``, else per ``eval_crop_px`` crops). Without them the parity check uses the
    calibration images. A variant the gate rejects is deleted and left out of the manifest; the bundle is
    written with the rest and then :class:`export.accuracy.AccuracyGateError` is raised (its ``bundle``).
    ``descriptor_dim``: append a PCA-whitening projection to that size (``export.projection``), fitted on
    views of ``projection_tifs`` (training years) and tiles of ``projection_map_tifs`` (the map).
    ``progress``: bars of the long steps (the projection's fit, INT8 calibration, the accuracy gate).
    """
    from export.accuracy import AccuracyGateError, gate_message
    from export.quantize import convert_fp16, quantize_int8
    from train.model import load_checkpoint

    ckpt, out = Path(ckpt), Path(out)
    _check_inputs(ckpt, out, input_format, eval_tifs, max_r1_drop, overwrite)
    sets = _held_out(eval_tifs, eval_altitudes_m, hfov_deg, eval_crop_px, eval_n,
                     max_r1_drop if (fp16 or int8) else None)
    model, info = load_checkpoint(ckpt, model_name=model_name)  # a bad checkpoint: nothing written or cleared
    model.eval()
    _clear(out)
    p = model.preprocess
    fingerprint = file_sha256(ckpt)[:16]

    fp32 = export_onnx(model, p, out / "model.onnx", input_format=input_format)
    if sets:
        parity_images = [im for s in sets for im in s.queries][:16]
    elif calib_dir or calib_tifs:
        parity_images = calibration_images(calib_dir, calib_tifs, n=16, hfov_deg=hfov_deg, seed=123)
    else:
        raise ValueError("the parity check needs real images: give --eval-tifs QUERY.tif GALLERY.tif, "
                         "--calib DIR or --calib-tif MAP.tif")
    parity = check_parity(model, p, fp32, parity_images, input_format=input_format, tolerance=parity_tolerance)
    projection, fingerprint = _projection(fp32, model, input_format, descriptor_dim, projection_tifs,
                                          projection_map_tifs, projection_n, hfov_deg, out, fingerprint, progress)
    files = [_onnx_entry(fp32, "fp32", parity=parity)]

    variants = {}
    if fp16:
        variants["fp16"] = convert_fp16(fp32, out / "model.fp16.onnx")
    calib_info = None
    if int8:
        images = calibration_images(calib_dir, calib_tifs, n=calib_n, hfov_deg=hfov_deg)
        q = quantize_int8(fp32, out / "model.int8.onnx", prepare(images, p, input_format), method=calib_method,
                          cache_dir=DEFAULT_CACHE_DIR if cache_dir is None else cache_dir,
                          reduce_range=int8_reduce_range, per_channel=int8_per_channel, progress=progress)
        variants["int8"] = q["path"]
        calib_info = {**q["calibration"], "source": str(calib_dir or [str(t) for t in calib_tifs]),
                      "cache_hit": q["cache_hit"]}

    accuracy, rejected = _gate_variants(fp32, variants, p, input_format, sets, max_r1_drop, eval_tifs, progress)
    for precision, path in variants.items():
        extra = {"accuracy": accuracy.get(precision) if accuracy else None}
        if precision == "int8":
            extra["calibration"] = calib_info
        files.append(_onnx_entry(Path(path), precision, **extra))
    _write_manifest(out, info, model, fingerprint, projection, input_format, ckpt, files, accuracy, rejected,
                    eval_tifs)
    _log.info("bundle %s: %s", out, ", ".join(f"{f['path']} ({f['precision']})" for f in files))
    if rejected:
        raise AccuracyGateError(gate_message(accuracy, rejected, int8_reduce_range), bundle=out, rejected=rejected,
                                report=accuracy)
    return out


def _write_manifest(out, info, model, fingerprint, projection, input_format, ckpt, files, accuracy, rejected,
                    eval_tifs) -> None:
    import torch

    eval_report = {"fp32_R@1": accuracy["fp32"]["R@1"] if accuracy else None} if eval_tifs else None
    manifest = new_manifest(
        model_name=info["model_name"], model_fingerprint=fingerprint,
        embedding_dim=int(projection["dim"] if projection else model.embedding_dim), projection=projection,
        preprocess=model.preprocess.to_dict(), input=input_spec(input_format),
        output={"name": "embedding", "l2_normalised": True},
        source_checkpoint={"path": str(ckpt), "sha256": file_sha256(ckpt), "format": info.get("format")},
        files=files,
        export={"opset": OPSET, "exporter": f"torch.onnx (TorchScript, dynamo=False), torch {torch.__version__}",
                "eval": eval_report},
    )
    if rejected:
        manifest["export"]["gate_rejected"] = {r: accuracy[r] for r in rejected}
    write_manifest(out, manifest)


def _check_inputs(ckpt: Path, out: Path, input_format: str, eval_tifs, max_r1_drop, overwrite: bool) -> None:
    """Refuse what cannot work before any work starts."""
    for query_tif in (eval_tifs or [])[:-1]:  # the held-out maps show the reference's area
        check_map_pair(query_tif, eval_tifs[-1])
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format {input_format!r} is not one of {INPUT_FORMATS}")
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} not found; train one with `python -m train` first")
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a bundle; pass overwrite=True (CLI: --overwrite) to replace it")
    if max_r1_drop is not None and not eval_tifs:
        raise ValueError("--max-r1-drop needs held-out images for the accuracy gate: --eval-tifs QUERY.tif GALLERY.tif")


def _clear(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        (out / MANIFEST).unlink()  # the old bundle stops being one until the new manifest is written
    for stale in ("model.fp16.onnx", "model.int8.onnx"):  # an older export's variant is no part of this one
        (out / stale).unlink(missing_ok=True)


def _projection(fp32, model, input_format, descriptor_dim, view_tifs, map_tifs, n, hfov_deg, out, fingerprint,
                progress: bool = True):
    """(projection record or None, the bundle's fingerprint): the compact descriptor appended to the graph."""
    if descriptor_dim and int(descriptor_dim) >= int(model.embedding_dim):
        _log.warning("descriptor dim %d >= the network's embedding size %d: no projection, the bundle emits the "
                     "full embedding", descriptor_dim, model.embedding_dim)
        descriptor_dim = None
    if not descriptor_dim:
        return None, fingerprint
    from export.projection import fit_and_append, projected_fingerprint

    projection = fit_and_append(fp32, model.preprocess, input_format, int(descriptor_dim), view_tifs=view_tifs,
                                map_tifs=map_tifs, n=n, hfov_deg=hfov_deg, out_dir=out, progress=progress)
    projection["checkpoint_fingerprint"] = fingerprint
    return projection, projected_fingerprint(fingerprint, projection)


def _held_out(eval_tifs, altitudes_m, hfov_deg: float, crop_px: int, n_max: int, max_r1_drop):
    """The gate's held-out sets (None without ``eval_tifs``); refuses up front a limit they cannot show."""
    from export.accuracy import check_enough_queries, footprint_crops, held_out_sets

    if not eval_tifs:
        return None
    if len(eval_tifs) < 2:
        raise ValueError(f"--eval-tifs needs query GeoTIFF(s) and the gallery GeoTIFF last, got {len(eval_tifs)} file")
    *query_tifs, gallery_tif = eval_tifs
    crops = footprint_crops(gallery_tif, altitudes_m, hfov_deg) if altitudes_m else {f"{crop_px} px": crop_px}
    sets = held_out_sets(query_tifs, gallery_tif, crops, n_max=n_max)
    check_enough_queries(sum(len(s.queries) for s in sets), max_r1_drop)
    return sets


def _gate_variants(fp32: Path, variants: dict, p, input_format: str, sets, max_r1_drop, eval_tifs,
                   progress: bool = True):
    """Run the accuracy gate; delete each rejected variant's file and drop it from ``variants``.

    Returns (report or None, rejected precisions)."""
    from export.accuracy import accuracy_gate, rejected_variants

    if not variants:
        return None, []
    if sets is None:
        _log.warning("FP16/INT8 written without an accuracy check: give --eval-tifs QUERY.tif GALLERY.tif")
        return None, []
    accuracy = accuracy_gate(fp32, variants, p, input_format, sets, max_r1_drop=max_r1_drop, progress=progress)
    meta = {"queries": [Path(t).name for t in eval_tifs[:-1]], "gallery": Path(eval_tifs[-1]).name,
            "sets": {s.name: {"n_queries": len(s.queries), "n_gallery": len(s.gallery)} for s in sets}}
    for rec in accuracy.values():
        rec["eval"] = meta
    rejected = rejected_variants(accuracy)
    for precision in rejected:
        path = Path(variants.pop(precision))
        path.unlink(missing_ok=True)  # a rejected model never ships: `serve` cannot pick what is not there
        _log.warning("%s rejected by the accuracy gate: %s deleted", precision, path.name)
    return accuracy, rejected
