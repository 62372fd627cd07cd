"""The heading: a real pymavlink sender on 127.0.0.1 feeds runtime.inputs.autopilot's heading, and the service turns
each frame north-up by it (or by a fixed --heading) before the engine. Frames are drone views rendered from
the NAIP raster by tiles.views at a known heading."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from runtime.config import ServiceConfig
from runtime.engines.preprocess import north_up
from runtime.inputs.autopilot import AutopilotReader, headings_from_message
from tests.fakes.mavlink_peer import FakeAutopilot
from tests.loopback import free_port as _free_port
from tests.loopback import wait_for as _wait_for
from tools.toy_assets import tiny_assets

mavutil = pytest.importorskip("pymavlink.mavutil")
MAV = mavutil.mavlink

ALT_M = 277.0  # 60 deg HFOV: a 320 m footprint, the database's 64 px x 5 m tiles
VIEW_PX = 96


def _views(raster_path, heading_deg: float, n: int = 3):
    """(view at ``heading_deg``, the same view at heading 0) at ``n`` points inside the raster."""
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    out = []
    with open_raster(raster_path) as r:
        xmin, ymin, xmax, ymax = r.bounds_m
        for i in range(n):
            x, y = xmin + 900.0 + 1100.0 * i, ymin + 800.0 + 700.0 * i
            view = render_view(r, CameraPose(x, y, ALT_M, heading_deg, 0, 60), (VIEW_PX, VIEW_PX)).image
            up = render_view(r, CameraPose(x, y, ALT_M, 0.0, 0, 60), (VIEW_PX, VIEW_PX)).image
            out.append((view, up))
    return out


def _spy_inputs(engine) -> list:
    """Keep every image the (real) engine is asked to prepare; returns the list it fills."""
    seen, prepare = [], engine.prepare

    def spy(images):
        images = list(images)
        seen.extend(images)
        return prepare(images)

    engine.prepare = spy
    return seen


def _inner_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference over the centre of the image, where a rotation keeps every pixel."""
    m = VIEW_PX // 5
    return float(np.abs(a.astype(float) - b.astype(float))[m:-m, m:-m].mean())


def test_headings_from_messages_units():
    from pymavlink.dialects.v20 import common as v2

    def att(yaw):
        return v2.MAVLink_attitude_message(0, 0.0, 0.0, yaw, 0.0, 0.0, 0.0)

    assert headings_from_message(att(0.0)) == {"attitude": 0.0}
    assert headings_from_message(att(-math.pi / 2))["attitude"] == pytest.approx(270.0)  # -pi..pi -> 0..360
    assert headings_from_message(att(math.pi))["attitude"] == pytest.approx(180.0)
    assert headings_from_message(att(0.5))["attitude"] == pytest.approx(28.6479, abs=1e-4)  # radians -> degrees
    assert headings_from_message(att(math.nan)) == {}
    hud = v2.MAVLink_vfr_hud_message(0.0, 0.0, 123, 50, 100.0, 0.0)
    assert headings_from_message(hud) == {"vfr_hud": 123.0}  # whole degrees
    gpi = v2.MAVLink_global_position_int_message(0, 0, 0, 0, 0, 0, 0, 0, 31050)
    assert headings_from_message(gpi) == {"global_position_int": 310.5}  # centidegrees
    gpi = v2.MAVLink_global_position_int_message(0, 0, 0, 0, 0, 0, 0, 0, 65535)
    assert headings_from_message(gpi) == {}  # UINT16_MAX: unknown


def test_reader_heading_over_udp_priority_units_and_staleness():
    port, stale = _free_port(), 0.5
    reader = AutopilotReader(f"udpin:127.0.0.1:{port}", stale_s=stale, request_hz=0).start()
    tx = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)

    def gpi(hdg_cdeg):
        tx.mav.global_position_int_send(1000, 470000000, -991000000, 600000, 150000, 0, 0, 0, hdg_cdeg)

    def hud(deg):
        tx.mav.vfr_hud_send(0.0, 0.0, deg, 50, 600.0, 0.0)

    def att(yaw):
        tx.mav.attitude_send(1000, 0.0, 0.0, yaw, 0.0, 0.0, 0.0)

    try:
        assert reader.heading() is None
        # GLOBAL_POSITION_INT alone: its hdg (cdeg), and the same message still gives the altitude
        gpi(4550)
        h = _wait_for(reader.heading)
        assert h and h.source == "global_position_int" and h.heading_deg == pytest.approx(45.5)
        assert 0 <= h.age_s < stale and h.system_id == 1
        assert reader.current().source == "relative_alt" and reader.current().altitude_m == 150.0
        # VFR_HUD wins over GLOBAL_POSITION_INT
        hud(120)
        h = _wait_for(lambda: (c := reader.heading()) and c.source == "vfr_hud" and c)
        assert h and h.heading_deg == 120.0
        # ATTITUDE.yaw wins over both; -pi/2 rad is 270 degrees
        att(-math.pi / 2)
        h = _wait_for(lambda: (c := reader.heading()) and c.source == "attitude" and c)
        assert h and h.heading_deg == pytest.approx(270.0, abs=1e-4)
        # an unknown GPI heading (65535) is no reading: the last valid one stays (and ages)
        gpi(65535)
        assert _wait_for(lambda: reader.messages >= 4)
        time.sleep(0.05)  # counted before it is handled
        assert reader.status()["heading_sources"]["global_position_int"]["heading_deg"] == 45.5
        # ATTITUDE goes quiet: once it is stale, the fresh VFR_HUD is used
        h = _wait_for(lambda: (c := reader.heading()) and c.source == "vfr_hud" and c, timeout=3,
                      every=lambda: hud(121))
        assert h and h.heading_deg == 121.0
        assert reader.status()["heading_sources"]["attitude"]["age_s"] >= stale  # rounded to ms
        # silence: no heading at all, the status still shows what was last heard
        time.sleep(stale + 0.15)
        assert reader.heading() is None
        st = reader.status()
        assert st["heading"] is None and set(st["heading_sources"]) == {"attitude", "vfr_hud", "global_position_int"}
    finally:
        reader.close()
        tx.close()


def _service(cfg_kwargs, jsonl=None, source=()):
    from runtime.service import Service

    a = tiny_assets()
    cfg = ServiceConfig(bundle=str(a["bundle"]), db=str(a["db"]), source="unused", altitude_m=150.0,
                        jsonl=jsonl, **cfg_kwargs)
    return Service(cfg, source=list(source))


def test_service_turns_frames_north_up_with_the_autopilot_heading(tmp_path):
    """In process, real engine/database/sockets: the autopilot's yaw 60 deg plus a 30 deg camera offset is
    heading 90; frames rendered at heading 90 reach the engine turned north-up (the heading-0 view), and
    every JSON line says heading 90 from autopilot:attitude."""
    a = tiny_assets()
    views = _views(a["raster"], 90.0)
    frames = [(1.0 * i, v, {"index": i}) for i, (v, _) in enumerate(views)]  # keyframes (>= keyframe_s apart)
    port = _free_port()
    out = tmp_path / "fixes.jsonl"
    # the heading comes over the --altitude-from link (no --heading-from); the altitude falls back to 150 m
    svc = _service({"altitude_from": f"udpin:127.0.0.1:{port}", "altitude_stale_s": 0.5, "altitude_request_hz": 0,
                    "camera_yaw_offset_deg": 30.0}, jsonl=str(out), source=frames)
    assert svc.heading_reader is svc.autopilot  # one reader (one socket) for altitude and heading
    engine = svc.engine
    want = [engine.embed([north_up(v, 90.0)])[0] for v, _ in views]
    raw = [engine.embed([v])[0] for v, _ in views]
    seen_images, seen_emb = [], []
    prepare, embed_prepared = engine.prepare, engine.embed_prepared

    def spy_prepare(images):
        images = list(images)
        seen_images.extend(images)
        return prepare(images)

    def spy_embed(x):
        e = embed_prepared(x)
        seen_emb.extend(e)
        return e

    engine.prepare, engine.embed_prepared = spy_prepare, spy_embed
    with FakeAutopilot(port) as tx:
        tx.yaw_rad = math.radians(60.0)
        svc.autopilot.start()
        assert _wait_for(svc.autopilot.heading)
        lines = svc.self_check()
        code = svc.run()
    assert code == 0
    hl = [ln for ln in lines if ln.startswith("heading: ")]
    assert hl and f"heading from the autopilot at udpin:127.0.0.1:{port}" in hl[0]
    assert "camera yaw offset +30 deg" in hl[0] and "now 90.0 deg from autopilot:attitude" in hl[0], hl
    # what the engine got: the frame turned north-up, close to the north-up render, not the raw frame
    got = [(im, e) for im, e in zip(seen_images, seen_emb) if im.shape[:2] == (VIEW_PX, VIEW_PX)]
    assert len(got) == len(views)
    for (im, e), (view, up), w, r in zip(got, views, want, raw):
        assert np.abs(im.astype(int) - north_up(view, 90.0).astype(int)).max() <= 1
        err = _inner_error(im, up)
        assert err < 6 and 3 * err < _inner_error(view, up)  # as the camera saw it, the frame differs
        assert np.abs(e - w).max() < 1e-4  # the embedding of north_up(frame, 90)
        assert np.abs(e - r).max() > 100 * np.abs(e - w).max()  # ... and not of the frame as it was
    records = [json.loads(x) for x in out.read_text().splitlines()]
    fixes = [r for r in records if r["type"] == "fix"]
    assert len(fixes) == len(views)
    for f in fixes:
        assert f["heading_deg"] == pytest.approx(90.0, abs=1e-3) and f["heading_source"] == "autopilot:attitude"
        assert 0 <= f["heading_age_s"] < 0.5 and f["altitude_source"] == "given" and f["matches"]
    health = records[-1]["health"]
    assert health["counters"].get("frames_no_heading", 0) == 0
    info = health["info"]["heading"]
    assert info["source"] == "autopilot:attitude" and info["camera_yaw_offset_deg"] == 30.0
    assert info["autopilot"]["heading"]["source"] == "attitude"


def test_service_without_any_heading_searches_rotations_and_says_so():
    """No compass, no fixed heading, nothing tracked yet: the frame is embedded turned by the 12 search
    headings in one batch, and the JSON line names the heading it used and where it came from."""
    a = tiny_assets()
    (view, _), = _views(a["raster"], 90.0, n=1)
    svc = _service({})
    inputs = _spy_inputs(svc.engine)
    try:
        rec, _ = svc.process((0.0, view, {"index": 0}))
    finally:
        svc.engine.close()
    assert len(inputs) == 12 and np.array_equal(inputs[3], north_up(view, 90.0))
    assert rec["heading_source"] == "retrieval" and rec["heading_deg"] in {30.0 * k for k in range(12)}


def test_service_falls_back_to_the_fixed_heading_then_none_warns_once_and_counts(caplog):
    a = tiny_assets()
    (view, up), = _views(a["raster"], 90.0, n=1)
    port = _free_port()
    svc = _service({"heading_from": f"udpin:127.0.0.1:{port}", "altitude_stale_s": 0.4,
                    "altitude_request_hz": 0, "heading_deg": 45.0, "camera_yaw_offset_deg": 10.0})
    assert svc.autopilot is None and svc.heading_reader is not None  # heading only: altitude stays given
    inputs = _spy_inputs(svc.engine)
    try:
        with FakeAutopilot(port) as tx:
            svc.heading_reader.start()
            rec, _ = svc.process((0.0, view, {"index": 0}))  # nothing heard yet: the fixed heading
            assert (rec["heading_deg"], rec["heading_source"], rec["heading_age_s"]) == (45.0, "given", None)
            assert np.array_equal(inputs[-1], north_up(view, 45.0))  # no camera offset on a fixed heading
            tx.yaw_rad = math.radians(80.0)
            assert _wait_for(svc.heading_reader.heading)
            rec, _ = svc.process((1.0, view, {"index": 1}))
            assert rec["heading_deg"] == pytest.approx(90.0, abs=1e-3) and rec["heading_source"] == "autopilot:attitude"
            assert _inner_error(inputs[-1], up) < 6
            tx.yaw_rad = None
            time.sleep(0.5)
            rec, _ = svc.process((2.0, view, {"index": 2}))  # stale: back to the fixed heading
            assert (rec["heading_deg"], rec["heading_source"]) == (45.0, "given")
    finally:
        svc.heading_reader.close()
        svc.engine.close()
    assert svc.health.snapshot()["counters"].get("frames_no_heading", 0) == 0

    # no heading at all, rotation search off: frames go in as they are, the fix is still attempted, one
    # warning, a counter
    svc = _service({"heading_search_angles": 0})
    lines = svc.self_check()
    assert any(ln.startswith("heading: none (no --heading-deg, --heading-from or --altitude-from)") for ln in lines)
    inputs = _spy_inputs(svc.engine)
    caplog.set_level(logging.WARNING, logger="runtime.service")
    try:
        recs = [svc.process((1.0 * i, view, {"index": i}))[0] for i in range(3)]
        svc._sync_health()
    finally:
        svc.engine.close()
    assert all(r["heading_deg"] is None and r["heading_source"] is None and r["matches"] for r in recs)
    assert all(r["fix"]["reason"] != "no altitude" for r in recs)
    assert all(im is view for im in inputs[-3:])
    warnings = [r for r in caplog.records if "no heading" in r.getMessage()]
    assert len(warnings) == 1 and "--heading-deg DEG" in warnings[0].getMessage()
    snap = svc.health.snapshot()
    assert snap["counters"]["frames_no_heading"] == 3
    assert snap["info"]["heading"]["source"] is None and snap["info"]["heading"]["derotate"] is True

    # --no-derotate: a fixed heading is ignored, nothing counted, nothing warned
    caplog.clear()
    svc = _service({"heading_deg": 90.0, "derotate": False})
    inputs = _spy_inputs(svc.engine)
    try:
        assert any(ln.startswith("heading: not used (--no-derotate)") for ln in svc.self_check())
        rec, _ = svc.process((0.0, view, {"index": 0}))
    finally:
        svc.engine.close()
    assert rec["heading_deg"] is None and inputs[-1] is view
    assert svc.health.snapshot()["counters"].get("frames_no_heading", 0) == 0
    assert not [r for r in caplog.records if "no heading" in r.getMessage()]


def test_command_line_carries_the_heading_settings():
    import argparse

    from runtime.__main__ import add_serve_arguments
    from runtime.config import build_config

    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    base = ["--bundle", "b", "--db", "d", "--source", "0"]
    cfg = build_config({}, vars(p.parse_args(base + ["--heading", "0", "--heading-from", "udpin:0.0.0.0:14552",
                                                     "--camera-yaw-offset-deg", "-90", "--no-derotate"])))
    assert (cfg.heading_deg, cfg.heading_from, cfg.camera_yaw_offset_deg, cfg.derotate) == \
           (0.0, "udpin:0.0.0.0:14552", -90.0, False)
    cfg = build_config({"derotate": False}, vars(p.parse_args(base)))  # a config file's value stays
    assert cfg.derotate is False and cfg.heading_deg is None and cfg.camera_yaw_offset_deg == 0.0


def test_serve_with_a_fixed_heading_records_it(tmp_path):
    """A real `python -m runtime serve --heading 90` on a folder of views rendered at heading 90."""
    import cv2

    a = tiny_assets()
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, (view, _) in enumerate(_views(a["raster"], 90.0)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.ascontiguousarray(view[:, :, ::-1]))
    out = tmp_path / "fixes.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", "--bundle", str(a["bundle"]), "--db", str(a["db"]),
         "--source", str(folder), "--altitude", "150", "--heading", "90", "--jsonl", str(out)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "heading: 90 deg given (--heading-deg): every frame turned north-up by it" in proc.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    fixes = [r for r in records if r["type"] == "fix"]
    assert len(fixes) == 3
    assert all(f["heading_deg"] == 90.0 and f["heading_source"] == "given" and f["matches"] for f in fixes)
    summary = records[-1]
    assert summary["type"] == "summary" and summary["health"]["info"]["heading"]["source"] == "given"
    assert summary["health"]["counters"].get("frames_no_heading", 0) == 0
