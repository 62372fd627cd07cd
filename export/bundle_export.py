"""Checkpoint -> model bundle (ARCHITECTURE.md, runtime/bundle.py): the steps of `python -m export`.

``export_bundle`` loads the checkpoint, exports the FP32 ONNX and checks it against torch on real images,
optionally makes the FP16 and INT8 variants, gates them by retrieval accuracy on held-out real images,
and writes ``manifest.json`` last (so a bundle with a manifest is always complete).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runtime.bundle import MANIFEST, new_manifest, write_manifest
from tiles.io import atomic_write_json, file_sha256

from .onnx_export import (
    INPUT_FORMATS,
    OPSET,
    PARITY_TOLERANCE,
    check_parity,
    export_onnx,
    input_spec,
    prepare,
)

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
    from .images import folder_images, rendered_views

    if calib_dir:
        return folder_images(calib_dir, n_max=n)
    if calib_tifs:
        per = -(-n // len(calib_tifs))
        return [im for i, t in enumerate(calib_tifs)
                for im in rendered_views(t, per, altitudes_m=altitudes_m, hfov_deg=hfov_deg, seed=seed + i)][:n]
    raise ValueError("INT8 needs calibration images: --calib DIR (real drone frames) or --calib-tif MAP.tif")


def export_bundle(ckpt, out, *, model_name: str | None = None, input_format: str = "float32",
                  fp16: bool = False, int8: bool = False, calib_dir=None, calib_tifs=(), calib_n: int = 128,
                  calib_method: str = "minmax", hfov_deg: float = 60.0, eval_tifs=None, eval_crop_px: int = 128,
                  eval_n: int = 64, max_r1_drop: float | None = None, parity_tolerance: float = PARITY_TOLERANCE,
                  cache_dir=None, int8_reduce_range: bool = True, overwrite: bool = False,
                  descriptor_dim: int | None = None, projection_tifs=(), projection_map_tifs=(),
                  projection_n: int = 2000) -> Path:
    """Write the bundle for checkpoint ``ckpt`` into folder ``out``; return ``out``.

    ``eval_tifs`` = (query GeoTIFF, gallery GeoTIFF): two years of one area, held out from training;
    they drive the parity check (real crops) and the accuracy gate of FP16/INT8 (``max_r1_drop`` in
    percentage points of R@1). Without them the parity check uses the calibration images.
    ``descriptor_dim``: append a PCA-whitening projection to that size (``export.projection``), fitted on
    views of ``projection_tifs`` (training years) and tiles of ``projection_map_tifs`` (the map).
    """
    from train.model import load_checkpoint

    from .accuracy import accuracy_gate, held_out_pairs
    from .quantize import convert_fp16, quantize_int8

    ckpt, out = Path(ckpt), Path(out)
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format {input_format!r} is not one of {INPUT_FORMATS}")
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} not found; train one with `python -m train` first")
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a bundle; pass overwrite=True (CLI: --overwrite) to replace it")
    if max_r1_drop is not None and not eval_tifs:
        raise ValueError("--max-r1-drop needs held-out images for the accuracy gate: --eval-tifs QUERY.tif GALLERY.tif")
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        (out / MANIFEST).unlink()  # the old bundle stops being one until the new manifest is written

    model, info = load_checkpoint(ckpt, model_name=model_name)
    model.eval()
    p = model.preprocess
    fingerprint = file_sha256(ckpt)[:16]

    fp32 = export_onnx(model, p, out / "model.onnx", input_format=input_format)
    queries = gallery = None
    if eval_tifs:
        queries, gallery = held_out_pairs(eval_tifs[0], eval_tifs[1], eval_crop_px, n_max=eval_n)
        parity_images = queries[:16]
    elif calib_dir or calib_tifs:
        parity_images = calibration_images(calib_dir, calib_tifs, n=16, hfov_deg=hfov_deg, seed=123)
    else:
        raise ValueError("the parity check needs real images: give --eval-tifs QUERY.tif GALLERY.tif, "
                         "--calib DIR or --calib-tif MAP.tif")
    parity = check_parity(model, p, fp32, parity_images, input_format=input_format, tolerance=parity_tolerance)
    projection = None
    if descriptor_dim and int(descriptor_dim) >= int(model.embedding_dim):
        _log.warning("descriptor dim %d >= the network's embedding size %d: no projection, the bundle emits the "
                     "full embedding", descriptor_dim, model.embedding_dim)
        descriptor_dim = None
    if descriptor_dim:
        from .projection import fit_and_append, projected_fingerprint

        projection = fit_and_append(fp32, p, input_format, int(descriptor_dim), view_tifs=projection_tifs,
                                    map_tifs=projection_map_tifs, n=projection_n, hfov_deg=hfov_deg, out_dir=out)
        projection["checkpoint_fingerprint"] = fingerprint
        fingerprint = projected_fingerprint(fingerprint, projection)
    files = [_onnx_entry(fp32, "fp32", parity=parity)]

    variants = {}
    if fp16:
        variants["fp16"] = convert_fp16(fp32, out / "model.fp16.onnx")
    calib_info = None
    if int8:
        images = calibration_images(calib_dir, calib_tifs, n=calib_n, hfov_deg=hfov_deg)
        q = quantize_int8(fp32, out / "model.int8.onnx", prepare(images, p, input_format), method=calib_method,
                          cache_dir=DEFAULT_CACHE_DIR if cache_dir is None else cache_dir,
                          reduce_range=int8_reduce_range)
        variants["int8"] = q["path"]
        calib_info = {**q["calibration"], "source": str(calib_dir or [str(t) for t in calib_tifs]),
                      "cache_hit": q["cache_hit"]}

    accuracy = None
    if variants and queries is not None:
        try:
            accuracy = accuracy_gate(fp32, variants, p, input_format, queries, gallery, max_r1_drop=max_r1_drop)
        except Exception:
            atomic_write_json(out / "accuracy_failed.json", {"max_r1_drop": max_r1_drop,
                                                             "eval_tifs": [str(t) for t in eval_tifs]})
            raise
        for rec in accuracy.values():
            rec["eval"] = {"query": Path(eval_tifs[0]).name, "gallery": Path(eval_tifs[1]).name,
                           "crop_px": eval_crop_px}
    elif variants:
        _log.warning("FP16/INT8 written without an accuracy check: give --eval-tifs QUERY.tif GALLERY.tif")
    for precision, path in variants.items():
        extra = {"accuracy": accuracy.get(precision) if accuracy else None}
        if precision == "int8":
            extra["calibration"] = calib_info
        files.append(_onnx_entry(Path(path), precision, **extra))
    if not eval_tifs:
        eval_report = None
    else:
        eval_report = {"fp32_R@1": accuracy["fp32"]["R@1"] if accuracy else None}

    import torch

    manifest = new_manifest(
        model_name=info["model_name"], model_fingerprint=fingerprint,
        embedding_dim=int(projection["dim"] if projection else model.embedding_dim), projection=projection,
        preprocess=p.to_dict(), input=input_spec(input_format), output={"name": "embedding", "l2_normalised": True},
        source_checkpoint={"path": str(ckpt), "sha256": file_sha256(ckpt), "format": info.get("format")},
        files=files,
        export={"opset": OPSET, "exporter": f"torch.onnx (TorchScript, dynamo=False), torch {torch.__version__}",
                "eval": eval_report},
    )
    write_manifest(out, manifest)
    stale = out / "accuracy_failed.json"
    if stale.exists():
        stale.unlink()
    _log.info("bundle %s: %s", out, ", ".join(f"{f['path']} ({f['precision']})" for f in files))
    return out
