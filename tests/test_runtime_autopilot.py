"""The altitude from the autopilot: a real pymavlink sender on 127.0.0.1 feeds runtime.inputs.autopilot, and
`python -m runtime serve --altitude-from` picks (and switches) the database layer from it."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from runtime.config import ServiceConfig
from runtime.inputs.autopilot import AutopilotAltitude, readings_from_message
from tests.fakes.mavlink_peer import FakeAutopilot
from tests.loopback import free_port as _free_port
from tests.loopback import wait_for as _wait_for
from tools.toy_assets import flight_crops, tiny_assets, write_flight_video

mavutil = pytest.importorskip("pymavlink.mavutil")
MAV = mavutil.mavlink
DOWN, FORWARD = MAV.MAV_SENSOR_ROTATION_PITCH_270, MAV.MAV_SENSOR_ROTATION_NONE


def _gpi(conn, relative_alt_mm: int) -> None:
    conn.mav.global_position_int_send(1000, 470000000, -991000000, 600000, relative_alt_mm, 0, 0, 0, 0)


def test_messages_to_metres_and_validity():
    from pymavlink.dialects.v20 import common as v2

    def dist(cm, lo=20, hi=4000, orientation=DOWN, quality=0):
        return v2.MAVLink_distance_sensor_message(0, lo, hi, cm, 0, 0, orientation, 0, 0, 0, [0, 0, 0, 0], quality)

    assert readings_from_message(dist(1234)) == {"rangefinder": 12.34}  # cm -> m
    assert readings_from_message(dist(1234, orientation=FORWARD)) == {}  # not facing down
    assert readings_from_message(dist(4500)) == {} and readings_from_message(dist(10)) == {}  # out of range
    assert readings_from_message(dist(1234, quality=1)) == {}  # flagged invalid by the sensor
    assert readings_from_message(dist(1234, quality=80)) == {"rangefinder": 12.34}
    gpi = v2.MAVLink_global_position_int_message(0, 0, 0, 600000, -2500, 0, 0, 0, 0)
    assert readings_from_message(gpi) == {"relative_alt": -2.5}  # mm -> m, below home is negative
    alt = v2.MAVLink_altitude_message(0, 0, 600.0, 0, 88.5, math.nan, 0)
    assert readings_from_message(alt) == {"altitude_relative": 88.5}  # NaN terrain: unknown
    alt = v2.MAVLink_altitude_message(0, 0, 600.0, 0, 88.5, -1500.0, 0)
    assert readings_from_message(alt) == {"altitude_relative": 88.5}  # below -1000: unknown
    alt = v2.MAVLink_altitude_message(0, 0, 600.0, 0, 88.5, 95.25, 0)
    assert readings_from_message(alt) == {"altitude_terrain": 95.25, "altitude_relative": 88.5}


def test_reader_over_udp_priority_units_and_staleness():
    port = _free_port()
    stale = 0.5
    reader = AutopilotAltitude(f"udpin:127.0.0.1:{port}", stale_s=stale, request_hz=0).start()
    tx = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    only1_port = _free_port()
    only1 = AutopilotAltitude(f"udpin:127.0.0.1:{only1_port}", stale_s=stale, system_id=1)
    other = mavutil.mavlink_connection(f"udpout:127.0.0.1:{only1_port}", source_system=7, source_component=1)
    try:
        assert reader.current() is None  # nothing heard yet
        # GLOBAL_POSITION_INT.relative_alt is millimetres above home
        _gpi(tx, 152345)
        r = _wait_for(reader.current)
        assert r is not None and r.source == "relative_alt" and r.altitude_m == pytest.approx(152.345)
        assert 0 <= r.age_s < stale and r.system_id == 1
        # a downward rangefinder (centimetres) in range wins over relative_alt
        tx.mav.distance_sensor_send(1000, 20, 4000, 1234, 0, 0, DOWN, 0)
        r = _wait_for(lambda: (c := reader.current()) and c.source == "rangefinder" and c)
        assert r and r.altitude_m == pytest.approx(12.34)
        # a forward one and an out-of-range downward one are no readings; the next GPI shows they were read
        tx.mav.distance_sensor_send(1100, 20, 4000, 500, 0, 1, FORWARD, 0)
        tx.mav.distance_sensor_send(1100, 20, 4000, 4500, 0, 0, DOWN, 0)
        _gpi(tx, 153000)
        assert _wait_for(lambda: reader.status()["sources"]["relative_alt"]["altitude_m"] == 153.0)
        assert reader.status()["sources"]["rangefinder"]["altitude_m"] == 12.34
        # the rangefinder goes quiet: once stale, the fresh relative_alt is used
        r = _wait_for(lambda: (c := reader.current()) and c.source == "relative_alt" and c, timeout=3,
                      every=lambda: _gpi(tx, 153000))
        assert r and r.altitude_m == 153.0
        assert reader.status()["sources"]["rangefinder"]["age_s"] > stale
        # only ALTITUDE: altitude_relative while terrain is unknown, then altitude_terrain
        tx.mav.altitude_send(0, 0, 600.0, 0, 88.5, math.nan, 0)
        r = _wait_for(lambda: (c := reader.current()) and c.source == "altitude_relative" and c, timeout=3,
                      every=lambda: tx.mav.altitude_send(0, 0, 600.0, 0, 88.5, math.nan, 0))
        assert r and r.altitude_m == 88.5
        tx.mav.altitude_send(0, 0, 600.0, 0, 88.5, 95.25, 0)
        r = _wait_for(lambda: (c := reader.current()) and c.source == "altitude_terrain" and c)
        assert r and r.altitude_m == 95.25
        # silence: everything stale, nothing returned, the status still shows what was last heard
        time.sleep(stale + 0.15)
        assert reader.current() is None
        st = reader.status()
        assert st["current"] is None and set(st["sources"]) == {"rangefinder", "relative_alt", "altitude_terrain",
                                                                "altitude_relative"}
        assert all(s["age_s"] > stale for s in st["sources"].values()) and st["messages"] >= 8
        # another vehicle's messages are ignored by a reader bound to system 1
        only1.start()
        other.mav.global_position_int_send(0, 0, 0, 0, 99000, 0, 0, 0, 0)
        assert _wait_for(lambda: only1.messages >= 1)
        time.sleep(0.05)
        assert only1.current() is None
    finally:
        for c in (reader, only1):
            c.close()
        tx.close()
        other.close()


def test_reader_requests_streams_from_an_autopilot_heartbeat():
    port = _free_port()
    reader = AutopilotAltitude(f"udpin:127.0.0.1:{port}", request_hz=4.0).start()
    gcs = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=255, source_component=190)
    ap = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=3, source_component=1)
    try:
        gcs.mav.heartbeat_send(MAV.MAV_TYPE_GCS, MAV.MAV_AUTOPILOT_INVALID, 0, 0, 0)
        assert _wait_for(lambda: reader.messages >= 1)
        assert reader.requests_sent == 0  # a ground station is not asked
        cmds = []

        def poll():
            ap.mav.heartbeat_send(MAV.MAV_TYPE_QUADROTOR, MAV.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 0)
            while (m := ap.recv_match(blocking=False)) is not None:
                if m.get_type() == "COMMAND_LONG":
                    cmds.append(m)

        _wait_for(lambda: len(cmds) >= 4, every=poll)
        time.sleep(0.3)
        poll()
        assert len(cmds) == 4, "asked once per autopilot, not once per heartbeat"
        # the autopilot rebooted (its boot clock went back): asked again at its next heartbeat
        ap.mav.global_position_int_send(600000, 0, 0, 0, 0, 0, 0, 0, 0)
        ap.mav.global_position_int_send(2000, 0, 0, 0, 0, 0, 0, 0, 0)
        _wait_for(lambda: len(cmds) >= 8, every=poll)
    finally:
        reader.close()
        gcs.close()
        ap.close()
    assert len(cmds) == 8 and reader.requests_sent == 8
    assert {c.command for c in cmds} == {MAV.MAV_CMD_SET_MESSAGE_INTERVAL}
    # GLOBAL_POSITION_INT, DISTANCE_SENSOR, ALTITUDE, ATTITUDE (the heading)
    assert {int(c.param1) for c in cmds} == {33, 132, 141, 30}
    assert all(c.param2 == 250000 and c.target_system == 3 and c.target_component == 1 for c in cmds)


def test_config_file_and_command_line_carry_the_autopilot_settings(tmp_path):
    from runtime.__main__ import add_serve_arguments
    from runtime.config import build_config, load_config_file

    f = tmp_path / "serve.toml"
    f.write_text('[serve]\nbundle = "b"\ndb = "d"\nsource = "0"\naltitude-from = "/dev/ttyTHS1"\n'
                 'altitude_from_baud = 921600\naltitude_stale_s = 1.5\n')
    import argparse

    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    args = p.parse_args(["--altitude-from", "udpin:0.0.0.0:14551", "--altitude", "120"])
    cfg = build_config(load_config_file(f), vars(args))
    assert (cfg.altitude_from, cfg.altitude_from_baud, cfg.altitude_stale_s, cfg.altitude_m) == \
           ("udpin:0.0.0.0:14551", 921600, 1.5, 120.0)


def test_reader_errors_name_the_value_and_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="stale_s must be > 0"):
        AutopilotAltitude("udpin:127.0.0.1:1", stale_s=0)
    with pytest.raises(ValueError, match=r"cannot open the autopilot link '/dev/ttyNOPE0'.*serial device"):
        AutopilotAltitude("/dev/ttyNOPE0")
    monkeypatch.setitem(sys.modules, "pymavlink", None)
    with pytest.raises(ImportError, match=r"pip install 'geoloc-edge\[mavlink\]'"):
        AutopilotAltitude("udpin:127.0.0.1:1")


def test_service_falls_back_to_the_given_altitude_when_the_autopilot_is_stale():
    """In process (real engine, database and sockets): the given altitude until the autopilot speaks,
    the autopilot's rangefinder while fresh, the given altitude again once it is stale."""
    from runtime.service import Service

    a = tiny_assets()
    port = _free_port()
    cfg = ServiceConfig(bundle=str(a["bundle"]), db=str(a["db"]), source="unused", altitude_m=300.0,
                        altitude_from=f"udpin:127.0.0.1:{port}", altitude_stale_s=0.4, altitude_request_hz=0)
    svc = Service(cfg, source=[])
    tx = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    img = flight_crops(a["raster"], n_frames=1)[0][0]
    try:
        svc.autopilot.start()
        lines = svc.self_check()
        assert any(ln.startswith(f"altitude: altitude from the autopilot at udpin:127.0.0.1:{port}")
                   and "no reading yet; fallback 300 m (--altitude-m)" in ln for ln in lines), lines
        rec, _ = svc.process((0.0, img, {"index": 0}))
        assert (rec["layer"], rec["altitude_m"], rec["altitude_source"], rec["altitude_age_s"]) == \
               ("alt300", 300.0, "given", None)
        # a 400 m lidar reading 155 m: the 150 m layer, from the rangefinder
        tx.mav.distance_sensor_send(0, 20, 40000, 15500, 0, 0, DOWN, 0)
        assert _wait_for(svc.autopilot.current)
        rec, _ = svc.process((1.0, img, {"index": 1}))
        assert (rec["layer"], rec["altitude_m"], rec["altitude_source"]) == ("alt150", 155.0, "autopilot:rangefinder")
        assert 0 <= rec["altitude_age_s"] < 0.4 and rec["matches"] and rec["fix"]["reason"] != "no altitude"
        svc._sync_health()
        assert svc.health.snapshot()["info"]["altitude"]["source"] == "autopilot:rangefinder"
        time.sleep(0.5)
        rec, _ = svc.process((2.0, img, {"index": 2}))
        assert (rec["layer"], rec["altitude_m"], rec["altitude_source"]) == ("alt300", 300.0, "given")
    finally:
        svc.autopilot.close()
        svc.engine.close()
        tx.close()


def test_serve_without_any_altitude_refuses_a_multi_layer_database(tmp_path):
    a = tiny_assets()
    proc = subprocess.run([sys.executable, "-m", "runtime", "serve", "--bundle", str(a["bundle"]), "--db",
                           str(a["db"]), "--source", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "2 altitude layers [150.0, 300.0]" in proc.stderr and "--altitude-from MAVLINK_URL" in proc.stderr


def test_serve_picks_and_switches_the_layer_from_the_autopilot_then_no_altitude(tmp_path):
    """A real `python -m runtime serve` whose --altitude-from and --mavlink share one udpin link: the
    fake autopilot streams 150 m, then 290 m, then goes silent; the service asks it for the streams and
    sends GPS_INPUT back over the same link."""
    a = tiny_assets()
    video = tmp_path / "flight.avi"
    write_flight_video(video, a["raster"], n_frames=10)
    out = tmp_path / "fixes.jsonl"
    port, health_port = _free_port(), _free_port(socket.SOCK_STREAM)
    link = f"udpin:127.0.0.1:{port}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def fixes():
        if not out.exists():
            return []
        return [r for r in (json.loads(x) for x in out.read_text().splitlines() if x.endswith("}"))
                if r["type"] == "fix"]

    with FakeAutopilot(port) as fc:
        fc.alt_mm = 150000
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--bundle", str(a["bundle"]), "--db", str(a["db"]),
             "--source", str(video), "--loop", "--jsonl", str(out),
             "--altitude-from", link, "--mavlink", link, "--altitude-stale-s", "0.5",
             "--health-port", str(health_port), "--health-log-s", "0.2"],
            stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert _wait_for(lambda: sum(f["layer"] == "alt150" for f in fixes()) >= 3, timeout=40), \
                proc.stderr.read() if proc.poll() is not None else "no alt150 fixes"
            fc.alt_mm = 290000
            assert _wait_for(lambda: sum(f["layer"] == "alt300" for f in fixes()) >= 3, timeout=10)
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/health", timeout=5) as r:
                health = json.loads(r.read())["info"]["altitude"]
            fc.alt_mm = None
            assert _wait_for(lambda: sum(f["layer"] is None for f in fixes()) >= 3, timeout=10)
            # the autopilot heartbeats once a second; the service asks for the streams when it sees one,
            # which a fast run may not have reached yet: wait for the requests before stopping it
            _wait_for(lambda: len({int(c.param1) for c in fc.types("COMMAND_LONG")}) >= 4, timeout=5)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(20)
            stderr = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, stderr
    assert f"altitude: altitude from the autopilot at {link} (stale after 0.5 s), now 150.0 m from " \
           "autopilot:relative_alt (" in stderr and "s old); fallback none: no fix while it is stale" in stderr
    assert "layer 'alt300'" in stderr  # the switch is logged
    assert re.search(r"health: .*; altitude (150|290)\.0 m \(autopilot:relative_alt, 0\.\d s old\) layer alt", stderr)
    assert health["source"] == "autopilot:relative_alt" and health["layer"] == "alt300"
    assert health["altitude_m"] == 290.0 and 0 <= health["age_s"] < 0.5
    assert health["autopilot"]["current"]["source"] == "relative_alt"
    recs = fixes()
    layers = [f["layer"] for f in recs]
    runs = [v for i, v in enumerate(layers) if i == 0 or v != layers[i - 1]]
    assert runs in (["alt150", "alt300", None], [None, "alt150", "alt300", None]), runs
    for f in recs:
        if f["layer"] is None:  # several layers, no altitude: no fix, no made-up match
            assert f["fix"]["reason"] == "no altitude" and not f["fix"]["trusted"] and f["matches"] == []
            assert f["altitude_m"] is None and f["altitude_source"] is None
        else:
            assert f["altitude_source"] == "autopilot:relative_alt" and 0 <= f["altitude_age_s"] <= 0.5
            assert {150.0: "alt150", 290.0: "alt300"}[f["altitude_m"]] == f["layer"]
            assert f["matches"] or f["raw"]["reason"] == "between keyframes"  # 10 fps, keyframes at 5 Hz
    # the shared link carried the stream requests and GPS_INPUT back to the autopilot
    assert {int(c.param1) for c in fc.types("COMMAND_LONG")} == {33, 132, 141, 30}
    gps = fc.types("GPS_INPUT")
    assert gps and any(m.fix_type == 1 for m in gps)  # the "no altitude" frames reach it as no fix (NO_FIX)
