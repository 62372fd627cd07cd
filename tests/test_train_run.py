"""train.trainer as a user meets it: interruptions, retries, offline machines, small datasets, seeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from train.config import apply_overrides, preset
from train.trainer import TrainSetupError, train

TINY = ["model.name=test_efficientnet", "model.pretrained=none", "model.img_size=32", "data.altitudes_m=[300]",
        "data.max_locations=16", "optim.batch_size=4", "eval.max_queries=8", "data.num_workers=0",
        "eval.stride_frac=1.0"]


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def _data(naip_paths):
    return [f"data.reference={naip_paths[2018]}", f"data.train_rasters=[\"{naip_paths[2012]}\"]",
            "data.eval_rasters=[]"]


def _wait_for(path, text, proc, timeout=240, after: int = 0):
    """Wait until ``text`` appears in the log ``path`` beyond its first ``after`` characters."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.is_file() and text in path.read_text()[after:]:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_a_killed_run_resumes_from_its_last_step_checkpoint_and_ctrl_c_saves(tmp_path, naip_paths):
    run = tmp_path / "run"
    # 4 steps per epoch, 25 epochs (long enough that the Ctrl-C below lands mid-run on a fast machine; with 3
    # the resumed run could finish first): a checkpoint every step, logged every step
    cmd = [sys.executable, "-m", "train", "--preset", "demo", "--run-dir", str(run), "--epochs", "25",
           *_sets(TINY + _data(naip_paths) + ["sampler.kind=gps", "sampler.mining_every_epochs=0",
                                              "optim.checkpoint_every_steps=1", "log_every=1"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "train.log", "step 2 loss", proc)
    proc.kill()  # no chance to clean up: only the periodic checkpoint survives
    proc.wait()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] >= 1 and ckpt["sampler"]["start_batch"] == ckpt["step"] % 4
    resume = [sys.executable, "-m", "train", "--run-dir", str(run), "--resume"]
    logged = len((run / "train.log").read_text())
    proc = subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "train.log", f"step {ckpt['step'] + 1} loss", proc, after=logged)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: finish the step, save, exit 130 with the command to resume
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    after = torch.load(run / "checkpoint.pt", weights_only=False)
    assert after["step"] > ckpt["step"]
    done = subprocess.run(resume, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 100 and (run / "DONE").is_file()


def test_a_run_that_never_checkpointed_does_not_block_a_retry(tmp_path, naip_paths):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "train.log").write_text("crashed before the first checkpoint\n")
    cfg = apply_overrides(preset("demo"), TINY + _data(naip_paths) + [f"run_dir={run}", "optim.max_steps=1",
                                                                       "sampler.kind=random",
                                                                       "sampler.mining_every_epochs=0"])
    train(cfg, command=["test"])  # neither --resume nor --overwrite needed
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 1
    assert "crashed" not in (run / "train.log").read_text()


def test_setup_errors_come_before_the_run_folder_and_name_the_fix(tmp_path, naip_paths):
    run = tmp_path / "run"
    too_big = apply_overrides(preset("demo"), TINY + _data(naip_paths) + [f"run_dir={run}", "optim.batch_size=32"])
    with pytest.raises(TrainSetupError, match=r"--batch-size 16"):
        train(too_big, command=["test"])
    assert not run.exists()


def test_missing_data_is_named_before_any_weights_are_fetched(tmp_path):
    cfg = apply_overrides(preset("sues200"), [f"run_dir={tmp_path / 'run'}"])  # ConvNeXt-B from the hub
    with pytest.raises(TrainSetupError, match="data.root must name the SUES-200 folder"):
        train(cfg, command=["test"])
    gone = apply_overrides(cfg, [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(TrainSetupError, match="nowhere does not exist"):
        train(gone, command=["test"])
    assert not (tmp_path / "run").exists()


def test_the_command_line_prints_setup_errors_as_one_line(tmp_path, naip_paths):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "--preset", "demo", "--run-dir", str(run), "--batch-size", "64",
           *_sets(TINY[:5] + TINY[6:] + _data(naip_paths))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and "--batch-size 16" in done.stderr and "Traceback" not in done.stderr
    assert not run.exists()
    # a machine without the hub: one line naming both ways out, nothing left behind
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hub"))
    offline = [sys.executable, "-m", "train", "--preset", "demo", "--run-dir", str(run), "--model", "resnet18",
               "--set", "model.pretrained=timm"]
    done = subprocess.run(offline, capture_output=True, text=True, timeout=240, env=env)
    lines = [ln for ln in done.stderr.splitlines() if "ERROR" in ln]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and "model.pretrained=" in lines[0] and "tf_efficientnet_lite0" in lines[0]
    assert not run.exists()


def test_ranks_draw_different_augmentations_and_workers_different_seeds(naip_paths):
    from runtime.engines.preprocess import Preprocess
    from train.datasets import GeoTiffPairs, ViewJitter
    from train.distributed import loader_seed, seed_process

    ds = GeoTiffPairs(naip_paths[2018], [naip_paths[2012]], [300], 60.0, Preprocess(input_size=(32, 32)),
                      jitter=ViewJitter(), max_locations=4)
    draws = {}
    for rank in (0, 1, 0):
        seed_process(7, rank)
        draws.setdefault(rank, []).append(ds[0][0])
    assert torch.equal(draws[0][0], draws[0][1])  # one rank: reproducible
    assert not torch.equal(draws[0][0], draws[1][0])  # another rank: its own stream
    seeds = {loader_seed(7, epoch, rank) for epoch in range(3) for rank in range(4)}
    assert len(seeds) == 12


def test_two_passes_keep_batchnorm_statistics_per_view():
    from train.build import PairForward, has_training_batchnorm
    from train.model import GeoModel

    torch.manual_seed(0)
    model = GeoModel("test_efficientnet", img_size=32)
    assert has_training_batchnorm(model, freeze_bn=False) and not has_training_batchnorm(model, freeze_bn=True)
    drone, sat = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32) * 3 + 1
    model.train()
    joint, separate = PairForward(model, False)(drone, sat), PairForward(model, True)(drone, sat)
    model.eval()  # alone, each view's batch statistics are the view's own: the drone features differ
    assert not torch.allclose(joint[0], separate[0], atol=1e-4)
    with torch.no_grad():  # with frozen statistics both ways are the same computation
        a, b = PairForward(model, False)(drone, sat), PairForward(model, True)(drone, sat)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)


def test_mining_averages_several_views_per_location(naip_paths):
    from train.datasets import GeoTiffPairs, ViewJitter
    from train.embed import embed_images
    from train.mining import embed_location_queries
    from train.model import GeoModel

    model = GeoModel("test_efficientnet", img_size=32)
    ds = GeoTiffPairs(naip_paths[2018], [naip_paths[2012], naip_paths[2014]], [300], 60.0, model.preprocess,
                      jitter=ViewJitter(), max_locations=5)
    got = embed_location_queries(model, ds, 3, 64, "cpu", np.random.default_rng(4))
    rng = np.random.default_rng(4)
    samples = ds.mining_samples(3, rng)
    assert [len(s) for s in samples] == [3] * 5
    assert all(set(ds.locations[s]) == {loc} for loc, s in enumerate(samples))
    views = [ds.mining_query(int(i), rng) for s in samples for i in s]
    emb = embed_images(model, views, 64, "cpu").reshape(5, 3, -1).mean(1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert np.allclose(got, emb, atol=1e-5)


def test_an_epoch_with_a_batch_fewer_than_the_first_still_ends(tmp_path, naip_paths):
    """Distinct-location batching gives epoch 2 of this set-up 7 batches against epoch 1's 8 (seed 1,
    16 locations x 3 years, batch 6): the run must count epoch 2 as done, not loop on empty epochs."""
    import threading

    from train.samplers import DistinctLocationBatchSampler

    plan = DistinctLocationBatchSampler(np.repeat(np.arange(16), 3), 6, seed=1)
    lens = []
    for epoch in (0, 1):
        plan.set_epoch(epoch)
        lens.append(len(plan))
    assert lens == [8, 7]
    years = ",".join(f'"{naip_paths[y]}"' for y in (2010, 2012, 2014))
    cfg = apply_overrides(preset("demo"), TINY + [f"data.reference={naip_paths[2018]}", f"data.train_rasters=[{years}]",
                                                  "data.eval_rasters=[]", "optim.batch_size=6", "seed=1",
                                                  "optim.epochs=2", "sampler.kind=random",
                                                  "sampler.mining_every_epochs=0", f"run_dir={tmp_path / 'run'}"])
    worker = threading.Thread(target=train, args=(cfg,), kwargs={"command": ["test"]}, daemon=True)
    worker.start()
    worker.join(timeout=600)
    assert not worker.is_alive(), "the run never ended"
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 15
    assert (tmp_path / "run" / "DONE").is_file()
