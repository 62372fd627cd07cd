"""From a trained checkpoint to what flies: ONNX (+FP16/INT8), TensorRT engines and the tile database.

Public functions (imported lazily, so `python -m export --bundle B --trt` on a Jetson needs no torch):

- :func:`export_bundle` (``export.bundle_export``): checkpoint -> model bundle folder;
- :func:`build_tile_database` / :func:`build_gallery_database` (``export.tiledb_build``);
- :func:`build_bundle_engine` (``export.trt_build``): the TensorRT engine, on the target.
"""

from __future__ import annotations

_LAZY = {
    "export_bundle": "bundle_export",
    "build_tile_database": "tiledb_build",
    "build_gallery_database": "tiledb_build",
    "build_bundle_engine": "trt_build",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
