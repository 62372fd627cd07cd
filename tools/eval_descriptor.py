"""How small can the descriptor be? Held-out retrieval at 1280/512/256/128 dims, float16 and int8 storage.

The projection (``export.projection``: PCA, whitened or not) is fitted exactly as ``python -m export
--descriptor-dim`` fits it: on north-up drone views rendered from the TRAINING years (2010/2012/2014) and
tiles of the 2018 map. It is evaluated on the held-out years as ``train.evaluate.evaluate_geotiff``
does (same settings and query sampling): per altitude, views rendered from 2016 and 2020 (offset up to
10 % of the footprint, any heading, turned north-up with a 3 deg compass error) against every 2018 tile
on a non-overlapping grid; positive = the tile nearest to the true position; R@k pooled over years and
altitudes. Storage: the database rows as float16 (what ``tiles.db`` stores) or int8 with one scale per
row (symmetric, 127 levels); queries stay float32 (the engine's output).

    nice -n 10 python -m tools.eval_descriptor /work/demo-base/train/checkpoint.pt --label trained \\
        --out docs/results/descriptor_trained.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import validate
from common.cli import options_parser, parse_options
from common.options import option

REPO = Path(__file__).resolve().parents[1]
NAIP = REPO / "data" / "naip"
_log = logging.getLogger("eval_descriptor")


def naip(year: int) -> Path:
    return sorted(NAIP.glob(f"*_{year}*.tif"))[0]


def held_out_sets(model, reference, query_rasters, altitudes_m, hfov_deg=60.0, max_queries=100, seed=0):
    """Per (altitude, year): query embeddings, gallery embeddings, labels (index of the true tile)."""
    from runtime.engines.preprocess import north_up
    from tiles.grid import read_tile
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view
    from train.datasets import geotiff_locations
    from train.embed import embed_images

    size = model.preprocess.input_size[0]
    ref = open_raster(reference)
    sets = []
    for alt in altitudes_m:
        tiles = [t for _, t in geotiff_locations(reference, [alt], hfov_deg, 1.0)]
        centres = np.array([[t.x, t.y] for t in tiles])
        gallery = embed_images(model, [read_tile(ref, t, size) for t in tiles])
        rng = np.random.default_rng([seed, int(alt)])
        idx = np.arange(len(tiles))
        if len(idx) > max_queries:
            idx = np.sort(rng.choice(len(idx), max_queries, replace=False))
        offsets = rng.uniform(-0.1, 0.1, (len(idx), 2)) * tiles[0].footprint_m
        headings = rng.uniform(-180.0, 180.0, len(idx)) % 360.0
        compass = headings + rng.normal(0.0, 3.0, len(idx))
        true_xy = centres[idx] + offsets
        labels = np.argmin(((true_xy[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        for qpath in query_rasters:
            with open_raster(qpath) as qr:
                views = [north_up(render_view(qr, CameraPose(x, y, float(alt), heading_deg=float(h), hfov_deg=hfov_deg),
                                              (size, size)).image, float(c))
                         for (x, y), h, c in zip(true_xy, headings, compass)]
            sets.append({"alt": alt, "year": Path(qpath).stem[-8:-4], "q": embed_images(model, views),
                         "g": gallery, "labels": labels})
    ref.close()
    return sets


def store(g: np.ndarray, dtype: str) -> np.ndarray:
    """Database rows as stored and read back: float16, or int8 with one float16 scale per row."""
    if dtype == "float16":
        return g.astype(np.float16).astype(np.float32)
    scale = (np.abs(g).max(axis=1, keepdims=True) / 127.0).astype(np.float16).astype(np.float32)
    return np.clip(np.round(g / scale), -127, 127) * scale


def recall(sets, transform, dtype: str) -> dict:
    ranks = []
    for s in sets:
        q, g = transform(s["q"]), store(transform(s["g"]), dtype)
        sim = q @ g.T
        pos = sim[np.arange(len(q)), s["labels"]]
        ranks.append(1 + (sim > pos[:, None]).sum(axis=1))
    r = np.concatenate(ranks)
    return {"R@1": float(100 * np.mean(r <= 1)), "R@5": float(100 * np.mean(r <= 5)), "n_queries": int(len(r))}


@dataclass
class Options:
    ckpt: str | None = option(None, "the trained checkpoint", positional=True)
    label: str | None = option(None, "what the checkpoint is (recorded with the results)", required=True)
    dims: list[int] = option([512, 256, 128], "descriptor sizes to evaluate", check=validate.int_rule(1))
    shrink: list[float] = option([0.1], "whitening shrinkage values", check=validate.range_rule(0.0, 1.0))
    fit_n: int = option(2000, "images to fit the projection on", check=validate.int_rule(1))
    max_queries: int = option(100, "queries per altitude and held-out year", check=validate.int_rule(1))
    cache: str | None = option(None, "npz of the embeddings: written on the first run, read after")
    out: str | None = option(None, "results JSON")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options)
    args.ckpt, args.cache, args.out = Path(args.ckpt), args.cache and Path(args.cache), args.out and Path(args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from export.projection import fit_images, fit_projection, project
    from train.embed import embed_images
    from train.model import load_checkpoint

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model, info = load_checkpoint(args.ckpt)
    model.eval()
    size = model.preprocess.input_size[0]
    train_years, map_year, held_out = (2010, 2012, 2014), 2018, (2016, 2020)
    if args.cache and args.cache.is_file():
        z = np.load(args.cache, allow_pickle=False)
        fit = z["fit"]
        sets = [{"alt": int(a), "year": str(y), "q": z[f"q{i}"], "g": z[f"g{i}"], "labels": z[f"l{i}"]}
                for i, (a, y) in enumerate(zip(z["alts"], z["years"]))]
    else:
        fit = embed_images(model, fit_images([naip(y) for y in train_years], [naip(map_year)], n=args.fit_n,
                                             size_px=size))
        _log.info("fit set: %d embeddings (%.0f s)", len(fit), time.perf_counter() - t0)
        sets = held_out_sets(model, naip(map_year), [naip(y) for y in held_out], (150, 200, 250, 300),
                             max_queries=args.max_queries)
        _log.info("held-out sets embedded (%.0f s)", time.perf_counter() - t0)
        if args.cache:
            arrays = {"fit": fit, "alts": np.array([s["alt"] for s in sets]), "years": np.array([s["year"] for s in sets])}
            for i, s in enumerate(sets):
                arrays.update({f"q{i}": s["q"], f"g{i}": s["g"], f"l{i}": s["labels"]})
            np.savez(args.cache, **arrays)
    rows = []
    variants = [("full", fit.shape[1], None, None)]
    variants += [("pca-whitening", d, True, s) for d in args.dims for s in args.shrink]
    variants += [("pca", d, False, 0.0) for d in args.dims]
    for kind, dim, whiten, shrink in variants:
        if whiten is None:
            def transform(x):
                return x
        else:
            proj = fit_projection(fit, dim, whiten=whiten, shrink=shrink)

            def transform(x, proj=proj):
                return project(x, proj)
        for dtype in ("float16", "int8"):
            r = recall(sets, transform, dtype)
            rows.append({"kind": kind, "dim": dim, "shrink": shrink, "storage": dtype,
                         "bytes_per_row": dim * (2 if dtype == "float16" else 1) + (2 if dtype == "int8" else 0), **r})
            _log.info("%s", rows[-1])
    report = {"label": args.label, "checkpoint": str(args.ckpt), "model": info.get("model_name"),
              "fit": {"views_of": list(train_years), "tiles_of": map_year, "n": len(fit)},
              "held_out": {"years": list(held_out), "against": map_year, "max_queries_per_alt_year": args.max_queries},
              "command": " ".join(sys.argv), "wall_s": time.perf_counter() - t0, "rows": rows}
    print(json.dumps(report, indent=1))
    if args.out:
        from tiles.io import atomic_write_json

        atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
