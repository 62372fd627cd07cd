"""The compact descriptor: a PCA-whitening projection fitted at export and appended to the ONNX graph.

Fitted on embeddings of drone views rendered from the training years and of map tiles (never on the
held-out years), the projection maps the network's ``D``-d embedding ``e`` to

    c = normalise((e - mean) @ matrix),   matrix = U[:, :d] / sqrt(lambda[:d] + shrink * mean(lambda[:d]))

(``U``, ``lambda``: eigenvectors/values of the embeddings' covariance; ``shrink`` regularises the weakest
kept directions; ``whiten=False`` keeps plain PCA). The graph gains ``MatMul -> Add -> ReduceL2 -> Max ->
Div`` after the old output (nodes named ``/head/projection/*``: the INT8 quantiser leaves the head in float),
so every engine built from the bundle (ONNX Runtime, FP16, INT8, TensorRT)
emits the compact, L2-normalised descriptor; the manifest records the projection (its sha256 enters the
model fingerprint, so a database of another projection is refused). docs/results/search.md has the
measurement that chose the default size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from tiles.io import atomic_path

_log = logging.getLogger(__name__)

DEFAULT_DIM = 256
DEFAULT_SHRINK = 1.0  # measured: docs/results/search.md (0.1 and plain PCA retrieve worse)
PROJECTION_FILE = "projection.npz"


def fit_projection(x: np.ndarray, dim: int, *, whiten: bool = True, shrink: float = DEFAULT_SHRINK) -> dict:
    """Fit on ``x`` (N, D) embeddings; returns ``{"mean" (D,), "matrix" (D, dim), "eigenvalues" (dim,)}``."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if not 1 <= dim <= d:
        raise ValueError(f"descriptor dim {dim} must be in 1..{d} (the network's embedding size)")
    if n < 2 * dim:
        raise ValueError(f"{n} fitting samples for {dim} dimensions: give at least {2 * dim} (--projection-n)")
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    lam, u = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1][:dim]
    lam, u = np.maximum(lam[order], 0.0), u[:, order]
    u *= np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(dim)])  # deterministic signs
    matrix = u / np.sqrt(lam + shrink * lam.mean())[None, :] if whiten else u
    return {"mean": mean.astype(np.float32), "matrix": matrix.astype(np.float32),
            "eigenvalues": lam.astype(np.float32), "whiten": bool(whiten), "shrink": float(shrink)}


def project(x: np.ndarray, proj: dict) -> np.ndarray:
    """What the appended graph computes, in numpy: (N, D) -> (N, dim) L2-normalised float32."""
    c = (np.asarray(x, np.float32) - proj["mean"]) @ proj["matrix"]
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def projection_sha256(proj: dict) -> str:
    h = hashlib.sha256()
    for key in ("mean", "matrix"):
        h.update(np.ascontiguousarray(proj[key], np.float32).tobytes())
    return h.hexdigest()


def save_projection(path: str | os.PathLike, proj: dict) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mean=proj["mean"], matrix=proj["matrix"], eigenvalues=proj["eigenvalues"])
    return Path(path)


def append_projection(onnx_path: str | os.PathLike, proj: dict, output_name: str = "embedding") -> Path:
    """Rewrite ``onnx_path`` in place (atomically) so its output ``output_name`` is the compact descriptor."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    outs = [o for o in g.output if o.name == output_name]
    if len(outs) != 1:
        raise ValueError(f"{onnx_path} has no single output named {output_name!r}")
    full = f"{output_name}_full"
    for node in g.node:
        node.output[:] = [full if o == output_name else o for o in node.output]
        node.input[:] = [full if i == output_name else i for i in node.input]
    mean, mat = proj["mean"].astype(np.float32), proj["matrix"].astype(np.float32)
    d = mat.shape[1]
    g.initializer.extend([numpy_helper.from_array(mat, "proj_matrix"),
                          numpy_helper.from_array(-(mean @ mat).astype(np.float32), "proj_bias"),
                          numpy_helper.from_array(np.array(1e-12, np.float32), "proj_eps")])
    g.node.extend([
        helper.make_node("MatMul", [full, "proj_matrix"], ["proj_mm"], name="/head/projection/MatMul"),
        helper.make_node("Add", ["proj_mm", "proj_bias"], ["proj_c"], name="/head/projection/Add"),
        helper.make_node("ReduceL2", ["proj_c"], ["proj_norm"], axes=[1], keepdims=1, name="/head/projection/ReduceL2"),
        helper.make_node("Max", ["proj_norm", "proj_eps"], ["proj_safe"], name="/head/projection/Max"),
        helper.make_node("Div", ["proj_c", "proj_safe"], [output_name], name="/head/projection/Div"),
    ])
    batch = outs[0].type.tensor_type.shape.dim[0]
    new_out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch.dim_param or "batch", d])
    g.output.remove(outs[0])
    g.output.append(new_out)
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(onnx_path) as tmp:
        onnx.save(model, str(tmp))
    return Path(onnx_path)


def fit_images(view_tifs=(), map_tifs=(), n: int = 2000, altitudes_m=(150, 200, 250, 300), hfov_deg: float = 60.0,
               size_px: int = 256, compass_error_deg: float = 3.0, seed: int = 0, bar=None) -> list[np.ndarray]:
    """Images to fit on: north-up drone views of ``view_tifs`` (training years; as the runtime turns its
    frames, with a compass error) and map tiles of ``map_tifs`` at the altitudes' footprints, half each.
    ``bar`` (:func:`common.progress.progress_bar`) is advanced by each image."""
    from common.progress import counted
    from runtime.engines.preprocess import north_up
    from tiles.grid import footprint_m, read_tile, tile_grid
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    if not view_tifs and not map_tifs:
        raise ValueError("fitting the projection needs images: --projection-tifs TRAIN_YEAR.tif ... (and/or --tiles)")
    rng = np.random.default_rng(seed)
    n_views = n if not map_tifs else (n // 2 if view_tifs else 0)
    images = []
    for i, tif in enumerate(view_tifs):
        with open_raster(tif) as r:
            xmin, ymin, xmax, ymax = r.bounds_m
            for _ in counted(range(n_views // len(view_tifs) + (i < n_views % len(view_tifs))), bar):
                alt = float(rng.choice(np.asarray(altitudes_m, float)))
                pad = min(alt * np.tan(np.radians(hfov_deg) / 2) * 1.5, (xmax - xmin) / 2 - 1, (ymax - ymin) / 2 - 1)
                heading = float(rng.uniform(0, 360))
                pose = CameraPose(float(rng.uniform(xmin + pad, xmax - pad)), float(rng.uniform(ymin + pad, ymax - pad)),
                                  alt, heading_deg=heading, hfov_deg=hfov_deg)
                view = render_view(r, pose, (size_px, size_px)).image
                images.append(north_up(view, heading + float(rng.normal(0.0, compass_error_deg))))
    n_tiles = n - len(images)
    for i, tif in enumerate(map_tifs):
        with open_raster(tif) as r:
            tiles = [t for alt in altitudes_m for t in tile_grid(r, footprint_m(alt, hfov_deg))]
            want = n_tiles // len(map_tifs) + (i < n_tiles % len(map_tifs))
            pick = rng.choice(len(tiles), min(want, len(tiles)), replace=False)
            images += [read_tile(r, tiles[j], size_px) for j in counted(np.sort(pick), bar)]
    return images


def fit_and_append(onnx_path, preprocess, input_format: str, dim: int, *, view_tifs=(), map_tifs=(),
                   n: int = 2000, hfov_deg: float = 60.0, whiten: bool = True, shrink: float = DEFAULT_SHRINK,
                   out_dir=None, seed: int = 0, progress: bool = True) -> dict:
    """Embed the fitting images with ``onnx_path`` (full embedding), fit, append the projection to the
    graph, check the new graph against :func:`project`, save ``projection.npz``; return the manifest record.
    ``progress``: bars ``projection: fitting images`` (rendered or read) and ``projection: embedding``."""
    from common.progress import progress_bar
    from export.onnx_export import ExportError, ort_embed, ort_session

    with progress_bar(desc="projection: fitting images", total=n, unit="image", enabled=progress) as bar:
        images = fit_images(view_tifs, map_tifs, n=n, hfov_deg=hfov_deg, seed=seed, bar=bar)
    with progress_bar(desc="projection: embedding", total=len(images), unit="image", enabled=progress) as bar:
        full = ort_embed(ort_session(onnx_path), preprocess, input_format, images, bar=bar)
    proj = fit_projection(full, dim, whiten=whiten, shrink=shrink)
    append_projection(onnx_path, proj)
    check = images[:16]
    got = ort_embed(ort_session(onnx_path), preprocess, input_format, check)
    want = project(full[:16], proj)
    err = float(np.max(np.abs(got - want)))
    if got.shape != want.shape or err > 1e-3:
        raise ExportError(f"the projected graph differs from the projection by {err:.3g} (shape {got.shape}): "
                          "the graph surgery is broken; export without --descriptor-dim and report this")
    lam_all = np.linalg.eigvalsh(np.cov(full - full.mean(0), rowvar=False))
    record = {"dim": int(dim), "input_dim": int(full.shape[1]), "kind": "pca-whitening" if whiten else "pca",
              "shrink": float(shrink), "sha256": projection_sha256(proj),
              "explained_variance": float(proj["eigenvalues"].sum() / max(lam_all.sum(), 1e-30)),
              "fit": {"n_images": len(images), "view_tifs": [Path(t).name for t in view_tifs],
                      "map_tifs": [Path(t).name for t in map_tifs], "seed": seed},
              "graph_check_max_abs_diff": err}
    if out_dir is not None:
        save_projection(Path(out_dir) / PROJECTION_FILE, proj)
        record["file"] = PROJECTION_FILE
    _log.info("projection %d -> %d (%s), %.1f%% of the variance kept, fitted on %d images", full.shape[1], dim,
              record["kind"], 100 * record["explained_variance"], len(images))
    return record


def projected_fingerprint(checkpoint_fingerprint: str, record: dict | None) -> str:
    """The model fingerprint: the checkpoint's, or with a projection a hash of both (16 hex)."""
    if not record:
        return checkpoint_fingerprint
    return hashlib.sha256(f"{checkpoint_fingerprint}:{record['sha256']}".encode()).hexdigest()[:16]
