"""FP16 and INT8 ONNX in ONNX Runtime: retrieval agreement with FP32 on real NAIP, Q/DQ form, the
calibration cache (reused when nothing changed, never when the data or model changed), the accuracy gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.accuracy import EvalSet, accuracy_gate, held_out_pairs, held_out_sets
from export.images import random_crops
from export.onnx_export import export_onnx, prepare
from export.quantize import calibration_key, convert_fp16, quantize_int8
from runtime.engines.preprocess import Preprocess

P = Preprocess((64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def work(tmp_path_factory, naip_paths):
    import timm
    import torch

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("q")
    model = timm.create_model("test_convnext", num_classes=0).eval()  # has LayerNorm and a head norm
    export_onnx(model, P, d / "model.onnx")
    calib = prepare(random_crops(naip_paths[2014], 24, 128, seed=0), P, "float32")
    queries, gallery = held_out_pairs(naip_paths[2016], naip_paths[2018], 128, n_max=30)
    sets = [EvalSet("128 px", queries, np.arange(len(queries)), gallery)]
    return {"dir": d, "calib": calib, "queries": queries, "gallery": gallery, "sets": sets}


def test_fp16_and_int8_agree_with_fp32_on_real_retrieval(work):
    import onnx

    d = work["dir"]
    convert_fp16(d / "model.onnx", d / "model.fp16.onnx")
    q = quantize_int8(d / "model.onnx", d / "model.int8.onnx", work["calib"], cache_dir=d / "cache")
    report = accuracy_gate(d / "model.onnx", {"fp16": d / "model.fp16.onnx", "int8": q["path"]}, P, "float32",
                           work["sets"], max_r1_drop=20.0)
    assert report["fp32"]["R@1"] > 100.0 / len(work["queries"])  # above chance: the images are real
    assert report["fp16"]["mean_cosine_to_fp32"] > 0.999 and report["fp16"]["top1_agreement"] >= 90
    assert report["int8"]["mean_cosine_to_fp32"] > 0.98 and report["int8"]["top1_agreement"] >= 60
    # 7-bit weights: ORT's fused int8 kernels compute what the Q/DQ graph says (TensorRT's semantics)
    assert abs(report["int8"]["mean_cosine_qdq_reference"] - report["int8"]["mean_cosine_to_fp32"]) < 0.01
    assert q["calibration"]["reduce_range"] is True
    # the INT8 graph: Q/DQ, per-channel weights, opset 17, LayerNorm and the head not quantised
    m = onnx.load(str(q["path"]))
    assert {o.domain: o.version for o in m.opset_import}[""] == 17
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: t for t in m.graph.initializer}
    per_channel = [n for n in m.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[1] in inits and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]
    assert per_channel
    producers = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.op_type in ("LayerNormalization", "ReduceMean", "ReduceL2"):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input)
    f16 = onnx.load(str(d / "model.fp16.onnx"))
    assert f16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in f16.graph.initializer)


def test_calibration_cache_reused_and_invalidated(work, tmp_path):
    d, calib, cache = work["dir"], work["calib"], tmp_path / "cache"
    first = quantize_int8(d / "model.onnx", tmp_path / "a.onnx", calib, cache_dir=cache)
    assert not first["cache_hit"] and first["calibration"]["batches_run"] > 0
    again = quantize_int8(d / "model.onnx", tmp_path / "b.onnx", calib, cache_dir=cache)
    assert again["cache_hit"] and again["calibration"]["batches_run"] == 0 and again["cache"] == first["cache"]
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    changed = calib.copy()
    changed[0, 0, 0, 0] += 0.5  # one value of the data changed: a new key, a fresh calibration
    third = quantize_int8(d / "model.onnx", tmp_path / "c.onnx", changed, cache_dir=cache)
    assert not third["cache_hit"] and third["cache"] != first["cache"] and third["calibration"]["batches_run"] > 0
    other_method = quantize_int8(d / "model.onnx", tmp_path / "d.onnx", calib, cache_dir=cache, method="percentile")
    assert not other_method["cache_hit"]
    # a cache file whose key record does not match (tampered, or a hash-prefix collision) is not trusted
    key_file = __import__("pathlib").Path(first["cache"]).with_suffix(".key.json")
    key = json.loads(key_file.read_text())
    key_file.write_text(json.dumps({**key, "model_sha256": "0" * 64}))
    fourth = quantize_int8(d / "model.onnx", tmp_path / "e.onnx", calib, cache_dir=cache)
    assert not fourth["cache_hit"]


def test_calibration_key_depends_on_model_bytes(work, tmp_path):
    k1 = calibration_key(work["dir"] / "model.onnx", work["calib"], "minmax")
    other = tmp_path / "m.onnx"
    other.write_bytes((work["dir"] / "model.onnx").read_bytes() + b"\0")
    k2 = calibration_key(other, work["calib"], "minmax")
    assert k1["data_sha256"] == k2["data_sha256"] and k1["model_sha256"] != k2["model_sha256"]


def test_accuracy_gate_rejects_a_worse_model_and_refuses_too_few_queries(work, tmp_path):
    """A real, worse model (other random weights) fails the gate with its interval; a limit the queries
    cannot show is refused before anything is embedded, naming the queries it needs."""
    import timm
    import torch

    d = work["dir"]
    torch.manual_seed(1)
    export_onnx(timm.create_model("test_convnext", num_classes=0).eval(), P, tmp_path / "other.onnx")
    report = accuracy_gate(d / "model.onnx", {"int8": tmp_path / "other.onnx"}, P, "float32", work["sets"],
                           max_r1_drop=10.0)
    r = report["int8"]
    assert r["passed"] is False and r["r1_drop_ci"][1] > 10.0
    assert r["r1_drop"] == pytest.approx(100.0 * (r["lost"] - r["gained"]) / 30)
    assert r["R@1_fp32"] - r["R@1"] == pytest.approx(r["r1_drop"])
    with pytest.raises(ValueError, match=r"cannot be shown with 30 held-out queries.*>= 96 queries"):
        accuracy_gate(d / "model.onnx", {"int8": tmp_path / "other.onnx"}, P, "float32", work["sets"],
                      max_r1_drop=2.0)


def test_gate_advice_follows_what_was_measured():
    from export.accuracy import gate_advice

    assert "--int8-full-range" in gate_advice(["int8"], int8_7bit_weights=True)
    assert "--int8-full-range" not in gate_advice(["int8"], int8_7bit_weights=False)
    assert "fly FP32 (CPU) or FP16 (GPU)" in gate_advice(["int8"], int8_7bit_weights=False)
    assert gate_advice(["fp16"], int8_7bit_weights=True).startswith("fly FP32")


def test_held_out_sets_are_the_same_ground_every_half_footprint(naip_paths):
    sets = held_out_sets([naip_paths[2018], naip_paths[2018]], naip_paths[2018], {"300 m": 70}, n_max=1000)
    s = sets[0]
    assert s.queries[0].shape == (70, 70, 3)
    # 934 x 724 px, squares of 70 px every 35 px: 25 x 19 windows, each found in both query rasters
    assert len(s.gallery) == 25 * 19 and len(s.queries) == 2 * 25 * 19
    assert all(np.array_equal(q, s.gallery[t]) for q, t in zip(s.queries, s.truth))
    thin = held_out_sets([naip_paths[2016]], naip_paths[2018], {"300 m": 70}, n_max=50)[0]
    assert len(thin.queries) == 50 and len(thin.gallery) == 25 * 19 and len(set(thin.truth)) == 50


def test_held_out_pairs_are_the_same_ground(naip_paths):
    q, g = held_out_pairs(naip_paths[2018], naip_paths[2018], 100, n_max=5)
    assert len(q) == 5 and all(np.array_equal(a, b) for a, b in zip(q, g))


def test_bad_calibration_input_is_named(work, tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        quantize_int8(work["dir"] / "model.onnx", tmp_path / "x.onnx", work["calib"][:0])
    with pytest.raises(ValueError, match="'kl'"):
        quantize_int8(work["dir"] / "model.onnx", tmp_path / "x.onnx", work["calib"], method="kl")


def test_calibration_from_a_folder_of_frames(tmp_path, naip_paths):
    import cv2

    from export.bundle_export import calibration_images
    from export.quantize import array_sha256

    crops = random_crops(naip_paths[2012], 6, 80, seed=4)
    for i, img in enumerate(crops):
        (tmp_path / "frames" / f"f{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "frames" / f"f{i % 2}" / f"{i:03d}.png"), img[:, :, ::-1])
    got = calibration_images(calib_dir=tmp_path / "frames", n=4)
    again = calibration_images(calib_dir=tmp_path / "frames", n=4)
    assert len(got) == 4 and got[0].shape == (80, 80, 3)
    assert array_sha256(P.batch(got)) == array_sha256(P.batch(again))  # stable order -> stable cache key
    assert any(np.array_equal(got[0], c) for c in crops)  # real pixels, RGB order preserved
    with pytest.raises(ValueError, match="--calib DIR"):
        calibration_images()


def test_entropy_and_per_tensor_change_the_model(work, tmp_path):
    """The gate's advice options are real: Entropy ranges are not MinMax's (ORT's own 128-bin entropy
    calibrator wrote the very same file), and per-tensor weights have one scale per tensor. A three-conv
    network keeps the KL search (Python, per tensor) short."""
    import onnx
    import torch
    from onnx import numpy_helper

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, 2),
                              torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, 2), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten()).eval()
    export_onnx(net, P, tmp_path / "small.onnx")
    small, calib = tmp_path / "small.onnx", work["calib"]
    mm = quantize_int8(small, tmp_path / "mm.onnx", calib, cache_dir=tmp_path / "c")
    en = quantize_int8(small, tmp_path / "en.onnx", calib, method="entropy", cache_dir=tmp_path / "c")
    assert not en["cache_hit"] and en["cache"] != mm["cache"]
    assert (tmp_path / "mm.onnx").read_bytes() != (tmp_path / "en.onnx").read_bytes()
    again = quantize_int8(small, tmp_path / "en2.onnx", calib, method="entropy", cache_dir=tmp_path / "c")
    assert again["cache_hit"] and (tmp_path / "en2.onnx").read_bytes() == (tmp_path / "en.onnx").read_bytes()
    quantize_int8(small, tmp_path / "en3.onnx", calib, method="entropy")  # no cache folder: the same ranges
    assert (tmp_path / "en3.onnx").read_bytes() == (tmp_path / "en.onnx").read_bytes()
    pt = quantize_int8(small, tmp_path / "pt.onnx", calib, per_channel=False)
    assert pt["calibration"]["per_channel"] is False
    m = onnx.load(str(tmp_path / "pt.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    weight_scales = [inits[n.input[1]] for n in m.graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert len(weight_scales) == 3 and all(s.size == 1 for s in weight_scales)
