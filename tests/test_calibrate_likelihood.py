"""The likelihood calibration: the logistic fit, the temperature search on recorded flights, the manifest."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from export.calibrate_likelihood import fit_likelihood, fit_logistic
from runtime.localisation.map_filter import MapFilter, MapFilterConfig
from runtime.localisation.odometry import Motion
from runtime.replay.filter_replay import FlightRecord, load_record, run_filter, save_record, summarize
from runtime.search.layer_grid import Likelihood
from tests.mapdb import frame_embedding, grid_database
from tiles.db import TileDatabase


def test_logistic_fit_recovers_the_likelihood_ratio():
    rng = np.random.default_rng(0)
    # two Gaussians of equal spread: log f1/f0 is linear with slope (m1 - m0) / s^2, zero at the midpoint
    pos, neg = rng.normal(0.4, 0.1, 4000), rng.normal(0.0, 0.1, 40000)
    a, b = fit_logistic(pos, neg)
    assert a == pytest.approx(40.0, rel=0.1) and -b / a == pytest.approx(0.2, abs=0.01)


def _record(db, start, n, seed, noise=1.5, in_map=True):
    rng = np.random.default_rng(seed)
    pos, truth, emb, mot = np.array(start, float), [], [], []
    for k in range(n):
        if k:
            pos = pos + (20.0, 5.0)
        truth.append(pos.copy())
        if in_map:
            emb.append(frame_embedding(db, pos[0], pos[1], noise, rng))
        else:
            q = rng.normal(size=db.embedding_dim).astype(np.float32)
            emb.append(q / np.linalg.norm(q))
        mot.append(Motion(True, 20.0, 5.0, 0.0, 1.0, 50, 60, 1.0, 1.0, "ok") if k else Motion(False, reason="first"))
    return FlightRecord(f"s{seed}", 0, np.arange(n, dtype=float), np.array(truth), np.array(emb, np.float32), mot,
                        in_map)


def test_fit_likelihood_on_recorded_flights(tmp_path):
    db = TileDatabase.open(grid_database(tmp_path / "db"))
    recs = [_record(db, (500100.0 + 60 * i, 5199600.0 - 40 * i), 25, seed=i) for i in range(4)]
    lik, report = fit_likelihood(db, recs)
    assert lik["temperature"] > 0 and 0.0 < lik["offset"] < report["pos_median"]
    assert report["final"]["wrong"] == 0 and report["final"]["trusted"] > 0
    assert 0.5 <= lik["r95_scale"] <= 4.0
    # held-out flights of the same kind: no wrong trusted fix, the truth inside r95 for most of them
    held = [_record(db, (500200.0 + 50 * i, 5199500.0 - 30 * i), 25, seed=10 + i) for i in range(3)]
    frames = [f for r in held for f in run_filter(db, r, MapFilterConfig(), Likelihood.from_dict(lik))]
    s = summarize(frames)
    assert s["wrong_trusted"] == 0 and s["trusted"] > 20 and s["calibration_pct"] >= 80
    off = summarize(run_filter(db, _record(db, (500100.0, 5199600.0), 30, 99, in_map=False), MapFilterConfig(),
                               Likelihood.from_dict(lik)))
    assert off["trusted"] == 0


def test_record_round_trip_and_replay_figures(tmp_path):
    db = TileDatabase.open(grid_database(tmp_path / "db"))
    rec = _record(db, (500100.0, 5199600.0), 12, seed=3)
    save_record(tmp_path / "r.npz", rec)
    back = load_record(tmp_path / "r.npz")
    assert back.name == rec.name and np.array_equal(back.emb, rec.emb) and back.motions[1] == rec.motions[1]
    assert back.motions[0].reason == "first" and not back.motions[0].ok
    lik = Likelihood(temperature=0.1, offset=0.2)
    frames = run_filter(db, back, MapFilterConfig(independent_frac=0.0), lik)  # independent synthetic frames
    s = summarize(frames)
    assert s["frames"] == 12 and s["R@1"] > 50 and s["ttff_frames"] is not None
    trusted_err = [f["error_m"] for f in frames if f["trusted"]]
    assert s["error_max_m"] == pytest.approx(max(trusted_err))
    json.dumps(s)  # plain JSON types
    mf = MapFilter(db, 0, MapFilterConfig(), lik)
    assert math.isnan(mf.estimate().vel_e_mps)  # no velocity before any odometry
