"""The TensorRT engine wrapper against a fake of the TensorRT runtime API and of cuda-python.

TensorRT and a GPU cannot exist here. The fakes implement only the documented calls (REFERENCE.md §5;
cuda.bindings.runtime's ``(err, value)`` tuples) and check how they are used: every I/O tensor has an
address before ``execute_async_v3``, the input shape is set and within the profile, copies go the stated
direction between host memory and fake device allocations. "Device" memory is real host memory, and
the fake engine runs the bundle's real ONNX model on it with ONNX Runtime, so the data path is checked
end to end against the ONNX Runtime engine.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import sys
import types

import numpy as np
import pytest

from runtime.engine import load_engine
from tests.bundles import flight_crops, tiny_assets

MAX_BATCH = 4


class FakeCudart(types.ModuleType):
    def __init__(self):
        super().__init__("cuda.bindings.runtime")
        self.device: dict[int, np.ndarray] = {}
        self.host: dict[int, np.ndarray] = {}
        self.calls: list[tuple] = []

        class Err(int):
            pass

        self.cudaError_t = types.SimpleNamespace(cudaSuccess=Err(0))
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

        class Stream:
            def __init__(self, h):
                self.h = h

            def __int__(self):
                return self.h

        self._Stream = Stream

    def _alloc(self, table, nbytes):
        buf = np.zeros(int(nbytes), np.uint8)
        table[buf.ctypes.data] = buf
        return buf.ctypes.data

    def cudaMalloc(self, nbytes):  # noqa: N802 (CUDA's names)
        self.calls.append(("cudaMalloc", nbytes))
        return 0, self._alloc(self.device, nbytes)

    def cudaMallocHost(self, nbytes):  # noqa: N802
        self.calls.append(("cudaMallocHost", nbytes))
        return 0, self._alloc(self.host, nbytes)

    def cudaFree(self, ptr):  # noqa: N802
        assert ptr in self.device, "cudaFree of a pointer that cudaMalloc did not return"
        del self.device[ptr]
        return (0,)

    def cudaFreeHost(self, ptr):  # noqa: N802
        del self.host[ptr]
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        return 0, self._Stream(77)

    def cudaStreamDestroy(self, s):  # noqa: N802
        return (0,)

    def cudaStreamSynchronize(self, s):  # noqa: N802
        self.calls.append(("sync",))
        return (0,)

    def _in_device(self, ptr, n):
        return any(base <= ptr and ptr + n <= base + len(b) for base, b in self.device.items())

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        assert isinstance(dst, int) and isinstance(src, int) and nbytes > 0
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            assert self._in_device(dst, nbytes) and not self._in_device(src, nbytes), "HtoD direction wrong"
        else:
            assert self._in_device(src, nbytes) and not self._in_device(dst, nbytes), "DtoH direction wrong"
        ctypes.memmove(dst, src, nbytes)
        self.calls.append(("memcpy", kind, nbytes))
        return (0,)


def make_fake_tensorrt(onnx_bytes: bytes, version="10.3.0"):
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF")
    trt.nptype = lambda dt: {"FLOAT": np.float32, "HALF": np.float16}[dt]
    log = trt.calls = []

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class Context:
        def __init__(self, engine):
            self.engine, self.addr, self.shape = engine, {}, None

        def set_input_shape(self, name, shape):
            assert name == "image"
            shape = tuple(shape)
            lo, _, hi = engine_profile
            ok = all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            self.shape = shape if ok else None
            log.append(("set_input_shape", shape))
            return ok

        def set_tensor_address(self, name, ptr):
            assert name in ("image", "embedding") and isinstance(ptr, int)
            self.addr[name] = ptr

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int), "execute_async_v3 takes the stream handle as an int"
            assert set(self.addr) == {"image", "embedding"}, "every I/O tensor needs an address"
            assert self.shape is not None, "set_input_shape must come before execute_async_v3"
            n = int(np.prod(self.shape))
            x = np.frombuffer((ctypes.c_float * n).from_address(self.addr["image"]), np.float32).reshape(self.shape)
            y = sess.run(None, {"image": x.copy()})[0].astype(np.float32)
            ctypes.memmove(self.addr["embedding"], y.ctypes.data, y.nbytes)
            log.append(("execute_async_v3", self.shape[0]))
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["image", "embedding"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "image" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return (-1, 3, 64, 64) if name == "image" else (-1, dim)

        def get_tensor_profile_shape(self, name, profile):
            assert name == "image" and profile == 0
            return engine_profile

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            assert isinstance(logger, Logger)

        def deserialize_cuda_engine(self, plan):
            assert isinstance(plan, bytes)
            return Engine() if plan == onnx_bytes else None

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    dim = sess.get_outputs()[0].shape[1]
    engine_profile = ((1, 3, 64, 64), (1, 3, 64, 64), (MAX_BATCH, 3, 64, 64))
    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.fixture
def trt_bundle(tmp_path):
    a = tiny_assets()
    b = tmp_path / "bundle"
    shutil.copytree(a["bundle"], b)
    shutil.copy(b / "model.onnx", b / "model.fake.plan")
    m = json.loads((b / "manifest.json").read_text())
    m["files"].append({"path": "model.fake.plan", "kind": "tensorrt", "precision": "fp16", "trt_version": "10.3.0"})
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def _install(monkeypatch, b, version="10.3.0"):
    trt = make_fake_tensorrt((b / "model.fake.plan").read_bytes(), version)
    cudart = FakeCudart()
    cuda_pkg = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda_pkg.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return trt, cudart


def test_tensorrt_engine_matches_onnxruntime_through_the_fake_api(monkeypatch, trt_bundle):
    trt, cudart = _install(monkeypatch, trt_bundle)
    crops = [c for c, _ in flight_crops(tiny_assets()["raster"], n_frames=6)]
    eng = load_engine(trt_bundle)  # auto: a plan is present and tensorrt imports
    assert eng.name == "tensorrt[10.3.0, cuda-python] fp16" and eng.max_batch == MAX_BATCH
    ref = load_engine(trt_bundle, backend="onnxruntime").embed(crops)
    got = eng.embed(crops)  # 6 > max batch 4: split into 4 + 2
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert [c for c in trt.calls if c[0] == "execute_async_v3"] == [("execute_async_v3", 4), ("execute_async_v3", 2)]
    assert ("set_input_shape", (2, 3, 64, 64)) in trt.calls
    kinds = [c[1] for c in cudart.calls if c[0] == "memcpy"]
    assert kinds == [1, 2, 1, 2]  # HtoD then DtoH per batch
    eng.close()
    assert not cudart.device  # device buffers freed


def test_tensorrt_version_mismatch_and_missing_cuda(monkeypatch, trt_bundle):
    from runtime.engine import EngineError

    _install(monkeypatch, trt_bundle, version="8.5.2")
    with pytest.raises(EngineError, match=r"built with TensorRT 10.3.0, this is 8.5.2"):
        load_engine(trt_bundle, backend="tensorrt")
    _install(monkeypatch, trt_bundle)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    with pytest.raises(EngineError, match="cuda-python"):
        load_engine(trt_bundle, backend="tensorrt")
