"""A fake of the TensorRT runtime API (8.5 to 11) that runs a real ONNX model with ONNX Runtime.

The plan file is the ONNX model itself; ``deserialize_cuda_engine`` returns an engine whose
``execute_async_v3`` reads the input at the address given to ``set_tensor_address`` (real host memory
behind the fake device buffers of tests/fakes/cuda_api.py), runs the model, and writes the output at the
output's address, so the data path is checked end to end. The calls follow the pybind11 bindings in
TensorRT OSS ``python/src/infer/pyCore.cpp`` (8.5.3 / v10.3.0 / v11.1), which are the same on this
surface:

- ``num_io_tensors``, ``get_tensor_name(index)``, ``get_tensor_mode(name)``, ``get_tensor_shape(name)``,
  ``get_tensor_dtype(name)``, ``get_tensor_profile_shape(name, profile_index)`` (8.5.3 lines 928-944;
  v10.3.0 lines 1187-1261);
- ``set_input_shape(name, shape) -> bool`` (8.5.3 line 819; v10.3.0 lines 1050-1054, lambda line 157);
- ``set_tensor_address(name, memory: size_t) -> bool`` and ``execute_async_v3(stream_handle: size_t) ->
  bool`` (8.5.3 lines 126-134; v10.3.0 lines 111-119; v11.1 lines 113-121): pybind11 converts any object
  with ``__index__`` to ``size_t`` and raises ``TypeError`` for anything else;
- ``trt.nptype``: FLOAT, HALF, INT8, INT32, BOOL, UINT8 map to numpy (``python/packaging/.../tensorrt/
  __init__.py`` line 151); ``DataType.UINT8`` exists since 8.5 (``NvInferRuntimeCommon.h`` line 145).
"""

from __future__ import annotations

import ctypes
import enum
import operator
import types

import numpy as np


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
       DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}


def _size_t(value, what):
    """pybind11's size_t caster: ints and __index__ objects pass, anything else is a TypeError."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what}(): incompatible function arguments: {value!r} is not a size_t") from None


def make_runtime_tensorrt(plan: bytes, version: str = "10.3.0", *, max_batch: int = 4) -> types.ModuleType:
    """A ``tensorrt`` module whose engine is the ONNX model in ``plan`` with a (1, 1, max_batch) profile."""
    import onnxruntime as ort

    sess = ort.InferenceSession(plan, providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    in_dt = DataType.UINT8 if inp.type == "tensor(uint8)" else DataType.FLOAT
    sample = tuple(int(d) for d in inp.shape[1:])
    dim = int(out.shape[1])
    profile = ((1, *sample), (1, *sample), (max_batch, *sample))

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType, trt.TensorIOMode = DataType, TensorIOMode
    trt.nptype = lambda dt: _NP[dt]
    log = trt.calls = []

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, severity=WARNING):
            self.severity = severity

    class Context:
        def __init__(self):
            self.addr, self.shape = {}, None

        def set_input_shape(self, name, shape):
            assert name == inp.name
            shape = tuple(shape)
            lo, _, hi = profile
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            self.shape = shape if ok else None
            log.append(("set_input_shape", shape))
            return ok

        def set_tensor_address(self, name, memory):
            assert name in (inp.name, out.name)
            self.addr[name] = _size_t(memory, "set_tensor_address")
            return True

        def execute_async_v3(self, stream_handle):
            _size_t(stream_handle, "execute_async_v3")
            assert set(self.addr) == {inp.name, out.name}, "every I/O tensor needs an address"
            assert self.shape is not None, "set_input_shape must come before execute_async_v3"
            dtype = np.dtype(_NP[in_dt])
            nbytes = int(np.prod(self.shape)) * dtype.itemsize
            x = np.frombuffer((ctypes.c_byte * nbytes).from_address(self.addr[inp.name]), dtype).reshape(self.shape)
            y = np.ascontiguousarray(sess.run(None, {inp.name: x.copy()})[0], np.float32)
            ctypes.memmove(self.addr[out.name], y.ctypes.data, y.nbytes)
            log.append(("execute_async_v3", self.shape[0]))
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, index):
            return [inp.name, out.name][index]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == inp.name else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return (-1, *sample) if name == inp.name else (-1, dim)

        def get_tensor_profile_shape(self, name, profile_index):
            assert name == inp.name and profile_index == 0
            return list(profile)

        def get_tensor_dtype(self, name):
            return in_dt if name == inp.name else DataType.FLOAT

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            if not isinstance(logger, Logger):
                raise TypeError("Runtime(logger: ILogger)")

        def deserialize_cuda_engine(self, serialized_engine):
            return Engine() if bytes(serialized_engine) == plan else None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt
