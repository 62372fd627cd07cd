"""`python -m runtime serve` as a real process: video file in, JSON lines + GPS_INPUT + health out, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from runtime.config import build_config, load_config_file
from runtime.inputs.frame_slot import FrameSlot
from tests.loopback import free_port as _free_port
from tools.toy_assets import tiny_assets, write_flight_video


def test_frame_slot_newest_wins_and_blocking_mode():
    stop = threading.Event()
    slot = FrameSlot(drop=True)
    for i in range(3):
        slot.put(i, stop)  # never blocks the camera
    assert slot.get() == 2 and slot.dropped == 2 and slot.get(0.01) is None
    slot = FrameSlot(drop=False)
    slot.put(0, stop)
    t = threading.Thread(target=slot.put, args=(1, stop))
    t.start()
    time.sleep(0.15)
    assert t.is_alive()  # a file source waits instead of dropping
    assert slot.get() == 0
    t.join(2)
    assert slot.get() == 1 and slot.dropped == 0


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('[serve]\nbundle = "b"\ndb = "d"\nsource = "0"\naltitude_m = 150.0\ntop-k = 7\n')
    cfg = build_config(load_config_file(f), {"altitude_m": 200.0, "db": None})
    assert (cfg.bundle, cfg.db, cfg.altitude_m, cfg.top_k) == ("b", "d", 200.0, 7)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"bundle": "b", "fusion": "gate"}))
    with pytest.raises(ValueError, match="the setting 'fusion' was removed: there is one fusion"):
        load_config_file(old)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bundle": "b", "altitud": 3}))
    with pytest.raises(ValueError, match=r"unknown settings \['altitud'\]"):
        load_config_file(bad)
    with pytest.raises(ValueError, match="missing settings"):
        build_config({}, {"bundle": "b"})


def test_serve_subprocess_sigterm_flushes_and_mavlink_sees_gps_input(tmp_path):
    from pymavlink import mavutil

    a = tiny_assets()
    video = tmp_path / "flight.avi"
    write_flight_video(video, a["raster"], n_frames=40, fps=1.0)  # ~95 m a frame, a frame a second
    out = tmp_path / "fixes.jsonl"
    mav_port, health_port = _free_port(), _free_port(socket.SOCK_STREAM)
    listener = mavutil.mavlink_connection(f"udpin:127.0.0.1:{mav_port}")
    cfg = tmp_path / "serve.json"
    cfg.write_text(json.dumps({"max_speed_mps": 150.0, "top_k": 4, "derotate": False}))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--config", str(cfg), "--bundle", str(a["bundle_thumb"]),
         "--db", str(a["db_thumb"]), "--source", str(video), "--loop", "--altitude", str(a["thumb_altitude_m"]),
         "--jsonl", str(out),
         "--mavlink", f"udpout:127.0.0.1:{mav_port}", "--health-port", str(health_port)],
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        msgs, deadline = [], time.monotonic() + 60
        while sum(m.fix_type == 3 for m in msgs) < 5 and time.monotonic() < deadline and proc.poll() is None:
            m = listener.recv_match(type="GPS_INPUT", blocking=True, timeout=0.5)
            if m is not None:
                msgs.append(m)
        assert len(msgs) >= 5, f"listener saw {len(msgs)} GPS_INPUT; stderr: {proc.stderr.read() if proc.poll() else ''}"
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/health", timeout=5) as r:
            health = json.loads(r.read())
        assert health["counters"]["frames_processed"] >= 5 and "inference" in health["latency_ms"]
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 45):
            time.sleep(0.1)  # past the end of the 40-frame file: --loop restarts it
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert code == 0, stderr
    for needle in ("engine: onnxruntime[CPUExecutionProvider] fp32", "database: ", "source: ", "outputs: "):
        assert needle in stderr  # the start-up self-check
    records = [json.loads(line) for line in out.read_text().splitlines()]  # every line is whole JSON
    fixes = [r for r in records if r["type"] == "fix"]
    assert records[-1]["type"] == "summary"
    assert records[-1]["health"]["counters"]["frames_processed"] == len(fixes) > 40  # looped past the end
    r = fixes[0]
    assert set(r["latency_ms"]) >= {"preprocess", "inference", "search", "fusion", "total"}
    assert len(r["matches"]) == 4 and r["matches"][0]["score"] >= r["matches"][-1]["score"]
    # the thumbnail model finds crops of the map's own image: trusted fixes, and the autopilot got a real
    # position in degE7
    trusted = [m for m in msgs if m.fix_type == 3]
    assert trusted and all(46.9e7 < m.lat < 47.1e7 and -99.3e7 < m.lon < -99.0e7 for m in trusted)
    assert all(m.horiz_accuracy > 0 for m in trusted)
    xy = np.array([[f["fix"]["lat"], f["fix"]["lon"]] for f in fixes if f["fix"]["trusted"]])
    assert np.all(np.isfinite(xy))
