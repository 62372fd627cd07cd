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
