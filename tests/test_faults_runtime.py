"""Fault injection for what flies (issue 15): records never lost or half-written, frame sources that fail in
every way are counted and skipped, never a crash.

Real things where they can exist here: files, folders, a UDP socket, a file-size limit set with
``resource.RLIMIT_FSIZE`` in a child process (the disk filling up), this machine's OpenCV (built without
GStreamer). A camera cannot exist here, so a scripted stand-in plays one through ``VideoSource``'s
``opener`` with the documented ``cv2.VideoCapture`` methods (``isOpened``, ``read``, ``get``, ``release``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from runtime.inputs.sources import (
    IterSource,
    SourceError,
    SourceStats,
    VideoSource,
    check_frame,
    gstreamer_available,
    open_source,
)
from runtime.outputs.json_lines import JsonLinesOutput, OutputError, UdpJsonOutput, json_safe
from tests.conftest import REPO

NAN_RECORD = {"type": "fix", "t": 1.0, "fix": {"x": float("nan"), "lat": float("inf"), "accuracy_m": np.float32(3.5),
                                              "trusted": np.bool_(False)},
              "matches": [{"score": np.float16("nan"), "row": np.int64(4)}], "raw": np.array([1.0, np.nan])}


def test_non_finite_numbers_written_as_null_not_dropped(tmp_path):
    out = JsonLinesOutput(tmp_path / "fixes.jsonl")
    out.write({"type": "fix", "t": 0.0, "fix": {"x": 1.0}})
    out.write(NAN_RECORD)
    out.close()
    lines = (tmp_path / "fixes.jsonl").read_text().splitlines()
    assert len(lines) == 2 and out.lines == 2
    rec = json.loads(lines[1])  # strict JSON: no NaN tokens
    assert rec["fix"] == {"x": None, "lat": None, "accuracy_m": 3.5, "trusted": False}
    assert rec["matches"] == [{"score": None, "row": 4}] and rec["raw"] == [1.0, None]
    assert "NaN" not in lines[1] and "Infinity" not in lines[1]
    assert json_safe({"a": (1, float("-inf"))}) == {"a": [1, None]}


def test_udp_json_sends_a_record_with_nan(tmp_path):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    out = UdpJsonOutput(f"127.0.0.1:{rx.getsockname()[1]}")
    out.write(NAN_RECORD)
    assert json.loads(rx.recv(65536))["fix"]["x"] is None
    out.close()
    rx.close()


def test_jsonl_folder_created_or_a_one_line_error(tmp_path):
    path = tmp_path / "logs" / "geoloc" / "fixes.jsonl"
    out = JsonLinesOutput(path)
    out.write({"type": "fix"})
    out.close()
    assert path.read_text() == '{"type":"fix"}\n'
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=r"cannot open .*afile/sub/f.jsonl for JSON lines: Not a directory") as e:
        JsonLinesOutput(tmp_path / "afile" / "sub" / "f.jsonl")
    assert "\n" not in str(e.value)


DISK_FULL = textwrap.dedent("""
    import resource, signal, sys
    from runtime.outputs.json_lines import JsonLinesOutput, OutputError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, as a full disk gives ENOSPC
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    out = JsonLinesOutput(sys.argv[1])
    try:
        for i in range(10000):
            out.write({"type": "fix", "frame": i, "pad": "x" * 37})
    except OutputError as e:
        print(e, file=sys.stderr)
        print(out.lines)
        sys.exit(3)
""")


def test_disk_full_leaves_only_complete_lines_and_a_clear_error(tmp_path):
    limit = 10_000
    path = tmp_path / "fixes.jsonl"
    out = subprocess.run([sys.executable, "-c", DISK_FULL, str(path), str(limit)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr
    assert "cannot write a JSON line to" in out.stderr and "File too large" in out.stderr
    data = path.read_bytes()
    assert 0 < len(data) <= limit and data.endswith(b"\n")  # the partial last line was removed
    lines = data.decode().splitlines()
    assert [json.loads(x)["frame"] for x in lines] == list(range(len(lines)))
    assert len(lines) == int(out.stdout.strip())  # the error says how many lines made it


class ScriptedCamera:
    """A camera: each script item is a frame (BGR array) to return, None (read fails), or an exception to
    raise; then the stream ends."""

    def __init__(self, script, opened=True):
        self.script, self.opened = list(script), opened

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.opened

    def read(self):
        if not self.script:
            return False, None
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return (item is not None), item

    def get(self, prop):
        return 0.0

    def release(self):
        self.opened = False


def _bgr(value, h=32, w=32):
    return np.full((h, w, 3), value, np.uint8)


BAD_FRAMES = {
    "empty frame": np.zeros((0, 0, 3), np.uint8),
    "malformed frame of shape (32, 32, 2)": np.zeros((32, 32, 2), np.uint8),
    "float32 frame with NaN/inf pixels": np.full((32, 32, 3), np.nan, np.float32),
    "float64 frame (expected 8-bit pixels)": np.ones((32, 32, 3)),
    "uint16 frame (expected 8-bit pixels)": np.ones((32, 32, 3), np.uint16),
    "frame of 4x32 px is too small": np.zeros((32, 4, 3), np.uint8),
    "frame of 9000x9000 px is too large": np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (9000, 9000, 3)),
}


def test_check_frame_accepts_grey_and_alpha_refuses_the_rest():
    for reason, img in BAD_FRAMES.items():
        out, why = check_frame(img)
        assert out is None and why.startswith(reason), (reason, why)
    grey, _ = check_frame(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64) % 251)
    assert grey.shape == (48, 64, 3) and (grey[..., 0] == grey[..., 2]).all()
    rgba, _ = check_frame(np.zeros((16, 16, 4), np.uint8))
    assert rgba.shape == (16, 16, 3)


def test_live_camera_failing_every_way_is_counted_never_crashes():
    script = [_bgr(10), *BAD_FRAMES.values(), _bgr(20)[:, :, 0], RuntimeError("decoder crashed")]
    cams = [ScriptedCamera(script), ScriptedCamera([None]), ScriptedCamera([_bgr(30)])]
    opens = iter([OSError("device busy"), *cams])

    def opener(spec):
        item = next(opens, None)
        if isinstance(item, Exception):
            raise item
        return item if item is not None else ScriptedCamera([], opened=False)

    stats, stop = SourceStats(), threading.Event()
    got = []
    for f in VideoSource(0, opener=opener, stop=stop, stats=stats, backoff_s=(0.01, 0.02), max_reopens=3):
        got.append(int(f.image[0, 0, 0]))
        if len(got) == 3:
            stop.set()
    assert got == [10, 20, 30]  # grey 20 converted; the rest skipped; reopened after each read failure
    assert stats.corrupt == len(BAD_FRAMES) and set(stats.skipped) == {
        next(r for r in stats.skipped if r.startswith(k)) for k in BAD_FRAMES}
    assert stats.read_failures == 2 and stats.reopens == 2 and stats.frames_in == 3
    assert json.dumps(stats.as_dict())  # health can report it


def test_file_sources_fail_at_open_or_after_repeated_read_errors(tmp_path):
    fake = tmp_path / "flight.mp4"
    fake.write_text("this is a text file, not a video")
    with pytest.raises(SourceError, match="cannot open .*flight.mp4.*not a video"):
        open_source(fake)  # at open, in the caller's thread: not a traceback in the capture thread
    stats = SourceStats()
    src = VideoSource(fake, live=False, stats=stats,
                      opener=lambda s: ScriptedCamera([_bgr(5)] + [ValueError("bad packet")] * 50))
    frames = []
    with pytest.raises(SourceError, match="20 reads in a row failed .*bad packet.*damaged"):
        for f in src:
            frames.append(f)
    assert len(frames) == 1 and stats.read_failures == 20


def test_iter_source_skips_bad_frames_with_reasons():
    stats = SourceStats()
    frames = list(IterSource([_bgr(1), *BAD_FRAMES.values(), _bgr(2)], stats=stats))
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2]
    assert stats.corrupt == len(BAD_FRAMES) == sum(stats.skipped.values()) and stats.frames_in == 2


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer: the refusal does not apply")
def test_gstreamer_pipeline_refused_at_open_without_gstreamer():
    pipeline = "videotestsrc num-buffers=5 ! videoconvert ! appsink"
    with pytest.raises(SourceError, match=r"built without GStreamer.*getBuildInformation\(\)") as e:
        open_source(pipeline)
    assert "\n" not in str(e.value)


def test_json_safe_is_exact_for_finite_records():
    rec = {"a": 1.25, "b": [1, 2.5e-7], "c": "x", "d": None, "e": True}
    assert json_safe(rec) == rec and all(math.isfinite(x) for x in json_safe(rec)["b"])
    assert os.path.sep not in json.dumps(json_safe(rec))


def test_health_endpoint_serves_strict_json_when_the_last_fix_has_nan():
    import urllib.request

    from runtime.outputs.health import Health, HealthServer

    h = Health()
    h.fix({"x": float("nan"), "lat": float("nan"), "trusted": False})
    h.observe("total", float("inf"))
    srv = HealthServer(h, port=0).start()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/health", timeout=5).read().decode()
    finally:
        srv.close()
    snap = json.loads(body, parse_constant=lambda c: pytest.fail(f"{c} in the health JSON"))
    assert snap["last_fix"]["x"] is None and snap["latency_ms"]["total"]["p50"] is None
