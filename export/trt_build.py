"""TensorRT engine build from the bundle's ONNX, one code path for TensorRT 8.5, 10.x and 11.x.

Run it on the target (Jetson or desktop GPU): an engine is tied to the TensorRT version and the GPU.
What differs between versions (REFERENCE.md §5) and how this builder handles it:

======================  ==================  =======================  ================================
                        8.5 (desktop) [1]   10.x (JetPack 6)         11.x (JetPack >= 7.2.2)
======================  ==================  =======================  ================================
network flags           EXPLICIT_BATCH      0 (explicit by default)  0 (EXPLICIT_BATCH is gone)
FP16 engine             FP32 ONNX + FP16    FP32 ONNX + FP16 flag    ``model.fp16.onnx``, no flag
INT8 engine             Q/DQ ONNX + INT8    Q/DQ ONNX + INT8 (+FP16) Q/DQ ONNX, no flag
calibrator              none (Q/DQ ONNX)    none (deprecated)        none (removed)
======================  ==================  =======================  ================================

After every build the engine is deserialised and its layer formats are read with the engine inspector
(``ProfilingVerbosity.DETAILED``): an FP16 request that produced no FP16 layer, or an INT8 request without
INT8 layers, raises :class:`PrecisionError` instead of shipping a silent FP32 engine.

[1] JetPack 5.1 also has TensorRT 8.5, but its Python 3.8 is older than this package needs (3.10+).

The timing cache is named by TensorRT version and GPU (``timing-trt10.3.0-jetson-agx-orin.cache``): TensorRT
refuses a cache made on another device (``set_timing_cache`` returns False), so a desktop's cache copied
with the bundle is not used on the Jetson; a refused cache is logged and replaced by an empty one. It is
loaded before and saved back (atomically) after each build, so rebuilds are fast.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path

from export.onnx_export import INPUT_NAME
from tiles.io import atomic_write_bytes, file_sha256

_log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = (
    "Build TensorRT engines on the machine that will run them: a Jetson with JetPack 6.x (TensorRT 10.3, "
    "Python 3.10) or JetPack >= 7.2.2 (TensorRT 11), where `sudo apt install python3-libnvinfer` provides "
    "`import tensorrt` (use a venv with --system-site-packages), or a desktop NVIDIA GPU with TensorRT from "
    "NVIDIA's index (`pip install --extra-index-url https://pypi.nvidia.com tensorrt`). JetPack 5.1's "
    "Python 3.8 is too old for this package (3.10+). Copy the bundle there and run "
    "`python -m export --bundle BUNDLE --trt --precision fp16`."
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU) is not available on this machine."""


class EngineBuildError(RuntimeError):
    """The ONNX could not be parsed or the engine could not be built."""


class PrecisionError(EngineBuildError):
    """The engine's layers do not run at the precision that was asked for."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed here (import tensorrt: {e}). {INSTALL_HINT}") from e
    return trt


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError) as e:
        raise TensorRTUnavailable(f"cannot read the TensorRT version ({e}); is `tensorrt` a real install?") from e


def onnx_for_precision(bundle_dir: str | os.PathLike, precision: str, major: int) -> Path:
    """The ONNX file to build from: TensorRT 11 takes its precision from the graph, older ones from flags."""
    bundle_dir = Path(bundle_dir)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "int8":
        name, how = "model.int8.onnx", "export with --int8 --calib DIR (or --calib-tif MAP.tif) first"
    elif precision == "fp16" and major >= 11:
        name, how = "model.fp16.onnx", "TensorRT 11 has no FP16 flag: export with --fp16 to get the FP16 ONNX"
    else:
        name, how = "model.onnx", "export the checkpoint first: python -m export CKPT --out BUNDLE"
    path = bundle_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing for a TensorRT {major}.x {precision} engine: {how}")
    return path


def gpu_name() -> str:
    """Name of GPU 0 (cuda-python, else nvidia-smi, else the Jetson device tree), or 'unknown-gpu'."""
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name
            return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()
    except Exception:  # noqa: BLE001 - any failure means "try the next source"
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip().splitlines()
        if out:
            return out[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    model = Path("/proc/device-tree/model")
    if model.is_file():
        return model.read_text(errors="ignore").rstrip("\x00").strip()
    return "unknown-gpu"


def gpu_slug(name: str) -> str:
    """'NVIDIA Jetson AGX Orin' -> 'jetson-agx-orin' (for file names)."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return s or "gpu"


def timing_cache_name(trt_version: str, gpu: str) -> str:
    """'timing-trt10.3.0-jetson-agx-orin.cache': a cache is valid for one TensorRT version on one GPU."""
    return f"timing-trt{trt_version}-{gpu_slug(gpu)}.cache"


def _attach_timing_cache(config, cache_path: Path | None) -> bytes | None:
    """Load ``cache_path`` (if any) into ``config``; the bytes TensorRT accepted (b"": a new cache), or None
    when no cache could be attached (then none is saved).

    ``IBuilderConfig::setTimingCache`` returns False for a cache made on another device (different CUDA
    device properties) or TensorRT version; then the build starts from an empty cache, which is saved over
    the refused file afterwards.
    """
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    if cache_bytes:
        cache = config.create_timing_cache(cache_bytes)
        if cache is not None and config.set_timing_cache(cache, False):
            return cache_bytes
        _log.warning("TensorRT refused the timing cache %s (made on another GPU or TensorRT version?): "
                     "building with an empty one, which will replace it", cache_path)
    if config.set_timing_cache(config.create_timing_cache(b""), False):
        return b""
    _log.warning("TensorRT refused an empty timing cache: building without one")
    return None


_DTYPE_RE = re.compile(r"\b(fp32|float|fp16|half|int8|bf16|fp8)\b", re.IGNORECASE)
_DTYPE_NAMES = {"fp32": "fp32", "float": "fp32", "fp16": "fp16", "half": "fp16", "int8": "int8",
                "bf16": "bf16", "fp8": "fp8"}


def layer_precisions(info_json: str) -> dict[str, int]:
    """Count of layer outputs per data type, from the engine inspector's JSON (DETAILED verbosity)."""
    info = json.loads(info_json)
    counts: dict[str, int] = {}
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        for out in layer.get("Outputs", []):
            fmt = str(out.get("Format/Datatype", ""))
            m = _DTYPE_RE.search(fmt)
            if m:
                key = _DTYPE_NAMES[m.group(1).lower()]
                counts[key] = counts.get(key, 0) + 1
    return counts


def check_precision(requested: str, counts: dict[str, int]) -> None:
    if not counts:
        raise PrecisionError("the engine inspector reported no layer formats; cannot verify the precision "
                             "(needs ProfilingVerbosity.DETAILED, TensorRT >= 8.2)")
    want = {"fp16": "fp16", "int8": "int8"}.get(requested)
    if want and counts.get(want, 0) == 0:
        raise PrecisionError(
            f"asked for a {requested} engine but every layer runs at {sorted(counts)} ({counts}): TensorRT "
            f"fell back to FP32. On TensorRT 11 precision comes from the ONNX (use model.{requested}.onnx); "
            "on older versions check that the GPU supports fast FP16/INT8"
        )


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, *, precision: str,
                 input_chw: tuple[int, int, int], input_dtype: str = "float32", batch: tuple[int, int, int] = (1, 1, 8),
                 workspace_mib: int = 1024, timing_cache: str | os.PathLike | None = None, trt=None,
                 gpu: str | None = None) -> dict:
    """Build ``plan_path`` from ``onnx_path``; return the bundle manifest entry for the engine.

    ``input_chw`` is the graph input without the batch axis in its own layout ((3, H, W) for float NCHW,
    (H, W, 3) for uint8 NHWC); ``batch`` is the (min, opt, max) of the dynamic batch profile.
    ``trt`` lets tests inject a module; by default ``import tensorrt``. ``gpu`` is the GPU name recorded in
    the manifest (default: :func:`gpu_name`).
    """
    trt = trt or import_tensorrt()
    major = trt_major(trt)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    bmin, bopt, bmax = batch
    if not 1 <= bmin <= bopt <= bmax:
        raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {batch}")
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)

    flags = 0
    if major < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if major < 11:
        if precision in ("fp16", "int8"):
            if precision == "fp16" and not builder.platform_has_fast_fp16:
                raise PrecisionError(f"this GPU has no fast FP16 (TensorRT {trt.__version__}); build fp32 instead")
            config.set_flag(trt.BuilderFlag.FP16)  # int8 too: layers left unquantised run in FP16, not FP32
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantisation: scales come from the Q/DQ nodes
    # TensorRT 11: strongly typed; the FP16/Q/DQ ONNX already fixes every tensor's type.

    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (bmin, *input_chw), (bopt, *input_chw), (bmax, *input_chw))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = _attach_timing_cache(config, cache_path)
    if cache_bytes is None:
        cache_path = None

    _log.info("building TensorRT %s %s engine from %s (batch %s, workspace %d MiB, timing cache %s)",
              trt.__version__, precision, onnx_path.name, batch, workspace_mib,
              f"{len(cache_bytes)} B" if cache_bytes else "new")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build {onnx_path} at {precision}; "
                               "see the TensorRT log above (workspace too small? unsupported layer?)")
    plan = bytes(plan)
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("the freshly built engine does not deserialise; is the GPU visible (CUDA error 35)?")
    inspector = engine.create_engine_inspector()
    counts = layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    check_precision(precision, counts)
    atomic_write_bytes(plan_path, plan)
    gpu = gpu or gpu_name()
    _log.info("wrote %s (%d bytes, layer outputs %s)", plan_path, len(plan), counts)
    return {"path": plan_path.name, "kind": "tensorrt", "precision": precision, "sha256": file_sha256(plan_path),
            "trt_version": str(trt.__version__), "gpu": gpu,
            "source_onnx": {"path": onnx_path.name, "sha256": file_sha256(onnx_path)},
            "input_shape": {"min": [bmin, *input_chw], "opt": [bopt, *input_chw], "max": [bmax, *input_chw]},
            "input_dtype": input_dtype, "workspace_mib": int(workspace_mib), "layer_precisions": counts,
            "strongly_typed": major >= 11}


def build_bundle_engine(bundle_dir: str | os.PathLike, precision: str = "fp16", *, batch=(1, 1, 8),
                        workspace_mib: int = 1024, timing_cache: str | os.PathLike | None = None, trt=None) -> dict:
    """Build the engine for a bundle, add it to the bundle's manifest, return the entry."""
    from runtime.engines.bundle import read_bundle, write_manifest

    trt = trt or import_tensorrt()
    major = trt_major(trt)
    bundle = read_bundle(bundle_dir)
    onnx_path = onnx_for_precision(bundle.path, precision, major)
    h, w = bundle.preprocess.input_size
    uint8 = bundle.input.get("dtype") == "uint8"
    chw = (h, w, 3) if uint8 else (3, h, w)
    gpu = gpu_name()
    plan_path = bundle.path / f"model.{gpu_slug(gpu)}.{precision}.plan"
    cache = timing_cache or bundle.path / timing_cache_name(trt.__version__, gpu)
    entry = build_engine(onnx_path, plan_path, precision=precision, input_chw=chw,
                         input_dtype="uint8" if uint8 else "float32", batch=batch,
                         workspace_mib=workspace_mib, timing_cache=cache, trt=trt, gpu=gpu)
    entry["timing_cache"] = Path(cache).name
    manifest = dict(bundle.manifest)
    manifest["files"] = [f for f in manifest["files"] if f["path"] != entry["path"]] + [entry]
    write_manifest(bundle.path, manifest)
    return entry
