"""train.evaluate / train.evaluate_geotiff: protocols labelled like the papers', positions like a flight."""

from __future__ import annotations

import cv2
import numpy as np

from common.metrics import one_percent_k, retrieval_metrics
from train.evaluate import evaluate_university1652, labelled_metrics
from train.evaluate_geotiff import containment_first_rank, query_positions


def test_benchmark_r1pct_is_r_at_k_plus_one_and_labelled():
    rng = np.random.default_rng(0)
    n_gallery = 250  # k = round(2.5) = 2 (half to even): ours R@2, the benchmark scripts' R@3
    sim = rng.normal(size=(40, n_gallery))
    q_lab, g_lab = rng.integers(0, n_gallery, 40), np.arange(n_gallery)
    m = labelled_metrics(sim, q_lab, g_lab)
    k = one_percent_k(n_gallery)
    assert k == 2 and m["k_1pct"] == 2 and m["k_1pct_benchmark"] == 3
    direct = retrieval_metrics(sim, q_lab, g_lab, ks=(2, 3))
    assert m["R@1%"] == direct["R@2"] and m["R@1%_benchmark"] == direct["R@3"]
    assert "R@3" not in m  # only the labelled key, not a stray R@k
    junk = np.zeros(n_gallery, bool)
    junk[:100] = True  # 150 items left: k = round(1.5) = 2, benchmark 3
    assert labelled_metrics(sim, q_lab, g_lab, junk=junk)["k_1pct_benchmark"] == 3


def _university_test_split(root, n_query=3, n_distractors=2):
    classes = [f"{i:04d}" for i in range(n_query + n_distractors)]
    rng = np.random.default_rng(1)
    for i, cls in enumerate(classes):
        base = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
        folders = ["gallery_satellite", "gallery_drone"]
        if i < n_query:
            folders += ["query_drone", "query_satellite"]
        for sub in folders:
            p = root / "test" / sub / cls / f"{cls}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), base)
    return classes


def test_university1652_reports_both_protocols_labelled(tmp_path):
    from train.model import GeoModel

    classes = _university_test_split(tmp_path)
    res = evaluate_university1652(GeoModel("test_convnext", img_size=32), tmp_path)
    assert set(res) == {f"{d}[{p}]" for d in ("drone2sat", "sat2drone") for p in ("official", "query_only")}
    off, qo = res["drone2sat[official]"], res["drone2sat[query_only]"]
    assert off["n_gallery"] == len(classes) and qo["n_gallery"] == 3  # distractor classes kept / junk
    assert off["protocol"] == "official" and qo["protocol"] == "query_only"
    for m in res.values():
        assert "R@1%_benchmark" in m and m["k_1pct_benchmark"] == m["k_1pct"] + 1


def test_uniform_positions_cover_the_map_not_the_tile_centres(naip_paths):
    from train.datasets import geotiff_locations

    ref = naip_paths[2018]
    tiles = [t for _, t in geotiff_locations(ref, [300], 60.0, 1.0)]
    centres = np.array([[t.x, t.y] for t in tiles])
    fp = tiles[0].footprint_m
    uni = query_positions(ref, 300, 60.0, 400, np.random.default_rng(0), "uniform")
    cen = query_positions(ref, 300, 60.0, 400, np.random.default_rng(0), "centred", offset_frac=0.1)
    # distance to the nearest tile centre, in footprints along the worse axis
    def off(xy):
        return np.abs(xy[:, None] - centres[None]).max(-1).min(1) / fp

    assert off(cen).max() <= 0.1 + 1e-9
    # uniform: the share within 0.1 footprint of a centre is that square's share of a cell (4 %)
    assert np.mean(off(uni) <= 0.1) < 0.12 and off(uni).max() > 0.4
    assert np.all(off(uni) <= 0.5 + 1e-9)  # always inside a valid tile
    lo, hi = centres.min(0), centres.max(0)
    assert np.all((uni >= lo - 1e-6) & (uni <= hi + 1e-6))  # a whole view fits


def test_a_hit_is_the_true_position_inside_a_top_tile():
    centres = np.array([[0.0, 0.0], [50.0, 0.0], [100.0, 0.0]])  # overlapping 100 m tiles
    true_xy = np.array([[40.0, 0.0], [95.0, 10.0], [-60.0, 0.0]])
    sim = np.array([[0.1, 0.9, 0.5],  # top tile centred 50 m: contains x=40 (|10| <= 50) -> rank 1
                    [0.9, 0.1, 0.5],  # top tile at 0 does not contain x=95; the tile at 100 (rank 2) does
                    [0.9, 0.5, 0.1]])  # no tile contains x=-60 -> never a hit
    assert list(containment_first_rank(sim, centres, 100.0, true_xy)) == [1, 2, 0]


def test_evaluate_geotiff_counts_uniform_queries(naip_paths):
    from train.evaluate_geotiff import evaluate_geotiff
    from train.model import GeoModel

    model = GeoModel("test_efficientnet", img_size=32)
    ev = evaluate_geotiff(model, naip_paths[2018], [naip_paths[2016]], [300], 60.0, stride_frac=1.0,
                          max_queries=12, positions="uniform")
    m = ev["per_altitude"][300]["all"]
    assert ev["all"]["n_queries"] == 12 and 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100
    assert ev["setup"]["positions"] == "uniform" and ev["setup"]["offset_frac"] is None


def test_sues200_protocol_sets_are_defined_once(tmp_path):
    from common.sues200_layout import PROTOCOLS, SUES200
    from tests.test_sues200 import ALTS, make_raw

    ds = SUES200(make_raw(tmp_path))
    alt = ALTS[0]
    test = ds.split(alt)["test"]
    assert ds.protocol_gallery_ids(alt, "query_only") == test
    assert set(ds.protocol_gallery_ids(alt, "official")) > set(test)
    for protocol in PROTOCOLS:  # train.evaluate's sets and the replay's junk masks come from the same place
        rs = ds.retrieval_set(alt, protocol)
        assert sorted(set(rs.gallery_labels)) == sorted(ds.protocol_gallery_ids(alt, protocol))
        junk = ds.protocol_junk(alt, protocol, ds.gallery_ids(alt))
        kept = [g for g, j in zip(ds.gallery_ids(alt), junk) if not j]
        assert kept == ds.protocol_gallery_ids(alt, protocol)
