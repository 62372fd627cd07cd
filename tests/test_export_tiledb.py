"""The tile database build: resumable after an interruption, sharded over ranks, equal to a direct
computation, and the gallery database from labelled folders."""

from __future__ import annotations

import numpy as np
import pytest

from export import tiledb_build
from export.tiledb_build import build_gallery_database, build_tile_database, onnx_embedder, shard
from tiles.db import TileDatabase
from tiles.map_imagery import open_database_imagery

ALTITUDES = (250.0, 300.0)
HFOV = 60.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, naip_paths):
    import torch

    from export.bundle_export import export_bundle
    from train.model import GeoModel, save_checkpoint

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tdb")
    save_checkpoint(d / "ckpt.pt", GeoModel("test_efficientnet", img_size=32), config={}, epoch=0, step=0)
    return export_bundle(d / "ckpt.pt", d / "bundle", eval_tifs=(naip_paths[2016], naip_paths[2018]), eval_n=8)


@pytest.fixture(scope="module")
def direct(bundle, naip_paths):
    """Embeddings computed tile by tile without the builder: the reference."""
    from runtime.engines.engine import load_engine
    from tiles.grid import footprint_m, read_tile, tile_grid
    from tiles.raster import open_raster

    raster = open_raster(naip_paths[2018])
    embed = load_engine(bundle, precision="fp32", backend="onnxruntime").embed  # what the runtime computes
    out = []
    for alt in ALTITUDES:
        fp = footprint_m(alt, HFOV)
        out.append(embed([read_tile(raster, t, 32) for t in tile_grid(raster, fp, fp * 0.5)]))
    e = np.concatenate(out)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


class Interrupted(Exception):
    pass


def counting(embed, fail_after=None):
    calls = []

    def f(images):
        if fail_after is not None and len(calls) >= fail_after:
            raise Interrupted
        calls.append(len(images))
        return embed(images)

    f.calls = calls
    return f


def test_interrupted_build_resumes_and_equals_direct(bundle, naip_paths, direct, tmp_path):
    out, work = tmp_path / "db", tmp_path / "work"
    kw = dict(altitudes_m=ALTITUDES, hfov_deg=HFOV, chunk_tiles=64, work_dir=work, progress=False)
    first = counting(onnx_embedder(bundle), fail_after=3)
    with pytest.raises(Interrupted):
        build_tile_database(bundle, [naip_paths[2018]], out, embedder=first, **kw)
    assert not out.exists() and len(list(work.rglob("chunk-*.npy"))) == 3
    second = counting(onnx_embedder(bundle))
    build_tile_database(bundle, [naip_paths[2018]], out, embedder=second, **kw)
    n_chunks = 3 + len(second.calls)
    assert sum(first.calls) + sum(second.calls) == len(direct)  # no tile embedded twice
    assert len(second.calls) == n_chunks - 3 and not work.exists()
    db = TileDatabase.open(out, verify_hashes=True)
    np.testing.assert_allclose(db.embeddings.astype(np.float32), direct, atol=2e-3)
    assert [lay["altitude_m"] for lay in db.layers] == list(ALTITUDES)
    imagery = open_database_imagery(db)  # the map's pixels for registration, at the map's 5 m/px
    assert imagery.gsd_m == 5.0 and imagery.crs == db.crs and db.manifest["imagery"]["kind"] == "array"
    assert db.layers[0]["footprint_m"] == pytest.approx(2 * 250 * np.tan(np.radians(30)))
    lay = db.layer_slice(1)
    assert np.all(db.entries["altitude_m"][lay] == 300) and np.all(db.entries["has_geo"])
    assert db.manifest["crs"] == "EPSG:26914" and db.manifest["sources"][0]["name"] == naip_paths[2018].name
    from runtime.engines.bundle import read_bundle

    b = read_bundle(bundle)
    db.check_compatible(model_fingerprint=b.model_fingerprint, preprocess=b.manifest["preprocess"],
                        embedding_dim=b.embedding_dim)


def test_changed_settings_do_not_reuse_chunks(bundle, naip_paths, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(Interrupted):
        build_tile_database(bundle, [naip_paths[2018]], tmp_path / "a", altitudes_m=(300.0,), hfov_deg=HFOV,
                            work_dir=work, embedder=counting(onnx_embedder(bundle), fail_after=1), chunk_tiles=32,
                            progress=False)
    other = counting(onnx_embedder(bundle))
    build_tile_database(bundle, [naip_paths[2016]], tmp_path / "b", altitudes_m=(300.0,), hfov_deg=HFOV,
                        work_dir=work, embedder=other, chunk_tiles=32, progress=False, keep_work=True)
    n = len(TileDatabase.open(tmp_path / "b"))
    assert sum(other.calls) == n  # another raster: nothing taken from the first build's chunks
    assert len(list(work.iterdir())) == 2


def test_shards_are_disjoint_and_cover():
    parts = [shard(11, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(11)) and parts[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError, match="rank 3"):
        shard(5, 3, 3)


def test_two_ranks_build_the_same_database(bundle, naip_paths, direct, tmp_path, monkeypatch):
    kw = dict(altitudes_m=ALTITUDES, hfov_deg=HFOV, chunk_tiles=64, work_dir=tmp_path / "w", progress=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r1 = counting(onnx_embedder(bundle))
    assert build_tile_database(bundle, [naip_paths[2018]], tmp_path / "db", embedder=r1, **kw) is None
    monkeypatch.setenv("RANK", "0")
    r0 = counting(onnx_embedder(bundle))
    path = build_tile_database(bundle, [naip_paths[2018]], tmp_path / "db", embedder=r0, **kw)
    assert sum(r0.calls) + sum(r1.calls) == len(direct) and r0.calls and r1.calls
    np.testing.assert_allclose(TileDatabase.open(path).embeddings.astype(np.float32), direct, atol=2e-3)


def test_rank0_times_out_naming_the_fix(bundle, naip_paths, tmp_path, monkeypatch):
    monkeypatch.setattr(tiledb_build.time, "sleep", lambda s: None)
    with pytest.raises(TimeoutError, match="Re-run the same command"):
        build_tile_database(bundle, [naip_paths[2018]], tmp_path / "db", altitudes_m=(300.0,), hfov_deg=HFOV,
                            rank=0, world_size=2, wait_timeout_s=0.0, progress=False, work_dir=tmp_path / "w")


def test_gallery_database_from_class_folders(bundle, naip_paths, tmp_path):
    import cv2

    from export.images import random_crops, read_image

    root = tmp_path / "SUES" / "satellite-view"
    for i, img in enumerate(random_crops(naip_paths[2018], 5, 64, seed=3)):
        (root / f"{i + 1:04d}").mkdir(parents=True)
        cv2.imwrite(str(root / f"{i + 1:04d}" / "0.png"), img[:, :, ::-1])
    path = build_gallery_database(bundle, tmp_path / "SUES", tmp_path / "gdb", progress=False)
    db = TileDatabase.open(path)
    assert list(db.entries["label"]) == ["0001", "0002", "0003", "0004", "0005"]
    assert not db.entries["has_geo"].any()
    files = sorted(root.rglob("*.png"))
    from runtime.engines.engine import load_engine

    ref = load_engine(bundle, precision="fp32", backend="onnxruntime").embed([read_image(f) for f in files])
    np.testing.assert_allclose(db.embeddings.astype(np.float32), ref, atol=2e-3)
    with pytest.raises(FileNotFoundError, match="class folders"):
        build_gallery_database(bundle, tmp_path / "SUES" / "satellite-view" / "0001", tmp_path / "x")


def test_default_embedder_is_the_runtime_engine_on_the_ranks_gpu(bundle, monkeypatch):
    """No GPU here: ONNX Runtime is made to list CUDA, and load_engine records what the builder asks for."""
    import onnxruntime as ort

    import runtime.engines.engine

    calls = []
    real = runtime.engines.engine.load_engine

    def recording(bundle_dir, **kw):
        calls.append(kw)
        return real(bundle_dir, precision=kw["precision"], backend=kw["backend"],
                    providers=["CPUExecutionProvider"])  # the session itself is real, on the CPU

    monkeypatch.setattr(runtime.engines.engine, "load_engine", recording)
    cpu = tiledb_build.onnx_embedder(bundle, local_rank=3, batch_size=4)
    assert calls[-1]["providers"] == ["CPUExecutionProvider"] and calls[-1]["precision"] == "fp32"
    assert cpu.engine.precision == "fp32" and cpu([]).shape == (0, cpu.engine.embedding_dim)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    tiledb_build.onnx_embedder(bundle, local_rank=3)
    assert calls[-1]["providers"] == [("CUDAExecutionProvider", {"device_id": 3}), "CPUExecutionProvider"]
    assert calls[-1]["backend"] == "onnxruntime"


def test_existing_database_is_not_overwritten(bundle, naip_paths, tmp_path):
    (tmp_path / "db").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        build_tile_database(bundle, [naip_paths[2018]], tmp_path / "db", hfov_deg=HFOV)
