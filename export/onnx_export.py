"""ONNX export of the drone branch, checked by `onnx.checker` and by parity with torch on real images.

The exported graph has one input ``image`` and one output ``embedding`` (L2-normalised rows), a dynamic
batch axis, opset 17. Two input formats (the bundle manifest's ``input`` field tells the runtime which):

- ``"float32"``: NCHW float, the output of :meth:`Preprocess.batch` (the default: see
  docs/results/export.md for the measurement that chose it);
- ``"uint8"``: NHWC uint8, the output of :meth:`Preprocess.resize` stacked; scaling, normalisation and
  the layout change happen inside the graph, so the onboard CPU only resizes.

Exporter choice (measured with torch 2.14.1): the default dynamo exporter emits opset 18 and its
down-conversion to 17 fails on ``ReduceMean`` axes ("No initializer or constant input"), and takes about
8 s for a toy model; the TorchScript exporter (``dynamo=False``) writes a clean opset-17 graph in 0.4 s.
We use ``dynamo=False`` and silence its deprecation warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from runtime.engines.preprocess import Preprocess
from tiles.io import atomic_path

_log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
OPSET = 17
INPUT_FORMATS = ("float32", "uint8")
#: max |ONNX - torch| allowed on L2-normalised FP32 embeddings (measured ~1e-6 on CPU).
PARITY_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """The export produced a model that fails a check (parity, checker, precision)."""


def input_spec(input_format: str) -> dict:
    """The bundle manifest's ``input`` record for an input format."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format {input_format!r} is not one of {INPUT_FORMATS}")
    if input_format == "uint8":
        return {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC"}
    return {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW"}


def prepare(images, preprocess: Preprocess, input_format: str) -> np.ndarray:
    """RGB uint8 images -> the array the exported graph takes (the runtime does the same)."""
    if input_format == "uint8":
        h, w = preprocess.input_size
        if not len(images):
            return np.zeros((0, h, w, 3), np.uint8)
        return np.stack([preprocess.resize(im) for im in images])
    return preprocess.batch(images)


def _embedder(backbone, preprocess: Preprocess, input_format: str):
    import torch
    import torch.nn.functional as F

    class Embedder(torch.nn.Module):
        """backbone features -> L2-normalised embedding; with uint8 input, normalisation in the graph."""

        def __init__(self):
            super().__init__()
            self.backbone = backbone
            mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
            inv_std = 1.0 / (torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("mean255", mean, persistent=False)
            self.register_buffer("inv_std255", inv_std, persistent=False)
            self.uint8 = input_format == "uint8"

        def forward(self, x):
            if self.uint8:
                x = (x.permute(0, 3, 1, 2).to(torch.float32) - self.mean255) * self.inv_std255
            return F.normalize(self.backbone(x), dim=-1)

    return Embedder().eval()


def backbone_of(model):
    """The drone branch's backbone: ``GeoModel.model`` (shared weights, Sample4Geo) or the module itself."""
    return getattr(model, "model", model)


def export_onnx(model, preprocess: Preprocess, out_path: str | os.PathLike, *, input_format: str = "float32",
                opset: int = OPSET) -> Path:
    """Export ``model`` (a GeoModel or a bare timm backbone) to ``out_path`` atomically; run the checker."""
    import onnx
    import torch

    if opset < 17:
        raise ValueError(f"opset {opset} is too old: LayerNormalization and friends need >= 17")
    input_spec(input_format)
    net = _embedder(backbone_of(model), preprocess, input_format)
    h, w = preprocess.input_size
    dummy = (torch.zeros(2, h, w, 3, dtype=torch.uint8) if input_format == "uint8"
             else torch.zeros(2, 3, h, w, dtype=torch.float32))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(
            net, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamo=False, do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        proto = onnx.load(str(tmp))
        if _fold_identity_initializers(proto):
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(proto, full_check=True)
    _log.info("exported %s (opset %d, input %s)", out_path, opset, input_format)
    return out_path


def _fold_identity_initializers(proto) -> int:
    """Replace ``Identity(initializer)`` nodes (the TorchScript exporter's shared weights) by initializers.

    Quantisers and TensorRT expect Conv weights and biases to be initializers; returns the count folded.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    graph_outputs = {o.name for o in proto.graph.output}
    folded = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in graph_outputs:
            t = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0])
            proto.graph.initializer.append(t)
            folded.append(node)
    for node in folded:
        proto.graph.node.remove(node)
    used = {i for n in proto.graph.node for i in n.input} | graph_outputs
    for t in [t for t in proto.graph.initializer if t.name not in used]:
        proto.graph.initializer.remove(t)
    return len(folded)


def torch_embed(model, preprocess: Preprocess, images, batch_size: int = 32) -> np.ndarray:
    """Reference embeddings from torch (float NCHW path), L2-normalised."""
    import torch

    net = _embedder(backbone_of(model), preprocess, "float32")
    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(preprocess.batch(images[i:i + batch_size]))
            outs.append(net(x).numpy())
    return np.concatenate(outs).astype(np.float32)


def ort_session(onnx_path: str | os.PathLike, threads: int | None = None, fuse: bool = True):
    """A CPU session; ``fuse=False`` disables graph optimisations, so a Q/DQ graph runs as written
    (dequantise, then float ops): the reference semantics TensorRT implements, free of CPU kernel quirks."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not fuse:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def ort_embed(session, preprocess: Preprocess, input_format: str, images, batch_size: int = 32,
              bar=None) -> np.ndarray:
    """Embeddings of ``images`` by an ONNX Runtime session; ``bar`` (:func:`common.progress.progress_bar`) is
    advanced by each batch's images."""
    outs = []
    for i in range(0, len(images), batch_size):
        x = prepare(images[i:i + batch_size], preprocess, input_format)
        outs.append(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])
        if bar is not None:
            bar.update(len(x))
    return np.concatenate(outs).astype(np.float32)


def check_parity(model, preprocess: Preprocess, onnx_path: str | os.PathLike, images, *,
                 input_format: str = "float32", tolerance: float = PARITY_TOLERANCE) -> dict:
    """Compare ONNX Runtime with torch on ``images``; raise :class:`ExportError` above ``tolerance``.

    Also checks the ONNX output is L2-normalised. Returns the measured figures for the manifest.
    """
    if not len(images):
        raise ValueError("parity check needs at least one image")
    ref = torch_embed(model, preprocess, images)
    got = ort_embed(ort_session(onnx_path), preprocess, input_format, images)
    max_abs = float(np.max(np.abs(ref - got)))
    min_cos = float(np.min(np.sum(ref * got, axis=1)))
    norm_err = float(np.max(np.abs(np.linalg.norm(got, axis=1) - 1.0)))
    result = {"n_images": len(images), "max_abs_diff": max_abs, "min_cosine": min_cos,
              "max_norm_error": norm_err, "tolerance": tolerance}
    _log.info("parity torch vs ONNX on %d images: max |diff| %.2e, min cosine %.6f", len(images), max_abs, min_cos)
    if not np.isfinite(max_abs) or max_abs > tolerance or norm_err > 1e-3:
        raise ExportError(
            f"ONNX output differs from torch by {max_abs:.3g} (tolerance {tolerance:g}; output norm error "
            f"{norm_err:.3g}) on {len(images)} images: the export is not faithful; check for ops the "
            "exporter handles differently (dynamic shapes, custom layers) before using this model"
        )
    return result
