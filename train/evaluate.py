"""Evaluation the papers' way (metrics from :mod:`common.metrics`, the project's one definition).

- :func:`evaluate_sues200`: per altitude, drone->satellite and satellite->drone, both protocols
  (``official``: every location in the gallery; ``query_only``: only test locations; the sets are
  defined once in :mod:`common.sues200_layout`), labelled ``drone2sat@150m[official]``.
- :func:`evaluate_university1652`: drone->satellite and satellite->drone on the test split, both
  protocols, labelled ``drone2sat[official]`` (every gallery class kept: the benchmark's own
  evaluation, distractor classes included) and ``drone2sat[query_only]`` (gallery classes without a
  query are junk: how Sample4Geo computed its published 92.65 / 93.81).
- :func:`train.evaluate_geotiff.evaluate_geotiff`: cross-raster (e.g. cross-year) retrieval on a GeoTIFF,
  query positions uniform over the map, a hit counted as the flight replay counts it.

Every SUES-200 / University-1652 result carries ``R@1%`` (ours: ``k = max(1, round(n_gallery / 100))``)
and ``R@1%_benchmark`` (``R@(k+1)``: the value every benchmark script prints, because of an off-by-one
in the official code), each with its ``k``.

Command line: ``python -m train.evaluate CKPT [--preset demo] [--set data.root=...] [--out metrics.json]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import add_dataclass_options, with_defaults
from common.metrics import one_percent_k, retrieval_metrics
from common.options import option, shared
from common.progress import progress_bar
from train.embed import embed_images
from train.evaluate_geotiff import evaluate_geotiff

_logger = logging.getLogger(__name__)


# ---- SUES-200 and University-1652 -----------------------------------------------------------------------


def labelled_metrics(sim, query_labels, gallery_labels, junk=None) -> dict:
    """:func:`retrieval_metrics` plus ``R@1%_benchmark`` = R@(k+1) with its ``k_1pct_benchmark``."""
    n_eff = len(gallery_labels) - (0 if junk is None else int(np.asarray(junk, bool).sum()))
    k_bench = one_percent_k(n_eff) + 1
    m = retrieval_metrics(sim, query_labels, gallery_labels, ks=sorted({1, 5, 10, k_bench}), junk=junk)
    m["R@1%_benchmark"] = m[f"R@{k_bench}"] if k_bench in (1, 5, 10) else m.pop(f"R@{k_bench}")
    m["k_1pct_benchmark"] = k_bench
    return m


def evaluate_sues200(model, root, altitudes=None, protocols=("official", "query_only"),
                     directions=("drone2sat", "sat2drone"), batch_size: int = 64, device="cpu",
                     progress: bool = True) -> dict:
    """``{"drone2sat@150m[official]": {"R@1": ..., ...}, ...}`` (percent); ``progress``: a bar per set of
    images not embedded before (``evaluation drone2sat@150m[official] queries``)."""
    from common.sues200_layout import SUES200

    data = SUES200(root)
    alts = data.altitudes if altitudes is None else [int(a) for a in altitudes]
    cache: dict[Path, np.ndarray] = {}

    def embed(paths, desc: str):
        todo = [p for p in dict.fromkeys(paths) if p not in cache]
        if todo:
            with progress_bar(desc=desc, total=len(todo), unit="image", enabled=progress) as bar:
                for p, e in zip(todo, embed_images(model, todo, batch_size, device, bar=bar)):
                    cache[p] = e
        return np.stack([cache[p] for p in paths])

    results = {}
    for alt in alts:
        for protocol in protocols:
            for direction in directions:
                rs = data.retrieval_set(alt, protocol, direction)
                q = embed(rs.query_paths, f"evaluation {rs.name} queries")
                sim = q @ embed(rs.gallery_paths, f"evaluation {rs.name} gallery").T
                m = labelled_metrics(sim, rs.query_labels, rs.gallery_labels)
                m.update(altitude_m=alt, protocol=protocol, direction=direction)
                results[rs.name] = m
                _logger.info("%s: R@1 %.2f AP %.2f", rs.name, m["R@1"], m["AP"])
    return results


UNIVERSITY1652_PROTOCOLS = ("official", "query_only")


def evaluate_university1652(model, root, batch_size: int = 64, device="cpu", progress: bool = True) -> dict:
    """``{"drone2sat[official]": metrics, "drone2sat[query_only]": ..., "sat2drone[...]": ...}``;
    ``progress``: a bar per direction (``evaluation drone2sat``)."""
    from train.datasets import university1652_retrieval

    results = {}
    for direction in ("drone2sat", "sat2drone"):
        qp, ql, gp, gl = university1652_retrieval(root, direction)
        with progress_bar(desc=f"evaluation {direction}", total=len(qp) + len(gp), unit="image",
                          enabled=progress) as bar:
            q = embed_images(model, qp, batch_size, device, bar=bar)
            sim = q @ embed_images(model, gp, batch_size, device, bar=bar).T
        for protocol in UNIVERSITY1652_PROTOCOLS:
            junk = None if protocol == "official" else ~np.isin(np.asarray(gl), np.asarray(ql))
            m = labelled_metrics(sim, ql, gl, junk=junk)
            m.update(protocol=protocol, direction=direction)
            results[f"{direction}[{protocol}]"] = m
            _logger.info("University-1652 %s[%s]: R@1 %.2f AP %.2f", direction, protocol, m["R@1"], m["AP"])
    return results


# ---- dispatch on a config -----------------------------------------------------------------------------


def evaluate_config(cfg, model, device="cpu", progress: bool = True) -> dict:
    """Evaluate ``model`` on the evaluation data of a :class:`train.config.TrainConfig` (``progress``: bars
    of the embedding, on stderr)."""
    d, e = cfg.data, cfg.eval
    if d.kind == "geotiff":
        if not d.eval_rasters:
            raise ValueError("GeoTIFF evaluation needs data.eval_rasters (held-out rasters of the area)")
        j = d.jitter
        offset = d.stride_frac / 2 if j.offset_frac is None else j.offset_frac
        return evaluate_geotiff(model, d.reference, d.eval_rasters, d.altitudes_m, d.hfov_deg,
                                stride_frac=e.stride_frac, max_queries=e.max_queries, offset_frac=offset,
                                heading_deg=j.heading_deg, compass_error_deg=j.compass_error_deg,
                                batch_size=e.batch_size, device=device, seed=e.seed,
                                positions=e.query_positions, progress=progress)
    if d.kind == "sues200":
        return evaluate_sues200(model, d.root, d.altitudes_m, batch_size=e.batch_size, device=device,
                                progress=progress)
    return evaluate_university1652(model, d.root, batch_size=e.batch_size, device=device, progress=progress)


def _is_training_config(cfg) -> bool:
    """A resolved training config names its data (a frozen baseline's {"note": ...} does not)."""
    return isinstance(cfg, dict) and isinstance(cfg.get("data"), dict) and "kind" in cfg["data"]


@dataclass
class EvaluateOptions:
    checkpoint: str | None = option(None, "our checkpoint, or an official Sample4Geo state dict (with --model-name)",
                                    positional=True)
    model_name: str | None = shared("model_name")
    preset: str | None = shared("preset")
    set: list[str] = shared("set")
    out: str | None = option(None, "write the metrics JSON here")
    device: str = option("cpu", "torch device (cpu, cuda, cuda:1)")
    progress: bool = shared("progress")


def build_parser():
    import argparse

    ap = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    add_dataclass_options(ap, EvaluateOptions)
    return ap


def main(argv=None) -> int:
    import json
    import sys

    from tiles.io import atomic_write_json
    from train.config import apply_overrides, from_dict, preset
    from train.model import load_checkpoint

    ap = build_parser()
    args = with_defaults(ap.parse_args(argv), EvaluateOptions)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model, info = load_checkpoint(args.checkpoint, model_name=args.model_name)
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
    cfg = apply_overrides(cfg, args.set)
    results = evaluate_config(cfg, model, args.device, progress=args.progress)
    text = json.dumps(results, indent=2, default=float)
    if args.out:
        atomic_write_json(args.out, json.loads(text))
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
