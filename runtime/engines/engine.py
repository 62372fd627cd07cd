"""Embedding engines behind one small interface: ONNX Runtime here, native TensorRT in trt_engine.py.

``load_engine(bundle_dir)`` reads the bundle manifest, picks a model file and a backend, and returns an
:class:`Engine`. Every engine takes RGB uint8 images and returns L2-normalised float32 embeddings::

    engine = load_engine("bundle/")                 # logs e.g. "onnxruntime[CPUExecutionProvider] fp32"
    emb = engine.embed([frame_rgb])                 # (1, D) float32, the latency path
    x = engine.prepare(frames); emb = engine.embed_prepared(x)   # split, to time the two stages
    for emb in engine.embed_batches(many_frames, batch_size=32): ...   # the batched path (replay)

The model's input is what the manifest's ``input`` says: float32 NCHW (``Preprocess.batch``) or uint8
NHWC (``Preprocess.resize`` stacked; scaling happens in the graph). No torch here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from runtime.engines.base import Engine, EngineError
from runtime.engines.bundle import PRECISIONS, Bundle, BundleError, read_bundle

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
# ONNX Runtime execution providers we know how to use, best first.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeEngine(Engine):
    """An ONNX model file of the bundle through ONNX Runtime, on the best provider the build offers."""

    def __init__(self, bundle: Bundle, entry: dict, providers: list | None = None, threads: int | None = None,
                 spin: bool = True):
        super().__init__(bundle, entry["precision"])
        import onnxruntime as ort  # local: the TensorRT-only Jetson install may lack it

        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in PREFERRED_PROVIDERS if p in available]
        else:
            names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
            missing = [p for p in names if p not in available]
            if missing:
                raise EngineError(
                    f"ONNX Runtime providers {missing} are not in this build (it offers {available}); "
                    "install onnxruntime-gpu for CUDA/TensorRT, or drop --providers"
                )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        if not spin:  # idle intra-op threads sleep instead of spinning: leaves the CPU to capture and search
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = bundle.file_path(entry)
        self.session = ort.InferenceSession(os.fspath(self.path), sess_options=opts, providers=list(providers))
        used = self.session.get_providers()
        inputs = [i.name for i in self.session.get_inputs()]
        if self.input_name not in inputs:
            raise EngineError(
                f"{self.path} has inputs {inputs}, the manifest says {self.input_name!r}; re-export the bundle"
            )
        self.output_name = bundle.manifest.get("output", {}).get("name", "embedding")
        outputs = [o.name for o in self.session.get_outputs()]
        if self.output_name not in outputs:
            raise EngineError(
                f"{self.path} has outputs {outputs}, the manifest says {self.output_name!r}; re-export the bundle"
            )
        self.providers = used
        self.name = f"onnxruntime[{','.join(used)}] {self.precision}"
        logger.info("engine %s from %s (providers available in this build: %s)", self.name, self.path, available)

    def _run(self, x: np.ndarray) -> np.ndarray:
        want = np.uint8 if self.input_dtype == "uint8" else np.float32
        if x.dtype != want:
            raise EngineError(f"{self.name} takes {np.dtype(want).name} input, got {x.dtype}; use engine.prepare()")
        return self.session.run([self.output_name], {self.input_name: x})[0]


def _pick_entry(bundle: Bundle, kind: str, precision: str, gpu: bool) -> dict:
    """The bundle file of ``kind`` for ``precision``; 'auto' prefers fp16 on a GPU, fp32 on the CPU."""
    available = [f["precision"] for f in bundle.files if f["kind"] == kind]
    if precision == "auto":
        order = ("fp16", "int8", "fp32") if gpu else ("fp32", "int8", "fp16")
        for p in order:
            if p in available:
                return bundle.find(kind, p)
        raise BundleError(f"{bundle.path}: no {kind} model file in the bundle; re-export it")
    entry = bundle.find(kind, precision)
    if entry is None:
        raise BundleError(
            f"{bundle.path}: no {kind} model at precision {precision!r} (the bundle has {available or 'none'}); "
            f"pick one of those with --precision, or export {precision} with `python -m export`"
        )
    return entry


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def load_engine(
    bundle_dir: str | os.PathLike,
    precision: str = "auto",
    backend: str = "auto",
    providers: list | None = None,
    threads: int | None = None,
    spin: bool = True,
) -> Engine:
    """Build the engine a bundle describes.

    ``backend`` 'auto' uses the bundle's TensorRT plan when one is present and ``tensorrt`` imports,
    else ONNX Runtime. ``precision`` 'auto' takes fp16 on a GPU, fp32 on the CPU; an explicit precision
    the bundle lacks is an error (never a silent fallback). ``providers`` is passed to ONNX Runtime
    (default: the best of TensorRT, CUDA, CPU that the installed build offers). ``threads`` and ``spin``
    tune ONNX Runtime's CPU thread pool (spin False: idle threads sleep, better inside the service's
    pipeline on few cores).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not 'auto' or one of {PRECISIONS}")
    bundle = read_bundle(Path(bundle_dir))
    has_plan = bundle.find("tensorrt") is not None
    if backend == "auto":
        backend = "tensorrt" if has_plan and tensorrt_available() else "onnxruntime"
        if has_plan and backend == "onnxruntime":
            logger.info("bundle has a TensorRT plan but the tensorrt module is not installed: using ONNX Runtime")
    if backend == "tensorrt":
        from runtime.engines.tensorrt_engine import TRT_MISSING, TensorRTEngine

        build = f"build one on this device: `python -m export --bundle {bundle.path} --trt --precision fp16`"
        if not tensorrt_available():
            raise EngineError(f"{TRT_MISSING}" + ("" if has_plan else f"; {bundle.path} has no engine yet: {build}"))
        if not has_plan:
            raise BundleError(f"{bundle.path} has no TensorRT engine (model.<gpu>.<precision>.plan): {build}")
        return TensorRTEngine(bundle, _pick_entry(bundle, "tensorrt", precision, gpu=True))
    gpu = False
    if providers is None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineError(
                "onnxruntime is not installed: `pip install onnxruntime` (CPU) or onnxruntime-gpu, "
                "or use a bundle with a TensorRT plan and --backend tensorrt"
            ) from e
        gpu = any(p in ort.get_available_providers() for p in PREFERRED_PROVIDERS[:2])
    else:
        gpu = any((p[0] if isinstance(p, (tuple, list)) else p) in PREFERRED_PROVIDERS[:2] for p in providers)
    return OnnxRuntimeEngine(bundle, _pick_entry(bundle, "onnx", precision, gpu), providers, threads, spin)


def check_engine_database(engine: Engine, db) -> None:
    """Refuse a tile database built for another model (raises DatabaseMismatchError naming the fields)."""
    db.check_compatible(
        model_fingerprint=engine.model_fingerprint,
        preprocess=engine.preprocess.to_dict(),
        embedding_dim=engine.embedding_dim,
    )
