"""Frame sources: folders with corrupt files, a camera that drops and comes back, a real UDP stream."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest

from runtime.inputs.sources import FolderSource, SourceStats, VideoSource, open_source


def _img(rgb, px=32):
    return np.full((px, px, 3), rgb, np.uint8)


def test_folder_source_rgb_order_and_corrupt_files(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), _img((255, 0, 0))[:, :, ::-1].copy())  # red, written as BGR
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ok, enc = cv2.imencode(".jpg", _img((0, 0, 255)))
    (tmp_path / "c.jpg").write_bytes(enc.tobytes()[: len(enc) // 3])  # truncated
    cv2.imwrite(str(tmp_path / "d.png"), _img((0, 255, 0)))
    (tmp_path / "e.png").write_bytes(b"")
    stats = SourceStats()
    frames = list(FolderSource(tmp_path, stats=stats))
    assert frames[0].image[0, 0].tolist() == [255, 0, 0]  # converted to RGB once, at the source
    assert frames[0].meta["path"].endswith("a.png")
    assert stats.corrupt >= 2 and stats.frames_in == len(frames)
    assert {f.meta["path"].rsplit("/", 1)[-1] for f in frames} >= {"a.png", "d.png"}


class FakeCamera:
    """A camera (cannot exist here): scripted reads; ``None`` fails the read, 'empty' returns a bad frame."""

    def __init__(self, script, opened=True):
        self.script, self.opened = list(script), opened

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.opened

    def read(self):
        if not self.script:
            return False, None
        item = self.script.pop(0)
        if item is None:
            return False, None
        if item == "empty":
            return True, np.zeros((0, 0, 3), np.uint8)
        return True, _img(item)[:, :, ::-1].copy()

    def get(self, prop):
        return 0.0

    def release(self):
        self.opened = False


def test_live_source_reopens_with_backoff_and_skips_corrupt_frames():
    cams = [FakeCamera([(1, 0, 0), (2, 0, 0), None]), FakeCamera([], opened=False), FakeCamera([], opened=False),
            FakeCamera([(3, 0, 0), "empty", (4, 0, 0)])]
    opened = []

    def opener(spec):
        opened.append(time.monotonic())
        return cams.pop(0) if cams else FakeCamera([], opened=False)

    class RecordingStop(threading.Event):
        waits: list = []

        def wait(self, timeout=None):
            self.waits.append(timeout)
            return super().wait(timeout)

    stop = RecordingStop()
    stats = SourceStats()
    src = VideoSource(0, opener=opener, stop=stop, stats=stats, backoff_s=(0.02, 0.05), max_reopens=5)
    got = []
    for f in src:
        got.append(int(f.image[0, 0, 0]))
        if len(got) == 4:
            stop.set()
    assert got == [1, 2, 3, 4]
    assert stats.read_failures == 1 and stats.reopens == 1 and stats.corrupt == 1 and stats.frames_in == 4
    assert len(opened) == 4
    # after the drop: a pause, then failed opens wait 0.02 s, then 0.04 s (doubling, capped at 0.05)
    assert stop.waits == [0.02, 0.02, 0.04]


def test_missing_file_source_is_a_clear_error(tmp_path):
    from runtime.inputs.sources import SourceError

    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "nope.mp4")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ffmpeg_udp(video, port):
    return subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(video),
         "-c:v", "mpeg2video", "-g", "5", "-q:v", "4", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.skipif(shutil.which("ffmpeg") is None,
                    reason="ffmpeg is not installed (apt-get install -y ffmpeg): the network-stream test needs "
                           "a real sender")
def test_service_reads_a_udp_stream_that_drops_and_comes_back(tmp_path):
    from runtime.config import ServiceConfig
    from runtime.service import Service
    from tools.toy_assets import tiny_assets, write_flight_video

    a = tiny_assets()
    video = tmp_path / "flight.avi"
    write_flight_video(video, a["raster"], n_frames=20, fps=10)
    port = _free_udp_port()
    out = tmp_path / "out.jsonl"
    cfg = ServiceConfig(bundle=str(a["bundle"]), db=str(a["db"]), source=f"udp://127.0.0.1:{port}",
                        altitude_m=150.0, jsonl=str(out), read_timeout_s=1.5, backoff_max_s=1.0,
                        health_log_s=1.0)
    svc = Service(cfg)
    assert svc.drop_frames  # a live source: the newest frame wins
    runner = threading.Thread(target=svc.run)
    sender = _ffmpeg_udp(video, port)
    runner.start()
    try:
        deadline = time.monotonic() + 40
        while svc.processed < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        first = svc.processed
        assert first >= 5, "no frames from the UDP stream"
        sender.terminate()
        sender.wait(5)
        while svc.source_stats.read_failures < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert svc.source_stats.read_failures >= 1
        time.sleep(1.0)
        sender = _ffmpeg_udp(video, port)
        while svc.source_stats.reopens < 1 or svc.processed < first + 5:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert svc.source_stats.reopens >= 1 and svc.processed >= first + 5, \
            f"stream did not come back: processed {svc.processed}, reopens {svc.source_stats.reopens}"
    finally:
        sender.terminate()
        sender.wait(5)
        svc.stop()
        runner.join(20)
    assert not runner.is_alive()
    lines = out.read_text().splitlines()
    assert len(lines) == svc.processed + 1 and '"type":"summary"' in lines[-1]
