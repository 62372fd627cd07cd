"""Native TensorRT engine: the bundle's ``model.<gpu>.plan`` run through the TensorRT runtime API.

The API used is the one stable from TensorRT 8.5 to 11 (REFERENCE.md §5)::

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_bytes)
    for i in range(engine.num_io_tensors): name = engine.get_tensor_name(i); engine.get_tensor_mode(name)
    context = engine.create_execution_context()
    context.set_input_shape(input_name, shape); context.set_tensor_address(name, device_ptr)
    context.execute_async_v3(stream)

Device buffers and copies go through cuda-python (``cuda.bindings.runtime``, what NVIDIA's samples use
since TensorRT 10.14; cuda-python before 12.6 exposes it as ``cuda.cudart``), whose major version must
match the device's CUDA (JetPack 6 = CUDA 12.6: ``cuda-python~=12.6``; CUDA 13: ``~=13.0``), or else
pycuda (``pycuda.autoprimaryctx``, as NVIDIA's TensorRT 8.5 samples). Buffers are allocated for the
largest batch of the plan's optimisation profile and reused; host buffers are pinned. Every CUDA failure,
including cuda-python's ``RuntimeError`` without a driver, is an :class:`EngineError` that names the fix.
Nothing here is imported until a TensorRT engine is asked for. The fakes these paths are tested against,
and the binding source lines they follow, are in ``tests/fakes/`` (docs/JETSON.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading

import numpy as np

from runtime.engines.base import Engine, EngineError
from runtime.engines.bundle import Bundle

logger = logging.getLogger(__name__)

TRT_MISSING = ("TensorRT is not installed here (`import tensorrt` fails): on a Jetson with JetPack 6 it comes with "
               "JetPack (`sudo apt install python3-libnvinfer`, in a venv made with --system-site-packages); "
               "elsewhere use --backend onnxruntime")
# cuda-python's major version must match the CUDA of the device: 13.x needs CUDA 13 (driver >= 580) and fails
# on JetPack 6 (CUDA 12.6), where an unpinned `pip install cuda-python` now resolves to 13.x.
CUDA_PYTHON_PINS = ("JetPack 6 (CUDA 12.6): `pip install 'cuda-python~=12.6'`; "
                    "JetPack 7 / CUDA 13: `pip install 'cuda-python~=13.0'`")
_CUDA_HINT = (f"device buffers need cuda-python matched to this device's CUDA ({CUDA_PYTHON_PINS}) "
              "or pycuda (`pip install pycuda`)")
_DRIVER_HINT = ("is the GPU visible (`nvidia-smi`, or `tegrastats` on a Jetson) and does cuda-python's major "
                f"version match the CUDA driver? {CUDA_PYTHON_PINS}")


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise EngineError(TRT_MISSING) from e
    return trt


class _CudaPython:
    """Buffers and streams through cuda-python's runtime bindings.

    cuda-python 12.x raises ``RuntimeError`` ("Failed to dlopen libcuda.so.1", then 'Function "cuInit" not
    found') when there is no usable driver, instead of returning an error code; 13.x returns
    ``cudaErrorInsufficientDriver`` on a driver older than CUDA 13. Both become :class:`EngineError` here.
    """

    name = "cuda-python"

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6 layout
        self.rt = cudart
        self._pinned: list[int] = []
        count = self._call("cudaGetDeviceCount")
        if int(count) < 1:
            raise EngineError(f"cuda-python sees no CUDA device; {_DRIVER_HINT}")

    def _call(self, fn: str, *args):
        """``cudart.<fn>(*args)``: its values without the error code; any failure is an EngineError."""
        try:
            result = getattr(self.rt, fn)(*args)
        except RuntimeError as e:  # cuda-python 12.x without a usable driver
            raise EngineError(f"cuda-python {fn} failed ({e}): {_DRIVER_HINT}") from e
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != int(self.rt.cudaError_t.cudaSuccess):
            name = getattr(err, "name", str(err))
            raise EngineError(f"CUDA {fn} failed with {name} ({int(err)}); {_DRIVER_HINT}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def host_empty(self, shape, dtype) -> np.ndarray:
        import ctypes

        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._call("cudaMallocHost", nbytes))
        self._pinned.append(ptr)
        buf = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype).reshape(shape)

    def stream(self):
        return self._call("cudaStreamCreate")

    def htod(self, dst: int, src: np.ndarray, stream) -> None:
        # the copy kind must be a cudaMemcpyKind: cuda-python 12.x reads `kind.value` (a plain int raises)
        self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes,
                   self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream) -> None:
        self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes,
                   self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def sync(self, stream) -> None:
        self._call("cudaStreamSynchronize", stream)

    def stream_handle(self, stream) -> int:
        return int(stream)

    def current(self):
        """Nothing to do per thread: the runtime API makes the device's primary context current in every
        host thread (device 0, the only one this engine uses)."""
        return contextlib.nullcontext()

    def close(self, stream) -> None:
        pinned, self._pinned = self._pinned, []
        for p in pinned:
            self._call("cudaFreeHost", p)
        self._call("cudaStreamDestroy", stream)


class _PyCuda:
    """Buffers and streams through pycuda (TensorRT 8.5 era; NVIDIA's 8.5 samples use it).

    The context comes from ``pycuda.autoprimaryctx`` (pycuda >= 2021.1: the device's primary context, the
    one TensorRT's runtime API uses), else ``pycuda.autoinit`` (a new context), as NVIDIA's TensorRT 8.5
    samples do. Both run ``cuda.init()`` and create a context on import: without a GPU they raise pycuda's
    own errors or ``RuntimeError``, not ``ImportError``; those become :class:`EngineError`.
    """

    name = "pycuda"

    def __init__(self):
        import importlib

        import pycuda.driver as drv  # ImportError: no pycuda (or no libcuda.so.1 to link against)

        try:
            try:
                ctx_module = importlib.import_module("pycuda.autoprimaryctx")
            except ModuleNotFoundError as e:
                if e.name != "pycuda.autoprimaryctx":
                    raise
                ctx_module = importlib.import_module("pycuda.autoinit")  # pycuda < 2021.1
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 - pycuda.driver.Error subclasses or RuntimeError
            raise EngineError(f"pycuda could not create a CUDA context ({type(e).__name__}: {e}); "
                              "is the GPU visible (`nvidia-smi`, or `tegrastats` on a Jetson)?") from e
        self.drv = drv
        self._allocs = {}
        # the context is current on this (the importing) thread only: CUDA's context stack is per thread
        self.ctx, self._owner = ctx_module.context, threading.get_ident()

    @contextlib.contextmanager
    def current(self):
        """The context made current around a call from another thread (the service's embed thread)."""
        if threading.get_ident() == self._owner:
            yield
            return
        self.ctx.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        a = self.drv.mem_alloc(nbytes)
        self._allocs[int(a)] = a
        return int(a)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def host_empty(self, shape, dtype) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def stream(self):
        return self.drv.Stream()

    def htod(self, dst: int, src: np.ndarray, stream) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def sync(self, stream) -> None:
        stream.synchronize()

    def stream_handle(self, stream) -> int:
        return stream.handle

    def close(self, stream) -> None:
        pass  # page-locked arrays are freed with their last reference; the stream with its object


def cuda_backend():
    """cuda-python if it imports and reaches the driver, else pycuda; one EngineError naming both failures."""
    errors = []
    for cls in (_CudaPython, _PyCuda):
        try:
            backend = cls()
        except (ImportError, EngineError) as e:
            errors.append(f"{cls.name}: {e}")
            continue
        if errors:
            logger.warning("device buffers through %s (%s)", cls.name, "; ".join(errors))
        return backend
    tried = " | ".join(errors)
    raise EngineError(f"no CUDA buffer library works here: {tried}" + ("" if CUDA_PYTHON_PINS in tried else
                                                                     f". {_CUDA_HINT}"))


class TensorRTEngine(Engine):
    def __init__(self, bundle: Bundle, entry: dict, device_index: int = 0):
        super().__init__(bundle, entry["precision"])
        trt = _import_tensorrt()
        self.trt = trt
        self.path = bundle.file_path(entry)
        built_for = entry.get("trt_version")
        if built_for and getattr(trt, "__version__", None) and built_for.split(".")[:2] != trt.__version__.split(".")[:2]:
            raise EngineError(
                f"{self.path} was built with TensorRT {built_for}, this is {trt.__version__}: engines are tied "
                "to the TensorRT version; rebuild it on this device with `python -m export --bundle B --trt`"
            )
        self.h_in = self.h_out = self.d_in = self.d_out = None
        self.cuda = cuda_backend()  # before deserialising: pycuda's context must exist first
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.path} (other GPU or TensorRT version?); "
                              "rebuild the engine on this device with `python -m export --bundle B --trt`")
        self.context = self.engine.create_execution_context()
        self._read_io(bundle)
        self.name = f"tensorrt[{getattr(trt, '__version__', '?')}, {self.cuda.name}] {self.precision}"
        self.stream = self.cuda.stream()
        n = self.max_batch
        self.d_in = self.cuda.malloc(n * int(np.prod(self.sample_shape)) * self.in_dtype.itemsize)
        self.d_out = self.cuda.malloc(n * self.embedding_dim * self.out_dtype.itemsize)
        self.h_in = self.cuda.host_empty((n, *self.sample_shape), self.in_dtype)
        self.h_out = self.cuda.host_empty((n, self.embedding_dim), self.out_dtype)
        self.context.set_tensor_address(self.input_name, self.d_in)
        self.context.set_tensor_address(self.output_name, self.d_out)
        logger.info("engine %s from %s (max batch %d)", self.name, self.path, self.max_batch)

    def _read_io(self, bundle: Bundle) -> None:
        """Input/output names, shapes and dtypes of the plan, checked against the manifest."""
        trt, engine = self.trt, self.engine
        self.inputs, self.outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            (self.inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append(name)
        if self.inputs != [self.input_name]:
            raise EngineError(f"{self.path} has inputs {self.inputs}, the manifest says [{self.input_name!r}]")
        out_name = bundle.manifest.get("output", {}).get("name", "embedding")
        if self.outputs != [out_name]:
            raise EngineError(f"{self.path} has outputs {self.outputs}, the manifest says [{out_name!r}]; "
                              "re-export the bundle and rebuild the engine")
        self.output_name = out_name
        shape = tuple(engine.get_tensor_shape(self.input_name))
        if shape[0] == -1:
            _, _, max_shape = engine.get_tensor_profile_shape(self.input_name, 0)
            self.max_batch = int(max_shape[0])
        else:
            self.max_batch = int(shape[0])
        self.sample_shape = tuple(int(v) for v in shape[1:])
        self.in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        if self.in_dtype != np.dtype(self.input_dtype):
            raise EngineError(f"{self.path} takes {self.in_dtype.name} input, the manifest says {self.input_dtype}; "
                              "rebuild the engine from this bundle with `python -m export --bundle B --trt`")

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.h_in is None:
            raise EngineError(f"{self.name} is closed; load the engine again")
        n = len(x)
        if x.dtype != self.in_dtype:
            raise EngineError(f"{self.name} takes {self.in_dtype.name} input, got {x.dtype}; use engine.prepare()")
        if tuple(x.shape[1:]) != self.sample_shape:
            raise EngineError(f"{self.name} takes (N, {', '.join(map(str, self.sample_shape))}), got {x.shape}")
        self.h_in[:n] = x
        if not self.context.set_input_shape(self.input_name, (n, *self.sample_shape)):
            raise EngineError(f"TensorRT refused input shape {(n, *self.sample_shape)}")
        with self.cuda.current():
            self.cuda.htod(self.d_in, self.h_in[:n], self.stream)
            if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
                raise EngineError("TensorRT execute_async_v3 failed")
            self.cuda.dtoh(self.h_out[:n], self.d_out, self.stream)
            self.cuda.sync(self.stream)
        return self.h_out[:n].astype(np.float32)

    def close(self) -> None:
        """Free the device and pinned host buffers; the engine cannot run afterwards (idempotent)."""
        if getattr(self, "d_in", None) is None:
            return
        # drop the arrays that view the pinned memory before it is freed: no use after free
        self.h_in = self.h_out = None
        d_in, d_out, self.d_in, self.d_out = self.d_in, self.d_out, None, None
        self.cuda.free(d_in)
        self.cuda.free(d_out)
        self.cuda.close(self.stream)
