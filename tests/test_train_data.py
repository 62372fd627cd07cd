"""train.datasets, train.augment, train.config and train.evaluate on real layouts and real rasters."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from runtime.engines.preprocess import Preprocess
from tests.test_sues200 import ALTS, LOCS, N_FRAMES, make_raw, make_split
from train.augment import AugmentConfig, PairAugment
from train.config import apply_overrides, from_dict, preset
from train.datasets import GeoTiffPairs, SUES200Pairs, University1652Pairs

PRE = Preprocess(input_size=(32, 32))


@pytest.mark.parametrize("layout", ["raw", "split"])
def test_sues200_pairs_read_the_official_training_locations(tmp_path, layout):
    from common.sues200_layout import TRAIN_IDS

    root = make_raw(tmp_path) if layout == "raw" else make_split(tmp_path)
    train_locs = [loc for loc in LOCS if loc in TRAIN_IDS]
    all_alts = SUES200Pairs(root, PRE)
    assert len(all_alts) == len(train_locs) * len(ALTS) * N_FRAMES
    assert all_alts.location_names == sorted(train_locs)
    one = SUES200Pairs(root, PRE, altitudes=ALTS[0])
    assert len(one) == len(train_locs) * N_FRAMES and set(one.altitudes_m) == {ALTS[0]}
    drone, sat, loc = one[0]
    assert drone.shape == sat.shape == (3, 32, 32) and drone.dtype == torch.float32
    # the pair belongs together: the satellite image is the location's own
    d_path, s_path = one.pairs[0]
    assert d_path.parent.name in (str(ALTS[0]), one.location_names[loc])
    assert one.location_names[loc] in str(s_path)


def test_university1652_pairs(tmp_path):
    for cls, n in (("0001", 3), ("0002", 2), ("0003", 1)):
        for i in range(n):
            p = tmp_path / "train" / "drone" / cls / f"image-{i:02d}.jpeg"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), np.full((20, 20, 3), i * 40, np.uint8))
        if cls != "0003":  # a class without satellite image is skipped
            s = tmp_path / "train" / "satellite" / cls / f"{cls}.jpg"
            s.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(s), np.full((20, 20, 3), 250, np.uint8))
    ds = University1652Pairs(tmp_path, PRE)
    assert len(ds) == 5 and ds.location_names == ["0001", "0002"]
    assert list(np.bincount(ds.locations)) == [3, 2]
    with pytest.raises(FileNotFoundError, match="train/satellite"):
        University1652Pairs(tmp_path / "nothing", PRE)


def test_geotiff_pairs_put_the_drone_view_and_the_tile_at_the_same_place(naip_paths):
    ds = GeoTiffPairs(naip_paths[2018], [naip_paths[2018], naip_paths[2014]], [300], 60.0, PRE,
                      render_px=48, max_locations=12)
    assert ds.n_locations == 12 and len(ds) == 24
    assert ds.xy_m.shape == (12, 2)
    # coordinates in metres inside the raster (EPSG:26914 UTM: eastings ~488 km)
    assert np.all((ds.xy_m[:, 0] > 485_900) & (ds.xy_m[:, 0] < 490_600))
    # the nadir view rendered from the reference itself reproduces the reference tile
    i = int(np.flatnonzero((ds.sources == 1) & (ds.locations == 3))[0])
    drone, tile = ds.load_pair(i)
    other = ds.reference_tile(7)
    same = np.abs(drone.astype(float) - tile).mean()
    assert same < 6 and same < np.abs(drone.astype(float) - other).mean() / 3
    q, r, loc = ds[i]  # the training path (jittered render, preprocessing) works
    assert q.shape == r.shape == (3, 32, 32) and loc == 3


def test_augment_flips_both_views_together_and_keeps_uint8():
    torch.manual_seed(0)
    drone = np.zeros((16, 16, 3), np.uint8)
    drone[:, :4] = 255  # bright on the left
    sat = drone.copy()
    aug = PairAugment(AugmentConfig(flip_p=1.0, satellite_rot90=False, color_jitter=0, blur_p=0, dropout_p=0,
                                    jpeg_p=0))
    d, s = aug(drone, sat)
    assert d.dtype == np.uint8 and d[:, -4:].min() == 255 and s[:, -4:].min() == 255
    jitter = PairAugment(AugmentConfig(color_jitter=0.15, dropout_p=1.0))
    d2, _ = jitter(np.full((32, 32, 3), 128, np.uint8), np.full((32, 32, 3), 128, np.uint8))
    assert d2.shape == (32, 32, 3) and (d2 == 0).any()  # a dropout blanked patches


def test_official_dropouts_blank_many_holes_and_jpeg_changes_pixels():
    from train.augment import CoarseDropout, GridDropout, per_view_transforms

    torch.manual_seed(1)
    img = torch.full((3, 100, 100), 200, dtype=torch.uint8)
    coarse = CoarseDropout()(img)
    zero = (coarse[0] == 0).float()
    # 10-25 holes of 10-20 px: between one and 25 x 400 px blanked, and several separate holes
    assert 100 <= zero.sum() <= 25 * 400
    n_blobs = cv2.connectedComponents(zero.numpy().astype(np.uint8))[0] - 1
    assert n_blobs >= 3
    grid = GridDropout(ratio=0.4)(img)
    share = float((grid[0] == 0).float().mean())
    assert 0.05 < share < 0.3  # about 0.4 x 0.4 of every cell
    only_jpeg = per_view_transforms(AugmentConfig(jpeg_p=1.0, jpeg_min_quality=90, color_jitter=0, blur_p=0,
                                                  dropout_p=0))
    from tests.rasters import texture

    smooth = torch.from_numpy((texture(64, 64, seed=3) * 255).astype(np.uint8))
    out = only_jpeg(smooth)
    diff = (out.int() - smooth.int()).abs().float().mean()
    assert out.dtype == torch.uint8 and out.shape == smooth.shape and 0 < diff < 5  # lossy, but close


def test_config_presets_and_overrides():
    cfg = apply_overrides(preset("sues200"), ["optim.lr=1e-4", "data.altitudes_m=150,200", "optim.epochs=3",
                                              "sampler.kind=similarity", "sampler.mining_every_epochs=1",
                                              "data.max_locations=null"])
    assert cfg.optim.lr == 1e-4 and cfg.data.altitudes_m == [150, 200]
    assert preset("sues200").optim.lr == 1e-3 and preset("sues200").optim.batch_size == 24
    assert preset("university1652").optim.batch_size == 128
    assert from_dict(cfg.to_dict()) == cfg
    demo = preset("demo")
    assert demo.model.pretrained == "lite0-offline" and demo.data.hfov_deg == 60.0
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'"):
        apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="needs coordinates"):
        apply_overrides(preset("sues200"), ["sampler.kind=gps"])
    with pytest.raises(ValueError, match="is an integer"):
        apply_overrides(cfg, ["optim.epochs=1.5"])


@pytest.mark.parametrize("overrides, match", [
    (["sampler.kind=similarity"], "never mines"),  # mining_every_epochs stays 0
    (["sampler.kind=similarity", "sampler.mining_every_epochs=1"], "only between epochs"),  # 1-epoch recipe
    (["sampler.mining_every_epochs=1", "optim.epochs=3"], "kind='random' never uses mined"),
    (["sampler.kind=similarity", "sampler.mining_every_epochs=3", "optim.epochs=3"], "only between epochs"),
])
def test_validate_refuses_sampler_settings_that_do_nothing(overrides, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(preset("sues200"), overrides)


def test_recipe_presets_say_what_they_train():
    sues = preset("sues200")
    assert sues.data.altitudes_m == [150] and sues.augment.satellite_rot90  # one model per altitude, rotated
    assert preset("sues200-joint").data.altitudes_m is None  # all altitudes: the labelled option
    assert not preset("demo").augment.satellite_rot90  # north-up frames against north-up tiles
    demo = preset("demo")
    assert demo.eval.query_positions == "uniform" and demo.data.jitter.offset_frac is None


def test_evaluate_sues200_labels_both_protocols(tmp_path):
    from train.evaluate import evaluate_sues200
    from train.model import GeoModel

    root = make_raw(tmp_path)
    model = GeoModel("test_convnext", img_size=32)
    res = evaluate_sues200(model, root, altitudes=[ALTS[0]])
    assert set(res) == {f"{d}@{ALTS[0]}m[{p}]" for d in ("drone2sat", "sat2drone")
                        for p in ("official", "query_only")}
    off, qo = res[f"drone2sat@{ALTS[0]}m[official]"], res[f"drone2sat@{ALTS[0]}m[query_only]"]
    assert off["n_gallery"] == len(LOCS) > qo["n_gallery"]
    for m in res.values():
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100
