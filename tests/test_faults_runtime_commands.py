"""Fault injection for ``python -m runtime serve`` and ``replay`` (issue 28): every exit status tells the truth,
every number is checked where it is parsed, nothing finished is lost.

Real processes, real files: ``/dev/full`` (a disk that is full), a folder the process may not create in,
a host name that cannot resolve (``.invalid`` is reserved for that, RFC 2606), a map of another place,
SIGTERM sent to a running replay.
"""

from __future__ import annotations

import csv
import json
import signal
import time

import pytest

from tests.faults import error_line, popen, run, unwritable
from tools.toy_assets import write_flight_video

REPLAY = ("--size-px", 48, "--no-plots")


@pytest.fixture(scope="module")
def video(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "flight.avi"
    write_flight_video(path, tiny["raster"], n_frames=30)
    return path


def _serve(tiny, video, *extra):
    return run("runtime", "serve", "--bundle", tiny["bundle"], "--db", tiny["db"], "--source", video,
               "--altitude-m", 150, *extra)


def _replay(tiny, *extra):
    return run("runtime", "replay", "geotiff", "--bundle", tiny["bundle"], "--db", tiny["db"], "--map",
               tiny["raster"], *REPLAY, *extra)


@pytest.mark.parametrize("option, value, message", [
    ("--max-frames", 0, "max_frames must be a whole number >= 1, got 0"),
    ("--max-frames", -5, "max_frames must be a whole number >= 1, got -5"),
    ("--speed-mps", 1000, "speed_mps must be in [0, 150] m/s, got 1000.0"),
    ("--threads", -2, "threads must be a whole number >= 1, got -2"),
    ("--altitudes-m", "nan", "altitudes_m must be a finite number, got nan"),
    ("--fps", "inf", "fps must be a finite number, got inf"),
    ("--photometric", 5, "photometric must be in [0, 2], got 5.0"),
])
def test_replay_numbers_checked_where_they_are_parsed(tiny, tmp_path, option, value, message):
    out = _replay(tiny, option, value, "--out", tmp_path / "o")
    assert out.returncode == 2
    line = error_line(out.stderr)
    assert f"error: argument {option}" in line and message in line
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_removed_fusion_gate_is_refused_by_name(tiny):
    out = _replay(tiny, "--fusion", "gate")
    assert out.returncode == 2 and "--fusion was removed: there is one fusion" in error_line(out.stderr)


def test_map_of_another_place_than_the_database_is_refused(tiny, tmp_path):
    from tests.rasters import write_raster

    far = write_raster(tmp_path / "far.tif", crs="EPSG:32633", origin=(500000.0, 5000000.0), pixel_size=(5.0, 5.0),
                       size=(400, 400))
    out = run("runtime", "replay", "geotiff", "--bundle", tiny["bundle"], "--db", tiny["db"], "--map", far,
              *REPLAY, "--out", tmp_path / "o")
    assert out.returncode == 2
    line = error_line(out.stderr)
    assert "the map far.tif" in line and "holds none of the tiles of" in line and "show different places" in line
    assert not (tmp_path / "o").exists()


def test_out_holds_only_this_runs_files(tiny, tmp_path):
    """An earlier run's PNGs were left beside the new results; a folder of other files is not a results folder."""
    out = tmp_path / "o"
    first = _replay(tiny, "--max-frames", 2, "--altitudes-m", 150, 300, "--plots", "--out", out)
    assert first.returncode == 0, first.stderr[-2000:]
    assert {"track_150m.png", "track_300m.png"} <= {p.name for p in out.iterdir()}
    second = _replay(tiny, "--max-frames", 2, "--altitudes-m", 300, "--plots", "--out", out)
    assert second.returncode == 0 and "removed" in second.stderr
    names = {p.name for p in out.iterdir()}
    assert "track_300m.png" in names and "track_150m.png" not in names and "error_150m.png" not in names
    assert list(json.loads((out / "replay_geotiff.json").read_text())["altitudes"]) == ["300"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "flight-notes.txt").write_text("mine")
    refused = _replay(tiny, "--max-frames", 2, "--out", notes)
    assert refused.returncode == 2 and "holds 'flight-notes.txt', which no replay wrote" in error_line(refused.stderr)
    assert (notes / "flight-notes.txt").read_text() == "mine"  # nothing of the user's was touched


def test_sigterm_during_a_replay_keeps_the_flights_it_finished(tiny, tmp_path):
    out = tmp_path / "o"
    proc = popen("runtime", "replay", "geotiff", "--bundle", tiny["bundle"], "--db", tiny["db"], "--map",
                 tiny["raster"], *REPLAY, "--max-frames", 300, "--altitudes-m", 150, 300, "--out", out)
    deadline = time.monotonic() + 120
    while not (out / "replay_geotiff.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "stopped by SIGTERM; the flights it finished are in" in error_line(err)
    saved = json.loads((out / "replay_geotiff.json").read_text())
    assert saved["complete"] is False and list(saved["altitudes"]) == ["150"]
    rows = list(csv.DictReader((out / "replay_geotiff_frames.csv").open()))
    assert len(rows) == saved["altitudes"]["150"]["n_frames"] > 0


def test_serve_to_a_full_disk_exits_1_naming_the_path(tiny, video):
    out = _serve(tiny, video, "--jsonl", "/dev/full")
    assert out.returncode == 1
    assert "records were lost: JSON lines to /dev/full" in out.stderr and "No space left on device" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_jsonl_in_a_folder_it_may_not_create(tiny, video, tmp_path):
    target = unwritable(tmp_path) / "logs" / "fixes.jsonl"
    out = _serve(tiny, video, "--jsonl", target)
    assert out.returncode == 2
    line = error_line(out.stderr)
    assert f"--jsonl {target}: cannot create the folder" in line
    assert "Permission denied" in line or "not permitted" in line


def test_mavlink_to_a_host_that_does_not_resolve_is_an_error_at_start(tiny, video, tmp_path):
    out = _serve(tiny, video, "--mavlink", "udpout:autopilot.invalid:14550", "--jsonl", tmp_path / "f.jsonl")
    assert out.returncode == 2
    line = error_line(out.stderr)
    assert "'autopilot.invalid' does not resolve" in line and "give an IP address" in line
    assert not (tmp_path / "f.jsonl").exists() or (tmp_path / "f.jsonl").read_text() == ""  # no frame flown
