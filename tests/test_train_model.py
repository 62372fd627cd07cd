"""train.model: embeddings, offline ImageNet weights, checkpoints (ours and the official key format)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from train.model import (
    CheckpointError,
    GeoModel,
    lite0_offline_state_dict,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)


def test_embeddings_are_unit_rows_and_preprocess_comes_from_timm():
    model = GeoModel("test_efficientnet", img_size=48).eval()
    assert model.preprocess.input_size == (48, 48)
    assert model.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    x = torch.from_numpy(model.preprocess.batch([np.full((60, 70, 3), v, np.uint8) for v in (10, 200)]))
    with torch.no_grad():
        emb = model(x)
    assert emb.shape == (2, model.embedding_dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_unknown_model_and_misused_lite0_are_clear_errors():
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        GeoModel("no_such_net")
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        GeoModel("test_convnext", pretrained="lite0-offline")


def test_lite0_offline_maps_all_247_tensors_with_their_values():
    from train.model import lite0_offline_path

    state = lite0_offline_state_dict()
    assert len(state) == 247
    source = [v for k, v in torch.load(lite0_offline_path(), weights_only=True).items()
              if not k.endswith("num_batches_tracked")]
    for (key, mapped), original in zip(state.items(), source):
        assert torch.equal(mapped, original), key
    model = GeoModel("tf_efficientnet_lite0", pretrained="lite0-offline", img_size=64)
    assert model.preprocess.mean == (0.5, 0.5, 0.5)
    assert torch.equal(model.model.conv_stem.weight, state["conv_stem.weight"])
    assert torch.equal(model.model.bn2.running_var, state["bn2.running_var"])


def _naip_tiles(path, n=24, size_px=64, seed=0):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    with rasterio.open(path) as src:
        cols = rng.integers(0, src.width - size_px, n)
        rows = rng.integers(0, src.height - size_px, n)
        tiles = [np.moveaxis(src.read((1, 2, 3), window=Window(c, r, size_px, size_px)), 0, -1)
                 for c, r in zip(cols, rows)]
    return tiles


def _cross_year_r1(model, a, b):
    with torch.no_grad():
        ea = model(torch.from_numpy(model.preprocess.batch(a)))
        eb = model(torch.from_numpy(model.preprocess.batch(b)))
    return float((torch.argmax(ea @ eb.T, dim=1) == torch.arange(len(a))).float().mean())


def test_lite0_offline_weights_are_real_imagenet_features(naip_paths):
    """ImageNet features retrieve the same place across NAIP years far better than random weights."""
    a, b = _naip_tiles(naip_paths[2014]), _naip_tiles(naip_paths[2018])
    torch.manual_seed(0)
    pretrained = GeoModel("tf_efficientnet_lite0", pretrained="lite0-offline", img_size=96).eval()
    random_init = GeoModel("tf_efficientnet_lite0", pretrained=False, img_size=96).eval()
    r1_pre, r1_rand = _cross_year_r1(pretrained, a, b), _cross_year_r1(random_init, a, b)
    assert r1_pre >= 0.3, r1_pre  # chance is 1/24
    assert r1_pre > r1_rand + 0.1, (r1_pre, r1_rand)


def test_checkpoint_round_trip_keeps_weights_preprocess_and_extra_state(tmp_path):
    model = GeoModel("test_convnext", img_size=40)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, config={"a": 1}, epoch=3, step=17,
                           optimizer={"x": 1})
    assert not list(tmp_path.glob(".*.tmp"))
    loaded, info = load_checkpoint(path)
    assert info["epoch"] == 3 and info["step"] == 17 and info["optimizer"] == {"x": 1}
    assert info["config"] == {"a": 1} and info["embedding_dim"] == model.embedding_dim
    assert loaded.preprocess == model.preprocess
    assert set(info["state_dict"]) >= {"logit_scale", "model.stem.0.weight"}
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(CheckpointError, match="holds 'test_convnext'"):
        load_checkpoint(path, model_name="test_efficientnet")


def _official_file(tmp_path, model_name, drop=(), extra=()):
    """A state dict in the official Sample4Geo format: torch.save(wrapper.state_dict())."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    backbone = timm.create_model(model_name, num_classes=0)
    state = {"logit_scale": torch.tensor(3.0)}
    state.update({f"model.{k}": v for k, v in backbone.state_dict().items()})
    for k in drop:
        state.pop(k)
    for k in extra:
        state[k] = torch.zeros(1)
    path = tmp_path / "sample4geo.pth"
    torch.save(state, path)
    return path, state


def test_official_state_dict_loads_strictly(tmp_path):
    path, state = _official_file(tmp_path, "test_convnext")
    with pytest.raises(CheckpointError, match="pass model_name"):
        load_checkpoint(path)
    model, info = load_checkpoint(path, model_name="test_convnext")
    assert info["format"] == "sample4geo-state-dict"
    assert model.logit_scale.item() == 3.0
    assert torch.equal(model.model.head.norm.weight, state["model.head.norm.weight"])
    # The same file through GeoModel(pretrained=path).
    again = GeoModel("test_convnext", pretrained=path)
    assert torch.equal(again.model.stem[0].weight, state["model.stem.0.weight"])


def test_official_mismatch_lists_the_keys(tmp_path):
    path, _ = _official_file(tmp_path, "test_convnext", drop=("model.head.norm.bias",),
                             extra=("model.head.fc.weight",))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): model.head.norm.bias.*"
                                              r"1 unexpected key\(s\): model.head.fc.weight"):
        load_checkpoint(path, model_name="test_convnext")
    with pytest.raises(CheckpointError, match="does not match model 'test_efficientnet'"):
        load_checkpoint(_official_file(tmp_path, "test_convnext")[0], model_name="test_efficientnet")


def test_ddp_style_prefix_is_accepted():
    model = GeoModel("test_convnext")
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    load_state_dict_strict(model, state)


def test_missing_file_and_foreign_file_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="neither a geoloc checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt", model_name="test_convnext")
