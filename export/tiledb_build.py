"""Build the tile database: map tiles per flight altitude, embedded by the bundle's model (CONTRACTS §3, §8).

For each GeoTIFF and each altitude the tile grid of ``footprint_m(altitude_m, hfov_deg)`` with a stride
of ``stride_frac * footprint`` is cut (``tiles.grid``), every tile read north-up at the model's input size
and embedded in batches by the runtime's engine (``runtime.engines.engine.load_engine``) on the bundle's FP32
ONNX model, the same graph and preprocessing the runtime runs, then written with
``tiles.db.write_database``; one layer per altitude.

Resumable: the work is split into chunks of ``chunk_tiles`` tiles; each chunk's embeddings are saved
atomically in a work folder whose name carries the model fingerprint and a hash of the rasters and
settings, so a killed build continues with the first missing chunk, and a changed model or map starts
afresh. A database already written by the same build is kept (its manifest's ``extra.build_key``), and its
map imagery, when the build stopped before or during that step, is completed (``export.map_imagery``
resumes at its first unfinished row of blocks).

Parallel: chunk ``i`` belongs to rank ``i % world_size``. Under ``torchrun --nproc-per-node N -m export
...`` (or any launcher that sets ``RANK``/``WORLD_SIZE``) every process embeds its own chunks (on GPU
``LOCAL_RANK`` when ONNX Runtime has CUDA); rank 0 waits for all chunks and writes the database. Ranks
share nothing but the work folder, so it must be on a shared filesystem when ranks span machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tiles.io import atomic_path, atomic_write_json

_log = logging.getLogger(__name__)

DEFAULT_ALTITUDES_M = (150.0, 200.0, 250.0, 300.0)


def shard(n_items: int, rank: int, world_size: int) -> list[int]:
    """Indices of the items that ``rank`` of ``world_size`` processes handles (round robin)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in 0..world_size-1 (world_size {world_size})")
    return list(range(rank, n_items, world_size))


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment, (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def tile_engine(bundle_dir, local_rank: int = 0):
    """The runtime's engine on the bundle's FP32 ONNX model (the graph the runtime runs, its preprocessing),
    on CUDA device ``local_rank`` when this ONNX Runtime build has CUDA, else on the CPU."""
    import onnxruntime as ort

    from runtime.engines.engine import load_engine

    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": local_rank}))
    return load_engine(bundle_dir, precision="fp32", backend="onnxruntime", providers=providers)


def onnx_embedder(bundle_dir, local_rank: int = 0, batch_size: int = 32) -> Callable[[list], np.ndarray]:
    """images -> (N, D) float32 embeddings, in batches of ``batch_size``, through :func:`tile_engine`."""
    engine = tile_engine(bundle_dir, local_rank)

    def embed(images):
        out = list(engine.embed_batches(images, batch_size))
        return np.concatenate(out) if out else np.zeros((0, engine.embedding_dim), np.float32)

    embed.engine = engine
    return embed


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def _plan(rasters, altitudes_m, hfov_deg, stride_frac, min_valid, progress: bool = True):
    """Layers, sources and the (source, layer, tiles) jobs of a build."""
    from tiles.grid import footprint_m, tile_grid
    from tiles.mapcheck import coarse_map_warning

    layers, sources, jobs, crs = [], [], [], None
    for s, raster in enumerate(rasters):
        mcrs = raster.metric_crs.to_string()
        if crs is not None and mcrs != crs:
            raise ValueError(f"{raster.path} is in {mcrs}, the other rasters in {crs}: one database holds one "
                             "metric CRS; build one database per UTM zone (or reproject with gdalwarp)")
        crs = mcrs
        sources.append({"name": Path(raster.path).name, "sha256": raster.sha256()})
        for layer_idx, alt in enumerate(altitudes_m):
            fp = footprint_m(alt, hfov_deg)
            stride = fp * stride_frac
            if s == 0:
                layers.append({"name": f"{alt:g}m", "altitude_m": float(alt), "hfov_deg": float(hfov_deg),
                               "footprint_m": fp, "stride_m": stride})
            if warning := coarse_map_warning(raster, fp, alt):
                _log.warning("%s", warning)
            tiles = tile_grid(raster, fp, stride, min_valid=min_valid, progress=progress)
            jobs.append((s, layer_idx, float(alt), tiles))
    return layers, sources, jobs, crs


def build_tile_database(bundle_dir, rasters, out, *, altitudes_m=DEFAULT_ALTITUDES_M, hfov_deg: float,
                        stride_frac: float = 0.5, min_valid: float = 0.9, tile_px: int | None = None,
                        chunk_tiles: int = 256, batch_size: int = 32, work_dir=None, overwrite: bool = False,
                        embedder: Callable[[list], np.ndarray] | None = None, rank: int | None = None,
                        world_size: int | None = None, wait_timeout_s: float = 24 * 3600,
                        progress: bool = True, keep_work: bool = False, ann: str = "auto",
                        ann_min_rows: int | None = None, imagery_px: int | None = 512) -> Path | None:
    """Build (or resume) the database for GeoTIFF(s) ``rasters``; return its path (None on ranks > 0).

    ``ann``: ``"auto"`` adds a FAISS IVF-PQ index (``export.ann_build``) to layers of at least
    ``ann_min_rows`` rows when FAISS is installed, ``"ivfpq"`` insists on it, ``"none"`` never builds one.
    ``imagery_px``: also write the map imagery registration reads (``export.map_imagery``), at the
    resolution of a frame ``imagery_px`` pixels wide at the lowest altitude (never finer than the map);
    None writes none (retrieval only).

    Every step resumes: the embedded chunks are kept in the work folder, and a database already written
    by the same build (same model, maps and settings: ``extra.build_key`` in its manifest) is not written
    again; its imagery, when missing (a build killed during that step), is completed.
    """
    from runtime.engines.bundle import read_bundle
    from tiles.raster import open_raster

    out = Path(out)
    if not altitudes_m:
        raise ValueError("give at least one altitude (e.g. --altitudes 150 200 250 300)")
    if not 0 < stride_frac <= 1:
        raise ValueError(f"stride_frac must be in (0, 1] (a fraction of the footprint), got {stride_frac}")
    env_rank, env_world, local_rank = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    bundle = read_bundle(bundle_dir)
    p = bundle.preprocess
    tile_px = int(tile_px or max(p.input_size))
    rasters = [open_raster(r) for r in ([rasters] if isinstance(rasters, (str, os.PathLike)) else rasters)]
    layers, sources, jobs, crs = _plan(rasters, [float(a) for a in altitudes_m], hfov_deg, stride_frac, min_valid,
                                       progress)
    for layer in layers:
        layer["tile_px"] = tile_px
    settings = {"model": bundle.model_fingerprint, "preprocess": p.to_dict(), "input": bundle.input,
                "sources": sources, "layers": layers, "min_valid": min_valid, "chunk_tiles": chunk_tiles}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    imagery = _Imagery(rasters, min(float(a) for a in altitudes_m), hfov_deg, imagery_px)
    if _already_built(out, key, overwrite, rank, imagery):
        return out if rank == 0 else None
    work = Path(work_dir or out.parent / f".{out.name}.work") / f"{bundle.model_fingerprint}-{key}"
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "settings.json", settings)
    chunks = [(j, k) for j, (_, _, _, tiles) in enumerate(jobs) for k in range(0, len(tiles), chunk_tiles)]
    if not chunks:
        raise ValueError(f"no tile with >= {min_valid:.0%} valid pixels in {[r.path.name for r in rasters]}")

    def chunk_path(i):
        return work / f"chunk-{i:06d}.npy"

    mine = [i for i in shard(len(chunks), rank, world_size) if not chunk_path(i).is_file()]
    n_tiles = sum(len(jobs[j][3][k:k + chunk_tiles]) for j, k in (chunks[i] for i in mine))
    _log.info("rank %d/%d: %d of %d chunks to embed (%d tiles) in %s", rank, world_size, len(mine), len(chunks),
              n_tiles, work)
    if mine:
        _embed_chunks(mine, chunks, jobs, rasters, tile_px, chunk_tiles, chunk_path,
                      embedder or onnx_embedder(bundle.path, local_rank, batch_size), n_tiles, rank, progress)
    if rank != 0:
        return None
    _wait_for_chunks(work, len(chunks), chunk_path, wait_timeout_s)
    chunk_arrays = [np.load(chunk_path(i)) for i in range(len(chunks))]
    path = _write(out, bundle, chunk_arrays, jobs, layers, crs, sources,
                  ann=ann, ann_min_rows=ann_min_rows, hfov_deg=hfov_deg, stride_frac=stride_frac,
                  min_valid=min_valid, custom_embedder=embedder is not None, overwrite=True,
                  build={"build_key": key, "imagery_px": imagery_px, "imagery": "map" if imagery_px else "none"})
    imagery.attach(path)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # only when no other build's work is in it
    _log.info("tile database %s: %d tiles in %d layers", path, sum(len(c) for c in chunk_arrays), len(layers))
    return path


class _Imagery:
    """The build's imagery step: the resolution it needs, and whether a database already has it."""

    def __init__(self, rasters, min_altitude_m: float, hfov_deg: float, imagery_px: int | None):
        self.rasters, self.min_altitude_m, self.hfov_deg, self.px = rasters, min_altitude_m, hfov_deg, imagery_px

    def missing(self, manifest: dict) -> bool:
        return bool(self.px) and not manifest.get("imagery")

    def attach(self, db_path: Path) -> None:
        if not self.px:
            return
        from export.map_imagery import attach_imagery, imagery_gsd_m

        gsd = imagery_gsd_m(min(r.gsd_m for r in self.rasters), self.min_altitude_m, self.hfov_deg, int(self.px))
        out = attach_imagery(db_path, self.rasters, gsd_m=gsd)
        _log.info("map imagery for registration: %s at %.3g m/px", out, gsd)


def _already_built(out: Path, key: str, overwrite: bool, rank: int, imagery: _Imagery) -> bool:
    """True when ``out`` holds this build's database (its imagery completed here when it was missing);
    False when it must be built; FileExistsError for another database without ``overwrite``."""
    if not out.exists() or overwrite:
        return False
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("extra", {}).get("build_key") != key:
        raise FileExistsError(f"{out} exists and holds another database; pass overwrite=True (CLI: --overwrite) "
                              "to rebuild it, or choose another --db-out")
    if rank != 0:
        return True
    if imagery.missing(manifest):
        _log.info("%s is written but its map imagery is not (the build stopped there): completing it", out)
        imagery.attach(out)
    else:
        _log.info("%s is already built with these settings: nothing to do", out)
    return True


def _write(out, bundle, chunks, jobs, layers, crs, sources, *, ann, ann_min_rows, hfov_deg, stride_frac, min_valid,
           custom_embedder: bool, overwrite: bool, build: dict) -> Path:
    """The database from the embedded chunks: entries, ANN indexes where they pay, the manifest."""
    from export.ann_build import DEFAULT_MIN_ROWS, ann_indexes
    from tiles.db import write_database
    from tiles.grid import tiles_to_entries

    embeddings = np.concatenate(chunks)
    entries = np.concatenate([tiles_to_entries(tiles, layer=l_idx, altitude_m=alt, source=s)
                              for s, l_idx, alt, tiles in jobs if tiles])
    per_layer = np.bincount(entries["layer"], minlength=len(layers))
    indexes = ann_indexes(ann, int(per_layer.max()), ann_min_rows or DEFAULT_MIN_ROWS)
    return write_database(
        out, embeddings, entries, layers=layers, indexes=indexes,
        model={"fingerprint": bundle.model_fingerprint, "name": bundle.manifest["model_name"],
               "embedding_dim": bundle.embedding_dim},
        preprocess=bundle.preprocess.to_dict(), crs=crs, sources=sources,
        extra={"hfov_deg": float(hfov_deg), "stride_frac": float(stride_frac), "min_valid": float(min_valid),
               "built_by": "export.tiledb_build",
               "embedded_with": "custom embedder" if custom_embedder else "onnxruntime fp32", **build},
        overwrite=overwrite,
    )


def _embed_chunks(mine, chunks, jobs, rasters, tile_px, chunk_tiles, chunk_path, embed, n_tiles, rank, progress):
    """Embed this rank's chunks of tiles, each saved as soon as it is done (a killed build resumes)."""
    from common.progress import progress_bar
    from tiles.grid import read_tile

    with progress_bar(desc=f"tiles rank {rank}", total=n_tiles, unit="tile", enabled=progress) as bar:
        for i in mine:
            j, k = chunks[i]
            s, _, _, tiles = jobs[j]
            images = [read_tile(rasters[s], t, tile_px) for t in tiles[k:k + chunk_tiles]]
            emb = np.asarray(embed(images), np.float32)
            if emb.shape[0] != len(images):
                raise RuntimeError(f"the embedder returned {emb.shape[0]} rows for {len(images)} tiles")
            _save_npy(chunk_path(i), emb)
            bar.update(len(images))


def _wait_for_chunks(work: Path, n_chunks: int, chunk_path, wait_timeout_s: float) -> None:
    """Rank 0 waits until every rank's chunks are on disk."""
    deadline = time.monotonic() + wait_timeout_s
    while missing := [i for i in range(n_chunks) if not chunk_path(i).is_file()]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} chunks still missing in {work} after {wait_timeout_s:.0f} s: did a "
                               "rank die? Re-run the same command to resume")
        time.sleep(2.0)


def gallery_classes(folder) -> list[tuple[str, list[Path]]]:
    """(label, image files) per class folder: SUES-200 ``satellite-view/<loc>/0.png`` (``folder`` may be the
    archive folder ``SUES-200-512x512`` or its parent, as tools/make_sues200 writes it), University-1652
    ``gallery_satellite/<class>/*``, or any folder of class folders."""
    from common.sues200_layout import ARCHIVE_DIR, RAW_SATELLITE
    from export.images import IMAGE_SUFFIXES

    folder = Path(folder)
    for sub in (RAW_SATELLITE, f"{ARCHIVE_DIR}/{RAW_SATELLITE}", "gallery_satellite"):
        if (folder / sub).is_dir():
            folder = folder / sub
            break
    if not folder.is_dir():
        raise FileNotFoundError(f"gallery folder {folder} does not exist")
    classes = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if files:
            classes.append((d.name, files))
    if not classes:
        raise FileNotFoundError(f"no class folders with images under {folder}: expected <folder>/<label>/*.png "
                                "(SUES-200 satellite-view, University-1652 gallery_satellite)")
    return classes


def build_gallery_database(bundle_dir, folder, out, *, batch_size: int = 32, overwrite: bool = False,
                           embedder: Callable[[list], np.ndarray] | None = None, progress: bool = True) -> Path:
    """A database of labelled gallery images (no geometry; label = class folder name), one layer."""
    from common.progress import progress_bar
    from export.images import read_image
    from runtime.engines.bundle import read_bundle
    from tiles.db import empty_entries, write_database

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to rebuild it")
    bundle = read_bundle(bundle_dir)
    items = [(label, f) for label, files in gallery_classes(folder) for f in files]
    embed = embedder or onnx_embedder(bundle.path, batch_size=batch_size)
    embs = []
    for i in progress_bar(range(0, len(items), batch_size), desc="gallery", unit="batch", enabled=progress):
        embs.append(np.asarray(embed([read_image(f) for _, f in items[i:i + batch_size]]), np.float32))
    entries = empty_entries(len(items))
    entries["label"] = [label for label, _ in items]
    entries["layer"] = 0
    return write_database(
        out, np.concatenate(embs), entries, layers=[{"name": "gallery"}],
        model={"fingerprint": bundle.model_fingerprint, "name": bundle.manifest["model_name"],
               "embedding_dim": bundle.embedding_dim},
        preprocess=bundle.preprocess.to_dict(), sources=[{"name": str(Path(folder).name), "sha256": None}],
        extra={"built_by": "export.tiledb_build", "gallery": True, "n_classes": len({x[0] for x in items})},
        overwrite=overwrite,
    )
