"""The Localizer is the one flight chain: serve and replay give the same fixes for the same frames, expose the
same knobs, and an altitude without a layer gets no fix instead of a match at the wrong scale."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from runtime.localisation.localizer import Localizer, LocalizerConfig, Telemetry
from tools.toy_assets import flight_crops


@pytest.fixture(scope="module")
def assets(tiny):
    return tiny


@pytest.fixture(scope="module")
def chain(assets):
    from runtime.engines.engine import load_engine
    from tiles.db import TileDatabase

    engine = load_engine(assets["bundle"])
    yield engine, TileDatabase.open(assets["db"])
    engine.close()


@pytest.fixture(scope="module")
def thumb(assets):
    from runtime.engines.engine import load_engine
    from tiles.db import TileDatabase

    engine = load_engine(assets["bundle_thumb"])
    yield engine, TileDatabase.open(assets["db_thumb"])
    engine.close()


@pytest.mark.parametrize("odometry", [True, False])
def test_serve_and_replay_give_identical_fixes(assets, thumb, tmp_path, odometry):
    """The same PNG frames through `python -m runtime serve` (a real process, folder source) and through the
    replay's frame loop with the same settings: every raw estimate and fused fix is the same (the thumbnail
    model finds these crops of the map's own image, so trusted fixes are compared too)."""
    from runtime.replay.geotiff import replay_flight

    engine, db = thumb
    alt = assets["thumb_altitude_m"]
    folder = tmp_path / "frames"
    folder.mkdir()
    crops = flight_crops(assets["raster"], n_frames=40)  # ~120 m apart: within --max-speed-mps at 1 frame/s
    for i, (img, _) in enumerate(crops):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.ascontiguousarray(img[:, :, ::-1]))
    knobs = {"odometry": odometry, "max_speed_mps": 150.0, "top_k": 4, "derotate": False}
    flags = [w for k, v in knobs.items() for w in
             ([f"--{'no-' if v is False else ''}{k.replace('_', '-')}"] if isinstance(v, bool)
              else [f"--{k.replace('_', '-')}", str(v)])]
    out = tmp_path / "fixes.jsonl"
    proc = subprocess.run([sys.executable, "-m", "runtime", "serve", "--bundle", str(assets["bundle_thumb"]),
                           "--db", str(assets["db_thumb"]), "--source", str(folder), "--altitude-m", str(alt),
                           "--jsonl", str(out), *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    served = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "fix"]

    # the replay reads the same files back (PNG is lossless) with the folder source's clock (1 frame/s)
    frames = []
    for i, (_, (x, y)) in enumerate(crops):
        img = cv2.imread(str(folder / f"{i:03d}.png"))[:, :, ::-1]
        frames.append((float(i), np.ascontiguousarray(img), {"index": i, "x": x, "y": y, "altitude_m": alt}))
    replayed = replay_flight(Localizer(engine, db, LocalizerConfig(**knobs)), frames)

    assert len(served) == len(replayed) == 40
    if odometry:  # the comparison covers trusted fixes, not only refusals
        assert sum(r["trusted"] for r in replayed) >= 20
    for s, r in zip(served, replayed):
        assert (s["raw"]["x"], s["raw"]["y"]) == (r["est_x"], r["est_y"])
        assert s["fix"]["trusted"] == r["trusted"] and s["fix"]["reason"] == r["reason"]
        assert s["fix"]["r95_m"] == r["r95_m"]
        if r["trusted"]:
            assert (s["fix"]["x"], s["fix"]["y"]) == (r["fix_x"], r["fix_y"])
        assert abs(s["matches"][0]["score"] - r["top1_score"]) <= 1e-4  # rounded to 5 and 4 places


def test_replay_exposes_every_knob_of_the_chain_with_the_service_names():
    from runtime.__main__ import main

    def options(argv):
        with pytest.raises(SystemExit):
            main(argv)

    import contextlib
    import io

    texts = {}
    for cmd in (["serve", "--help"], ["replay", "geotiff", "--help"]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            options(cmd)
        texts[cmd[0]] = buf.getvalue()
    for f in dataclasses.fields(LocalizerConfig):
        if f.metadata.get("cli") is False:  # nested settings: config file only
            continue
        flag = f"--{f.name.replace('_', '-')}"
        assert flag in texts["serve"] and flag in texts["replay"], flag


def test_replay_writes_the_resolved_config(assets, chain, tmp_path):
    from runtime.replay.geotiff import replay_geotiff

    engine, db = chain
    cfg = LocalizerConfig(top_k=3, coast_s=4)
    res = replay_geotiff(engine, assets["raster"], db=db, altitudes=[150.0], out_dir=tmp_path, max_frames=2,
                         size_px=48, plots=False, localizer=cfg)
    saved = json.loads((tmp_path / "replay_geotiff.json").read_text())
    assert saved["localizer"] == dataclasses.asdict(cfg) == res["localizer"]
    assert saved["settings"]["hfov_deg"] == 60.0  # read from the database, not written in the code


@pytest.mark.parametrize("altitude, reason", [
    (1000.0, "altitude 1000 m has no layer (layers: 150, 300 m)"),
    (0.0, "altitude 0 m is not above ground"),
    (-50.0, "altitude -50 m is not above ground"),
    (float("nan"), "no altitude"),
    (None, "no altitude"),
])
def test_an_altitude_without_a_layer_gets_no_fix(chain, altitude, reason):
    engine, db = chain
    loc = Localizer(engine, db)
    img = np.zeros((64, 64, 3), np.uint8)
    res = loc.locate(img, Telemetry(t=0.0, altitude_m=altitude))
    assert res.layer is None and not res.fix.trusted and res.raw.reason == reason
    assert np.all(res.matches.indices < 0)


def test_layers_within_tolerance_are_used(chain):
    _, db = chain
    loc = Localizer(None, db)
    assert loc.choose_layer(160.0) == (0, "")
    assert loc.choose_layer(280.0) == (1, "")
    assert loc.choose_layer(400.0)[0] is None


@pytest.mark.parametrize("field, value", [("top_k", 0), ("max_speed_mps", -1.0), ("layer_tolerance_frac", 0.0),
                                          ("margin_scale", float("nan")), ("registration_heading_s", -1.0),
                                          ("registration_frames", 1), ("registration_span", -0.5),
                                          ("coast_s", -1.0), ("map_sigma_m", -1.0)])
def test_config_refuses_values_out_of_range(field, value):
    with pytest.raises(ValueError, match=field.replace("_", "[-_]")):
        LocalizerConfig(**{field: value})


@pytest.mark.parametrize("argv, message", [
    (["--altitude-m", "nan"], "altitude_m must be a finite number, got nan"),
    (["--altitude-m", "-50"], "--altitude-m"),
    (["--top-k", "0"], "--top-k 0 is out of range"),
    (["--min-confidence", "0.5"], "--min-confidence was removed: trust comes from the map filter"),
    (["--fusion", "gate"], "--fusion was removed: there is one fusion"),
])
def test_serve_refuses_bad_numbers_in_one_line(assets, tmp_path, argv, message):
    proc = subprocess.run([sys.executable, "-m", "runtime", "serve", "--bundle", str(assets["bundle"]),
                           "--db", str(assets["db"]), "--source", str(tmp_path), "--jsonl",
                           str(tmp_path / "x.jsonl"), *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
