"""The tile database: L2-normalised float16 embeddings of reference images, with their geometry.

On disk a database is a folder::

    <name>/manifest.json    format, model fingerprint, preprocessing, CRS, sources, layers, file sizes
    <name>/embeddings.npy   float16 (N, D), L2-normalised rows
    <name>/entries.npy      structured array (N,) of :data:`ENTRY_DTYPE`: label, layer, geometry
    <name>/grid_*.npy       the spatial grid over the tile centres (:mod:`tiles.spatial`)
    <name>/ann-<layer>.faiss  optional approximate index of a big layer (``export.ann_build``)

Entries are stored grouped by layer (one layer per flight altitude), so a layer is a contiguous slice
of rows and the runtime searches a view, not a copy. Entries without geometry (``has_geo`` false: the
SUES-200 satellite images, University-1652's gallery) carry only a label.

The reader needs numpy alone and memory-maps both arrays. Writing goes to a hidden temporary folder
beside the target, which is renamed into place only once every file is complete and synced, so an
interrupted write never leaves a folder under the final name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiles.dbcheck import (  # noqa: F401 (re-exported: the errors are part of this module's API)
    ALTITUDE_TOLERANCE_FRAC,
    DatabaseError,
    DatabaseMismatchError,
    NoLayerError,
    check_finite,
    check_layer_altitude,
    imagery_note,
    verify_files,
)
from tiles.io import default_mode, read_versioned_json

_log = logging.getLogger(__name__)

FORMAT = "geoloc-tiledb"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
ENTRIES = "entries.npy"

ENTRY_DTYPE = np.dtype(
    [
        ("label", "<U64"),  # tile id ("r0012_c0034") or gallery class ("0001")
        ("layer", "<i2"),  # index into manifest["layers"]
        ("has_geo", "?"),
        ("x", "<f8"),  # centre, raster CRS units
        ("y", "<f8"),
        ("lat", "<f8"),  # centre, WGS84 degrees
        ("lon", "<f8"),
        ("footprint_m", "<f4"),  # ground side of the tile, metres
        ("altitude_m", "<f4"),  # the flight altitude the tile was cut for
        ("col_off", "<i4"),  # pixel window of the tile in its source raster
        ("row_off", "<i4"),
        ("width", "<i4"),
        ("height", "<i4"),
        ("source", "<i2"),  # index into manifest["sources"], -1 when none
    ]
)


def empty_entries(n: int) -> np.ndarray:
    """``n`` entries with no geometry (NaN coordinates, -1 windows and source)."""
    e = np.zeros(n, ENTRY_DTYPE)
    for f in ("x", "y", "lat", "lon", "footprint_m", "altitude_m"):
        e[f] = np.nan
    for f in ("col_off", "row_off", "width", "height", "source"):
        e[f] = -1
    return e


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_database(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    entries: np.ndarray,
    *,
    layers: list[dict],
    model: dict,
    preprocess: dict,
    crs: str | None = None,
    sources: list[dict] | None = None,
    extra: dict | None = None,
    overwrite: bool = False,
    indexes: tuple = (),
) -> Path:
    """Write a database atomically and return its path.

    ``embeddings`` (N, D) are L2-normalised here (rows of zero norm are an error) and stored float16.
    ``entries`` is an array of :data:`ENTRY_DTYPE`; rows are reordered by layer (stable). ``layers`` is a
    list of dicts, each at least ``{"name": str}`` and usually ``altitude_m``, ``hfov_deg``,
    ``footprint_m``, ``stride_m``, ``tile_px``; ``start``/``stop``/``count`` are filled in here.
    ``model`` must hold ``fingerprint`` (and usually ``name``, ``embedding_dim``); ``preprocess`` is
    :meth:`runtime.engines.preprocess.Preprocess.to_dict`. The spatial index over the centres is always written
    (:mod:`tiles.spatial`); ``indexes`` are optional builders of further indexes (see :func:`_write_indexes`).
    """
    path = Path(path)
    emb, entries, norms = _checked_inputs(path, embeddings, entries, model, layers, overwrite)
    order = np.argsort(entries["layer"], kind="stable")
    emb = (emb / norms[:, None])[order].astype(np.float16)
    entries = entries[order]
    layers = _layer_ranges(layers, entries)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp's 0700 would lock out the service's user
        np.save(tmp / EMBEDDINGS, emb)
        np.save(tmp / ENTRIES, entries)
        index_fields, index_files = _write_indexes(tmp, emb, entries, layers, indexes)
        files = {}
        for name in (EMBEDDINGS, ENTRIES, *index_files):
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "count": int(len(emb)),
            "embedding_dim": int(emb.shape[1]),
            "model": dict(model),
            "preprocess": dict(preprocess),
            "crs": crs,
            "sources": list(sources or []),
            "layers": layers,
            "files": files,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "extra": dict(extra or {}),
            **index_fields,
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _checked_inputs(path: Path, embeddings, entries, model: dict, layers: list[dict], overwrite: bool):
    """(float32 embeddings, entries, row norms), or a DatabaseError naming what is wrong; nothing is written."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise DatabaseError(f"embeddings must be a non-empty (N, D) array, got shape {emb.shape}")
    entries = np.asarray(entries)
    if entries.dtype != ENTRY_DTYPE:
        raise DatabaseError("entries must use tiles.db.ENTRY_DTYPE (build them with tiles.db.empty_entries)")
    if len(entries) != len(emb):
        raise DatabaseError(f"{len(entries)} entries for {len(emb)} embeddings: they must match one to one")
    if not np.all(np.isfinite(emb)):
        raise DatabaseError("embeddings contain NaN or inf: the model output is broken, nothing was written")
    norms = np.linalg.norm(emb, axis=1)
    if np.any(norms < 1e-12):
        raise DatabaseError(f"{int(np.sum(norms < 1e-12))} embeddings have zero norm; cannot L2-normalise")
    if "fingerprint" not in model:
        raise DatabaseError("model info must include 'fingerprint' (the checkpoint hash) so the runtime can check it")
    if not layers:
        raise DatabaseError("at least one layer is needed, e.g. [{'name': 'gallery'}]")
    if entries["layer"].min() < 0 or entries["layer"].max() >= len(layers):
        raise DatabaseError(f"entry layer indices must be in 0..{len(layers) - 1}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    return emb, entries, norms


def _layer_ranges(layers: list[dict], entries: np.ndarray) -> list[dict]:
    """Copies of ``layers`` with ``start``/``stop``/``count`` of their rows (entries sorted by layer)."""
    layers = [dict(layer) for layer in layers]
    for i, layer in enumerate(layers):
        if "name" not in layer:
            raise DatabaseError(f"layer {i} has no 'name': {layer!r}")
        idx = np.flatnonzero(entries["layer"] == i)
        layer["start"] = int(idx[0]) if len(idx) else int(np.searchsorted(entries["layer"], i))
        layer["stop"] = layer["start"] + len(idx)
        layer["count"] = len(idx)
    return layers


def _write_indexes(tmp: Path, emb: np.ndarray, entries: np.ndarray, layers: list[dict],
                   builders) -> tuple[dict, list[str]]:
    """Write the spatial index, then each optional index, into the database folder being written.

    A builder is ``f(folder, embeddings, layers) -> (manifest_key, record, [file names])`` (e.g. the ANN
    index of ``export.ann_build``); its files are hashed and listed in the manifest like the arrays.
    """
    from tiles.spatial import build_spatial_index

    arrays, record = build_spatial_index(entries, layers)
    for name, arr in arrays.items():
        np.save(tmp / name, arr)
    fields, names = {"spatial_index": record}, list(arrays)
    for build in builders:
        key, rec, written = build(tmp, emb, layers)
        fields[key] = rec
        names += list(written)
    return fields, names


@dataclass
class TileDatabase:
    """A database opened read-only; ``embeddings`` and ``entries`` are memory-mapped."""

    path: Path
    manifest: dict
    embeddings: np.ndarray
    entries: np.ndarray

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True, verify_hashes: bool | None = None,
             mmap: bool = True) -> TileDatabase:
        """Open a database read-only. ``verify`` (default) checks every file's sha256 against the manifest
        and that every embedding is finite, which reads the files once (see :func:`verify_files`);
        ``verify=False`` checks sizes only, for a fast restart of a database already verified.
        ``verify_hashes`` is the former name of ``verify``."""
        if verify_hashes is not None:
            verify = verify_hashes
        path = Path(path)
        if not path.is_dir():
            raise DatabaseError(
                f"no tile database at {path}: expected a folder with {MANIFEST}, {EMBEDDINGS}, {ENTRIES} "
                "(build one with `python -m export CKPT --tiles MAP.tif ...`)"
            )
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise DatabaseError(f"{path} has no {MANIFEST}: not a tile database, or its write was interrupted")
        manifest = read_versioned_json(mpath, FORMAT, FORMAT_VERSION, DatabaseError,
                                       "rebuild the database with this version of `python -m export`")
        verify_files(path, manifest, hashes=verify)
        if note := imagery_note(path, manifest):
            _log.log(*note)
        mode = "r" if mmap else None
        try:
            emb = np.load(path / EMBEDDINGS, mmap_mode=mode, allow_pickle=False)
            ent = np.load(path / ENTRIES, mmap_mode=mode, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DatabaseError(f"{path}: cannot read the arrays ({e}); rebuild the database") from e
        n, d = manifest["count"], manifest["embedding_dim"]
        if emb.shape != (n, d) or emb.dtype != np.float16:
            raise DatabaseError(f"{path}: embeddings are {emb.dtype}{emb.shape}, manifest says float16({n}, {d})")
        if ent.shape != (n,) or ent.dtype != ENTRY_DTYPE:
            raise DatabaseError(f"{path}: entries do not match the manifest ({ent.shape}, {ent.dtype})")
        if verify:
            check_finite(emb, path)
        return cls(path, manifest, emb, ent)

    # ---- properties ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def layers(self) -> list[dict]:
        return self.manifest["layers"]

    @property
    def model_fingerprint(self) -> str:
        return self.manifest["model"]["fingerprint"]

    @property
    def preprocess(self) -> dict:
        return self.manifest["preprocess"]

    @property
    def crs(self) -> str | None:
        return self.manifest.get("crs")

    # ---- indexes ------------------------------------------------------------------------------
    @functools.cached_property
    def spatial_index(self):
        """The grid over the tile centres (:class:`tiles.spatial.SpatialIndex`, memory-mapped), or None for
        a database written before it existed (the search then scans the layer's centres)."""
        from tiles.spatial import SpatialIndex

        record = self.manifest.get("spatial_index")
        return None if record is None else SpatialIndex.load(self.path, record)

    # ---- layers -------------------------------------------------------------------------------
    def layer_slice(self, layer: int | str) -> slice:
        if isinstance(layer, str):
            names = [lay["name"] for lay in self.layers]
            if layer not in names:
                raise KeyError(f"no layer named {layer!r}; layers are {names}")
            layer = names.index(layer)
        lay = self.layers[layer]
        return slice(lay["start"], lay["stop"])

    def layer_for_altitude(self, altitude_m: float | None, tolerance_frac: float | None = None) -> int:
        """Index of the layer cut for the altitude closest to ``altitude_m`` (the only one if just one).

        A NaN/inf altitude is a :class:`NoLayerError`. With ``tolerance_frac`` (e.g.
        :data:`ALTITUDE_TOLERANCE_FRAC`) an altitude further than that fraction from the chosen layer's is
        a :class:`NoLayerError` too ("no fix: altitude N m has no layer ..."), never a rescaled match."""
        if altitude_m is not None and not math.isfinite(altitude_m):
            raise NoLayerError(f"no fix: altitude {altitude_m} is not a number (check the altitude source)")
        alts = [lay.get("altitude_m") for lay in self.layers]
        if len(alts) == 1 or altitude_m is None:
            if altitude_m is None and len(alts) > 1:
                raise ValueError(
                    f"the database has {len(alts)} altitude layers {alts}; give the current altitude"
                )
            index = 0
        else:
            known = [(abs(a - altitude_m), i) for i, a in enumerate(alts) if a is not None]
            if not known:
                raise ValueError("no layer of this database records an altitude")
            index = min(known)[1]
        if tolerance_frac is not None and altitude_m is not None:
            check_layer_altitude(self.layers, index, altitude_m, tolerance_frac)
        return index

    # ---- compatibility ------------------------------------------------------------------------
    def check_compatible(
        self,
        *,
        model_fingerprint: str | None = None,
        preprocess: dict | None = None,
        embedding_dim: int | None = None,
    ) -> None:
        """Raise :class:`DatabaseMismatchError` naming every field that differs from the engine's."""
        problems = []
        if model_fingerprint is not None and model_fingerprint != self.model_fingerprint:
            problems.append(
                f"model fingerprint: database {self.model_fingerprint!r}, engine {model_fingerprint!r}"
            )
        if embedding_dim is not None and int(embedding_dim) != self.embedding_dim:
            problems.append(f"embedding size: database {self.embedding_dim}, engine {embedding_dim}")
        if preprocess is not None:
            mine = self.preprocess
            for key in sorted(set(mine) | set(preprocess)):
                if key == "version":
                    continue
                if mine.get(key) != preprocess.get(key):
                    problems.append(
                        f"preprocess {key}: database {mine.get(key)!r}, engine {preprocess.get(key)!r}"
                    )
        if problems:
            raise DatabaseMismatchError(
                f"tile database {self.path} was not built for this model: " + "; ".join(problems)
                + ". Rebuild it with `python -m export` from the same checkpoint as the engine."
            )
