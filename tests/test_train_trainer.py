"""train.trainer: a real `python -m train` subprocess, run-folder safety, exact resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from train.config import apply_overrides, preset
from train.model import load_checkpoint
from train.trainer import RunExistsError, train

TINY = ["model.name=test_efficientnet", "model.pretrained=none", "model.img_size=32", "data.altitudes_m=[300]",
        "data.max_locations=16", "optim.batch_size=4", "eval.max_queries=8", "data.num_workers=0"]


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def test_one_batch_smoke_run_of_python_m_train(tmp_path, naip_paths):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "--preset", "demo", "--run-dir", str(run),
           *_sets(TINY + ["optim.max_steps=1", f"data.reference={naip_paths[2018]}",
                          f"data.train_rasters=[\"{naip_paths[2010]}\"]",
                          f"data.eval_rasters=[\"{naip_paths[2016]}\"]"])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    model, info = load_checkpoint(run / "checkpoint.pt")
    assert info["step"] == 1 and info["model_name"] == "test_efficientnet"
    assert model.preprocess.input_size == (32, 32)
    assert json.loads((run / "config.json").read_text())["optim"]["max_steps"] == 1
    assert "python -m train" in (run / "command.txt").read_text()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    ev = json.loads((run / "eval.json").read_text())
    assert ev["all"]["n_queries"] == 8 and "median_error_m" in ev["per_altitude"]["300"]["all"]
    # python -m train.evaluate on the checkpoint: the same evaluation, from the command line
    out = tmp_path / "eval.json"
    ev_cmd = [sys.executable, "-m", "train.evaluate", str(run / "checkpoint.pt"), "--out", str(out)]
    done = subprocess.run(ev_cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text())["all"] == ev["all"]
    # the same folder again, without --resume/--overwrite: refused, naming both
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr


def _cfg(tmp_path, naip_paths, name):
    return apply_overrides(preset("demo"), TINY + [
        f"run_dir={tmp_path / name}", "optim.epochs=2", "sampler.mining_every_epochs=1", "eval.every_epochs=0",
        f"data.reference={naip_paths[2018]}", f"data.train_rasters=[\"{naip_paths[2012]}\"]",
        "data.eval_rasters=[]", "optim.warmup_epochs=0.5"])


def test_resume_gives_the_same_steps_as_an_uninterrupted_run(tmp_path, naip_paths):
    whole = train(_cfg(tmp_path, naip_paths, "whole"), command=["test"])
    # 16 locations / batch 4 = 4 steps per epoch; stop inside epoch 2 (after mining), then resume
    part_cfg = _cfg(tmp_path, naip_paths, "part")
    train(part_cfg, command=["test"], stop_at_step=6)
    stopped = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert stopped["step"] == 6 and stopped["sampler"]["start_batch"] == 2
    assert stopped["sampler"]["neighbour_source"] == "similarity"
    with pytest.raises(RunExistsError, match="--resume"):
        train(part_cfg, command=["test"])
    train(part_cfg, resume=True, command=["test"])
    a = torch.load(whole / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 8
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
