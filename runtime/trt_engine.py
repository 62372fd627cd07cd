"""Native TensorRT engine: the bundle's ``model.<gpu>.plan`` run through the TensorRT runtime API.

The API used is the one stable from TensorRT 8.5 (JetPack 5) to 11 (REFERENCE.md §5)::

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_bytes)
    for i in range(engine.num_io_tensors): name = engine.get_tensor_name(i); engine.get_tensor_mode(name)
    context = engine.create_execution_context()
    context.set_input_shape(input_name, shape); context.set_tensor_address(name, device_ptr)
    context.execute_async_v3(stream)

Device buffers and copies go through cuda-python (``cuda.bindings.runtime``, what NVIDIA's samples use
since TensorRT 10.14; older cuda-python exposes it as ``cuda.cudart``) or, when that is what JetPack 5
has, pycuda. Buffers are allocated for the largest batch of the plan's optimisation profile and reused;
host buffers are pinned. Nothing here is imported until a TensorRT engine is asked for.
"""

from __future__ import annotations

import logging

import numpy as np

from .bundle import Bundle
from .engine import Engine, EngineError

logger = logging.getLogger(__name__)

_TRT_HINT = ("TensorRT's Python module is not installed: on a Jetson it comes with JetPack "
             "(`sudo apt install python3-libnvinfer`); elsewhere use --backend onnxruntime")
_CUDA_HINT = ("device buffers need cuda-python (`pip install cuda-python`, Python >= 3.10) or pycuda "
              "(JetPack 5: `pip install pycuda`)")


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise EngineError(_TRT_HINT) from e
    return trt


class _CudaPython:
    """Buffers and streams through cuda-python's runtime bindings."""

    name = "cuda-python"

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6 layout
        self.rt = cudart

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != int(self.rt.cudaError_t.cudaSuccess):
            raise EngineError(f"CUDA call failed with {err!r}; is the GPU visible (nvidia-smi / tegrastats)?")
        return rest[0] if len(rest) == 1 else (rest or None)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def host_empty(self, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes)))
        import ctypes

        buf = (ctypes.c_byte * nbytes).from_address(ptr)
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        self._pinned = getattr(self, "_pinned", []) + [ptr]
        return arr

    def stream(self):
        return self._check(self.rt.cudaStreamCreate())

    def htod(self, dst: int, src: np.ndarray, stream) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def dtoh(self, dst: np.ndarray, src: int, stream) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def sync(self, stream) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))

    def stream_handle(self, stream) -> int:
        return int(stream)

    def close(self, stream) -> None:
        for p in getattr(self, "_pinned", []):
            self.rt.cudaFreeHost(p)
        self._pinned = []
        self.rt.cudaStreamDestroy(stream)


class _PyCuda:
    """Buffers and streams through pycuda (JetPack 5)."""

    name = "pycuda"

    def __init__(self):
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as drv

        self.drv = drv
        self._allocs = {}

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
        pass


def cuda_backend():
    """cuda-python if importable, else pycuda; a clear error when neither is."""
    errors = []
    for cls in (_CudaPython, _PyCuda):
        try:
            return cls()
        except ImportError as e:
            errors.append(f"{cls.name}: {e}")
    raise EngineError(f"{_CUDA_HINT} ({'; '.join(errors)})")


class TensorRTEngine(Engine):
    def __init__(self, bundle: Bundle, entry: dict, device_index: int = 0):
        super().__init__(bundle, entry["precision"])
        trt = _import_tensorrt()
        self.trt = trt
        self.cuda = cuda_backend()
        self.path = bundle.file_path(entry)
        built_for = entry.get("trt_version")
        if built_for and getattr(trt, "__version__", None) and built_for.split(".")[:2] != trt.__version__.split(".")[:2]:
            raise EngineError(
                f"{self.path} was built with TensorRT {built_for}, this is {trt.__version__}: engines are tied "
                "to the TensorRT version; rebuild it on this device with `python -m export ... --trt`"
            )
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.path} (other GPU or TensorRT version?); "
                              "rebuild the engine on this device")
        self.context = self.engine.create_execution_context()
        self.inputs, self.outputs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            mode = self.engine.get_tensor_mode(name)
            (self.inputs if mode == trt.TensorIOMode.INPUT else self.outputs).append(name)
        if self.inputs != [self.input_name]:
            raise EngineError(f"{self.path} has inputs {self.inputs}, the manifest says [{self.input_name!r}]")
        out_name = bundle.manifest.get("output", {}).get("name", "embedding")
        if out_name not in self.outputs:
            raise EngineError(f"{self.path} has outputs {self.outputs}, the manifest says {out_name!r}")
        self.output_name = out_name
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if shape[0] == -1:
            _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.max_batch = int(max_shape[0])
        else:
            self.max_batch = int(shape[0])
        self.sample_shape = tuple(int(v) for v in shape[1:])
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self.stream = self.cuda.stream()
        n = self.max_batch
        self.d_in = self.cuda.malloc(n * int(np.prod(self.sample_shape)) * self.in_dtype.itemsize)
        self.d_out = self.cuda.malloc(n * self.embedding_dim * self.out_dtype.itemsize)
        self.h_in = self.cuda.host_empty((n, *self.sample_shape), self.in_dtype)
        self.h_out = self.cuda.host_empty((n, self.embedding_dim), self.out_dtype)
        self.context.set_tensor_address(self.input_name, self.d_in)
        self.context.set_tensor_address(self.output_name, self.d_out)
        for extra in self.outputs:
            if extra != self.output_name:
                raise EngineError(f"{self.path} has an unexpected extra output {extra!r}; re-export the bundle")
        self.name = f"tensorrt[{getattr(trt, '__version__', '?')}, {self.cuda.name}] {self.precision}"
        logger.info("engine %s from %s (max batch %d)", self.name, self.path, self.max_batch)

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if tuple(x.shape[1:]) != self.sample_shape:
            raise EngineError(f"{self.name} takes (N, {', '.join(map(str, self.sample_shape))}), got {x.shape}")
        self.h_in[:n] = x.astype(self.in_dtype, copy=False)
        if not self.context.set_input_shape(self.input_name, (n, *self.sample_shape)):
            raise EngineError(f"TensorRT refused input shape {(n, *self.sample_shape)}")
        self.cuda.htod(self.d_in, self.h_in[:n], self.stream)
        if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise EngineError("TensorRT execute_async_v3 failed")
        self.cuda.dtoh(self.h_out[:n], self.d_out, self.stream)
        self.cuda.sync(self.stream)
        return self.h_out[:n].astype(np.float32)

    def close(self) -> None:
        if getattr(self, "d_in", None) is not None:
            self.cuda.free(self.d_in)
            self.cuda.free(self.d_out)
            self.cuda.close(self.stream)
            self.d_in = self.d_out = None
