"""Batch samplers: distinct-location batches and hard-negative batches (GPS neighbours, visual similarity).

InfoNCE treats column ``i`` as the only positive of row ``i``, so no location may appear twice in a
*global* batch (the batch of all ranks together: the loss gathers features across ranks). Every sampler
here therefore plans global batches with its own generator, seeded from ``(seed, epoch)``, identically on
every rank, and hands each rank its slice: every rank gets the same number of batches, no sample is used
twice in an epoch, and the same seed gives the same order. ``set_epoch`` changes the order;
``state_dict``/``load_state_dict`` and ``set_epoch(epoch, start_batch)`` make resume exact.

Hard negatives (Sample4Geo): each anchor brings ``neighbour_select // 2`` of its nearest neighbours and
``neighbour_select - neighbour_select // 2`` drawn from its neighbours ranked ``neighbour_select // 2 ..
neighbour_range``; locations already in the batch or used up this epoch are skipped. Neighbour lists
come from ground distance in metres and later from the model itself (:mod:`train.neighbours`: per
altitude, without tiles that overlap the anchor's footprint).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from train.neighbours import haversine_m, mine_similar_neighbours, neighbours_by_distance  # noqa: F401 (re-exported)

_logger = logging.getLogger(__name__)

# ---- samplers ------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class DistinctLocationBatchSampler(Sampler[list[int]]):
    """Shuffled batches in which every location appears at most once (across all ranks).

    ``locations``: the location of each sample (any hashable). ``batch_size`` is per rank. A sample whose
    location is already in the batch being built waits for the next batch (the official pool strategy);
    what cannot fill a last global batch is dropped.
    """

    def __init__(self, locations: Sequence, batch_size: int, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None):
        world, my_rank = _world()
        self.num_replicas = world if num_replicas is None else int(num_replicas)
        self.rank = my_rank if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        _, self.codes = np.unique(np.asarray(locations), return_inverse=True)
        self.codes = self.codes.reshape(-1).astype(np.int64)
        self.n_locations = int(self.codes.max()) + 1 if len(self.codes) else 0
        self.batch_size = int(batch_size)
        self.global_batch = self.batch_size * self.num_replicas
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.global_batch > self.n_locations:
            raise ValueError(
                f"a global batch of {self.global_batch} ({self.batch_size} x {self.num_replicas} ranks) needs "
                f"that many distinct locations, but the data has {self.n_locations}; lower the batch size: "
                f"--batch-size {max(1, self.n_locations // self.num_replicas)} (per process)")
        self.seed = int(seed)
        self.epoch = 0
        self.start_batch = 0
        self._cache: tuple | None = None

    # ---- epoch control ----------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state.get("start_batch", 0))
        self._cache = None

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    # ---- planning --------------------------------------------------------------------------------
    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (every rank computes the same plan)."""
        key = (self.epoch, self.seed, self._plan_key())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._plan(self._rng()))
        return self._cache[1]

    def _plan_key(self):
        return None

    def _plan(self, rng: np.random.Generator) -> list[list[int]]:
        gb, codes = self.global_batch, self.codes
        pool = list(rng.permutation(len(codes))[::-1])  # a stack: pop() takes the next in shuffled order
        deferred: list[int] = []
        batches: list[list[int]] = []
        while True:
            batch: list[int] = []
            locs: set[int] = set()
            waiting = []
            for i in deferred:
                if len(batch) < gb and codes[i] not in locs:
                    batch.append(int(i))
                    locs.add(codes[i])
                else:
                    waiting.append(i)
            deferred = waiting
            while len(batch) < gb and pool:
                i = pool.pop()
                if codes[i] in locs:
                    deferred.append(i)
                else:
                    batch.append(int(i))
                    locs.add(codes[i])
            if len(batch) < gb:
                break
            batches.append(batch)
        return batches

    # ---- Sampler protocol -------------------------------------------------------------------------
    def __iter__(self):
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for batch in self.global_batches()[self.start_batch:]:
            yield batch[lo:hi]

    def __len__(self) -> int:
        return max(0, len(self.global_batches()) - self.start_batch)


class NeighbourBatchSampler(DistinctLocationBatchSampler):
    """Hard-negative batches: anchors with their neighbouring locations (see the module docstring).

    ``neighbours[loc]``: neighbour location indices of location ``loc`` (dense codes ``0..L-1`` in the
    sorted order of the distinct location values; :attr:`location_values` lists them), nearest or most
    similar first. ``None`` gives plain distinct-location batches until :meth:`set_neighbours` is called
    (datasets without coordinates start that way and switch to mined neighbours).
    """

    def __init__(self, locations: Sequence, batch_size: int, neighbours=None, neighbour_select: int = 64,
                 neighbour_range: int = 128, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None):
        super().__init__(locations, batch_size, seed=seed, num_replicas=num_replicas, rank=rank)
        if neighbour_select < 0 or neighbour_range < neighbour_select:
            raise ValueError(f"need 0 <= neighbour_select ({neighbour_select}) <= neighbour_range "
                             f"({neighbour_range})")
        self.neighbour_select, self.neighbour_range = int(neighbour_select), int(neighbour_range)
        self.location_values = np.unique(np.asarray(locations))
        self.neighbours: list[np.ndarray] | None = None
        self.neighbour_source = "none"
        self.anchor_of: dict[int, int] = {}
        if neighbours is not None:
            self.set_neighbours(neighbours, source="given")

    def set_neighbours(self, neighbours, source: str = "given") -> None:
        if len(neighbours) != self.n_locations:
            raise ValueError(f"need one neighbour list per location ({self.n_locations}), got {len(neighbours)}")
        self.neighbours = [np.asarray(n, np.int64)[: self.neighbour_range] for n in neighbours]
        self.neighbour_source = source
        self._version = getattr(self, "_version", 0) + 1
        self._cache = None

    def _plan_key(self):
        return getattr(self, "_version", 0)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["neighbour_source"] = self.neighbour_source
        state["neighbours"] = None if self.neighbours is None else [n.tolist() for n in self.neighbours]
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("neighbours") is not None:
            self.set_neighbours(state["neighbours"], source=state.get("neighbour_source", "given"))

    def _plan(self, rng: np.random.Generator) -> list[list[int]]:
        if self.neighbours is None:
            self.anchor_of = {}
            return super()._plan(rng)
        gb, codes = self.global_batch, self.codes
        by_loc: list[list[int]] = [[] for _ in range(self.n_locations)]
        for i in rng.permutation(len(codes)):
            by_loc[codes[i]].append(int(i))
        used = np.zeros(len(codes), bool)
        near_n = self.neighbour_select // 2
        far_n = self.neighbour_select - near_n
        batches: list[list[int]] = []
        anchor_of: dict[int, int] = {}
        batch: list[int] = []
        locs: set[int] = set()
        deferred: list[int] = []

        def take(loc: int) -> int | None:
            queue = by_loc[loc]
            while queue and used[queue[-1]]:
                queue.pop()
            if not queue:
                return None
            i = queue.pop()
            used[i] = True
            return i

        def close_if_full():
            nonlocal batch, locs, deferred
            if len(batch) == gb:
                batches.append(batch)
                batch, locs = [], set()
                return True
            return False

        anchors = list(rng.permutation(len(codes))[::-1])
        while anchors or deferred:
            if deferred and (not anchors or not batch):
                a = deferred.pop(0)
            else:
                a = anchors.pop()
            if used[a]:
                continue
            if codes[a] in locs:
                deferred.append(a)
                if not anchors and all(codes[d] in locs for d in deferred):
                    break  # only same-location leftovers remain: they cannot fill a batch
                continue
            used[a] = True
            batch.append(int(a))
            anchor_of[int(a)] = int(a)
            locs.add(codes[a])
            if close_if_full():
                continue
            cand = self.neighbours[codes[a]]
            near, rest = cand[:near_n], cand[near_n:self.neighbour_range]
            if far_n and len(rest):
                rest = rest[rng.permutation(len(rest))[:far_n]]
            for loc in np.concatenate([near, rest[:far_n]]):
                if loc in locs:
                    continue
                i = take(int(loc))
                if i is None:
                    continue
                batch.append(i)
                anchor_of[i] = int(a)
                locs.add(int(loc))
                if close_if_full():
                    break
        self.anchor_of = anchor_of
        return batches


def build_sampler(kind: str, locations, batch_size: int, *, xy_m=None, neighbour_select: int = 64,
                  neighbour_range: int = 128, neighbour_radius_m: float | None = None, seed: int = 0,
                  num_replicas: int | None = None, rank: int | None = None, groups=None, footprint_m=None,
                  max_overlap: float | None = None):
    """``kind``: ``"random"`` (distinct locations), ``"gps"`` (GPS neighbours, needs ``xy_m`` per
    location in sorted location order) or ``"similarity"`` (distinct until neighbours are mined).
    ``groups``/``footprint_m``/``max_overlap``: see :func:`train.neighbours.neighbours_by_distance`."""
    if kind == "random":
        return DistinctLocationBatchSampler(locations, batch_size, seed=seed, num_replicas=num_replicas,
                                            rank=rank)
    if kind not in ("gps", "similarity"):
        raise ValueError(f"sampler {kind!r} is not one of 'random', 'gps', 'similarity'")
    neighbours = None
    if kind == "gps":
        if xy_m is None:
            raise ValueError("sampler 'gps' needs coordinates per location (a GeoTIFF dataset); SUES-200 and "
                             "University-1652 have none: use 'similarity'")
        neighbours = neighbours_by_distance(xy_m, neighbour_range, radius_m=neighbour_radius_m, groups=groups,
                                            footprint_m=footprint_m, max_overlap=max_overlap)
    s = NeighbourBatchSampler(locations, batch_size, neighbours=neighbours, neighbour_select=neighbour_select,
                              neighbour_range=neighbour_range, seed=seed, num_replicas=num_replicas, rank=rank)
    if kind == "gps":
        s.neighbour_source = "gps"
    return s

