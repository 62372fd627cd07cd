"""ONNX Runtime engine on a real exported model; engine/database agreement."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from runtime.engines.bundle import BundleError
from runtime.engines.engine import EngineError, check_engine_database, load_engine
from tiles.db import DatabaseMismatchError, TileDatabase, write_database
from tools.toy_assets import flight_crops, tiny_assets


@pytest.fixture(scope="module")
def assets():
    return tiny_assets()


@pytest.fixture(scope="module")
def crops(assets):
    return [c for c, _ in flight_crops(assets["raster"], n_frames=5)]


def test_engine_embeds_normalised_and_batch_equals_single(assets, crops):
    eng = load_engine(assets["bundle"])
    assert eng.name.startswith("onnxruntime[") and "CPUExecutionProvider" in eng.name and eng.name.endswith("fp32")
    emb = eng.embed(crops)
    assert emb.shape == (5, eng.embedding_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    one = np.concatenate([eng.embed([c]) for c in crops])
    np.testing.assert_allclose(one, emb, atol=1e-5)
    batched = np.concatenate(list(eng.embed_batches(crops, batch_size=2)))
    np.testing.assert_allclose(batched, emb, atol=1e-5)
    # different images give different embeddings (the model is not constant)
    assert float(emb[0] @ emb[-1]) < 0.9999


def test_uint8_nhwc_bundle_matches_float_bundle(assets, crops):
    f32 = load_engine(assets["bundle"])
    u8 = load_engine(assets["bundle_u8"])
    x = u8.prepare(crops)
    assert x.dtype == np.uint8 and x.shape == (5, *u8.preprocess.input_size, 3)
    assert f32.prepare(crops).shape == (5, 3, *f32.preprocess.input_size)
    np.testing.assert_allclose(u8.embed_prepared(x), f32.embed(crops), atol=1e-4)
    with pytest.raises(EngineError, match="uint8"):
        u8.embed_prepared(f32.prepare(crops))


def test_missing_precision_is_an_error_not_a_fallback(assets):
    with pytest.raises(BundleError, match=r"int8.*the bundle has \['fp32'\]"):
        load_engine(assets["bundle"], precision="int8")
    with pytest.raises(EngineError, match="not in this build"):
        load_engine(assets["bundle"], providers=["CUDAExecutionProvider"])


def test_tensorrt_backend_without_tensorrt_says_how_to_get_it(assets, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(assets["bundle"], b)
    shutil.copy(b / "model.onnx", b / "model.orin.plan")
    m = json.loads((b / "manifest.json").read_text())
    m["files"].append({"path": "model.orin.plan", "kind": "tensorrt", "precision": "fp16"})
    (b / "manifest.json").write_text(json.dumps(m))
    # auto picks ONNX Runtime here (no tensorrt module), explicitly asking for TensorRT is a clear error
    assert load_engine(b).name.startswith("onnxruntime")
    with pytest.raises(EngineError, match="JetPack"):
        load_engine(b, backend="tensorrt")


def _db_copy(db: TileDatabase, path, *, fingerprint=None, preprocess=None, dim=None):
    emb = np.asarray(db.embeddings, np.float32)
    if dim is not None:
        emb = emb[:, :dim]
    return write_database(path, emb, np.asarray(db.entries), layers=[{k: v for k, v in lay.items()
                                                                      if k not in ("start", "stop", "count")}
                                                                     for lay in db.layers],
                          model={"fingerprint": fingerprint or db.model_fingerprint},
                          preprocess=preprocess or db.preprocess, crs=db.crs)


def test_engine_database_mismatch_names_the_field(assets, tmp_path):
    eng = load_engine(assets["bundle"])
    db = TileDatabase.open(assets["db"])
    check_engine_database(eng, db)  # the matching pair passes
    with pytest.raises(DatabaseMismatchError, match="model fingerprint"):
        check_engine_database(load_engine(assets["bundle_u8"]), db)
    pre = dict(db.preprocess, input_size=[96, 96])
    with pytest.raises(DatabaseMismatchError, match=r"preprocess input_size: database \[96, 96\], engine \[64, 64\]"):
        check_engine_database(eng, TileDatabase.open(_db_copy(db, tmp_path / "pre", preprocess=pre)))
    with pytest.raises(DatabaseMismatchError, match="embedding size: database 128"):
        check_engine_database(eng, TileDatabase.open(_db_copy(db, tmp_path / "dim", dim=128)))


def test_serve_refuses_a_mismatched_database(assets, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", "--bundle", str(assets["bundle_u8"]), "--db", str(assets["db"]),
         "--source", str(src), "--altitude", "150"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "model fingerprint" in proc.stderr and "Rebuild it" in proc.stderr
