"""FP16 and INT8 ONNX variants of an exported model, with a calibration cache that is never stale.

- FP16: ``onnxruntime.transformers.float16.convert_float_to_float16`` (ships inside the onnxruntime
  wheel, so nothing to install) with ``keep_io_types=True``: the graph still takes and returns the same
  types as the FP32 model, and precision-sensitive ops (LayerNormalization, the L2 normalisation) stay
  FP32 via the block list.
- INT8: ONNX Runtime's ``quantize_static`` in Q/DQ format, symmetric activations and weights, per-channel
  weights, only ``Conv``/``MatMul``/``Gemm`` quantised; nodes of the head (name containing ``/head``)
  and everything else (LayerNorm, pooling, the normalisation) stay float. Opset 17 is kept.
  NVIDIA ModelOpt was not used: it pulls onnxruntime-gpu, cupy and polygraphy (~2 GB) and always writes
  opset 19; the ORT quantiser gives a Q/DQ graph TensorRT 8.5-11 consume.

The calibration cache holds ORT's activation ranges. Its file name carries the sha256 of the FP32 ONNX
file, of the calibration tensor (images after preprocessing) and of the settings, so any change of model,
images, preprocessing or method selects another file: a stale cache cannot be picked up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from export.onnx_export import INPUT_NAME
from tiles.io import atomic_path, atomic_write_json, file_sha256

_log = logging.getLogger(__name__)

QUANT_OPS = ("Conv", "MatMul", "Gemm")
ENTROPY_BINS = 2048
CALIB_METHODS = ("minmax", "entropy", "percentile")
#: ops the FP16 conversion keeps in FP32 (numerically sensitive reductions and normalisations)
FP16_KEEP_FLOAT = ["LayerNormalization", "ReduceL2", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Softmax",
                   "GlobalAveragePool"]


def convert_fp16(onnx_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """FP32 ONNX -> mixed FP16 ONNX with FP32 inputs/outputs (and uint8 input untouched)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(onnx_path))
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FLOAT,
                                    disable_shape_infer=False)
    _toposort(fp16.graph)
    onnx.checker.check_model(fp16)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save(fp16, str(tmp))
    _log.info("wrote FP16 model %s", out_path)
    return out_path


def _toposort(graph) -> None:
    """Reorder nodes so every input is produced before use (the FP16 converter appends its input casts)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise RuntimeError("the converted graph has a cycle or a dangling input; cannot sort it")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def array_sha256(x: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{x.dtype}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def calibration_key(onnx_path: str | os.PathLike, calib: np.ndarray, method: str, reduce_range: bool = True,
                    per_channel: bool = True, entropy_bins: int = ENTROPY_BINS) -> dict:
    """What a calibration depends on: model bytes, calibration tensor bytes, method, quantiser version."""
    import onnxruntime

    settings = f"{method}|ops={','.join(QUANT_OPS)}|sym|clip-ranges|rr={int(reduce_range)}|ort={onnxruntime.__version__}"
    if not per_channel:  # appended only when set, so caches of the per-channel default keep their names
        settings += "|per-tensor"
    if method == "entropy":
        settings += f"|bins={entropy_bins}"
    return {"model_sha256": file_sha256(onnx_path), "data_sha256": array_sha256(calib),
            "settings_sha256": hashlib.sha256(settings.encode()).hexdigest(), "settings": settings}


def calibration_cache_path(cache_dir: str | os.PathLike, key: dict) -> Path:
    name = f"calib-{key['model_sha256'][:16]}-{key['data_sha256'][:16]}-{key['settings_sha256'][:8]}.json"
    return Path(cache_dir) / name


def clip_range_overrides(model) -> dict:
    """Ranges for the outputs of Conv/MatMul/Gemm that feed a Clip (ReLU6): the Clip's own bounds.

    With symmetric activations ORT keeps the Clip and quantises its *input* with the calibrated range of
    the raw convolution output, which can be tens of times wider than the [0, 6] that survives the Clip
    (measured on tf_efficientnet_lite0: cosine to FP32 0.53, R@1 76.7% -> 26.7%). Quantising that tensor
    with the Clip's bounds is exact in meaning (values outside are clipped next anyway) and keeps all 8
    bits for the range that matters.
    """
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producers = {o: n for n in model.graph.node for o in n.output}
    overrides = {}
    for n in model.graph.node:
        if n.op_type != "Clip" or len(n.input) < 3 or producers.get(n.input[0]) is None:
            continue
        if producers[n.input[0]].op_type not in QUANT_OPS or n.input[1] not in consts or n.input[2] not in consts:
            continue
        lo, hi = float(consts[n.input[1]]), float(consts[n.input[2]])
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            overrides[n.input[0]] = [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
    return overrides


def _quiet_ort_advice(record: logging.LogRecord) -> bool:
    """Drop ORT's generic 'consider pre-processing' advice (our graph is already constant-folded) and its
    per-channel 'Increased scale ... for weight' notes (hundreds of lines for one model)."""
    msg = record.getMessage()
    return "pre-processing" not in msg and not msg.startswith("Increased scale")


class _Reader:
    """ORT CalibrationDataReader over a preprocessed array, in batches; with ``progress`` a bar of the images
    handed to ORT (``INT8 calibration``)."""

    def __init__(self, calib: np.ndarray, batch_size: int, progress: bool = False):
        self.calib, self.batch_size, self.pos = calib, batch_size, 0
        self.batches_read = 0
        self.progress, self.bar = progress, None

    def get_next(self):
        if self.pos >= len(self.calib):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            return None
        if self.progress and self.bar is None:
            from common.progress import progress_bar

            self.bar = progress_bar(desc="INT8 calibration", total=len(self.calib), unit="image")
        x = self.calib[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        self.batches_read += 1
        if self.bar is not None:
            self.bar.update(len(x))
        return {INPUT_NAME: x}

    def __len__(self):
        return len(self.calib)

    def rewind(self):
        self.pos = 0


def _entropy_ranges(onnx_path, reader: _Reader, path: Path, work: Path, bins: int) -> None:
    """Entropy (KL) ranges as TensorRT computes them, 2048-bin histograms folded into 128 levels, saved as
    an ORT calibration cache at ``path``. ORT's ``quantize_static`` builds its entropy calibrator with 128
    bins for 128 levels, which leaves a single candidate threshold, the min/max range: measured on the
    demo model, ``method="entropy"`` through it wrote the very same file as MinMax."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    cal = create_calibrator(Path(onnx_path), list(QUANT_OPS), augmented_model_path=str(work / "augmented.onnx"),
                            calibrate_method=CalibrationMethod.Entropy,
                            extra_options={"num_bins": bins, "num_quantized_bins": 128})
    cal.collect_data(reader)
    save_tensors_data(cal.compute_data(), path)


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, calib: np.ndarray, *,
                  method: str = "minmax", cache_dir: str | os.PathLike | None = None,
                  batch_size: int = 16, reduce_range: bool = True, per_channel: bool = True,
                  entropy_bins: int = ENTROPY_BINS, progress: bool = True) -> dict:
    """Q/DQ INT8 ONNX from the FP32 ONNX, calibrated on ``calib`` (the graph's input array, N >= 1).

    ``reduce_range`` quantises weights to 7 bits. Measured here (x86 with AVX2, no VNNI): with 8-bit
    weights ONNX Runtime's int8 convolution kernels saturate their 16-bit pair sums (VPMADDUBSW) and
    tf_efficientnet_lite0's embeddings fall to cosine 0.54 against FP32, while the very same Q/DQ graph
    evaluated without kernel fusion (what TensorRT computes) gives 0.96; with 7-bit weights the kernels
    are exact again (0.91 both ways). Default True: the INT8 model is then right on every CPU and on
    TensorRT; pass False (CLI ``--int8-full-range``) for a TensorRT- or VNNI-only target.
    ``per_channel`` False gives one weight scale per tensor (measured for the gate's advice);
    ``entropy_bins`` the histogram of ``method="entropy"`` (TensorRT's 2048; the KL search is slow in Python);
    ``progress`` a bar of the images calibrated on (``INT8 calibration``).

    Returns ``{"path", "cache", "cache_hit", "calibration": {...}}`` for the manifest."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {CALIB_METHODS}")
    if calib.ndim != 4 or len(calib) == 0:
        raise ValueError(f"calibration data must be a non-empty (N, ...) image batch, got shape {calib.shape}")
    if len(calib) < 32:
        _log.warning("only %d calibration images; 100-500 representative frames give stabler ranges", len(calib))
    model = onnx.load(str(onnx_path))
    exclude = [n.name for n in model.graph.node if "/head" in n.name and n.op_type in QUANT_OPS]
    overrides = clip_range_overrides(model)
    key = calibration_key(onnx_path, calib, method, reduce_range, per_channel, entropy_bins)
    cache = cache_hit = None
    if cache_dir is not None:
        cache = calibration_cache_path(cache_dir, key)
        cache_hit = cache.is_file() and (cache.with_suffix(".key.json").is_file()
                                         and json.loads(cache.with_suffix(".key.json").read_text()) == key)
        if cache.is_file() and not cache_hit:
            cache.unlink()  # a file under the right name but without a matching key record: recompute
    # equal batches: ORT's histogram calibrators (entropy, percentile) stack per-batch outputs
    batch_size = max(b for b in range(1, min(batch_size, len(calib)) + 1) if len(calib) % b == 0)
    reader = _Reader(calib, batch_size, progress)
    cal_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[method]
    out_path = Path(out_path)
    root = logging.getLogger()
    root.addFilter(_quiet_ort_advice)
    try:
        with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory(prefix="geoloc-calib.") as work:
            if method == "entropy" and not cache_hit:  # ranges computed here, handed to ORT as its cache
                cache = cache or Path(work) / "ranges.json"
                _entropy_ranges(onnx_path, reader, cache, Path(work), entropy_bins)
                cache_hit = None  # not a hit: computed now
            quantize_static(
                str(onnx_path), str(tmp), calibration_data_reader=None if cache_hit or method == "entropy" else reader,
                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS), per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                calibrate_method=cal_method,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "TensorQuantOverrides": overrides},
                calibration_cache_path=str(cache) if cache is not None else None,
            )
            if cache is not None and cache.parent == Path(work):
                cache = None  # a temporary ranges file, gone with the folder
            q = onnx.load(str(tmp))
            onnx.checker.check_model(q)
    finally:
        root.removeFilter(_quiet_ort_advice)
    if cache is not None and not cache_hit:
        atomic_write_json(cache.with_suffix(".key.json"), key)
    opset = {o.domain: o.version for o in q.opset_import}.get("", None)
    n_q = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    if n_q == 0:
        raise RuntimeError(f"quantisation of {onnx_path} inserted no QuantizeLinear node: nothing was quantised")
    _log.info("wrote INT8 model %s (%d Q/DQ pairs, opset %s, cache %s)", out_path, n_q, opset,
              "hit" if cache_hit else "miss")
    return {"path": out_path, "cache": str(cache) if cache else None, "cache_hit": bool(cache_hit),
            "calibration": {"n_images": int(len(calib)), "method": method, "data_sha256": key["data_sha256"],
                            "batches_run": reader.batches_read, "quantize_linear_nodes": n_q, "opset": opset,
                            "excluded_nodes": exclude, "clip_range_overrides": len(overrides),
                            "reduce_range": bool(reduce_range), "per_channel": bool(per_channel)}}
