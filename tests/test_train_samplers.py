"""train.samplers: the invariants of issue 3 (distinct locations, once per epoch, radius, seeds, DDP)."""

from __future__ import annotations

import numpy as np
import pytest

from train.samplers import (
    DistinctLocationBatchSampler,
    NeighbourBatchSampler,
    build_sampler,
    haversine_m,
    mine_similar_neighbours,
    neighbours_by_distance,
)


def _locations(n_loc=40, per_loc=5, seed=0):
    rng = np.random.default_rng(seed)
    locs = np.repeat(np.arange(n_loc), per_loc)
    return locs[rng.permutation(len(locs))]


def _check_epoch(sampler, locations):
    batches = sampler.global_batches()
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)), "a sample appears twice in one epoch"
    for b in batches:
        assert len(b) == sampler.global_batch
        assert len({locations[i] for i in b}) == len(b), "a location appears twice in one batch"
    return batches, flat


@pytest.mark.parametrize("kind", ["random", "gps"])
def test_distinct_locations_each_sample_once_seeded_and_epochs_differ(kind):
    locations = _locations()
    xy = np.stack(np.meshgrid(np.arange(8), np.arange(5)), -1).reshape(-1, 2) * 100.0
    s = build_sampler(kind, locations, batch_size=8, xy_m=xy, neighbour_select=4, neighbour_range=8, seed=3)
    batches, flat = _check_epoch(s, locations)
    assert len(flat) >= len(locations) - 3 * s.global_batch  # almost every sample is used
    again = build_sampler(kind, locations, batch_size=8, xy_m=xy, neighbour_select=4, neighbour_range=8, seed=3)
    assert again.global_batches() == batches  # same seed, same order
    s.set_epoch(1)
    other, _ = _check_epoch(s, locations)
    assert other != batches  # epochs differ
    assert list(s) == other  # one rank: iteration yields the plan


def test_ddp_ranks_get_equal_disjoint_shares_of_distinct_global_batches():
    locations = _locations()
    ranks = [DistinctLocationBatchSampler(locations, 4, seed=1, num_replicas=2, rank=r) for r in range(2)]
    per_rank = [list(s) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])
    for b0, b1 in zip(*per_rank):
        assert len(b0) == len(b1) == 4
        assert not set(b0) & set(b1)
        assert len({locations[i] for i in b0 + b1}) == 8  # distinct in the global batch
    everything = [i for b in per_rank[0] + per_rank[1] for i in b]
    assert len(everything) == len(set(everything))


def test_resume_inside_an_epoch_continues_the_same_order():
    locations = _locations()
    s = DistinctLocationBatchSampler(locations, 6, seed=5)
    s.set_epoch(2)
    full = list(s)
    resumed = DistinctLocationBatchSampler(locations, 6, seed=0)
    resumed.load_state_dict({"seed": 5, "epoch": 2, "start_batch": 3})
    assert list(resumed) == full[3:] and len(resumed) == len(full) - 3


def test_gps_neighbours_are_the_nearest_within_the_radius():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, size=(60, 2))
    nb = neighbours_by_distance(xy, k=10, radius_m=150.0)
    for i, cand in enumerate(nb):
        d = np.linalg.norm(xy[cand] - xy[i], axis=1)
        assert i not in cand and np.all(d <= 150.0) and np.all(np.diff(d) >= 0)
        brute = np.sort(np.linalg.norm(xy - xy[i], axis=1))[1:11]
        assert np.allclose(d, brute[brute <= 150.0])


def test_haversine_is_in_metres():
    # one degree of latitude is about 111.2 km; the official code's degrees-as-radians bug gives ~6.4e6 km
    assert haversine_m(47.0, -99.0, 48.0, -99.0) == pytest.approx(111_195, rel=1e-3)
    lat_lon = np.array([[47.0, -99.0], [47.0, -99.001], [47.01, -99.0]])
    nb = neighbours_by_distance(lat_lon, k=2, latlon=True)
    assert list(nb[0]) == [1, 2]  # 76 m east is nearer than 1.1 km north


def test_gps_batches_group_anchors_with_neighbours_inside_the_radius():
    # four clusters of 16 locations, 10 km apart; neighbours within 300 m stay inside a cluster
    centres = np.array([[0, 0], [10_000, 0], [0, 10_000], [10_000, 10_000]], float)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) * 50.0
    xy = np.concatenate([c + grid for c in centres])
    locations = np.repeat(np.arange(len(xy)), 2)
    s = build_sampler("gps", locations, batch_size=8, xy_m=xy, neighbour_select=6, neighbour_range=12,
                      neighbour_radius_m=300.0, seed=0)
    batches, _ = _check_epoch(s, locations)
    n_neighbours = 0
    for b in batches:
        for i in b:
            a = s.anchor_of[i]
            if a != i:
                n_neighbours += 1
                assert np.linalg.norm(xy[locations[i]] - xy[locations[a]]) <= 300.0
    assert n_neighbours > len(locations) // 2  # most samples arrive as some anchor's neighbour


def test_similarity_mining_excludes_the_true_match_and_switches_the_sampler():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(30, 8))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    query = ref + 0.05 * rng.normal(size=ref.shape)
    nb = mine_similar_neighbours(query, ref, k=5)
    sims = query @ ref.T
    for i, cand in enumerate(nb):
        assert i not in cand and len(cand) == 5
        others = np.delete(sims[i], i)
        assert np.allclose(np.sort(sims[i, cand])[::-1], np.sort(others)[::-1][:5])
    locations = np.arange(30)
    s = build_sampler("similarity", locations, batch_size=6, neighbour_select=4, neighbour_range=5)
    assert s.neighbours is None
    before = s.global_batches()
    s.set_neighbours(nb, source="similarity")
    after, _ = _check_epoch(s, locations)
    assert after != before and s.state_dict()["neighbour_source"] == "similarity"
    restored = NeighbourBatchSampler(locations, 6, neighbour_select=4, neighbour_range=5)
    restored.load_state_dict(s.state_dict())
    assert restored.global_batches() == after


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="needs that many distinct locations.*has 3"):
        DistinctLocationBatchSampler([0, 1, 2, 0], 4)
    with pytest.raises(ValueError, match="needs coordinates"):
        build_sampler("gps", [0, 1, 2], 2)
    with pytest.raises(ValueError, match="not one of"):
        build_sampler("hard", [0, 1, 2], 2)


def _two_altitude_grid():
    """Tiles every half footprint over the same ground at two altitudes (footprints 100 m and 200 m)."""
    xy, fp, alt = [], [], []
    for a, f in ((150, 100.0), (300, 200.0)):
        for gx in range(8):
            for gy in range(8):
                xy.append((gx * f / 2, gy * f / 2))
                fp.append(f)
                alt.append(a)
    return np.array(xy), np.array(fp), np.array(alt)


def test_neighbours_stay_on_the_anchors_altitude_and_never_overlap_it():
    from train.neighbours import footprint_overlap

    xy, fp, alt = _two_altitude_grid()
    before = neighbours_by_distance(xy, k=8)
    assert np.mean([np.mean(alt[n] != alt[i]) for i, n in enumerate(before)]) > 0.2  # the old flaw
    nb = neighbours_by_distance(xy, k=8, groups=alt, footprint_m=fp, max_overlap=0.2)
    for i, cand in enumerate(nb):
        assert len(cand) and np.all(alt[cand] == alt[i]) and i not in cand
        ov = footprint_overlap(xy[i:i + 1], fp[i:i + 1], xy[cand], fp[cand])[0]
        assert np.all(ov <= 0.2)
        # side (50 %) and diagonal (25 %) neighbours are gone: the nearest left is a footprint away
        assert np.linalg.norm(xy[cand[0]] - xy[i]) == pytest.approx(fp[i])
    # overlap itself: a half-footprint shift covers half the anchor, a diagonal one a quarter
    ov = footprint_overlap(np.zeros((1, 2)), [100.0], np.array([[50.0, 0], [50, 50], [100, 0], [0, 0]]), [100.0] * 4)
    assert np.allclose(ov, [[0.5, 0.25, 0.0, 1.0]])


def test_mined_neighbours_obey_the_same_exclusions():
    xy, fp, alt = _two_altitude_grid()
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(len(xy), 16))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    # the query of each location looks most like the other altitude's tile over the same ground
    other = np.concatenate([np.arange(64, 128), np.arange(64)])
    query = ref[other] + 0.01 * rng.normal(size=ref.shape)
    plain = mine_similar_neighbours(query, ref, k=5)
    assert all(other[i] == cand[0] for i, cand in enumerate(plain))  # a near-positive, mined as a negative
    nb = mine_similar_neighbours(query, ref, k=5, groups=alt, xy_m=xy, footprint_m=fp, max_overlap=0.2)
    from train.neighbours import footprint_overlap

    for i, cand in enumerate(nb):
        assert len(cand) == 5 and np.all(alt[cand] == alt[i])
        assert np.all(footprint_overlap(xy[i:i + 1], fp[i:i + 1], xy[cand], fp[cand]) <= 0.2)
        sims = query[i] @ ref[cand].T
        assert np.all(np.diff(sims) <= 1e-9)  # most similar first
