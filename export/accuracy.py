"""The accuracy gate: does an FP16/INT8 model still retrieve the right tile as well as the FP32 model?

Held-out real images, laid out as the tile database is: per altitude, the gallery holds the ground squares
of the camera footprint (``2 h tan(hfov/2)``) every half footprint over the reference map (e.g. NAIP
2018), and the queries are the same squares in other years (e.g. NAIP 2016 and 2020), located through the
geotransforms. Query i's true match is its own square; a neighbouring square (half overlapping) is a
miss, as a wrong tile is in flight. The gallery is embedded by the FP32 model (the tile database is built
in FP32 on the desktop) and the queries by each variant, which is what flies.

Both models answer the same queries, so the gate compares paired outcomes (:mod:`export.gate_stats`): a
variant passes when the upper end of the 95 % interval of its R@1 drop is within ``max_r1_drop`` points.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np

from common.progress import progress_bar
from export.gate_stats import CONFIDENCE, paired_report, queries_needed, smallest_detectable_drop
from export.onnx_export import ort_embed, ort_session
from runtime.engines.preprocess import Preprocess

_log = logging.getLogger(__name__)

#: What was measured to help a failing gate on the demo model (docs/results/export.md, "The accuracy gate").
ADVICE_INT8_7BIT = ("INT8 with 8-bit weights (--int8-full-range) lost 0.1 points instead of 7.7 on the demo model, "
                    "exported on a CPU with VNNI (without VNNI ONNX Runtime's int8 kernels saturate and the gate "
                    "rejects it again); --calib-method entropy, 4x more calibration images and per-tensor weights "
                    "did not help (20, 8.0, 55 points); otherwise fly FP32 (CPU) or FP16 (GPU)")
ADVICE_FLY_FLOAT = ("--calib-method entropy, more calibration images and per-tensor weights did not help on the "
                    "demo model (docs/results/export.md): fly FP32 (CPU) or FP16 (GPU)")
ADVICE_FP16 = "fly FP32 (FP16 lost accuracy on these images)"


class AccuracyGateError(ValueError):
    """A reduced-precision model lost more retrieval accuracy than allowed.

    Raised by ``export_bundle`` after the bundle is written without the rejected variants: ``bundle`` is
    its folder, ``rejected`` the precisions removed, ``report`` the gate's figures.
    """

    def __init__(self, message: str, bundle=None, rejected=(), report=None):
        super().__init__(message)
        self.bundle, self.rejected, self.report = bundle, list(rejected), report


@dataclass
class EvalSet:
    """One retrieval task: ``queries[i]`` shows the ground of ``gallery[truth[i]]``."""
    name: str
    queries: list
    truth: np.ndarray
    gallery: list


def recall_at_1(queries: np.ndarray, gallery: np.ndarray, truth=None) -> tuple[float, np.ndarray]:
    """R@1 in percent (query i's true match is gallery ``truth[i]``, default i); also every top-1 index."""
    top1 = np.argmax(queries @ gallery.T, axis=1)
    truth = np.arange(len(queries)) if truth is None else np.asarray(truth)
    return float(100.0 * np.mean(top1 == truth)), top1


def _matching_windows(a, b, corners, crop_px: int) -> list[tuple[int, int] | None]:
    """For each (col, row) corner of raster ``a``, the corner of the same ground in ``b`` (None outside)."""
    out = []
    for c, r in corners:
        x, y = a.xy(r, c, offset="ul")
        rb, cb = b.index(x + 1e-6 * a.res[0], y - 1e-6 * a.res[1])
        ok = 0 <= cb <= b.width - crop_px and 0 <= rb <= b.height - crop_px
        out.append((int(cb), int(rb)) if ok else None)
    return out


def _check_same_grid(a, b, pa, pb) -> None:
    if a.crs != b.crs or not np.allclose(a.res, b.res, rtol=1e-3):
        raise ValueError(
            f"{pa} ({a.crs}, {a.res} m/px) and {pb} ({b.crs}, {b.res} m/px) differ in CRS or pixel size; give "
            "years of the same orthophoto tile (reproject one with gdalwarp first)")


def held_out_pairs(query_tif: str | os.PathLike, gallery_tif: str | os.PathLike, crop_px: int,
                   n_max: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Crops of the same ground squares in two rasters (queries, gallery), non-overlapping, query i <->
    gallery i (same CRS and pixel size required; sub-pixel offsets between years are rounded)."""
    import rasterio

    from export.images import grid_windows, read_crops

    with rasterio.open(query_tif) as a, rasterio.open(gallery_tif) as b:
        _check_same_grid(a, b, query_tif, gallery_tif)
        corners = grid_windows(a.width, a.height, crop_px)
        pairs = [(ca, cb) for ca, cb in zip(corners, _matching_windows(a, b, corners, crop_px)) if cb is not None]
    if len(pairs) < 2:
        raise ValueError(f"{query_tif} and {gallery_tif} share fewer than 2 crops of {crop_px} px: do they overlap?")
    if len(pairs) > n_max:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, n_max).round().astype(int)]
    return (read_crops(query_tif, [p[0] for p in pairs], crop_px),
            read_crops(gallery_tif, [p[1] for p in pairs], crop_px))


def _half_footprint_grid(width: int, height: int, crop_px: int, stride_px: int, max_windows: int) -> list:
    cols = list(range(0, width - crop_px + 1, stride_px))
    rows = list(range(0, height - crop_px + 1, stride_px))
    while len(cols) * len(rows) > max_windows:  # a large map: the central block, neighbours kept intact
        if len(cols) >= len(rows):
            cols = cols[1:-1] if len(cols) > 2 else cols[:1]
        else:
            rows = rows[1:-1] if len(rows) > 2 else rows[:1]
    return [(c, r) for r in rows for c in cols]


def held_out_sets(query_tifs, gallery_tif, crop_sizes_px: dict, stride_frac: float = 0.5,
                  n_max: int = 256, gallery_max: int = 4096) -> list[EvalSet]:
    """One :class:`EvalSet` per ``{name: crop_px}`` (e.g. one per altitude): gallery squares every
    ``stride_frac`` crop over ``gallery_tif``, queries the same squares in each of ``query_tifs`` (at most
    ``n_max`` per set, evenly thinned; the gallery keeps every square, up to ``gallery_max``)."""
    import rasterio

    from export.images import read_crops

    sets = []
    with rasterio.open(gallery_tif) as g:
        for name, crop_px in crop_sizes_px.items():
            crop_px = int(crop_px)
            if crop_px < 8 or crop_px > min(g.width, g.height):
                raise ValueError(f"held-out crop of {crop_px} px ({name}) does not fit {gallery_tif} "
                                 f"({g.width}x{g.height} px); check --altitudes/--hfov against the map")
            corners = _half_footprint_grid(g.width, g.height, crop_px, max(1, round(crop_px * stride_frac)),
                                           gallery_max)
            picks = []  # (query raster number, its corner, gallery row)
            for k, qt in enumerate(query_tifs):
                with rasterio.open(qt) as q:
                    _check_same_grid(q, g, qt, gallery_tif)
                    picks += [(k, w, i) for i, w in enumerate(_matching_windows(g, q, corners, crop_px))
                              if w is not None]
            if len(picks) < 2:
                raise ValueError(f"{[str(t) for t in query_tifs]} and {gallery_tif} share fewer than 2 squares of "
                                 f"{crop_px} px: do they cover the same area?")
            if len(picks) > n_max:
                picks = [picks[i] for i in np.linspace(0, len(picks) - 1, n_max).round().astype(int)]
            queries = [im for k, qt in enumerate(query_tifs)
                       for im in read_crops(qt, [p[1] for p in picks if p[0] == k], crop_px)]
            sets.append(EvalSet(str(name), queries, np.array([p[2] for p in picks]),
                                read_crops(gallery_tif, corners, crop_px)))
    return sets


def footprint_crops(gallery_tif, altitudes_m, hfov_deg: float) -> dict:
    """{"150 m": crop px, ...}: the camera footprint at each altitude in pixels of the gallery map."""
    from tiles.grid import footprint_m
    from tiles.raster import open_raster

    with open_raster(gallery_tif) as r:
        gsd = r.gsd_m
    return {f"{a:g} m": max(8, round(footprint_m(a, hfov_deg) / gsd)) for a in altitudes_m}


def check_enough_queries(n: int, max_r1_drop: float | None, confidence: float = CONFIDENCE) -> None:
    """Refuse a limit that ``n`` queries cannot show, naming the smallest one and the queries needed."""
    if max_r1_drop is None:
        return
    smallest = smallest_detectable_drop(n, confidence)
    if max_r1_drop < smallest:
        raise ValueError(
            f"--max-r1-drop {max_r1_drop:g} cannot be shown with {n} held-out queries: even a variant that agrees "
            f"with FP32 on every query has a {100 * confidence:.0f}% upper bound of {smallest:.1f} points (the "
            f"smallest detectable drop for n={n}); give >= {queries_needed(max_r1_drop, confidence)} queries "
            f"(--eval-n per altitude, more query years in --eval-tifs) or a limit >= {smallest:.1f}")


def _correct(q: np.ndarray, gal: list[np.ndarray], sets: list[EvalSet]) -> tuple[np.ndarray, dict, np.ndarray]:
    """Per query: is its top-1 its own square (within its set's gallery)? Also R@1 per set, and the top-1s."""
    oks, tops, per, i = [], [], {}, 0
    for s, g in zip(sets, gal):
        n = len(s.queries)
        top = np.argmax(q[i:i + n] @ g.T, axis=1)
        oks.append(top == s.truth)
        tops.append(top)
        per[s.name] = float(100.0 * oks[-1].mean())
        i += n
    return np.concatenate(oks), per, np.concatenate(tops)


def accuracy_gate(fp32_path, variants: dict, preprocess: Preprocess, input_format: str, sets: list[EvalSet], *,
                  max_r1_drop: float | None = None, confidence: float = CONFIDENCE, progress: bool = True) -> dict:
    """Evaluate each variant {precision: onnx_path} against FP32 on the same queries; never raises on a
    failing variant: ``report[precision]["passed"]`` says it (with ``max_r1_drop``).

    ONNX Runtime's optimised CPU run is scored (what the runtime executes here); for INT8 the Q/DQ
    reference (no kernel fusion, what TensorRT computes) is reported beside it. ``progress``: a bar per
    model run (``accuracy gate: fp32``, ``accuracy gate: int8``, ...) counting the images embedded.
    """
    queries = [im for s in sets for im in s.queries]
    check_enough_queries(len(queries), max_r1_drop, confidence)
    bar = functools.partial(progress_bar, unit="image", enabled=progress)
    fp32 = ort_session(fp32_path)
    with bar(desc="accuracy gate: fp32", total=sum(len(s.gallery) for s in sets) + len(queries)) as b:
        gal = [ort_embed(fp32, preprocess, input_format, s.gallery, bar=b) for s in sets]
        q32 = ort_embed(fp32, preprocess, input_format, queries, bar=b)

    def embed(path, name, fuse=True):
        with bar(desc=f"accuracy gate: {name}", total=len(queries)) as b:
            return ort_embed(ort_session(path, fuse=fuse), preprocess, input_format, queries, bar=b)

    ok32, per32, top32 = _correct(q32, gal, sets)
    report = {"fp32": {"R@1": float(100 * ok32.mean()), "per_set": per32, "n_queries": len(queries),
                       "n_gallery": {s.name: len(s.gallery) for s in sets}}}
    for precision, path in variants.items():
        q = embed(path, precision)
        ok, per, top = _correct(q, gal, sets)
        rec = {"R@1": float(100 * ok.mean()), "R@1_fp32": report["fp32"]["R@1"], "per_set": per,
               **paired_report(ok32, ok, max_r1_drop, confidence),
               "top1_agreement": float(100.0 * np.mean(top == top32)),
               "mean_cosine_to_fp32": float(np.mean(np.sum(q * q32, axis=1)))}
        if precision == "int8":  # the Q/DQ graph as written (what TensorRT computes), without CPU int8 kernels
            qr = embed(path, "int8 Q/DQ reference", fuse=False)
            rec["R@1_qdq_reference"] = float(100 * _correct(qr, gal, sets)[0].mean())
            rec["mean_cosine_qdq_reference"] = float(np.mean(np.sum(qr * q32, axis=1)))
        report[precision] = rec
        lo, hi = rec["r1_drop_ci"]
        _log.info("%s: R@1 %.1f%% (FP32 %.1f%%), drop %.1f points [%.1f, %.1f] (%d queries, %d lost, %d gained)%s",
                  precision, rec["R@1"], rec["R@1_fp32"], rec["r1_drop"], lo, hi, rec["n_queries"], rec["lost"],
                  rec["gained"], "" if "passed" not in rec else (": passes" if rec["passed"] else ": REJECTED"))
    return report


def rejected_variants(report: dict) -> list[str]:
    return [p for p, rec in report.items() if p != "fp32" and rec.get("passed") is False]


def gate_advice(rejected: list[str], int8_7bit_weights: bool) -> str:
    """Advice that was seen to help (measured), for what was rejected."""
    if "int8" in rejected:
        return ADVICE_INT8_7BIT if int8_7bit_weights else ADVICE_FLY_FLOAT
    return ADVICE_FP16


def gate_message(report: dict, rejected: list[str], int8_7bit_weights: bool = True) -> str:
    """The one-line failure: each rejected variant's figures, the rule, and the measured advice."""
    parts = []
    for p in rejected:
        r = report[p]
        parts.append(f"{p} R@1 {r['R@1']:.1f}% vs FP32 {r['R@1_fp32']:.1f}% (drop {r['r1_drop']:.1f} points, "
                     f"{100 * r['confidence']:.0f}% interval [{r['r1_drop_ci'][0]:.1f}, {r['r1_drop_ci'][1]:.1f}], "
                     f"{r['n_queries']} queries)")
    limit = report[rejected[0]]["max_r1_drop"]
    return (f"accuracy gate failed: {'; '.join(parts)}: the interval's upper end exceeds --max-r1-drop {limit:g}; "
            f"{', '.join(rejected)} removed from the bundle; {gate_advice(rejected, int8_7bit_weights)}")
