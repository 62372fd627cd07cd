"""The TensorRT builder against fakes of the 8.5, 10 and 11 APIs (TensorRT cannot be installed here)."""

from __future__ import annotations

import json
import sys

import pytest

from export import trt_build
from tests.fakes.tensorrt_api import install, make_tensorrt

VERSIONS = ["8.5.2", "10.3.0", "11.4.0"]


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    """A real exported bundle: FP32, FP16 and INT8 ONNX of a tiny timm model."""
    import timm

    from export.onnx_export import export_onnx, prepare
    from export.quantize import convert_fp16, quantize_int8
    from runtime.engines.bundle import new_manifest, write_manifest
    from runtime.engines.preprocess import Preprocess

    d = tmp_path_factory.mktemp("bundle")
    model = timm.create_model("test_efficientnet", num_classes=0).eval()
    p = Preprocess((32, 32))
    export_onnx(model, p, d / "model.onnx")
    convert_fp16(d / "model.onnx", d / "model.fp16.onnx")
    import numpy as np

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(4)]
    quantize_int8(d / "model.onnx", d / "model.int8.onnx", prepare(imgs, p, "float32"))
    files = [{"path": f"model{s}.onnx", "kind": "onnx", "precision": prec, "sha256": "x"}
             for s, prec in (("", "fp32"), (".fp16", "fp16"), (".int8", "int8"))]
    write_manifest(d, new_manifest(model_name="test_efficientnet", embedding_dim=256, model_fingerprint="0" * 16,
                                   preprocess=p.to_dict(), files=files,
                                   input={"name": "image", "dtype": "float32", "layout": "NCHW"}))
    return d


def test_without_tensorrt_the_error_says_where_to_run(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(trt_build.TensorRTUnavailable, match="JetPack 6") as e:
        trt_build.import_tensorrt()
    msg = str(e.value)
    # JetPack 5.1 is not offered as a target: its Python 3.8 is below this package's 3.10
    assert "JetPack 5.1 (TensorRT 8.5)" not in msg and "JetPack 5.1's Python 3.8 is too old" in msg
    from export.__main__ import main

    assert main(["--bundle", "no-such-bundle", "--trt"]) == 2  # one line on the console, no traceback
    assert "TensorRT is not installed here" in caplog.text and "--bundle BUNDLE --trt" in caplog.text


def test_fakes_reject_what_each_version_lacks():
    t11, t10, t85 = make_tensorrt("11.4.0"), make_tensorrt("10.3.0"), make_tensorrt("8.5.2")
    with pytest.raises(AttributeError):
        _ = t11.BuilderFlag.FP16
    with pytest.raises(AttributeError):
        _ = t11.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    with pytest.raises(AttributeError):
        _ = t11.Builder(t11.Logger()).platform_has_fast_fp16
    with pytest.raises(AttributeError):
        _ = t85.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert int(t10.BuilderFlag.FP16) == 0 and t10.Builder(t10.Logger()).platform_has_fast_fp16
    # the bit values of NvInfer.h: a flag passed as 1 << value means another thing in another version
    assert int(t10.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    assert int(t11.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0
    assert int(t85.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) == int(t10.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) == 0
    assert int(t85.BuilderFlag.INT8) == int(t10.BuilderFlag.INT8) == 1
    # IOptimizationProfile.set_shape raises RuntimeError (PY_ASSERT_RUNTIME_ERROR), not ValueError
    profile = t10.Builder(t10.Logger()).create_optimization_profile()
    with pytest.raises(RuntimeError, match="Shape provided for opt is inconsistent"):
        profile.set_shape("image", (4, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))
    with pytest.raises(RuntimeError, match="Shape provided for max is inconsistent"):
        profile.set_shape("image", (1, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8))
    profile.set_shape("image", (1, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_builds_every_precision_on_every_version(monkeypatch, onnx_models, version, precision):
    trt = install(monkeypatch, version)
    entry = trt_build.build_bundle_engine(onnx_models, precision, batch=(1, 4, 8), workspace_mib=256)
    major = int(version.split(".")[0])
    # flags as each version documents them
    create = [c for c in trt.calls if c[0] == "create_network"][0]
    assert create[1] == (1 if major < 10 else 0)
    build_flags = [c for c in trt.calls if c[0] == "build_serialized_network"][0][1]
    if major >= 11:
        assert build_flags == []
    else:
        assert build_flags == {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[precision]
    parsed = [c[1] for c in trt.calls if c[0] == "parse_from_file"][0]
    expected_onnx = {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx" if major >= 11 else "model.onnx",
                     "fp32": "model.onnx"}[precision]
    assert parsed.endswith(expected_onnx)
    # achieved precision recorded, engine and manifest written
    assert entry["precision"] == precision and entry["trt_version"] == version
    assert entry["input_shape"] == {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]}
    want = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}[precision]
    assert entry["layer_precisions"].get(want, 0) > 0
    manifest = json.loads((onnx_models / "manifest.json").read_text())
    assert entry["path"] in [f["path"] for f in manifest["files"]]
    assert (onnx_models / entry["path"]).is_file()


@pytest.mark.parametrize("version", VERSIONS)
def test_fp16_request_that_gives_fp32_is_an_error(monkeypatch, onnx_models, tmp_path, version):
    install(monkeypatch, version, silent_fp32=True)
    with pytest.raises(trt_build.PrecisionError, match="fell back to FP32"):
        trt_build.build_engine(onnx_models / "model.fp16.onnx", tmp_path / "e.plan", precision="fp16",
                               input_chw=(3, 32, 32))
    assert not (tmp_path / "e.plan").exists()  # nothing that looks like a good engine is left behind


def test_trt11_fp16_from_an_fp32_onnx_is_an_error(monkeypatch, onnx_models, tmp_path):
    """Strongly typed 11 cannot make FP16 out of an FP32 graph: asking for it must fail, not ship FP32."""
    install(monkeypatch, "11.4.0")
    with pytest.raises(trt_build.PrecisionError):
        trt_build.build_engine(onnx_models / "model.onnx", tmp_path / "e.plan", precision="fp16",
                               input_chw=(3, 32, 32))


def test_gpu_without_fast_fp16_is_refused(monkeypatch, onnx_models, tmp_path):
    install(monkeypatch, "8.5.2", fast_fp16=False)
    with pytest.raises(trt_build.PrecisionError, match="no fast FP16"):
        trt_build.build_engine(onnx_models / "model.onnx", tmp_path / "e.plan", precision="fp16",
                               input_chw=(3, 32, 32))


def test_trt11_needs_the_fp16_onnx(monkeypatch, tmp_path, onnx_models):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(onnx_models, d)
    (d / "model.fp16.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="--fp16"):
        trt_build.onnx_for_precision(d, "fp16", 11)
    assert trt_build.onnx_for_precision(d, "fp16", 10).name == "model.onnx"


def test_timing_cache_is_named_by_tensorrt_version_and_gpu(monkeypatch, onnx_models, tmp_path):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(onnx_models, d)
    install(monkeypatch, "10.3.0")
    monkeypatch.setattr(trt_build, "gpu_name", lambda: "NVIDIA Jetson AGX Orin")
    entry = trt_build.build_bundle_engine(d, "fp16", batch=(1, 1, 2))
    assert entry["timing_cache"] == "timing-trt10.3.0-jetson-agx-orin.cache" and (d / entry["timing_cache"]).is_file()
    assert entry["path"] == "model.jetson-agx-orin.fp16.plan" and entry["gpu"] == "NVIDIA Jetson AGX Orin"


def test_a_timing_cache_from_another_gpu_is_refused_logged_and_replaced(monkeypatch, onnx_models, tmp_path, caplog):
    cache = tmp_path / "timing.cache"
    install(monkeypatch, "10.3.0", gpu="RTX 4090")  # the desktop
    trt_build.build_engine(onnx_models / "model.onnx", tmp_path / "a.plan", precision="fp16",
                           input_chw=(3, 32, 32), timing_cache=cache)
    desktop = cache.read_bytes()
    trt = install(monkeypatch, "10.3.0", gpu="Orin")  # the same file copied to the Jetson
    trt_build.build_engine(onnx_models / "model.onnx", tmp_path / "b.plan", precision="fp16",
                           input_chw=(3, 32, 32), timing_cache=cache)
    assert [c for c in trt.calls if c[0] == "set_timing_cache"] == [("set_timing_cache", "RTX 4090"),
                                                                    ("set_timing_cache", None)]
    assert "refused the timing cache" in caplog.text
    assert json.loads(cache.read_bytes())["device"] == "Orin" and cache.read_bytes() != desktop
    # a TensorRT that refuses every cache still builds, and saves none
    install(monkeypatch, "10.3.0", timing_cache_ok=False)
    other = tmp_path / "other.cache"
    trt_build.build_engine(onnx_models / "model.onnx", tmp_path / "c.plan", precision="fp16",
                           input_chw=(3, 32, 32), timing_cache=other)
    assert (tmp_path / "c.plan").is_file() and not other.exists()


def test_timing_cache_is_reused_and_saved(monkeypatch, onnx_models, tmp_path):
    cache = tmp_path / "timing.cache"
    trt = install(monkeypatch, "10.3.0")
    trt_build.build_engine(onnx_models / "model.onnx", tmp_path / "a.plan", precision="fp16",
                           input_chw=(3, 32, 32), timing_cache=cache)
    first = cache.read_bytes()
    assert trt.timing_caches_loaded == [b""] and json.loads(first)
    trt_build.build_engine(onnx_models / "model.onnx", tmp_path / "b.plan", precision="fp16",
                           input_chw=(3, 32, 32), timing_cache=cache)
    assert trt.timing_caches_loaded[1] == first  # the second build started from the saved cache


def test_bad_profile_is_rejected(monkeypatch, onnx_models, tmp_path):
    install(monkeypatch, "10.3.0")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        trt_build.build_engine(onnx_models / "model.onnx", tmp_path / "e.plan", precision="fp32",
                               input_chw=(3, 32, 32), batch=(4, 2, 8))


def test_layer_precision_parsing():
    info = json.dumps({"Layers": [
        {"Outputs": [{"Format/Datatype": "Channel major FP16 format where channel % 2 == 0"}]},
        {"Outputs": [{"Format/Datatype": "Row major linear Int8 format"}]},
        {"Outputs": [{"Format/Datatype": "Row major linear FP32"}]}, "a layer described by name only"]})
    assert trt_build.layer_precisions(info) == {"fp16": 1, "int8": 1, "fp32": 1}
    with pytest.raises(trt_build.PrecisionError):
        trt_build.check_precision("int8", {"fp32": 3, "fp16": 2})


def test_uint8_bundle_gets_an_nhwc_uint8_profile(monkeypatch, tmp_path):
    import timm

    from export.onnx_export import export_onnx
    from runtime.engines.bundle import new_manifest, write_manifest
    from runtime.engines.preprocess import Preprocess

    p = Preprocess((32, 48))
    export_onnx(timm.create_model("test_efficientnet", num_classes=0).eval(), p, tmp_path / "model.onnx",
                input_format="uint8")
    write_manifest(tmp_path, new_manifest(
        model_name="test_efficientnet", embedding_dim=256, model_fingerprint="1" * 16, preprocess=p.to_dict(),
        input={"name": "image", "dtype": "uint8", "layout": "NHWC"},
        files=[{"path": "model.onnx", "kind": "onnx", "precision": "fp32", "sha256": "x"}]))
    install(monkeypatch, "10.3.0")
    entry = trt_build.build_bundle_engine(tmp_path, "fp16", batch=(1, 2, 4))
    assert entry["input_shape"]["max"] == [4, 32, 48, 3] and entry["input_dtype"] == "uint8"
