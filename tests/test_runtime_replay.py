"""Replay end to end on real NAIP imagery with a real exported model (timm test_efficientnet via ONNX).

SUES-200 replay on a dataset generated in the real layout by tools/make_sues200.py: the metrics must equal
a direct computation with common.metrics on embeddings computed independently. GeoTIFF replay: a flight
through the onboard chain (the service's Localizer) writing JSON, CSV and PNG.
"""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

from common.metrics import retrieval_metrics
from common.sues200_layout import SUES200
from tools.make_sues200 import make_sues200

ALTS = (150, 300)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from runtime.engines.engine import load_engine
    from tools.toy_assets import make_bundle

    d = make_bundle(tmp_path_factory.mktemp("bundle") / "b", input_px=48)
    return load_engine(d)


@pytest.fixture(scope="module")
def sues(tmp_path_factory, naip_paths):
    out = tmp_path_factory.mktemp("sues")
    make_sues200(out, naip_paths[2018], [naip_paths[2016], naip_paths[2020]], n_locations=8, altitudes=ALTS,
                 frames=6, size_px=64, split=True, seed=5)
    return out


def _read(p):
    return cv2.imread(str(p))[:, :, ::-1].copy()


def test_sues200_replay_equals_direct_computation(sues, engine, tmp_path):
    from runtime.replay.sues200 import replay_sues200, sues200_table

    res = replay_sues200(sues, engine, out_dir=tmp_path, directions=("drone2sat", "sat2drone"),
                         latency_frames=3, batch_size=5)
    ds = SUES200(sues)
    for alt in ALTS:
        sp = ds.split(alt)
        test, allids = sp["test"], ds.locations(alt)
        assert len(test) == 3 and len(allids) == 8
        q_paths = [p for c in test for p in ds.drone_frames(c, alt)]
        q_lab = [c for c in test for _ in range(6)]
        q = engine.embed([_read(p) for p in q_paths])
        g = engine.embed([_read(ds.satellite_image(c)) for c in allids])
        sim = q @ g.T
        r = res["altitudes"][str(alt)]
        off = retrieval_metrics(sim, q_lab, allids)
        qo = retrieval_metrics(sim[:, [allids.index(c) for c in test]], q_lab, test)
        for key in ("R@1", "R@5", "R@10", "R@1%", "AP", "n_queries", "n_gallery"):
            assert r["frame"]["official"][key] == pytest.approx(off[key], abs=1e-6)
            assert r["frame"]["query_only"][key] == pytest.approx(qo[key], abs=1e-6)
        assert r["frame"]["official"]["n_gallery"] == 8 and r["frame"]["query_only"]["n_gallery"] == 3
        # what flies: each frame through the service's Localizer over a gallery database (float16 embeddings)
        g16 = g.astype(np.float16).astype(np.float32)
        g16 /= np.linalg.norm(g16, axis=1, keepdims=True)
        flown = retrieval_metrics(q @ g16.T, q_lab, allids)
        assert r["flown"]["R@1"] == pytest.approx(flown["R@1"]) and r["flown"]["n_queries"] == 18
        assert r["flown"]["n_gallery"] == 8
        # flights: the mean embedding of the 6 frames of each location
        f = q.reshape(3, 6, -1).mean(1)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        fm = retrieval_metrics(f @ g.T, test, allids)
        assert r["flight_mean"]["official"]["R@1"] == pytest.approx(fm["R@1"])
        assert r["flight_mean"]["official"]["AP"] == pytest.approx(fm["AP"], abs=1e-6)
        # satellite -> drone: 3 queries against all 8 x 6 drone frames, 6 positives each
        d_paths = [p for c in allids for p in ds.drone_frames(c, alt)]
        d = engine.embed([_read(p) for p in d_paths])
        s2d = retrieval_metrics(g[[allids.index(c) for c in test]] @ d.T, test,
                                [c for c in allids for _ in range(6)])
        assert r["sat2drone"]["official"]["AP"] == pytest.approx(s2d["AP"], abs=1e-6)
        assert r["sat2drone"]["official"]["n_gallery"] == 48
        assert r["latency"]["n"] == 3 and r["latency"]["total_ms_median"] > 0
    # the files: JSON equal to the returned numbers, CSV with a row per (altitude, level, protocol)
    saved = json.loads((tmp_path / "replay_sues200.json").read_text())
    assert saved["altitudes"]["150"]["frame"]["official"]["AP"] == pytest.approx(
        res["altitudes"]["150"]["frame"]["official"]["AP"])
    rows = list(csv.DictReader(open(tmp_path / "replay_sues200.csv")))
    assert len(rows) == len(ALTS) * (3 * 2 + 2)
    assert {r["protocol"] for r in rows} == {"official", "query_only"}
    png = cv2.imread(str(tmp_path / "sues200_r1.png"))
    assert png is not None and png.shape[0] > 100
    table = sues200_table(res)
    assert "150" in table and "300" in table and "official" in table


def test_split_layout_and_database_gallery_agree(sues, engine, tmp_path):
    from export.tiledb_build import build_gallery_database
    from runtime.replay.sues200 import replay_sues200
    from tiles.db import TileDatabase

    raw = replay_sues200(sues, engine, altitudes=(150,), latency_frames=0)
    split = replay_sues200(sues / "split", engine, altitudes=(150,), latency_frames=0)
    assert split["altitudes"]["150"]["frame"] == raw["altitudes"]["150"]["frame"]
    # export's gallery build over the folder tools/make_sues200 wrote (it finds SUES-200-512x512/satellite-view)
    db_path = build_gallery_database(engine.bundle.path, sues, tmp_path / "gallery_db", progress=False)
    db = TileDatabase.open(db_path)
    assert sorted(db.entries["label"].tolist()) == SUES200(sues).locations()
    assert not db.entries["has_geo"].any()  # labels only: retrieval by location needs no geometry
    via_db = replay_sues200(sues, engine, altitudes=(150,), db=db_path, latency_frames=0)
    # the database stores float16: the metrics equal a direct computation on those stored embeddings
    ds = SUES200(sues)
    test, allids = ds.split(150)["test"], ds.locations(150)
    q = engine.embed([_read(p) for c in test for p in ds.drone_frames(c, 150)])
    labels = db.entries["label"].tolist()
    g = np.asarray(db.embeddings, np.float32)[[labels.index(c) for c in allids]]
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    direct = retrieval_metrics(q @ g.T, [c for c in test for _ in range(6)], allids)
    assert via_db["altitudes"]["150"]["frame"]["official"]["AP"] == pytest.approx(direct["AP"], abs=1e-6)
    assert via_db["altitudes"]["150"]["flown"]["R@1"] == pytest.approx(direct["R@1"])  # the Localizer over that db
    assert via_db["gallery"] == "database"


def test_cli_sues200_and_clear_errors(sues, engine, tmp_path, capsys, caplog):
    from runtime.__main__ import main

    bundle = str(engine.bundle.path)
    rc = main(["replay", "sues200", "--data", str(sues), "--bundle", bundle, "--out", str(tmp_path / "o"),
               "--altitudes", "300", "--no-plots"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "SUES-200 drone->satellite" in out and "  300 |" in out
    assert (tmp_path / "o" / "replay_sues200.csv").is_file()
    assert not (tmp_path / "o" / "sues200_r1.png").exists()
    rc = main(["replay", "sues200", "--data", str(tmp_path / "missing"), "--bundle", bundle])
    assert rc == 2
    assert "no SUES-200 dataset" in caplog.text and "missing" in caplog.text


def _map_db(engine, raster, out, altitudes, stride_frac):
    """The map's tile database, built the one way there is: export's builder."""
    from export.tiledb_build import build_tile_database

    return build_tile_database(engine.bundle.path, [raster], out, altitudes_m=altitudes, hfov_deg=60.0,
                               stride_frac=stride_frac, progress=False)


def test_geotiff_replay_writes_results(engine, naip_paths, tmp_path):
    from runtime.replay.geotiff import replay_geotiff
    from runtime.replay.tables import geotiff_table

    db = _map_db(engine, naip_paths[2018], tmp_path / "tiledb", (200, 300), 1.0)
    out = tmp_path / "out"
    res = replay_geotiff(engine, naip_paths[2018], flight_raster=naip_paths[2016], altitudes=(200, 300), db=db,
                         out_dir=out, max_frames=6, size_px=48, speed_mps=40)
    for alt in ("200", "300"):
        s = res["altitudes"][alt]
        assert s["n_frames"] == 6
        assert 0.0 <= s["fix_rate"] <= 100.0
        assert s["total_ms_median"] > 0 and s["fps_pipeline"] > 0
    frames = res["frames"]
    assert len(frames) == 12
    for r in frames:  # each error is the distance between the estimate and the truth
        assert r["error_raw_m"] == pytest.approx(math.hypot(r["est_x"] - r["true_x"], r["est_y"] - r["true_y"]),
                                                 abs=0.02)
        assert (r["error_m"] is None) == (not r["trusted"])
    rows = list(csv.DictReader(open(out / "replay_geotiff_frames.csv")))
    assert len(rows) == 12 and float(rows[0]["altitude_m"]) == 200.0
    saved = json.loads((out / "replay_geotiff.json").read_text())
    assert saved["altitudes"]["300"]["n_frames"] == 6
    for name in ("track_200m.png", "error_300m.png", "geotiff_altitudes.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 100, name
    assert "fix %" in geotiff_table(res)
    # the replay only reads the exported database: a second run leaves it as it was and writes none of its own
    assert res["database"] == str(db) and not (out / "tiledb").exists()
    mtime = (db / "manifest.json").stat().st_mtime_ns
    replay_geotiff(engine, naip_paths[2018], altitudes=(200, 300), db=db, out_dir=out, max_frames=1, size_px=48,
                   plots=False)
    assert (db / "manifest.json").stat().st_mtime_ns == mtime


def test_flight_over_the_map_itself_is_localised(engine, naip_paths, tmp_path):
    """Frames rendered nadir, north-up, at tile centres of the reference map match their own tile."""
    from runtime.localisation.localizer import Localizer
    from runtime.replay.figures import summarize_flight
    from runtime.replay.flights import GeoTiffFlight
    from runtime.replay.geotiff import replay_flight
    from tiles.db import TileDatabase

    alt, fp_frac = 250, 0.5
    db = TileDatabase.open(_map_db(engine, naip_paths[2018], tmp_path / "db", (alt,), fp_frac))
    assert db.layers[0]["tile_px"] == 48
    e = db.entries
    ys = np.unique(e["y"])
    row = e[e["y"] == ys[len(ys) // 2]]  # one east-west row of tiles
    row = row[np.argsort(row["x"])][2:12]
    stride = float(row["x"][1] - row["x"][0])
    wp = np.array([[row["x"][0], row["y"][0]], [row["x"][-1], row["y"][0]]])
    flight = GeoTiffFlight(naip_paths[2018], alt, waypoints=wp, heading_deg=0.0, size_px=48,
                           speed_mps=stride, fps=1.0)
    assert len(flight) == len(row)
    recs = replay_flight(Localizer(engine, db), flight, altitude_m=alt)
    s = summarize_flight(recs)
    assert s["R@1"] >= 80.0
    assert s["error_raw_m_median"] < stride / 2


def test_database_of_another_model_is_refused(engine, naip_paths, tmp_path):
    from runtime.replay.geotiff import replay_geotiff
    from tiles.db import DatabaseMismatchError, empty_entries, write_database

    e = empty_entries(2)
    e["layer"] = 0
    path = write_database(tmp_path / "other", np.eye(2, engine.embedding_dim, dtype=np.float32), e,
                          layers=[{"name": "alt150", "altitude_m": 150.0}],
                          model={"fingerprint": "0000000000000000"}, preprocess=engine.preprocess.to_dict())
    with pytest.raises(DatabaseMismatchError, match="model fingerprint"):
        replay_geotiff(engine, naip_paths[2018], altitudes=(150,), db=path, max_frames=1)


def test_missing_db_names_the_export_command_that_builds_it(engine, naip_paths, tmp_path, caplog):
    """Without --db the replay says which `python -m export` command to run; that command, run as said,
    builds a database the same replay then accepts."""
    import shlex

    from export.__main__ import main as export_main
    from runtime.__main__ import main

    bundle, tif = str(engine.bundle.path), str(naip_paths[2018])
    args = ["replay", "geotiff", "--map", tif, "--bundle", bundle, "--altitudes", "300", "--max-frames", "2",
            "--size-px", "48", "--no-plots"]
    caplog.clear()
    assert main(args) == 2
    want = f"python -m export --bundle {shlex.quote(bundle)} --tiles {shlex.quote(tif)} --altitudes-m 300 --hfov-deg 60 " \
           "--db-out DB"
    assert want in caplog.text and "--db" in caplog.text
    words = shlex.split(caplog.text.split("`")[1])
    assert words[:3] == ["python", "-m", "export"] and words[-1] == "DB"
    db = tmp_path / "db"
    assert export_main([*words[3:-1], str(db), "--no-progress", "--no-calibrate"]) == 0
    assert main([*args, "--db", str(db), "--out", str(tmp_path / "o")]) == 0
    saved = json.loads((tmp_path / "o" / "replay_geotiff.json").read_text())
    assert saved["database"] == str(db) and saved["altitudes"]["300"]["n_frames"] == 2
