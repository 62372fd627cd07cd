"""The engine interface every backend implements: preprocessing per the manifest, L2-normalised output.

Backends: :mod:`runtime.engines.engine` (ONNX Runtime, and :func:`~runtime.engines.engine.load_engine`,
which picks one) and :mod:`runtime.engines.tensorrt_engine` (native TensorRT).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from common.cli import UserError
from runtime.engines.bundle import Bundle, BundleError
from runtime.engines.preprocess import Preprocess


class EngineError(UserError, RuntimeError):
    """An engine that cannot be built or run (missing backend, wrong precision, bad output)."""


class Engine:
    """Base class: preprocessing per the manifest, L2 normalisation of the output.

    Subclasses implement :meth:`_run` (prepared batch -> raw float output (N, D)) and may set
    ``max_batch`` (None: any batch size).
    """

    name: str = "engine"
    max_batch: int | None = None

    def __init__(self, bundle: Bundle, precision: str):
        self.bundle = bundle
        self.precision = precision
        self.preprocess: Preprocess = bundle.preprocess
        self.embedding_dim: int = bundle.embedding_dim
        self.model_fingerprint: str = bundle.model_fingerprint
        spec = bundle.input
        self.input_name: str = spec.get("name", "image")
        self.input_dtype: str = spec.get("dtype", "float32")
        self.input_layout: str = spec.get("layout", "NCHW")
        if (self.input_dtype, self.input_layout) not in (("float32", "NCHW"), ("uint8", "NHWC")):
            raise BundleError(
                f"{bundle.path}: input dtype/layout {self.input_dtype}/{self.input_layout} is not supported; "
                "the runtime reads float32/NCHW or uint8/NHWC (re-export the bundle)"
            )

    # ---- the interface (CONTRACTS.md §7) ------------------------------------------------------
    def prepare(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """RGB uint8 images -> this engine's input array (float32 NCHW or uint8 NHWC)."""
        images = list(images)
        if self.input_dtype == "uint8":
            h, w = self.preprocess.input_size
            if not images:
                return np.zeros((0, h, w, 3), np.uint8)
            return np.ascontiguousarray(np.stack([self.preprocess.resize(im) for im in images]))
        return self.preprocess.batch(images)

    def embed_prepared(self, x: np.ndarray) -> np.ndarray:
        """The engine's input array -> float32 (N, D) L2-normalised; splits batches above ``max_batch``."""
        if len(x) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        if self.max_batch and len(x) > self.max_batch:
            return np.concatenate(
                [self.embed_prepared(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
            )
        out = np.asarray(self._run(x), dtype=np.float32).reshape(len(x), -1)
        if out.shape[1] != self.embedding_dim:
            raise EngineError(
                f"{self.name} returned embeddings of size {out.shape[1]}, the manifest says "
                f"{self.embedding_dim}; the bundle is inconsistent, re-export it"
            )
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def embed(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """RGB uint8 images -> float32 (N, D) L2-normalised."""
        return self.embed_prepared(self.prepare(images))

    def embed_batches(self, images: Iterable[np.ndarray], batch_size: int = 32) -> Iterator[np.ndarray]:
        """The batched path: yield (<=batch_size, D) embeddings for a long stream of images."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        buf = []
        for im in images:
            buf.append(im)
            if len(buf) == batch_size:
                yield self.embed(buf)
                buf = []
        if buf:
            yield self.embed(buf)

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release device resources (no-op for ONNX Runtime)."""

    def describe(self) -> dict:
        return {
            "name": self.name,
            "precision": self.precision,
            "embedding_dim": self.embedding_dim,
            "model_fingerprint": self.model_fingerprint,
            "input": {"name": self.input_name, "dtype": self.input_dtype, "layout": self.input_layout,
                      "size": list(self.preprocess.input_size)},
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
