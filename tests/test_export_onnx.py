"""ONNX export of the drone branch: opset, names, dynamic batch, L2 output, parity with torch on real NAIP."""

from __future__ import annotations

import numpy as np
import pytest

from export.images import random_crops
from export.onnx_export import (
    ExportError,
    check_parity,
    export_onnx,
    input_spec,
    ort_embed,
    ort_session,
    prepare,
)
from runtime.engines.preprocess import Preprocess


@pytest.fixture(scope="module")
def model():
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", num_classes=0).eval()


@pytest.fixture(scope="module")
def crops(naip_paths):
    return random_crops(naip_paths[2016], 12, 96, seed=1)


@pytest.mark.parametrize("input_format", ["float32", "uint8"])
def test_export_graph_and_parity_on_real_naip(tmp_path, model, crops, input_format):
    import onnx

    p = Preprocess((48, 48), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    path = export_onnx(model, p, tmp_path / "m.onnx", input_format=input_format)
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["embedding"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
    assert "Identity" not in {n.op_type for n in proto.graph.node}
    result = check_parity(model, p, path, crops, input_format=input_format)
    assert result["max_abs_diff"] < 1e-4 and result["n_images"] == len(crops)
    # dynamic batch really works, and rows are unit length
    sess = ort_session(path)
    one = ort_embed(sess, p, input_format, crops[:1])
    three = ort_embed(sess, p, input_format, crops[:3], batch_size=3)
    np.testing.assert_allclose(one[0], three[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(three, axis=1), 1.0, atol=1e-5)
    assert prepare(crops[:2], p, input_format).dtype == np.dtype(input_spec(input_format)["dtype"])


def test_parity_failure_reports_the_measured_difference(tmp_path, model, crops):
    import timm
    import torch

    p = Preprocess((48, 48))
    path = export_onnx(model, p, tmp_path / "m.onnx")
    torch.manual_seed(1)
    other = timm.create_model("test_efficientnet", num_classes=0).eval()  # different weights
    with pytest.raises(ExportError, match=r"differs from torch by \d"):
        check_parity(other, p, path, crops)


def test_bad_arguments_are_named(tmp_path, model):
    with pytest.raises(ValueError, match="input_format 'rgb'"):
        export_onnx(model, Preprocess((32, 32)), tmp_path / "m.onnx", input_format="rgb")
    with pytest.raises(ValueError, match="opset 13"):
        export_onnx(model, Preprocess((32, 32)), tmp_path / "m.onnx", opset=13)
    assert not (tmp_path / "m.onnx").exists()
