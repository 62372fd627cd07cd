"""Evaluation the papers' way (metrics from :mod:`runtime.replay.metrics`, the project's one definition).

- :func:`evaluate_sues200`: per altitude, drone->satellite and satellite->drone, both protocols
  (``official``: every location in the gallery; ``query_only``: only test locations), labelled.
- :func:`evaluate_university1652`: drone->satellite and satellite->drone on the test split.
- :func:`evaluate_geotiff`: cross-raster (e.g. cross-year) retrieval on a GeoTIFF: drone views rendered
  from held-out rasters against the reference raster's tiles, per altitude: R@1, R@5, R@10, R@1%, AP and
  the median / 95th-percentile ground error in metres of the top-1 tile centre.

Command line: ``python -m train.evaluate CKPT [--preset demo] [--set data.root=...] [--out metrics.json]``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from runtime.preprocess import north_up
from runtime.replay.metrics import retrieval_metrics

_logger = logging.getLogger(__name__)


@torch.no_grad()
def embed_images(model, images, batch_size: int = 64, device="cpu") -> np.ndarray:
    """Embed RGB uint8 arrays or image paths with the model's own preprocessing -> float32 (N, D)."""
    from .datasets import read_image

    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        chunk = [read_image(x) if isinstance(x, (str, Path)) else x for x in images[s:s + batch_size]]
        x = torch.from_numpy(model.preprocess.batch(chunk)).to(device)
        out.append(model(x).float().cpu().numpy())
    d = getattr(model, "embedding_dim", 0)
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)


# ---- SUES-200 and University-1652 -----------------------------------------------------------------------


def evaluate_sues200(model, root, altitudes=None, protocols=("official", "query_only"),
                     directions=("drone2sat", "sat2drone"), batch_size: int = 64, device="cpu") -> dict:
    """``{"drone2sat@150m[official]": {"R@1": ..., ...}, ...}`` (percent)."""
    from runtime.replay.sues200_layout import SUES200

    data = SUES200(root)
    alts = data.altitudes if altitudes is None else [int(a) for a in altitudes]
    cache: dict[Path, np.ndarray] = {}

    def embed(paths):
        todo = [p for p in dict.fromkeys(paths) if p not in cache]
        if todo:
            for p, e in zip(todo, embed_images(model, todo, batch_size, device)):
                cache[p] = e
        return np.stack([cache[p] for p in paths])

    results = {}
    for alt in alts:
        for protocol in protocols:
            for direction in directions:
                rs = data.retrieval_set(alt, protocol, direction)
                sim = embed(rs.query_paths) @ embed(rs.gallery_paths).T
                m = retrieval_metrics(sim, rs.query_labels, rs.gallery_labels)
                m.update(altitude_m=alt, protocol=protocol, direction=direction)
                results[rs.name] = m
                _logger.info("%s: R@1 %.2f AP %.2f", rs.name, m["R@1"], m["AP"])
    return results


def evaluate_university1652(model, root, batch_size: int = 64, device="cpu") -> dict:
    from .datasets import university1652_retrieval

    results = {}
    for direction in ("drone2sat", "sat2drone"):
        qp, ql, gp, gl = university1652_retrieval(root, direction)
        sim = embed_images(model, qp, batch_size, device) @ embed_images(model, gp, batch_size, device).T
        results[direction] = retrieval_metrics(sim, ql, gl)
    return results


# ---- GeoTIFF cross-raster retrieval ----------------------------------------------------------------------


def _name(path) -> str:
    return Path(path).stem


def evaluate_geotiff(model, reference, query_rasters, altitudes_m, hfov_deg: float, stride_frac: float = 1.0,
                     max_queries: int | None = None, offset_frac: float = 0.1, heading_deg: float = 180.0,
                     compass_error_deg: float = 3.0,
                     batch_size: int = 64, device="cpu", seed: int = 0) -> dict:
    """Rendered views of each query raster against the reference tiles, per altitude.

    Gallery: the reference raster's tiles at each altitude (footprint from ``hfov_deg``, every
    ``stride_frac`` x footprint). Queries: one drone view per tile (or ``max_queries`` of them) from each
    query raster, centred ``offset_frac`` x footprint at most from the tile centre with a heading within
    +-``heading_deg``, turned north-up as the runtime does (``north_up`` with a compass error of
    ``compass_error_deg``) (a fixed seed, so every model sees the same queries). A query's positive is the
    tile nearest to its true position; its error is the distance from the top-1 tile centre.
    Returns ``{"per_altitude": {alt: {raster: metrics, "all": metrics}}, "all": metrics}``.
    """
    from tiles.grid import read_tile
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    from .datasets import geotiff_locations

    size = model.preprocess.input_size[0]
    per_alt: dict = {}
    pooled: list[dict] = []
    ref = open_raster(reference)
    queries = [open_raster(p) for p in query_rasters]
    try:
        for alt in altitudes_m:
            tiles = [t for _, t in geotiff_locations(reference, [alt], hfov_deg, stride_frac)]
            centres = np.array([[t.x, t.y] for t in tiles])
            gallery = embed_images(model, [read_tile(ref, t, size) for t in tiles], batch_size, device)
            rng = np.random.default_rng([seed, int(alt)])
            idx = np.arange(len(tiles))
            if max_queries is not None and len(idx) > max_queries:
                idx = np.sort(rng.choice(len(idx), max_queries, replace=False))
            offsets = rng.uniform(-offset_frac, offset_frac, (len(idx), 2)) * tiles[0].footprint_m
            headings = rng.uniform(-heading_deg, heading_deg, len(idx)) % 360.0
            compass = headings + rng.normal(0.0, compass_error_deg, len(idx))
            true_xy = centres[idx] + offsets
            labels = np.argmin(((true_xy[:, None] - centres[None]) ** 2).sum(-1), axis=1)
            per_alt[int(alt)] = {}
            for qpath, qr in zip(query_rasters, queries):
                views = [north_up(render_view(qr, CameraPose(x, y, float(alt), heading_deg=float(h), hfov_deg=hfov_deg),
                                              (size, size)).image, float(c))
                         for (x, y), h, c in zip(true_xy, headings, compass)]
                sim = embed_images(model, views, batch_size, device) @ gallery.T
                m = _with_errors(retrieval_metrics(sim, labels, np.arange(len(tiles))), sim, centres, true_xy)
                per_alt[int(alt)][_name(qpath)] = m
                pooled.append({"sim_top1": np.argmax(sim, 1), "centres": centres, "true": true_xy,
                               "first_rank": _first_ranks(sim, labels)})
            per_alt[int(alt)]["all"] = _pool(pooled[-len(query_rasters):])
            _logger.info("%s m: R@1 %.1f, median error %.0f m", alt, per_alt[int(alt)]["all"]["R@1"],
                         per_alt[int(alt)]["all"]["median_error_m"])
    finally:
        ref.close()
        for q in queries:
            q.close()
    return {"per_altitude": per_alt, "all": _pool(pooled),
            "setup": {"reference": _name(reference), "query_rasters": [_name(p) for p in query_rasters],
                      "altitudes_m": [int(a) for a in altitudes_m], "hfov_deg": hfov_deg,
                      "stride_frac": stride_frac, "max_queries": max_queries, "offset_frac": offset_frac,
                      "heading_deg": heading_deg, "compass_error_deg": compass_error_deg, "seed": seed}}


def _first_ranks(sim, labels):
    pos = sim[np.arange(len(sim)), labels]
    return 1 + (sim > pos[:, None]).sum(axis=1)


def _with_errors(m: dict, sim, centres, true_xy) -> dict:
    err = np.linalg.norm(centres[np.argmax(sim, 1)] - true_xy, axis=1)
    m["median_error_m"] = float(np.median(err))
    m["p95_error_m"] = float(np.percentile(err, 95))
    return m


def _pool(parts: list[dict]) -> dict:
    ranks = np.concatenate([p["first_rank"] for p in parts])
    err = np.concatenate([np.linalg.norm(p["centres"][p["sim_top1"]] - p["true"], axis=1) for p in parts])
    out = {f"R@{k}": float(100 * np.mean(ranks <= k)) for k in (1, 5, 10)}
    out.update(median_error_m=float(np.median(err)), p95_error_m=float(np.percentile(err, 95)),
               n_queries=int(len(ranks)))
    return out


# ---- dispatch on a config -----------------------------------------------------------------------------


def evaluate_config(cfg, model, device="cpu") -> dict:
    """Evaluate ``model`` on the evaluation data of a :class:`train.config.TrainConfig`."""
    d, e = cfg.data, cfg.eval
    if d.kind == "geotiff":
        if not d.eval_rasters:
            raise ValueError("GeoTIFF evaluation needs data.eval_rasters (held-out rasters of the area)")
        return evaluate_geotiff(model, d.reference, d.eval_rasters, d.altitudes_m, d.hfov_deg,
                                stride_frac=e.stride_frac, max_queries=e.max_queries,
                                offset_frac=d.jitter.offset_frac, heading_deg=d.jitter.heading_deg,
                                compass_error_deg=d.jitter.compass_error_deg, batch_size=e.batch_size, device=device, seed=cfg.seed)
    if d.kind == "sues200":
        return evaluate_sues200(model, d.root, d.altitudes_m, batch_size=e.batch_size, device=device)
    return evaluate_university1652(model, d.root, batch_size=e.batch_size, device=device)


def _is_training_config(cfg) -> bool:
    """A resolved training config names its data (a frozen baseline's {"note": ...} does not)."""
    return isinstance(cfg, dict) and isinstance(cfg.get("data"), dict) and "kind" in cfg["data"]


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    from tiles.io import atomic_write_json

    from .config import apply_overrides, from_dict, preset
    from .model import load_checkpoint

    ap = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="our checkpoint, or an official Sample4Geo state dict (with --model)")
    ap.add_argument("--model", help="timm name, required for official state dicts")
    ap.add_argument("--preset", help="evaluation data from a preset instead of the checkpoint's config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, help="write the metrics JSON here")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model, info = load_checkpoint(args.checkpoint, model_name=args.model)
    model.to(args.device)
    if args.preset:
        cfg = preset(args.preset)
    elif _is_training_config(info.get("config")):
        cfg = from_dict(info["config"])
    else:
        what = "carries no training config" if not info.get("config") else \
            f"carries no training config (its config is {sorted(info['config'])})"
        ap.error(f"{args.checkpoint} {what}, so it does not say which data to evaluate on: pass --preset "
                 "(e.g. --preset demo) and, if needed, --set data.root=...")
    cfg = apply_overrides(cfg, args.overrides)
    results = evaluate_config(cfg, model, args.device)
    text = json.dumps(results, indent=2, default=float)
    if args.out:
        atomic_write_json(args.out, json.loads(text))
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
