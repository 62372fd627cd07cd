"""The long desktop steps report progress on stderr (a tqdm bar named after the step, with its counts), and
``progress=False`` (the commands' ``--no-progress``) shows none."""

from __future__ import annotations

import re

from common.progress import LOG_INTERVAL_S, counted, progress_bar


def _final_count(err: str, desc: str) -> str | None:
    """The last ``n/total`` a bar named ``desc`` wrote (tqdm redraws with carriage returns)."""
    hits = re.findall(re.escape(desc) + r":[^\r\n]*?(\d+/\d+)", err)
    return hits[-1] if hits else None


def test_a_bar_off_a_terminal_writes_rarely(capsys):
    """Under pytest stderr is no terminal, as in a log file: the bar writes every LOG_INTERVAL_S at most,
    but its start and its end are always written."""
    with progress_bar(desc="a step", total=3, unit="item") as bar:
        assert bar.mininterval == LOG_INTERVAL_S
        assert list(counted("abc", bar)) == ["a", "b", "c"]
    assert _final_count(capsys.readouterr().err, "a step") == "3/3"
    with progress_bar(desc="a silent step", total=3, enabled=False) as bar:
        bar.update(3)
    assert "a silent step" not in capsys.readouterr().err


def test_calibration_flights_report_rendering_embedding_and_flying(tiny, capsys):
    from export.calibrate_likelihood import _fly_all
    from export.calibration_flights import embed_flights, render_flights
    from runtime.engines.engine import load_engine
    from runtime.localisation.config import LocalizerConfig
    from tiles.db import TileDatabase

    engine = load_engine(tiny["bundle_thumb"])
    db = TileDatabase.open(tiny["db_thumb"])
    cfg = LocalizerConfig(registration=False)
    try:
        flights = render_flights(db, [tiny["raster"]], hfov_deg=60.0, frames=5)
        n = sum(len(f.frames) for f in flights)
        assert n == 5 * len(db.layers)
        embed_flights(engine, db, cfg, flights)
        records = _fly_all(engine, [(db, flights)], cfg, None, "likelihood k=1 clip=2 shift=0", True)
        err = capsys.readouterr().err
        assert len(records) == n
        for desc in ("calibration flights: rendering", "calibration flights: embedding",
                     "likelihood k=1 clip=2 shift=0"):
            assert _final_count(err, desc) == f"{n}/{n}", (desc, err)

        quiet = render_flights(db, [tiny["raster"]], hfov_deg=60.0, frames=5, progress=False)
        embed_flights(engine, db, cfg, quiet, progress=False)
        _fly_all(engine, [(db, quiet)], cfg, None, "likelihood k=1 clip=2 shift=0", False)
        err = capsys.readouterr().err
        assert "calibration flights" not in err and "likelihood k=1" not in err and "frame/s" not in err
    finally:
        engine.close()


def test_evaluation_reports_each_altitude(naip_paths, capsys):
    from train.datasets import geotiff_locations
    from train.evaluate_geotiff import evaluate_geotiff
    from train.model import GeoModel

    model = GeoModel("test_efficientnet", img_size=32)
    n_tiles = len(geotiff_locations(naip_paths[2018], [300], 60.0, 1.0))
    kw = dict(stride_frac=1.0, max_queries=12, positions="uniform")
    evaluate_geotiff(model, naip_paths[2018], [naip_paths[2016]], [300], 60.0, **kw)
    n = n_tiles + 12  # the gallery's tiles and the queries, embedded
    assert _final_count(capsys.readouterr().err, "evaluation 300 m") == f"{n}/{n}"
    evaluate_geotiff(model, naip_paths[2018], [naip_paths[2016]], [300], 60.0, progress=False, **kw)
    assert "evaluation 300 m" not in capsys.readouterr().err


def test_int8_calibration_and_the_accuracy_gate_report_each_model(naip_paths, tmp_path, capsys):
    import numpy as np
    import timm
    import torch

    from export.accuracy import EvalSet, accuracy_gate, held_out_pairs
    from export.images import random_crops
    from export.onnx_export import export_onnx, prepare
    from export.quantize import quantize_int8
    from runtime.engines.preprocess import Preprocess

    torch.manual_seed(0)
    p = Preprocess((64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    fp32 = export_onnx(timm.create_model("test_convnext", num_classes=0).eval(), p, tmp_path / "model.onnx")
    calib = prepare(random_crops(naip_paths[2014], 8, 128, seed=0), p, "float32")
    queries, gallery = held_out_pairs(naip_paths[2016], naip_paths[2018], 128, n_max=10)
    sets = [EvalSet("128 px", queries, np.arange(len(queries)), gallery)]
    int8 = quantize_int8(fp32, tmp_path / "model.int8.onnx", calib)["path"]
    accuracy_gate(fp32, {"int8": int8}, p, "float32", sets)
    err = capsys.readouterr().err
    nq, ng = len(queries), len(gallery)
    assert _final_count(err, "INT8 calibration") == "8/8"
    assert _final_count(err, "accuracy gate: fp32") == f"{nq + ng}/{nq + ng}"
    for model in ("int8", "int8 Q/DQ reference"):
        assert _final_count(err, f"accuracy gate: {model}") == f"{nq}/{nq}"
    quantize_int8(fp32, tmp_path / "quiet.int8.onnx", calib, progress=False)
    accuracy_gate(fp32, {"int8": int8}, p, "float32", sets, progress=False)
    assert "INT8 calibration" not in (err := capsys.readouterr().err) and "accuracy gate" not in err
