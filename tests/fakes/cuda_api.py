"""Fakes of the two device-buffer libraries runtime/trt_engine.py uses: cuda-python's runtime bindings and pycuda.

No GPU exists here, so "device" and "pinned" memory are ordinary host memory (numpy buffers at real
addresses, so ``ctypes.memmove`` copies and the engine reads them). What the fakes check is how the
libraries are called, following the real bindings:

cuda-python 12.6 (``cuda/bindings/runtime.pyx`` of the cuda-python 12.6.2.post1 wheel, which ships its
generated Cython source; run here without a driver to confirm each point):

- every call returns a tuple ``(cudaError_t, value...)``; ``cudaError_t`` and ``cudaMemcpyKind`` are
  ``IntEnum``s;
- ``def cudaMemcpyAsync(dst, src, size_t count, kind not None : cudaMemcpyKind, stream)`` (line 19810)
  reads ``cdef cyruntime.cudaMemcpyKind cykind = kind.value`` (line 19872): a plain int raises
  ``AttributeError: 'int' object has no attribute 'value'`` (cuda-bindings 13.x accepts an int);
- without a usable driver the first call raises ``RuntimeError('Failed to dlopen libcuda.so.1')``
  (``_bindings/cydriver.pyx`` line 490) and the later ones ``RuntimeError('Function "cuInit" not
  found')`` (line 2687), instead of returning an error code (cuda-bindings 13.x returns
  ``cudaErrorInsufficientDriver`` (35) instead);
- ``cudaStream_t`` (``runtime.pxd`` line 3090) subclasses ``driver.CUstream``, which has ``__int__``
  and ``__index__`` (``driver.pyx`` lines 4931-4935);
- cuda-python before 12.6 has the same module as ``cuda.cudart`` only (12.6 has both).

pycuda (inducer/pycuda): ``pycuda/autoprimaryctx.py`` and ``pycuda/autoinit.py`` run ``cuda.init()``
and ``make_default_context(...)`` on import; ``make_default_context`` (``pycuda/tools.py``) raises the
builtin ``RuntimeError("No CUDA enabled device found. Please check your installation.")``, and
``cuda.init()`` raises pycuda's own ``pycuda.driver.Error`` subclasses: neither is an ``ImportError``.
``autoprimaryctx`` exists from pycuda 2021.1 (NVIDIA's TensorRT 8.5.3 ``samples/python/common.py``
lines 23-29 import it and fall back to ``autoinit`` on ``ModuleNotFoundError``). Both leave the context
in ``module.context``, pushed on the importing thread only: CUDA's context stack is per CPU thread
(``cuCtxPushCurrent``: "pushes the given context onto the CPU thread's stack of current contexts"), so
another thread must ``context.push()`` and ``pycuda.driver.Context.pop()`` around its calls, or they fail
with ``LogicError(... invalid device context)``: the fake keeps one stack per thread and says the same.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.abc
import importlib.machinery
import sys
import threading
import types

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 - the binding's name
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStream_t:  # noqa: N801
    """driver.CUstream: an opaque handle with __int__ and __index__."""

    def __init__(self, handle: int = 0):
        self._h = int(handle)

    def __int__(self):
        return self._h

    def __index__(self):
        return self._h


class FakeCudart(types.ModuleType):
    """``cuda.bindings.runtime`` as cuda-python 12.6 behaves.

    Knobs: ``driver=False`` (no libcuda.so.1: calls raise RuntimeError), ``devices`` (count),
    ``fail={"cudaMalloc": cudaError_t.cudaErrorMemoryAllocation}`` (that call returns the error).
    """

    def __init__(self, name="cuda.bindings.runtime", *, driver=True, devices=1, fail=None):
        super().__init__(name)
        self.cudaError_t, self.cudaMemcpyKind, self.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
        self.driver, self.devices, self.fail = driver, devices, dict(fail or {})
        self._dlopen_tried = False
        self.device: dict[int, np.ndarray] = {}
        self.host: dict[int, np.ndarray] = {}
        self.streams: set[int] = set()
        self.calls: list[tuple] = []

    def _enter(self, fn):
        """What every binding does first: reach the driver (or raise as 12.6 does), then the injected failure."""
        self.calls.append((fn,))
        if not self.driver:
            if not self._dlopen_tried:
                self._dlopen_tried = True
                raise RuntimeError("Failed to dlopen libcuda.so.1")
            raise RuntimeError('Function "cuInit" not found')
        return self.fail.get(fn)

    @staticmethod
    def _alloc(table, nbytes):
        buf = np.zeros(int(nbytes), np.uint8)
        table[buf.ctypes.data] = buf
        return buf.ctypes.data

    def cudaGetDeviceCount(self):  # noqa: N802 - CUDA's names
        err = self._enter("cudaGetDeviceCount")
        return (err, None) if err else (cudaError_t.cudaSuccess, self.devices)

    def cudaMalloc(self, size):  # noqa: N802
        err = self._enter("cudaMalloc")
        return (err, None) if err else (cudaError_t.cudaSuccess, self._alloc(self.device, size))

    def cudaMallocHost(self, size):  # noqa: N802
        err = self._enter("cudaMallocHost")
        return (err, None) if err else (cudaError_t.cudaSuccess, self._alloc(self.host, size))

    def cudaFree(self, devPtr):  # noqa: N802, N803
        err = self._enter("cudaFree")
        assert devPtr in self.device, "cudaFree of a pointer that cudaMalloc did not return"
        del self.device[devPtr]
        return (err or cudaError_t.cudaSuccess,)

    def cudaFreeHost(self, ptr):  # noqa: N802
        err = self._enter("cudaFreeHost")
        assert ptr in self.host, "cudaFreeHost of a pointer that cudaMallocHost did not return"
        del self.host[ptr]
        return (err or cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self):  # noqa: N802
        err = self._enter("cudaStreamCreate")
        if err:
            return err, None
        handle = 0x7000 + len(self.streams) + 1
        self.streams.add(handle)
        return cudaError_t.cudaSuccess, cudaStream_t(handle)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        err = self._enter("cudaStreamDestroy")
        self.streams.discard(int(stream))
        return (err or cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        err = self._enter("cudaStreamSynchronize")
        assert int(stream) in self.streams, "synchronising a stream that cudaStreamCreate did not return"
        return (err or cudaError_t.cudaSuccess,)

    def _where(self, ptr, n):
        for table in (self.device, self.host):
            if any(base <= ptr and ptr + n <= base + len(b) for base, b in table.items()):
                return table
        return None

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        cykind = kind.value  # runtime.pyx line 19872: a plain int has no .value -> AttributeError
        err = self._enter("cudaMemcpyAsync")
        if err:
            return (err,)
        assert isinstance(stream, cudaStream_t) and int(stream) in self.streams, "copy on an unknown stream"
        src_at, dst_at = self._where(src, count), self._where(dst, count)
        if cykind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            assert dst_at is self.device and src_at is not self.device, "HtoD copy in the wrong direction"
        elif cykind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            assert src_at is self.device and dst_at is not self.device, "DtoH copy in the wrong direction"
        ctypes.memmove(dst, src, count)
        self.calls.append(("memcpy", cudaMemcpyKind(cykind).name, count))
        return (cudaError_t.cudaSuccess,)


def install_cuda_python(monkeypatch, *, layout="bindings", **knobs) -> FakeCudart:
    """Put a fake cuda-python into sys.modules: ``layout`` "bindings" (>= 12.6: cuda.bindings.runtime and
    cuda.cudart) or "cudart" (< 12.6: cuda.cudart only)."""
    cuda_pkg = types.ModuleType("cuda")
    cuda_pkg.__path__ = []
    rt = FakeCudart("cuda.cudart" if layout == "cudart" else "cuda.bindings.runtime", **knobs)
    cuda_pkg.cudart = rt
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.cudart", rt)
    if layout == "bindings":
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []
        bindings.runtime = rt
        cuda_pkg.bindings = bindings
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    else:
        monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # import raises ImportError
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    return rt


def block_cuda_python(monkeypatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)


# ---- pycuda -----------------------------------------------------------------------------------------
class PycudaError(Exception):
    """pycuda.driver.Error: pycuda's own base class (not RuntimeError, not ImportError)."""


class _DeviceAllocation:
    def __init__(self, drv, nbytes):
        self.buf = np.zeros(int(nbytes), np.uint8)
        self.drv = drv
        drv.device[int(self)] = self.buf

    def __int__(self):
        return self.buf.ctypes.data

    def free(self):
        del self.drv.device[int(self)]


class _Stream:
    def __init__(self, drv):
        self.drv, self.handle = drv, 0x9000 + len(drv.calls)

    def synchronize(self):
        if not self.drv._stack():
            raise self.drv.LogicError("cuStreamSynchronize failed: invalid device context")
        self.drv.calls.append(("synchronize",))


class _Context:
    """pycuda.driver.Context: ``push()`` on the calling thread's stack, the static ``pop()`` off it."""

    drv = None  # set per fake driver

    def __init__(self, name):
        self.name = name

    def push(self):
        self.drv._stack().append(self)

    @classmethod
    def pop(cls):
        stack = cls.drv._stack()
        if not stack:
            raise cls.drv.LogicError("cuCtxPopCurrent failed: invalid device context")
        stack.pop()


def make_pycuda_driver(*, devices=1) -> types.ModuleType:
    drv = types.ModuleType("pycuda.driver")
    drv.Error, drv.LogicError = PycudaError, type("LogicError", (PycudaError,), {})
    drv.device, drv.calls, drv.devices, drv.contexts = {}, [], devices, []
    tls = threading.local()
    drv._stack = lambda: tls.__dict__.setdefault("stack", [])
    drv.Context = type("Context", (_Context,), {"drv": drv})

    def need_context(call):
        if not drv._stack():
            raise drv.LogicError(f"{call} failed: invalid device context")

    def init(flags=0):
        drv.calls.append(("init",))

    def mem_alloc(nbytes):
        need_context("cuMemAlloc")
        return _DeviceAllocation(drv, nbytes)

    def pagelocked_empty(shape, dtype):
        return np.empty(shape, dtype)

    def _copy(dst: int, src: int, n: int, kind: str, stream):
        need_context(f"cuMemcpy{'HtoD' if kind == 'htod' else 'DtoH'}Async")
        assert isinstance(stream, _Stream)
        ctypes.memmove(dst, src, n)
        drv.calls.append((kind, n))

    def memcpy_htod_async(dest, src, stream=None):
        assert int(dest) in drv.device and isinstance(src, np.ndarray)
        _copy(int(dest), src.ctypes.data, src.nbytes, "htod", stream)

    def memcpy_dtoh_async(dest, src, stream=None):
        assert int(src) in drv.device and isinstance(dest, np.ndarray)
        _copy(dest.ctypes.data, int(src), dest.nbytes, "dtoh", stream)

    drv.init, drv.mem_alloc, drv.pagelocked_empty = init, mem_alloc, pagelocked_empty
    drv.memcpy_htod_async, drv.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    drv.Stream = lambda flags=0: _Stream(drv)
    return drv


class _ContextModuleLoader(importlib.abc.Loader):
    """pycuda.autoprimaryctx / pycuda.autoinit: importing them creates the context (or raises)."""

    def __init__(self, drv, which):
        self.drv, self.which = drv, which

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        self.drv.init()
        if self.drv.devices < 1:  # pycuda/tools.py make_default_context
            raise RuntimeError("No CUDA enabled device found. Please check your installation.")
        self.drv.contexts.append(self.which)
        module.context = self.drv.Context(self.which)
        module.context.push()  # current on the importing thread only


class _PycudaFinder(importlib.abc.MetaPathFinder):
    def __init__(self, drv, names):
        self.drv, self.names = drv, names

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.names:
            return importlib.machinery.ModuleSpec(fullname, _ContextModuleLoader(self.drv, fullname))
        return None


def install_pycuda(monkeypatch, *, primaryctx=True, devices=1) -> types.ModuleType:
    """A fake pycuda in sys.modules; ``primaryctx=False`` is pycuda < 2021.1 (no autoprimaryctx)."""
    pkg = types.ModuleType("pycuda")
    pkg.__path__ = []
    drv = make_pycuda_driver(devices=devices)
    pkg.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    names = {"pycuda.autoinit"} | ({"pycuda.autoprimaryctx"} if primaryctx else set())
    for name in ("pycuda.autoinit", "pycuda.autoprimaryctx"):  # imported afresh, and gone after the test
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_PycudaFinder(drv, names)] + sys.meta_path)
    return drv
