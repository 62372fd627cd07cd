"""Fault injection for ``python -m export`` and ``python -m train`` (issue 28): a bad checkpoint, a folder that
cannot be written, Ctrl-C, a resume with nothing to resume from, a number that is not one, evaluation
rasters that are training rasters. Each a real process; each asserts the exit status, the one line, and
that what was there before is still there.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.faults import error_line, popen, run, unwritable


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    from train.model import GeoModel, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ckpt.pt", GeoModel("test_efficientnet", img_size=32),
                           config={"test": True}, epoch=0, step=0)


@pytest.mark.parametrize("content, says", [
    (b"not a checkpoint\n", "is not a checkpoint (17 bytes; UnpicklingError"),
    (b"", "is empty (an interrupted copy or download?)"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "is a PNG image, not a checkpoint"),
])
def test_export_of_a_file_that_is_not_a_checkpoint(tmp_path, content, says):
    bad = tmp_path / "model.pt"
    bad.write_bytes(content)
    out = run("export", bad, "--out", tmp_path / "bundle")
    assert out.returncode == 2
    line = error_line(out.stderr)
    assert f"{bad} {says}" in line and "python -m train" in line
    assert not (tmp_path / "bundle").exists()


def test_export_into_a_folder_it_may_not_write(ckpt, tmp_path):
    target = unwritable(tmp_path) / "bundle"
    out = run("export", ckpt, "--out", target)
    assert out.returncode == 1
    line = error_line(out.stderr)
    assert str(target) in line and ("Permission denied" in line or "not permitted" in line)


def test_ctrl_c_during_export_is_one_line_and_130(ckpt, naip_paths, tmp_path):
    out = tmp_path / "bundle"
    proc = popen("export", ckpt, "--out", out, "--eval-tifs", naip_paths[2016], naip_paths[2018], "--tiles",
                 naip_paths[2018], "--altitudes-m", 150, 200, 250, 300, "--no-progress", "--chunk-tiles", 8,
                 "--no-calibrate")
    deadline = time.monotonic() + 120
    while not (out / "model.onnx").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert error_line(err).endswith("ERROR export: interrupted")


@pytest.fixture
def run_folder(tmp_path):
    """A run folder whose run stopped before its first checkpoint: its config and the metrics it logged."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = run("train", "--preset", "demo", "--set", "optim.max_steps=2", "--print-config")
    (run_dir / "config.json").write_text(cfg.stdout)
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 4.2}\n')
    return run_dir


def test_train_resume_without_a_checkpoint_refuses_and_keeps_the_metrics(run_folder):
    before = {p.name: p.read_bytes() for p in run_folder.iterdir()}
    out = run("train", "--run-dir", run_folder, "--resume")
    assert out.returncode == 2
    line = error_line(out.stderr)
    assert f"cannot resume: {run_folder / 'checkpoint.pt'} does not exist" in line and "without --resume" in line
    assert {p.name: p.read_bytes() for p in run_folder.iterdir()} == before


@pytest.mark.parametrize("content, says", [(b"\x00" * 100, "is not a readable checkpoint"),
                                           (b"", "is not a readable checkpoint")])
def test_train_resume_from_a_corrupt_checkpoint_refuses(run_folder, content, says):
    (run_folder / "checkpoint.pt").write_bytes(content)
    before = {p.name: p.read_bytes() for p in run_folder.iterdir()}
    out = run("train", "--run-dir", run_folder, "--resume")
    assert out.returncode == 2 and says in error_line(out.stderr)
    assert {p.name: p.read_bytes() for p in run_folder.iterdir()} == before


@pytest.mark.parametrize("override, message", [
    ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
    ("optim.lr=-1", "optim.lr must be in (0, inf), got -1.0"),
    ("data.hfov_deg=inf", "data.hfov_deg must be a finite number, got inf"),
])
def test_train_numbers_checked_where_they_are_set(tmp_path, override, message):
    out = run("train", "--preset", "demo", "--set", override, "--run-dir", tmp_path / "run")
    assert out.returncode == 2 and message in error_line(out.stderr)
    assert not (tmp_path / "run").exists()


def test_train_refuses_an_evaluation_raster_it_trains_on(naip_paths, tmp_path):
    copied = tmp_path / "copy_2014.tif"
    copied.write_bytes(naip_paths[2014].read_bytes())
    for eval_raster, says in ((naip_paths[2014], "is also a training raster"),
                              (copied, f"has the same content as {naip_paths[2014]}")):
        out = run("train", "--preset", "demo", "--set", f"data.eval_rasters={json.dumps([str(eval_raster)])}",
                  "--run-dir", tmp_path / "run")
        assert out.returncode == 2
        line = error_line(out.stderr)
        assert says in line and "would measure images the model was trained on" in line
    assert not (tmp_path / "run").exists()
