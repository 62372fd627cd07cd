"""The TensorRT engine wrapper against fakes of the TensorRT runtime API, cuda-python and pycuda.

TensorRT and a GPU cannot exist here. The fakes in tests/fakes/ follow the real bindings (each point cites
its source line there): cuda-python's ``(err, value)`` tuples, its ``RuntimeError`` without a driver and
its ``AttributeError`` for a plain-int copy kind; pycuda's context modules that raise on import without a
GPU; TensorRT's ``size_t`` stream handle. "Device" memory is real host memory and the fake engine runs
the bundle's real ONNX model on it with ONNX Runtime, so the data path is checked end to end against the
ONNX Runtime engine, for the float32 NCHW and the uint8 NHWC input.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from runtime.engines.engine import EngineError, load_engine
from tests.fakes.cuda_api import block_cuda_python, cudaError_t, install_cuda_python, install_pycuda
from tests.fakes.tensorrt_runtime import make_runtime_tensorrt
from tools.toy_assets import flight_crops, tiny_assets

MAX_BATCH = 4


def _trt_bundle(tmp_path, source="bundle", plan_from=None):
    a = tiny_assets()
    b = tmp_path / source
    shutil.copytree(a[source], b)
    shutil.copy(a[plan_from or source] / "model.onnx", b / "model.fake.plan")
    m = json.loads((b / "manifest.json").read_text())
    m["files"].append({"path": "model.fake.plan", "kind": "tensorrt", "precision": "fp16", "trt_version": "10.3.0"})
    (b / "manifest.json").write_text(json.dumps(m))
    return b


@pytest.fixture
def trt_bundle(tmp_path):
    return _trt_bundle(tmp_path)


def _install_trt(monkeypatch, b, version="10.3.0"):
    trt = make_runtime_tensorrt((b / "model.fake.plan").read_bytes(), version, max_batch=MAX_BATCH)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _crops(n=6):
    return [c for c, _ in flight_crops(tiny_assets()["raster"], n_frames=n)]


def _check_against_onnxruntime(bundle, eng, trt):
    crops = _crops()
    ref = load_engine(bundle, backend="onnxruntime").embed(crops)
    got = eng.embed(crops)  # 6 > max batch 4: split into 4 + 2
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert [c for c in trt.calls if c[0] == "execute_async_v3"] == [("execute_async_v3", 4), ("execute_async_v3", 2)]


def test_tensorrt_engine_matches_onnxruntime_through_cuda_python(monkeypatch, trt_bundle):
    trt = _install_trt(monkeypatch, trt_bundle)
    rt = install_cuda_python(monkeypatch)
    eng = load_engine(trt_bundle)  # auto: a plan is present and tensorrt imports
    assert eng.name == "tensorrt[10.3.0, cuda-python] fp16" and eng.max_batch == MAX_BATCH
    _check_against_onnxruntime(trt_bundle, eng, trt)
    assert ("set_input_shape", (2, 3, 64, 64)) in trt.calls
    kinds = [c[1] for c in rt.calls if c[0] == "memcpy"]
    assert kinds == ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"] * 2  # per batch: in, then out
    assert len(rt.host) == 2 and len(rt.device) == 2
    eng.close()
    assert not rt.device and not rt.host and not rt.streams  # device, pinned memory and stream released
    assert eng.h_in is None and eng.h_out is None  # nothing left pointing at the freed pinned memory
    with pytest.raises(EngineError, match="closed"):
        eng.embed(_crops(1))
    eng.close()  # idempotent


def test_uint8_nhwc_engine(monkeypatch, tmp_path):
    b = _trt_bundle(tmp_path, "bundle_u8")
    trt = _install_trt(monkeypatch, b)
    install_cuda_python(monkeypatch)
    eng = load_engine(b, backend="tensorrt")
    assert eng.in_dtype == np.uint8 and eng.sample_shape == (64, 64, 3) and eng.h_in.dtype == np.uint8
    _check_against_onnxruntime(b, eng, trt)
    with pytest.raises(EngineError, match="takes uint8 input, got float32"):
        eng.embed_prepared(np.zeros((1, 64, 64, 3), np.float32))
    eng.close()


def test_engine_whose_input_dtype_is_not_the_manifests_is_refused(monkeypatch, tmp_path):
    b = _trt_bundle(tmp_path, "bundle", plan_from="bundle_u8")  # a uint8 plan in a float32 bundle
    _install_trt(monkeypatch, b)
    install_cuda_python(monkeypatch)
    with pytest.raises(EngineError, match="takes uint8 input, the manifest says float32.*--trt"):
        load_engine(b, backend="tensorrt")


def test_cuda_cudart_layout_of_older_cuda_python(monkeypatch, trt_bundle):
    trt = _install_trt(monkeypatch, trt_bundle)
    rt = install_cuda_python(monkeypatch, layout="cudart")
    eng = load_engine(trt_bundle, backend="tensorrt")
    assert eng.cuda.rt is rt and eng.cuda.name == "cuda-python"
    _check_against_onnxruntime(trt_bundle, eng, trt)
    eng.close()


@pytest.mark.parametrize("primaryctx", [True, False], ids=["autoprimaryctx", "autoinit (pycuda < 2021.1)"])
def test_pycuda_path(monkeypatch, trt_bundle, primaryctx):
    trt = _install_trt(monkeypatch, trt_bundle)
    block_cuda_python(monkeypatch)
    drv = install_pycuda(monkeypatch, primaryctx=primaryctx)
    eng = load_engine(trt_bundle, backend="tensorrt")
    assert eng.name == "tensorrt[10.3.0, pycuda] fp16"
    assert drv.contexts == ["pycuda.autoprimaryctx" if primaryctx else "pycuda.autoinit"]
    _check_against_onnxruntime(trt_bundle, eng, trt)
    assert [c[0] for c in drv.calls if c[0] in ("htod", "dtoh")] == ["htod", "dtoh"] * 2
    eng.close()
    assert not drv.device and eng.h_in is None


@pytest.mark.parametrize("library", ["pycuda", "cuda-python"])
def test_the_engine_runs_from_another_thread(monkeypatch, trt_bundle, library):
    """The service embeds frames in its own thread (runtime/service.py). pycuda's context is current on
    the thread that imported it only (CUDA's context stack is per CPU thread): the engine pushes it around
    a call from any other thread. cuda-python's runtime API binds the device's primary context itself."""
    import threading

    _install_trt(monkeypatch, trt_bundle)
    if library == "pycuda":
        block_cuda_python(monkeypatch)
        drv = install_pycuda(monkeypatch)
    else:
        install_cuda_python(monkeypatch)
    eng = load_engine(trt_bundle, backend="tensorrt")
    x = eng.prepare(list(_crops(2)))
    here = eng.embed_prepared(x)
    out, errors = {}, []

    def worker():
        try:
            out["there"] = eng.embed_prepared(x)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert errors == [] and np.array_equal(out["there"], here)
    if library == "pycuda":
        assert len(drv._stack()) == 1  # this thread's context as it was (the worker popped what it pushed)
    eng.close()


def test_cuda_python_without_a_driver_is_one_error_with_the_fix(monkeypatch, trt_bundle):
    """cuda-python 12.x raises RuntimeError('Failed to dlopen libcuda.so.1'); pycuda fails on import."""
    _install_trt(monkeypatch, trt_bundle)
    install_cuda_python(monkeypatch, driver=False)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    with pytest.raises(EngineError, match=r"Failed to dlopen libcuda.so.1.*cuda-python~=12.6") as e:
        load_engine(trt_bundle, backend="tensorrt")
    assert "cuda-python~=13.0" in str(e.value)  # the pin for CUDA 13 too
    install_cuda_python(monkeypatch, driver=False)
    install_pycuda(monkeypatch, devices=0)
    with pytest.raises(EngineError, match=r"cuda-python: .*dlopen.* \| pycuda: .*No CUDA enabled device"):
        load_engine(trt_bundle, backend="tensorrt")


def test_cuda_python_13_on_a_cuda_12_driver(monkeypatch, trt_bundle):
    _install_trt(monkeypatch, trt_bundle)
    rt = install_cuda_python(monkeypatch)
    rt.fail["cudaGetDeviceCount"] = rt.cudaError_t.cudaErrorInsufficientDriver
    monkeypatch.setitem(sys.modules, "pycuda", None)
    with pytest.raises(EngineError, match=r"cudaErrorInsufficientDriver \(35\).*cuda-python~=12.6"):
        load_engine(trt_bundle, backend="tensorrt")


def test_a_failing_cuda_call_is_an_engine_error(monkeypatch, trt_bundle):
    _install_trt(monkeypatch, trt_bundle)
    rt = install_cuda_python(monkeypatch, fail={"cudaMalloc": cudaError_t.cudaErrorMemoryAllocation})
    with pytest.raises(EngineError, match=r"cudaMalloc failed with cudaErrorMemoryAllocation \(2\)"):
        load_engine(trt_bundle, backend="tensorrt")
    rt.fail.clear()
    eng = load_engine(trt_bundle, backend="tensorrt")
    rt.fail["cudaStreamSynchronize"] = rt.cudaError_t.cudaErrorMemoryAllocation
    with pytest.raises(EngineError, match="cudaStreamSynchronize failed"):
        eng.embed(_crops(1))


def test_fakes_accept_and_reject_what_the_real_bindings_do(monkeypatch, trt_bundle):
    rt = install_cuda_python(monkeypatch)
    _, stream = rt.cudaStreamCreate()
    src = np.zeros((1, 3, 64, 64), np.float32)
    _, dev = rt.cudaMalloc(src.nbytes)
    with pytest.raises(AttributeError, match="'int' object has no attribute 'value'"):
        rt.cudaMemcpyAsync(dev, src.ctypes.data, src.nbytes, 1, stream)  # cuda-python 12.x: kind must be the enum
    kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    assert rt.cudaMemcpyAsync(dev, src.ctypes.data, src.nbytes, kind, stream) == (0,)
    trt = _install_trt(monkeypatch, trt_bundle)
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(trt_bundle.joinpath("model.fake.plan").read_bytes())
    ctx = engine.create_execution_context()
    _, out = rt.cudaMalloc(4 * engine.get_tensor_shape("embedding")[1])
    ctx.set_tensor_address("image", dev)
    ctx.set_tensor_address("embedding", out)
    assert ctx.set_input_shape("image", (1, 3, 64, 64)) and not ctx.set_input_shape("image", (9, 3, 64, 64))
    ctx.set_input_shape("image", (1, 3, 64, 64))
    for bad in (1.0, "0x7001", None):
        with pytest.raises(TypeError):
            ctx.execute_async_v3(bad)
    assert ctx.execute_async_v3(stream)  # any __index__ object, as pybind11's size_t caster takes
    no_driver = install_cuda_python(monkeypatch, driver=False)
    with pytest.raises(RuntimeError, match="Failed to dlopen libcuda.so.1"):
        no_driver.cudaMalloc(16)
    with pytest.raises(RuntimeError, match='Function "cuInit" not found'):
        no_driver.cudaMalloc(16)


def test_tensorrt_version_mismatch_and_missing_cuda(monkeypatch, trt_bundle):
    _install_trt(monkeypatch, trt_bundle, version="8.5.2")
    install_cuda_python(monkeypatch)
    with pytest.raises(EngineError, match=r"built with TensorRT 10.3.0, this is 8.5.2.*--trt"):
        load_engine(trt_bundle, backend="tensorrt")
    _install_trt(monkeypatch, trt_bundle)
    block_cuda_python(monkeypatch)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    with pytest.raises(EngineError, match=r"cuda-python~=12.6"):
        load_engine(trt_bundle, backend="tensorrt")


def test_tensorrt_backend_on_a_bundle_without_an_engine(monkeypatch, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(tiny_assets()["bundle"], b)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineError, match=r"^TensorRT is not installed.*has no engine yet.*--bundle .* --trt"):
        load_engine(b, backend="tensorrt")
    _install_trt(monkeypatch, _trt_bundle(tmp_path / "other"))
    from runtime.engines.bundle import BundleError

    with pytest.raises(BundleError, match=r"has no TensorRT engine.*python -m export --bundle .* --trt"):
        load_engine(b, backend="tensorrt")


def test_the_installed_cuda_python_if_any():
    """The real cuda-python (torch's wheels pull in cuda-bindings): without a GPU it must give the one-line
    EngineError naming the pins (12.x raises RuntimeError, 13.x returns cudaErrorInsufficientDriver); with
    a GPU, a round trip through pinned and device memory with the copy kinds as passed by the engine."""
    pytest.importorskip("cuda.bindings.runtime")
    from runtime.engines.tensorrt_engine import _CudaPython

    try:
        cu = _CudaPython()
    except EngineError as e:
        assert "cudaGetDeviceCount" in str(e) and "cuda-python~=12.6" in str(e)
        return
    stream = cu.stream()
    src = cu.host_empty((2, 8), np.float32)
    dst = cu.host_empty((2, 8), np.float32)
    src[:] = np.arange(16, dtype=np.float32).reshape(2, 8)
    dev = cu.malloc(src.nbytes)
    cu.htod(dev, src, stream)
    cu.dtoh(dst, dev, stream)
    cu.sync(stream)
    np.testing.assert_array_equal(dst, src)
    cu.free(dev)
    cu.close(stream)
