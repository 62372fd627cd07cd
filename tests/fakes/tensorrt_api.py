"""Fakes of the TensorRT Python build API for versions 8.5, 10.x and 11.x (TensorRT cannot exist here).

Each fake exposes only what that version's bindings have, so code using a removed or not-yet-added name
fails the way the real module does (``AttributeError``). Checked against TensorRT OSS at tags 8.5.3,
v10.3.0 and v11.1 (``include/NvInfer.h`` for the values, ``python/src/infer/pyCore.cpp`` for the names):

- ``NetworkDefinitionCreationFlag``: 8.5 EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1 (NvInfer.h 9339-9343,
  pyCore.cpp 1110-1115); 10.3 EXPLICIT_BATCH=0, STRONGLY_TYPED=1 (NvInfer.h 9614-9620, pyCore.cpp
  1500-1505); 11.1 STRONGLY_TYPED=0 (deprecated, always on), PREFER_JIT_PYTHON_PLUGINS=1,
  PREFER_AOT_PYTHON_PLUGINS=2, no EXPLICIT_BATCH (NvInfer.h 11462-11481, pyCore.cpp 1771-1779).
- ``BuilderFlag``: FP16=0, INT8=1, DEBUG=2, GPU_FALLBACK=3 in 8.5 and 10.3; 11.1 has no FP16/INT8
  (NvInfer.h 8.5.3 8389-8416, v10.3.0 8300-8323, v11.1 9962-9979). ``platform_has_fast_fp16`` is gone in 11.
- ``IOptimizationProfile.set_shape`` raises ``RuntimeError("Shape provided for opt is inconsistent with
  other shapes.")`` when ``setDimensions`` refuses (PY_ASSERT_RUNTIME_ERROR, pyCore.cpp 8.5.3 35-43,
  v10.3.0 34-42, v11.1 36-44; the macro in python/include/utils.h 149-156).
- ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch) -> bool`` binds ``setTimingCache``, which
  returns false for a cache whose CUDA device properties differ from the current device (NvInfer.h
  v10.3.0 9268-9289; pyCore.cpp 8.5.3 1101, v10.3.0 1482, v11.1 1740).
- An 8.5 network created without EXPLICIT_BATCH cannot parse an ONNX file (implicit batch is not
  supported by the ONNX parser).

The "engine" is a JSON description whose layer data types follow what the real builder would do: with
the FP16/INT8 flags on 8.5/10, from the ONNX's own types (float16 tensors, Q/DQ nodes) on 11. Knobs
simulate failure modes: ``fast_fp16=False`` (a GPU without fast FP16), ``silent_fp32=True`` (a build that
ignores the requested precision, as third-party exporters saw on TensorRT 11), ``gpu="..."`` (the device a
timing cache is made on and checked against), ``timing_cache_ok=False`` (every cache refused).

Use :func:`install` to put a fake into ``sys.modules['tensorrt']``.
"""

from __future__ import annotations

import json
import sys
import types

import onnx


class _Enum:
    """An enum class with only the given members; a missing member raises AttributeError."""

    def __init__(self, name: str, members: dict[str, int]):
        self._name = name
        for k, v in members.items():
            setattr(self, k, _Member(name, k, v))

    def __repr__(self):
        return f"<fake enum {self._name}>"


class _Member(int):
    def __new__(cls, enum: str, name: str, value: int):
        obj = int.__new__(cls, value)
        obj.enum, obj.name = enum, name
        return obj

    def __repr__(self):
        return f"{self.enum}.{self.name}"


class _HostMemory:
    """IHostMemory: supports the buffer protocol through bytes()."""

    def __init__(self, data: bytes):
        self._data = data

    def __bytes__(self):
        return self._data

    @property
    def nbytes(self):
        return len(self._data)


def make_tensorrt(version: str, *, fast_fp16: bool = True, silent_fp32: bool = False, gpu: str = "Orin",
                  timing_cache_ok: bool = True) -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # (name, args) of every builder call, for assertions
    trt.timing_caches_loaded = []  # bytes given to create_timing_cache

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, severity=1):
            self.severity = severity

    trt.Logger = Logger

    flag_members = {8: {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1},
                    10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
                    11: {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}}[major]
    trt.NetworkDefinitionCreationFlag = _Enum("NetworkDefinitionCreationFlag", flag_members)
    builder_flags = {"DEBUG": 2, "GPU_FALLBACK": 3}
    builder_flags.update({"REFIT": 5, "DISABLE_TIMING_CACHE": 6, "TF32": 7, "SPARSE_WEIGHTS": 8} if major < 10 else
                         {"REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7})
    if major < 11:
        builder_flags.update({"FP16": 0, "INT8": 1})
    trt.BuilderFlag = _Enum("BuilderFlag", builder_flags)
    trt.MemoryPoolType = _Enum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})
    trt.ProfilingVerbosity = _Enum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.LayerInformationFormat = _Enum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.explicit_batch = major >= 10 or bool(flags & (1 << 0))
            self.onnx = None

    class OnnxParser:
        def __init__(self, network, logger):
            if not isinstance(network, Network) or not isinstance(logger, Logger):
                raise TypeError("OnnxParser(network: INetworkDefinition, logger: ILogger)")
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            trt.calls.append(("parse_from_file", path))
            if not self.network.explicit_batch:
                self.errors.append("Network must have explicit batch dimension (EXPLICIT_BATCH flag)")
                return False
            try:
                model = onnx.load(path)
                onnx.checker.check_model(model)
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"ONNX load failed: {e}")
                return False
            opset = {o.domain: o.version for o in model.opset_import}.get("", 0)
            if opset > {8: 17, 10: 20, 11: 23}[major]:
                self.errors.append(f"opset {opset} unsupported")
                return False
            self.network.onnx = model
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - the real keyword names
            # setDimensions(kMIN), (kOPT), (kMAX) in turn, each checked against those already set
            if any(v < 1 for v in min):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            if len(opt) != len(min) or any(a > b for a, b in zip(min, opt)):
                raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
            if len(max) != len(opt) or any(a > b for a, b in zip(opt, max)):
                raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        """Serialised as JSON with the device it was made on (the real header holds the device properties)."""

        def __init__(self, data: bytes):
            blob = json.loads(data.decode()) if data else {"device": None, "entries": []}
            self.device, self.entries = blob["device"], blob["entries"]

        def serialize(self):
            return _HostMemory(json.dumps({"device": self.device or gpu, "entries": self.entries}).encode())

    class Config:
        def __init__(self):
            self.flags, self.pools, self.profiles = set(), {}, []
            self.timing_cache = None
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY

        def set_flag(self, flag):
            if not isinstance(flag, _Member) or flag.enum != "BuilderFlag":
                raise TypeError(f"set_flag expects a BuilderFlag, got {flag!r}")
            self.flags.add(flag.name)

        def set_memory_pool_limit(self, pool, size):
            if int(size) <= 0:
                raise ValueError("pool size must be > 0")
            self.pools[pool.name] = int(size)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            trt.timing_caches_loaded.append(bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            if not isinstance(cache, TimingCache):
                raise TypeError("set_timing_cache(cache: ITimingCache, ignore_mismatch: bool)")
            trt.calls.append(("set_timing_cache", cache.device))
            if not timing_cache_ok or (cache.device not in (None, gpu) and not ignore_mismatch):
                return False  # "A failure will be reported if the CUDA device property ... is different"
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

    class Builder:
        def __init__(self, logger):
            if not isinstance(logger, Logger):
                raise TypeError("Builder(logger: ILogger)")

        def create_network(self, flags=0):
            trt.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build_serialized_network", sorted(config.flags)))
            if network.onnx is None:
                return None
            inputs = [i.name for i in network.onnx.graph.input]
            for p in config.profiles:
                missing = set(inputs) - set(p.shapes)
                if missing:
                    return None  # real TRT: "profile has no shape for input ..." then None
            if not config.profiles and any(
                    d.dim_param for i in network.onnx.graph.input for d in i.type.tensor_type.shape.dim):
                return None
            ops = [n.op_type for n in network.onnx.graph.node]
            has_qdq = "QuantizeLinear" in ops
            has_fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in network.onnx.graph.initializer)
            if major >= 11:
                fp16, int8 = has_fp16, has_qdq
            else:
                fp16 = "FP16" in config.flags
                int8 = "INT8" in config.flags and has_qdq
            if silent_fp32:
                fp16 = int8 = False
            layers = []
            for i, op in enumerate(o for o in ops if o not in ("QuantizeLinear", "DequantizeLinear")):
                dtype = "Int8" if int8 and op in ("Conv", "MatMul", "Gemm") else ("Half" if fp16 else "FP32")
                layers.append({"Name": f"{op}_{i}", "LayerType": op,
                               "Outputs": [{"Name": f"t{i}", "Format/Datatype": f"Row major linear {dtype} format"}]})
            # timing cache: one entry per distinct layer signature; reused entries are not re-timed
            key = f"{len(ops)}:{sorted(config.flags)}"
            if config.timing_cache is not None and key not in config.timing_cache.entries:
                config.timing_cache.entries.append(key)
            return _HostMemory(json.dumps({"version": version, "layers": layers}).encode())

    if major < 11:
        Builder.platform_has_fast_fp16 = property(lambda self: fast_fp16)
        Builder.platform_has_fast_int8 = property(lambda self: True)

    class Inspector:
        def __init__(self, layers):
            self.layers = layers

        def get_engine_information(self, fmt):
            if fmt.name != "JSON":
                raise ValueError("fake supports JSON only")
            return json.dumps({"Layers": self.layers, "Bindings": ["image", "embedding"]})

    class Engine:
        def __init__(self, desc):
            self.desc = desc

        def create_engine_inspector(self):
            return Inspector(self.desc["layers"])

    class Runtime:
        def __init__(self, logger):
            if not isinstance(logger, Logger):
                raise TypeError("Runtime(logger: ILogger)")

        def deserialize_cuda_engine(self, plan):
            desc = json.loads(bytes(plan).decode())
            if desc["version"] != version:
                return None  # engines are tied to the TensorRT version
            return Engine(desc)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def install(monkeypatch, version: str, **knobs) -> types.ModuleType:
    """Put a fake TensorRT ``version`` into sys.modules for the duration of a test."""
    trt = make_tensorrt(version, **knobs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt
