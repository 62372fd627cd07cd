"""The accuracy gate: does an FP16/INT8 model still retrieve the right tile as well as the FP32 model?

Held-out real images: queries are crops of one GeoTIFF (e.g. NAIP 2016), the gallery the crops at the same
pixel windows of another (NAIP 2018): the true match of query i is gallery i. The gallery is embedded by
the FP32 model (the tile database is built once, in FP32, on the desktop) and the queries by each variant,
which is what flies. A variant fails when its R@1 is more than ``max_r1_drop`` percentage points below
the FP32 model's.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from runtime.preprocess import Preprocess

from .onnx_export import ort_embed, ort_session

_log = logging.getLogger(__name__)


class AccuracyGateError(ValueError):
    """A reduced-precision model lost more retrieval accuracy than allowed."""


def recall_at_1(queries: np.ndarray, gallery: np.ndarray) -> tuple[float, np.ndarray]:
    """R@1 in percent when query i's true match is gallery i; also the top-1 index of every query."""
    top1 = np.argmax(queries @ gallery.T, axis=1)
    return float(100.0 * np.mean(top1 == np.arange(len(queries)))), top1


def held_out_pairs(query_tif: str | os.PathLike, gallery_tif: str | os.PathLike, crop_px: int,
                   n_max: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Crops of the same ground squares in two rasters of one area (queries, gallery).

    The squares lie on a grid of the query raster; each is located in the gallery raster through the
    geotransforms (same CRS and pixel size required; sub-pixel offsets between years are rounded).
    """
    import rasterio

    from .images import grid_windows, read_crops

    with rasterio.open(query_tif) as a, rasterio.open(gallery_tif) as b:
        if a.crs != b.crs or not np.allclose(a.res, b.res, rtol=1e-3):
            raise ValueError(
                f"{query_tif} ({a.crs}, {a.res} m/px) and {gallery_tif} ({b.crs}, {b.res} m/px) differ in CRS or "
                "pixel size; give two years of the same orthophoto tile (reproject one with gdalwarp first)"
            )
        pairs = []
        for c, r in grid_windows(a.width, a.height, crop_px):
            x, y = a.xy(r, c, offset="ul")
            rb, cb = b.index(x + 1e-6 * a.res[0], y - 1e-6 * a.res[1])
            if 0 <= cb <= b.width - crop_px and 0 <= rb <= b.height - crop_px:
                pairs.append(((c, r), (int(cb), int(rb))))
    if len(pairs) < 2:
        raise ValueError(f"{query_tif} and {gallery_tif} share fewer than 2 crops of {crop_px} px: do they overlap?")
    if len(pairs) > n_max:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, n_max).round().astype(int)]
    return (read_crops(query_tif, [p[0] for p in pairs], crop_px),
            read_crops(gallery_tif, [p[1] for p in pairs], crop_px))


def accuracy_gate(fp32_path, variants: dict, preprocess: Preprocess, input_format: str, queries, gallery, *,
                  max_r1_drop: float | None = None) -> dict:
    """Evaluate each variant {precision: onnx_path}; raise :class:`AccuracyGateError` over the threshold.

    Returns {precision: {"R@1", "R@1_fp32", "r1_drop", "top1_agreement", "mean_cosine_to_fp32", ...}};
    the gate uses ONNX Runtime's optimised CPU run (what the runtime executes here); for INT8 the Q/DQ
    reference (no kernel fusion, what TensorRT computes) is reported beside it.
    """
    if len(queries) != len(gallery) or len(queries) < 2:
        raise ValueError(f"need >= 2 query/gallery pairs of equal count, got {len(queries)}/{len(gallery)}")
    fp32 = ort_session(fp32_path)
    gal = ort_embed(fp32, preprocess, input_format, gallery)
    q32 = ort_embed(fp32, preprocess, input_format, queries)
    r1_32, top_32 = recall_at_1(q32, gal)
    report = {"fp32": {"R@1": r1_32, "n_queries": len(queries), "n_gallery": len(gallery)}}
    failures = []
    for precision, path in variants.items():
        q = ort_embed(ort_session(path), preprocess, input_format, queries)
        r1, top = recall_at_1(q, gal)
        rec = {"R@1": r1, "R@1_fp32": r1_32, "r1_drop": r1_32 - r1,
               "top1_agreement": float(100.0 * np.mean(top == top_32)),
               "mean_cosine_to_fp32": float(np.mean(np.sum(q * q32, axis=1))),
               "n_queries": len(queries), "n_gallery": len(gallery), "max_r1_drop": max_r1_drop}
        if precision == "int8":  # the Q/DQ graph as written (what TensorRT computes), without CPU int8 kernels
            qr = ort_embed(ort_session(path, fuse=False), preprocess, input_format, queries)
            rec["R@1_qdq_reference"] = recall_at_1(qr, gal)[0]
            rec["mean_cosine_qdq_reference"] = float(np.mean(np.sum(qr * q32, axis=1)))
        report[precision] = rec
        _log.info("%s: R@1 %.1f%% (FP32 %.1f%%), top-1 agreement %.1f%%, cosine to FP32 %.5f", precision, r1,
                  r1_32, rec["top1_agreement"], rec["mean_cosine_to_fp32"])
        if max_r1_drop is not None and rec["r1_drop"] > max_r1_drop:
            failures.append(f"{precision} R@1 {r1:.1f}% vs FP32 {r1_32:.1f}% (drop {rec['r1_drop']:.1f} points)")
    if failures:
        raise AccuracyGateError(
            "accuracy gate failed: " + "; ".join(failures) + f" exceeds --max-r1-drop {max_r1_drop}. "
            "Calibrate on more representative frames (--calib), try --calib-method entropy, or ship FP16/FP32"
        )
    return report
