"""`python -m export` end to end in a subprocess on a tiny timm model, on real NAIP imagery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args, check=True, **kw):
    r = subprocess.run([sys.executable, "-m", "export", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                       timeout=300, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    from train.model import GeoModel, save_checkpoint

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cli")
    return save_checkpoint(d / "ckpt.pt", GeoModel("test_efficientnet", img_size=32), config={"test": True},
                           epoch=0, step=0)


@pytest.fixture(scope="module")
def bundle(ckpt, naip_paths, tmp_path_factory):
    from export.bundle_export import export_bundle

    return export_bundle(ckpt, tmp_path_factory.mktemp("b") / "bundle",
                         eval_tifs=(naip_paths[2016], naip_paths[2018]), eval_n=8)


def test_cli_end_to_end(ckpt, naip_paths, tmp_path):
    from runtime.engines.bundle import read_bundle
    from runtime.engines.engine import load_engine
    from tiles.db import TileDatabase
    from tiles.io import file_sha256

    out = tmp_path / "bundle"
    r = run(ckpt, "--out", out, "--fp16", "--int8", "--calib-tif", naip_paths[2014], "--calib-n", 16,
            "--eval-tifs", naip_paths[2016], naip_paths[2018], "--max-r1-drop", 50, "--input-format", "uint8",
            "--tiles", naip_paths[2018], "--altitudes", 250, 300, "--hfov", 60, "--stride-frac", 1.0,
            "--no-progress", "--no-calibrate", env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert "done:" in r.stderr
    b = read_bundle(out)
    assert b.model_fingerprint == file_sha256(ckpt)[:16]
    assert b.input == {"name": "image", "dtype": "uint8", "layout": "NHWC"}
    assert {f["precision"] for f in b.files} == {"fp32", "fp16", "int8"}
    int8 = b.find("onnx", "int8")
    assert int8["accuracy"]["r1_drop"] <= 50 and int8["calibration"]["n_images"] == 16
    assert b.find("onnx", "fp32")["parity"]["max_abs_diff"] < 1e-4
    db = TileDatabase.open(out / "tiledb")
    db.check_compatible(model_fingerprint=b.model_fingerprint, preprocess=b.manifest["preprocess"],
                        embedding_dim=b.embedding_dim)
    assert [lay["altitude_m"] for lay in db.layers] == [250.0, 300.0]
    # the runtime reads the bundle and its INT8 model finds a tile's own embedding first
    eng = load_engine(out, precision="int8", backend="onnxruntime")
    from tiles.grid import read_tile, tile_grid
    from tiles.raster import open_raster

    raster = open_raster(naip_paths[2018])
    tiles = tile_grid(raster, db.layers[1]["footprint_m"], db.layers[1]["stride_m"])[:10]
    q = eng.embed([read_tile(raster, t, 32) for t in tiles])
    rows = db.embeddings[db.layer_slice(1)].astype(np.float32)
    assert np.mean(np.argmax(q @ rows.T, axis=1) == np.arange(10)) >= 0.8
    # an existing bundle is not overwritten by accident
    r = run(ckpt, "--out", out, "--eval-tifs", naip_paths[2016], naip_paths[2018], check=False)
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_a_limit_the_queries_cannot_show_is_refused_before_any_work(ckpt, naip_paths, tmp_path, caplog):
    from export.__main__ import main

    code = main([str(ckpt), "--out", str(tmp_path / "b"), "--fp16", "--eval-tifs", str(naip_paths[2016]),
                 str(naip_paths[2018]), "--altitudes", "300", "--eval-n", "30", "--max-r1-drop", "2"])
    assert code == 2 and "--max-r1-drop 2 cannot be shown with 30 held-out queries" in caplog.text
    assert "smallest detectable drop for n=30" in caplog.text and ">= 96 queries" in caplog.text
    assert not (tmp_path / "b").exists()


def test_failing_gate_removes_the_variant_and_still_builds_the_tile_database(ckpt, naip_paths, tmp_path):
    """INT8 calibrated on flat grey frames (a real user mistake) loses far more than 5 points: it is deleted,
    the bundle holds what passed, the tile database is built, and the exit code says the gate failed."""
    import cv2

    from runtime.engines.bundle import read_bundle
    from runtime.engines.engine import BundleError, _pick_entry, load_engine
    from tiles.db import TileDatabase

    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(8):
        cv2.imwrite(str(grey / f"{i}.png"), np.full((64, 64, 3), 128, np.uint8))
    out = tmp_path / "bundle"
    r = run(ckpt, "--out", out, "--fp16", "--int8", "--calib", grey, "--eval-tifs", naip_paths[2016],
            naip_paths[2018], "--eval-n", 64, "--max-r1-drop", 5, "--tiles", naip_paths[2018], "--altitudes", 250,
            300, "--hfov", 60, "--stride-frac", 1.0, "--no-progress", "--no-calibrate", check=False,
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 3, r.stderr[-3000:]
    assert "accuracy gate failed: int8 R@1" in r.stderr and "95% interval" in r.stderr
    assert "holds fp32, fp16 only" in r.stderr
    assert "--int8-full-range" in r.stderr  # the measured advice for 7-bit INT8 weights (the default)
    b = read_bundle(out)
    assert {f["precision"] for f in b.files} == {"fp32", "fp16"} and not (out / "model.int8.onnx").exists()
    rejected = b.manifest["export"]["gate_rejected"]["int8"]
    assert rejected["passed"] is False and rejected["r1_drop_ci"][1] > 5 and rejected["n_queries"] == 128
    assert b.find("onnx", "fp16")["accuracy"]["passed"] is True
    db = TileDatabase.open(out / "tiledb")
    db.check_compatible(model_fingerprint=b.model_fingerprint, preprocess=b.manifest["preprocess"],
                        embedding_dim=b.embedding_dim)
    # the runtime never picks the rejected variant: not on a GPU, not on the CPU, not when asked for it
    assert _pick_entry(b, "onnx", "auto", gpu=True)["precision"] == "fp16"
    assert _pick_entry(b, "onnx", "auto", gpu=False)["precision"] == "fp32"
    with pytest.raises(BundleError, match="no onnx model at precision 'int8'"):
        load_engine(out, precision="int8", backend="onnxruntime")


def test_trt_on_a_machine_without_tensorrt_or_torch(bundle):
    """The Jetson step needs neither torch nor a checkpoint; without TensorRT it says where to run."""
    out = bundle
    code = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None; sys.modules['tensorrt'] = None; "
            f"from export.__main__ import main; sys.exit(main(['--bundle', {str(out)!r}, '--trt']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "JetPack" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_are_clear():
    r = run(check=False)
    assert r.returncode == 2 and "give a checkpoint" in r.stderr
    r = run("x.pt", "--out", "b", "--int8", check=False)
    assert r.returncode == 2 and "--calib DIR" in r.stderr


def test_killed_tile_build_continues(bundle, naip_paths):
    out = bundle
    args = ["--bundle", out, "--tiles", naip_paths[2018], "--altitudes", 300, "--hfov", 60, "--stride-frac", 0.5,
            "--chunk-tiles", 8, "--no-progress", "--no-calibrate"]
    proc = subprocess.Popen([sys.executable, "-m", "export", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = out / ".tiledb.work"
    deadline = time.monotonic() + 120
    while len(list(work.rglob("chunk-*.npy"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(work.rglob("chunk-*.npy")))
    assert done_before >= 3 and not (out / "tiledb").exists()
    r = run(*args)
    total = json.loads((out / "tiledb" / "manifest.json").read_text())["count"]
    line = next(s for s in r.stderr.splitlines() if "chunks to embed" in s)
    todo, of = (int(v) for v in line.split("rank 0/1: ")[1].split(" chunks")[0].split(" of "))
    assert todo == of - done_before and todo < of and 8 * (of - 1) < total <= 8 * of


def test_torchrun_two_ranks_equal_one_process(bundle, naip_paths, tmp_path):
    """Real processes under torchrun: each rank embeds its chunks, rank 0 writes the same database."""
    import shutil

    from export.tiledb_build import build_tile_database
    from tiles.db import TileDatabase

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this Python")
    tif = naip_paths[2018]
    r = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "export", "--bundle", str(bundle), "--tiles",
                        str(tif), "--altitudes", "300", "--hfov", "60", "--chunk-tiles", "16", "--no-progress",
                        "--db-out", str(tmp_path / "dist")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 1/2" in r.stderr and "rank 0/2" in r.stderr
    single = build_tile_database(bundle, [tif], tmp_path / "single", altitudes_m=(300,), hfov_deg=60,
                                 chunk_tiles=16, progress=False, rank=0, world_size=1)
    a, b = TileDatabase.open(tmp_path / "dist"), TileDatabase.open(single)
    np.testing.assert_array_equal(a.entries, b.entries)
    np.testing.assert_allclose(a.embeddings.astype(np.float32), b.embeddings.astype(np.float32), atol=1e-3)
