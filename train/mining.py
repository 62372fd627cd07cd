"""Visual hard-negative mining between epochs: embed every location with the current model, rank.

Each location's query side is the mean of ``per_location`` query views (several drone frames, or
several random poses of a rendered view), L2-normalised: one frame (the lowest altitude's first, or
the straight-down render) is a poor stand-in for a location. The reference side is the location's
satellite image. Negatives then follow :func:`train.neighbours.mine_similar_neighbours`: never the
location itself, and on GeoTIFF data only the same altitude and no tile overlapping the anchor's
footprint by more than ``sampler.max_overlap`` (:func:`neighbour_geometry`).
"""

from __future__ import annotations

import numpy as np
import torch

from train.neighbours import mine_similar_neighbours


def neighbour_geometry(dataset, cfg) -> dict:
    """Keyword arguments that keep near-positives out of neighbour lists (GeoTIFF data), else ``{}``."""
    if getattr(dataset, "footprint_of_location", None) is None or dataset.xy_m is None:
        return {}
    s = cfg.sampler
    return {"groups": dataset.altitude_of_location if s.per_altitude else None, "xy_m": dataset.xy_m,
            "footprint_m": dataset.footprint_of_location, "max_overlap": s.max_overlap}


@torch.no_grad()
def embed_location_queries(model, dataset, per_location: int, batch_size: int, device,
                           rng: np.random.Generator, progress: bool = True) -> np.ndarray:
    """(L, D): the normalised mean embedding of ``per_location`` query views of every location
    (``progress``: a bar, ``mining: query views``)."""
    from common.progress import progress_bar
    from train.embed import embed_images

    samples = dataset.mining_samples(per_location, rng)
    owner = np.repeat(np.arange(len(samples)), [len(s) for s in samples])
    flat = np.concatenate(samples)
    total = None
    with progress_bar(desc="mining: query views", total=len(flat), unit="image", enabled=progress) as bar:
        for s in range(0, len(flat), batch_size):
            views = [dataset.mining_query(int(i), rng) for i in flat[s:s + batch_size]]
            emb = embed_images(model, views, batch_size, device, bar=bar)
            if total is None:
                total = np.zeros((len(samples), emb.shape[1]), np.float64)
            np.add.at(total, owner[s:s + batch_size], emb)
    return (total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@torch.no_grad()
def mine_neighbours(model, dataset, cfg, device, epoch: int = 0, progress: bool = True) -> list[np.ndarray]:
    """Each location's ``sampler.neighbour_range`` hardest real negatives, hardest first (``progress``: bars
    of the embedding, ``mining: query views`` and ``mining: reference images``)."""
    from common.progress import progress_bar
    from train.embed import embed_images

    rng = np.random.default_rng([cfg.seed, epoch, 0x3141])
    bs = cfg.eval.batch_size
    q = embed_location_queries(model, dataset, cfg.sampler.mining_samples, bs, device, rng, progress)
    refs = []
    with progress_bar(desc="mining: reference images", total=dataset.n_locations, unit="image",
                      enabled=progress) as bar:
        for s in range(0, dataset.n_locations, bs):
            imgs = [dataset.reference_image(loc) for loc in range(s, min(s + bs, dataset.n_locations))]
            refs.append(embed_images(model, imgs, bs, device, bar=bar))
    r = np.concatenate(refs)
    return mine_similar_neighbours(q, r, cfg.sampler.neighbour_range, **neighbour_geometry(dataset, cfg))
