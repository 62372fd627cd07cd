"""An uncalibrated bundle says so at every start of the service (issue 29.3): ``python -m export`` without
``--likelihood-tif`` leaves the likelihood and the reported accuracy fitted for another model, and the
service's start-up lines say which, with the command that calibrates it."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

from runtime.engines.bundle import MANIFEST, calibration_line, read_bundle
from tools.toy_assets import tiny_assets, write_flight_video


def _serve(bundle, db, video) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", "serve", "--bundle", str(bundle), "--db", str(db),
                           "--source", str(video), "--max-frames", "2", "--altitude-m", "300"],
                          capture_output=True, text=True, timeout=120)


def test_serve_warns_at_every_start_of_an_uncalibrated_bundle(tmp_path):
    a = tiny_assets()
    bundle = tmp_path / "bundle"
    shutil.copytree(a["bundle"], bundle)
    assert "likelihood" not in read_bundle(bundle).manifest  # what export writes without --likelihood-tif
    video = tmp_path / "flight.avi"
    write_flight_video(video, a["raster"], n_frames=3, fps=1.0)
    for _ in range(2):  # every start, not once per bundle
        proc = _serve(bundle, a["db"], video)
        assert proc.returncode == 0, proc.stderr[-2000:]
        warned = [ln for ln in proc.stderr.splitlines() if "UNCALIBRATED bundle" in ln]
        assert len(warned) == 1 and "WARNING" in warned[0], proc.stderr[-2000:]
        assert f"--bundle {bundle} --db-out {a['db']} --likelihood-tif" in warned[0]
        assert "calibration: NONE (likelihood and reported accuracy" in proc.stderr


def test_a_calibrated_bundle_says_what_it_was_fitted_on(caplog):
    manifest = {"likelihood": {"temperature": 0.05, "offset": 0.1, "fix_accuracy": {"r95_scale": 1.1},
                               "fitted_on": {"rasters": ["map2019.tif"], "database": "tiledb", "frames": 480,
                                             "engine": "onnxruntime fp32"}}}
    with caplog.at_level(logging.WARNING):
        line = calibration_line(manifest, "b", "b/tiledb")
    assert line.startswith("calibration: likelihood and reported accuracy fitted on map2019.tif over tiledb")
    assert "480 frames" in line and not caplog.records
    with caplog.at_level(logging.WARNING):  # a likelihood without its accuracy: half calibrated, said so
        line = calibration_line({"likelihood": {"temperature": 0.05, "offset": 0.1}}, "b", "b/tiledb")
    assert line == "calibration: NONE (reported accuracy not calibrated for this model)"
    assert any("UNCALIBRATED" in r.getMessage() for r in caplog.records)


def test_the_manifest_of_a_bundle_keeps_the_calibration_readable(tmp_path):
    """The warning reads the manifest field export.calibrate.calibrate_bundle writes ("likelihood"), through
    the bundle reader the service uses."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_assets()["bundle"], bundle)
    m = json.loads((bundle / MANIFEST).read_text())
    m["likelihood"] = {"temperature": 0.05, "offset": 0.1, "fix_accuracy": {"r95_scale": 1.0},
                       "fitted_on": {"rasters": ["x.tif"], "database": "tiledb", "frames": 1, "engine": "e"}}
    (bundle / MANIFEST).write_text(json.dumps(m))
    assert calibration_line(read_bundle(bundle).manifest, bundle, "db").startswith("calibration: likelihood")
