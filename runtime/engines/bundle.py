"""The model bundle: what `python -m export` writes and the runtime loads (no torch here).

A bundle is a folder::

    model.onnx            drone branch, FP32, dynamic batch, L2-normalised output
    model.fp16.onnx       optional
    model.int8.onnx       optional, Q/DQ
    model.<gpu>.plan      optional TensorRT engine, built on the target
    manifest.json         see below

``manifest.json``::

    {"format": "geoloc-bundle", "format_version": 1,
     "model_name": "tf_efficientnet_lite0", "embedding_dim": 1280,
     "model_fingerprint": "<16 hex: sha256 of the source checkpoint file; with a projection, sha256 of
                           '<checkpoint fingerprint>:<projection sha256>'>",
     "preprocess": {...Preprocess.to_dict()...},
     "input": {"name": "image", "dtype": "float32", "layout": "NCHW"},   # or uint8 / NHWC, see below
     "output": {"name": "embedding"},
     "projection": {"dim": 256, "input_dim": 1280, "kind": "pca-whitening", "sha256": "...", "file":
                    "projection.npz", "fit": {...}, "checkpoint_fingerprint": "..."} or null,
     "source_checkpoint": {"path": "...", "sha256": "..."},
     "files": [{"path": "model.onnx", "kind": "onnx", "precision": "fp32", "sha256": "...", ...},
               {"path": "model.int8.onnx", "kind": "onnx", "precision": "int8", "accuracy": {...}, ...},
               {"path": "model.orin.plan", "kind": "tensorrt", "precision": "fp16",
                "trt_version": "10.3.0", "gpu": "Orin", ...}],
     "likelihood": {"temperature": ..., "offset": ..., "r95_scale": ..., "fix_accuracy": {...},
                    "fitted_on": {"rasters": [...], "database": ..., "frames": ..., "localizer": {...}}}
                   or absent (uncalibrated: :func:`calibration_line` warns at every start of the service),
     "created_utc": "..."}

``embedding_dim`` is what the graph emits: the compact descriptor's size when ``projection`` is set (a
PCA-whitening appended to the graph by ``export.projection``, so every engine emits it).

``input.dtype`` "float32" with layout "NCHW" means the engine takes :meth:`Preprocess.batch` output;
"uint8" with layout "NHWC" means it takes :meth:`Preprocess.resize` output stacked, and scaling and
normalisation happen inside the graph.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from common.cli import UserError
from runtime.engines.preprocess import Preprocess
from tiles.io import atomic_write_json, file_sha256

logger = logging.getLogger(__name__)

FORMAT = "geoloc-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
KINDS = ("onnx", "tensorrt")


class BundleError(UserError, ValueError):
    """A model bundle that is missing, incomplete or inconsistent."""


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.manifest["preprocess"])

    @property
    def model_fingerprint(self) -> str:
        return self.manifest["model_fingerprint"]

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def projection(self) -> dict | None:
        """The compact-descriptor projection baked into the graph (None: the full embedding)."""
        return self.manifest.get("projection")

    @property
    def input(self) -> dict:
        return self.manifest.get("input", {"name": "image", "dtype": "float32", "layout": "NCHW"})

    @property
    def files(self) -> list[dict]:
        return self.manifest.get("files", [])

    def find(self, kind: str = "onnx", precision: str | None = None) -> dict | None:
        """The first file entry of this kind (and precision, if given), or None."""
        for f in self.files:
            if f["kind"] == kind and (precision is None or f["precision"] == precision):
                return f
        return None

    def file_path(self, entry: dict) -> Path:
        """The path of a model file about to be opened, checked against the manifest's sha256: a file changed
        since the export (a bad copy, a truncated download, a failing disk) is refused, never run."""
        path = self.path / entry["path"]
        verify_file(path, entry, self.path)
        return path


_verified: dict[tuple, str] = {}  # (path, size, mtime) -> sha256 already checked in this process


def verify_file(path: Path, entry: dict, bundle_dir: Path) -> None:
    """``path`` exists and matches ``entry["sha256"]`` (and ``bytes`` when recorded); a BundleError naming
    the file and the fix otherwise. About 2 ms per MB (sha256); each file is hashed once per process."""
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: manifest lists {entry['path']} but the file is missing; copy the bundle "
                          "again or re-export it")
    st = path.stat()
    want = entry.get("sha256")
    if "bytes" in entry and st.st_size != entry["bytes"]:
        raise BundleError(f"{path} has {st.st_size} bytes, the manifest says {entry['bytes']}: truncated or replaced; "
                          "copy the bundle again or re-export it")
    if not want:
        logger.warning("%s has no sha256 in the manifest: it cannot be verified (re-export the bundle)", path)
        return
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == want:
        return
    got = file_sha256(path)
    if got != want:
        raise BundleError(f"{path}: sha256 differs from the bundle manifest ({st.st_size} bytes): the file is "
                          "corrupted or truncated (a bad copy, a failing disk); copy the bundle again or re-export it")
    _verified[key] = got


def new_manifest(**fields) -> dict:
    """A manifest dict with the format fields set; the caller adds the rest."""
    m = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": [],
         "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    m.update(fields)
    return m


def write_manifest(bundle_dir: str | os.PathLike, manifest: dict) -> Path:
    """Validate and write ``manifest.json`` atomically (after every model file is in place)."""
    bundle_dir = Path(bundle_dir)
    _validate(bundle_dir, manifest, check_files=True)
    return atomic_write_json(bundle_dir / MANIFEST, manifest)


def read_bundle(bundle_dir: str | os.PathLike) -> Bundle:
    bundle_dir = Path(bundle_dir)
    mpath = bundle_dir / MANIFEST
    if not mpath.is_file():
        raise BundleError(
            f"no model bundle at {bundle_dir} (no {MANIFEST}); make one with `python -m export CKPT --out {bundle_dir}`"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); re-run the export") from e
    _validate(bundle_dir, manifest, check_files=True)
    return Bundle(bundle_dir, manifest)


def _validate(bundle_dir: Path, m: dict, check_files: bool) -> None:
    if m.get("format") != FORMAT:
        raise BundleError(f"{bundle_dir}: manifest format {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{bundle_dir}: bundle format version {m.get('format_version')!r}, this runtime reads "
            f"{FORMAT_VERSION}; re-export with this version"
        )
    for key in ("model_name", "embedding_dim", "model_fingerprint", "preprocess", "files"):
        if key not in m:
            raise BundleError(f"{bundle_dir}: manifest lacks {key!r}")
    Preprocess.from_dict(m["preprocess"])
    for f in m["files"]:
        if f.get("kind") not in KINDS or f.get("precision") not in PRECISIONS:
            raise BundleError(f"{bundle_dir}: file entry {f!r} needs kind in {KINDS} and precision in {PRECISIONS}")
        if check_files and not (bundle_dir / f["path"]).is_file():
            raise BundleError(f"{bundle_dir}: manifest lists {f['path']} but the file is missing; copy the bundle "
                              "again or re-export it")


def calibration_line(manifest: dict | None, bundle_dir, db_dir) -> str:
    """The start-up line saying what the bundle's likelihood and reported accuracy were calibrated on. A
    bundle without them also logs a warning naming the command that calibrates it, at every start: its
    trust and its reported radius then rest on values fitted for another model."""
    lik = (manifest or {}).get("likelihood") or {}
    on = lik.get("fitted_on") or {}
    if lik and lik.get("fix_accuracy"):
        own = " (the map itself: optimistic; --likelihood-tif OTHER_YEAR.tif)" if on.get("source") == "map" else ""
        return (f"calibration: likelihood and reported accuracy fitted on {', '.join(on.get('rasters', [])) or '?'}"
                f"{own} over {on.get('database', '?')} ({on.get('frames', '?')} frames, {on.get('engine', '?')})")
    what = "likelihood and reported accuracy" if not lik else "reported accuracy"
    logger.warning("UNCALIBRATED bundle %s: its %s were not calibrated for this model (values fitted for another "
                   "model stand in: trust and the reported radius may be wrong); calibrate it: `python -m export "
                   "--bundle %s --db-out %s --likelihood-tif OTHER_YEAR.tif`", bundle_dir, what, bundle_dir, db_dir)
    return f"calibration: NONE ({what} not calibrated for this model)"
