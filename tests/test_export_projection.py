"""The compact descriptor: PCA-whitening fitted at export, appended to the ONNX graph, carried by the bundle
and the fingerprint, emitted by every engine, and the database built from it."""

from __future__ import annotations

import numpy as np
import pytest

from export.projection import fit_projection, project


def test_fit_projection_whitens_and_orders():
    rng = np.random.default_rng(0)
    scales = np.linspace(5.0, 0.1, 40)
    x = rng.standard_normal((4000, 40)) * scales @ np.linalg.qr(rng.standard_normal((40, 40)))[0] + 3.0
    p = fit_projection(x, 8, whiten=True, shrink=0.0)
    c = (x - p["mean"]) @ p["matrix"]
    np.testing.assert_allclose(np.cov(c, rowvar=False), np.eye(8), atol=0.05)
    assert np.all(np.diff(p["eigenvalues"]) <= 0)
    np.testing.assert_allclose(np.sqrt(p["eigenvalues"][:3]), scales[:3], rtol=0.1)
    plain = fit_projection(x, 8, whiten=False)
    np.testing.assert_allclose(plain["matrix"].T @ plain["matrix"], np.eye(8), atol=1e-5)  # orthonormal
    np.testing.assert_allclose(np.linalg.norm(project(x[:5], p), axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="must be in 1..40"):
        fit_projection(x, 41)
    with pytest.raises(ValueError, match="at least 32"):
        fit_projection(x[:20], 16)


@pytest.fixture(scope="module")
def projected(tmp_path_factory, naip_paths):
    import torch

    from export.bundle_export import export_bundle
    from train.model import GeoModel, save_checkpoint

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("proj")
    ckpt = save_checkpoint(d / "ckpt.pt", GeoModel("test_efficientnet", img_size=32), config={}, epoch=0, step=0)
    out = export_bundle(ckpt, d / "bundle", fp16=True, int8=True, calib_tifs=[naip_paths[2014]], calib_n=16,
                        cache_dir=d / "cache", eval_tifs=(naip_paths[2016], naip_paths[2018]), eval_n=8,
                        descriptor_dim=24, projection_tifs=[naip_paths[2010]], projection_map_tifs=[naip_paths[2018]],
                        projection_n=120)
    return ckpt, out


def test_bundle_emits_the_compact_descriptor(projected, naip_paths):
    from export.images import random_crops
    from export.onnx_export import torch_embed
    from export.projection import projected_fingerprint
    from runtime.engines.bundle import read_bundle
    from runtime.engines.engine import load_engine
    from tiles.io import file_sha256
    from train.model import load_checkpoint

    ckpt, out = projected
    b = read_bundle(out)
    rec = b.projection
    assert b.embedding_dim == 24 and rec["dim"] == 24 and rec["input_dim"] == 256
    assert rec["fit"]["view_tifs"] == [naip_paths[2010].name] and rec["fit"]["n_images"] == 120
    assert b.model_fingerprint == projected_fingerprint(file_sha256(ckpt)[:16], rec) != file_sha256(ckpt)[:16]
    proj = dict(np.load(out / rec["file"]))
    model, _ = load_checkpoint(ckpt)
    images = random_crops(naip_paths[2020], 6, 48, seed=3)
    want = project(torch_embed(model.eval(), b.preprocess, images), proj)
    for precision, tol in (("fp32", 1e-4), ("fp16", 2e-2)):
        got = load_engine(out, precision=precision, backend="onnxruntime").embed(images)
        assert got.shape == (6, 24)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
        np.testing.assert_allclose(got, want, atol=tol)
    got8 = load_engine(out, precision="int8", backend="onnxruntime").embed(images)
    assert got8.shape == (6, 24) and np.all(np.sum(got8 * want, axis=1) > 0.5)  # random tiny net: loose
    import onnx

    g = onnx.load(str(out / "model.int8.onnx")).graph
    mm = next(n for n in g.node if n.name == "/head/projection/MatMul")
    assert mm.input[1] == "proj_matrix"  # the projection stays float in the Q/DQ graph


def test_database_from_projected_bundle_matches_engine(projected, naip_paths, tmp_path):
    from export.tiledb_build import build_tile_database
    from runtime.engines.bundle import read_bundle
    from tiles.db import TileDatabase

    _, out = projected
    db = TileDatabase.open(build_tile_database(out, naip_paths[2018], tmp_path / "db", altitudes_m=(300.0,),
                                               hfov_deg=60.0, stride_frac=1.0, progress=False, ann="none"))
    b = read_bundle(out)
    assert db.embedding_dim == 24 and "ann" not in db.manifest
    db.check_compatible(model_fingerprint=b.model_fingerprint, preprocess=b.preprocess.to_dict(), embedding_dim=24)


def test_cli_refuses_a_dim_without_fitting_images(tmp_path):
    from export.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args([str(tmp_path / "c.pt"), "--out", str(tmp_path / "b"), "--descriptor-dim", "128"])
    args = parse_args([str(tmp_path / "c.pt"), "--out", str(tmp_path / "b"), "--projection-tifs", "a.tif"])
    assert args.descriptor_dim == 256
    assert parse_args([str(tmp_path / "c.pt"), "--out", str(tmp_path / "b")]).descriptor_dim == 0
