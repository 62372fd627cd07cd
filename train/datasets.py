"""Training pairs (drone view, satellite view, location) read from the real on-disk layouts.

- :class:`SUES200Pairs`: SUES-200 in the raw archive or split layout (through :mod:`common.sues200_layout`),
  one altitude or several, the official 120 training locations.
- :class:`University1652Pairs`: ``train/drone/<class>/*`` with ``train/satellite/<class>/*``.
- :class:`GeoTiffPairs`: drone-like views rendered (:func:`tiles.views.render_view`) from one or more
  rasters of the area (other years), paired with the reference raster's tile at the same place
  (:func:`tiles.grid.tile_grid`); every location has metric coordinates (``xy_m``).

Every dataset exposes ``locations`` (dense location code per sample), ``location_names``, ``xy_m``
((L, 2) metres or None), ``load_pair(i) -> (drone, satellite)`` RGB uint8 without augmentation, and
``__getitem__(i) -> (drone tensor, satellite tensor, location)`` after augmentation and
:class:`runtime.engines.preprocess.Preprocess`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common.image_files import IMAGE_SUFFIXES
from runtime.engines.preprocess import Preprocess, bgr_to_rgb, north_up

_logger = logging.getLogger(__name__)



def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}: missing or not an image OpenCV can decode")
    return bgr_to_rgb(img)


class PairDataset(Dataset):
    """Base class: subclasses fill ``locations``, ``location_names``, ``xy_m`` and ``load_pair``."""

    locations: np.ndarray
    location_names: list[str]
    xy_m: np.ndarray | None = None

    def __init__(self, preprocess: Preprocess, augment=None):
        self.preprocess = preprocess
        self.augment = augment

    def __len__(self) -> int:
        return len(self.locations)

    @property
    def n_locations(self) -> int:
        return len(self.location_names)

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __getitem__(self, i: int):
        drone, sat = self.load_pair(int(i))
        if self.augment is not None:
            drone, sat = self.augment(drone, sat)
        return (torch.from_numpy(self.preprocess(drone)), torch.from_numpy(self.preprocess(sat)),
                int(self.locations[i]))

    def representatives(self) -> np.ndarray:
        """One sample index per location (its first): the location's reference image for mining."""
        first = np.full(self.n_locations, -1, np.int64)
        for i in range(len(self.locations) - 1, -1, -1):
            first[self.locations[i]] = i
        return first

    #: whether one sample drawn twice gives two different query views (pose jitter): mining may repeat it
    views_vary = False

    def mining_samples(self, per_location: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Per location, up to ``per_location`` sample indices whose query views mining averages.

        Distinct samples drawn at random; datasets whose views vary per draw (``views_vary``) repeat
        samples to reach ``per_location`` (each repeat is another random pose)."""
        order = np.argsort(self.locations, kind="stable")
        starts = np.searchsorted(self.locations[order], np.arange(self.n_locations + 1))
        out = []
        for loc in range(self.n_locations):
            own = rng.permutation(order[starts[loc]:starts[loc + 1]])
            n = per_location if self.views_vary else min(per_location, len(own))
            out.append(np.resize(own, n).astype(np.int64))
        return out

    def mining_query(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """The query view of sample ``i`` for mining (no augmentation)."""
        return self.load_pair(int(i))[0]

    def reference_image(self, loc: int) -> np.ndarray:
        """The reference (satellite) image of location ``loc``."""
        if getattr(self, "_reps", None) is None:
            self._reps = self.representatives()
        return self.load_pair(int(self._reps[loc]))[1]

    def _set_pairs(self, names: list[str]) -> None:
        uniq = sorted(set(names))
        code = {n: i for i, n in enumerate(uniq)}
        self.location_names = uniq
        self.locations = np.array([code[n] for n in names], np.int64)


class SUES200Pairs(PairDataset):
    """SUES-200 training pairs: each drone frame of a training location with its satellite image."""

    def __init__(self, root, preprocess: Preprocess, altitudes=None, augment=None):
        super().__init__(preprocess, augment)
        from common.sues200_layout import SUES200

        self.data = SUES200(root)
        pairs = self.data.train_pairs(altitudes)
        if not pairs:
            raise FileNotFoundError(f"no SUES-200 training pairs under {root} for altitudes {altitudes}")
        self.pairs = [(Path(d), Path(s)) for d, s, _, _ in pairs]
        self.altitudes_m = np.array([a for *_, a in pairs], np.int64)
        # one satellite image per location (shared by all altitudes): the location is the id
        self._set_pairs([loc for _, _, loc, _ in pairs])
        self._sat_cache: dict[Path, np.ndarray] = {}

    def load_pair(self, i):
        drone, sat = self.pairs[i]
        if sat not in self._sat_cache:
            self._sat_cache[sat] = read_image(sat)
        return read_image(drone), self._sat_cache[sat]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class University1652Pairs(PairDataset):
    """University-1652 drone<->satellite training pairs (``root`` holds ``train/`` or is it)."""

    def __init__(self, root, preprocess: Preprocess, augment=None):
        super().__init__(preprocess, augment)
        root = Path(root)
        train = root / "train" if (root / "train").is_dir() else root
        sat_dir, drone_dir = train / "satellite", train / "drone"
        if not sat_dir.is_dir() or not drone_dir.is_dir():
            raise FileNotFoundError(
                f"no University-1652 training data at {root}: expected train/satellite/<class>/ and "
                "train/drone/<class>/ (unpack University-Release.zip there)")
        pairs, names = [], []
        for cls_dir in sorted(p for p in drone_dir.iterdir() if p.is_dir()):
            sats = _images(sat_dir / cls_dir.name) if (sat_dir / cls_dir.name).is_dir() else []
            if not sats:
                _logger.warning("University-1652 class %s has drone images but no satellite image: skipped",
                                cls_dir.name)
                continue
            for img in _images(cls_dir):
                pairs.append((img, sats[0]))
                names.append(cls_dir.name)
        if not pairs:
            raise FileNotFoundError(f"no drone/satellite pairs found under {train}")
        self.pairs = pairs
        self._set_pairs(names)

    def load_pair(self, i):
        drone, sat = self.pairs[i]
        return read_image(drone), read_image(sat)


def university1652_retrieval(root, direction: str = "drone2sat") -> tuple[list, list, list, list]:
    """University-1652 test split: (query paths, query labels, gallery paths, gallery labels)."""
    root = Path(root)
    test = root / "test" if (root / "test").is_dir() else root
    q_dir, g_dir = {"drone2sat": ("query_drone", "gallery_satellite"),
                    "sat2drone": ("query_satellite", "gallery_drone")}[direction]
    out = []
    for sub in (q_dir, g_dir):
        folder = test / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"University-1652 test folder {folder} is missing")
        paths, labels = [], []
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            for img in _images(cls):
                paths.append(img)
                labels.append(cls.name)
        out += [paths, labels]
    return tuple(out)


# ---- GeoTIFF pairs ------------------------------------------------------------------------------------


@dataclass
class ViewJitter:
    """Random pose changes of rendered drone views (ground truth stays the tile centre)."""

    offset_frac: float | None = None  # centre offset, fraction of the footprint (None: the whole stride cell)
    heading_deg: float = 180.0  # camera heading within +- this of north (180: any direction)
    tilt_deg: float = 5.0  # 0..tilt_deg forward pitch
    altitude_frac: float = 0.05  # +- relative altitude error
    photometric: float = 0.5  # tiles.views.photometric_jitter strength
    compass_error_deg: float = 3.0  # std of the heading error when the view is turned north-up


class _Rasters:
    """Rasters opened lazily per process (rasterio handles must not cross a fork)."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        self._pid, self._open = None, {}

    def __getitem__(self, i):
        from tiles.raster import open_raster

        if self._pid != os.getpid():
            self._pid, self._open = os.getpid(), {}
        if i not in self._open:
            self._open[i] = open_raster(self.paths[i])
        return self._open[i]

    def __getstate__(self):
        return {"paths": self.paths, "_pid": None, "_open": {}}


def geotiff_locations(reference, altitudes_m, hfov_deg: float, stride_frac: float = 0.5,
                      min_valid: float = 0.95):
    """Tiles of the reference raster per altitude: list of (altitude_m, Tile)."""
    from tiles.grid import footprint_m, tile_grid
    from tiles.raster import open_raster

    with open_raster(reference) as ref:
        out = []
        for alt in altitudes_m:
            fp = footprint_m(alt, hfov_deg)
            out += [(float(alt), t) for t in tile_grid(ref, fp, stride_m=fp * stride_frac, min_valid=min_valid)]
    return out


class GeoTiffPairs(PairDataset):
    """Rendered drone views of ``query_rasters`` paired with ``reference``'s tile at the same place.

    Locations are the reference tiles of every altitude (footprint from ``hfov_deg``, centres every
    ``stride_frac`` x footprint); one sample per (location, query raster). Views are rendered on the fly
    with a random pose jitter (``jitter``; ``None`` renders the exact nadir view, for evaluation). The
    view's centre lies anywhere in the location's stride cell (``jitter.offset_frac=None``: up to
    ``stride_frac / 2`` footprints from the tile centre along each axis), the area for which this tile is
    the nearest: where a drone flying anywhere over the map would see it.
    """

    views_vary = True

    def __init__(self, reference, query_rasters, altitudes_m, hfov_deg: float, preprocess: Preprocess,
                 render_px: int | None = None, stride_frac: float = 0.5, jitter: ViewJitter | None = None,
                 augment=None, seed: int = 0, max_locations: int | None = None):
        super().__init__(preprocess, augment)
        if not query_rasters:
            raise ValueError("GeoTiffPairs needs at least one query raster (another year of the area)")
        self.hfov_deg = float(hfov_deg)
        self.render_px = int(render_px or preprocess.input_size[0])
        self.jitter = jitter
        self.offset_frac = (stride_frac / 2 if jitter is None or jitter.offset_frac is None
                            else float(jitter.offset_frac))
        self.seed = seed
        tiles = geotiff_locations(reference, altitudes_m, hfov_deg, stride_frac)
        if max_locations is not None and len(tiles) > max_locations:
            keep = np.sort(np.random.default_rng(seed).choice(len(tiles), max_locations, replace=False))
            tiles = [tiles[i] for i in keep]
        self.tiles = tiles
        self.location_names = [t.label(alt) for alt, t in tiles]
        self.xy_m = np.array([[t.x, t.y] for _, t in tiles], np.float64)
        self.altitude_of_location = np.array([alt for alt, _ in tiles], np.float64)
        self.footprint_of_location = np.array([t.footprint_m for _, t in tiles], np.float64)
        self.rasters = _Rasters([reference, *query_rasters])
        nq = len(query_rasters)
        self.locations = np.repeat(np.arange(len(tiles)), nq)
        self.sources = np.tile(np.arange(1, nq + 1), len(tiles))
        self._ref_cache: dict[int, np.ndarray] = {}
        _logger.info("GeoTIFF pairs: %d locations at %s m x %d query rasters = %d samples",
                     len(tiles), sorted(set(self.altitude_of_location.tolist())), nq, len(self.locations))

    def reference_tile(self, loc: int) -> np.ndarray:
        if loc not in self._ref_cache:
            from tiles.grid import read_tile

            _, tile = self.tiles[loc]
            self._ref_cache[loc] = read_tile(self.rasters[0], tile, self.render_px)
        return self._ref_cache[loc]

    def render(self, i: int, rng: np.random.Generator | None) -> np.ndarray:
        from tiles.views import CameraPose, render_view

        loc = int(self.locations[i])
        alt, tile = self.tiles[loc]
        j = self.jitter
        if j is None or rng is None:
            pose = CameraPose(tile.x, tile.y, alt, hfov_deg=self.hfov_deg)
            return render_view(self.rasters[int(self.sources[i])], pose, (self.render_px,) * 2).image
        off = rng.uniform(-self.offset_frac, self.offset_frac, 2) * tile.footprint_m
        heading = float(rng.uniform(-j.heading_deg, j.heading_deg)) % 360.0
        pose = CameraPose(tile.x + off[0], tile.y + off[1], alt * (1 + rng.uniform(-1, 1) * j.altitude_frac),
                          heading_deg=heading, tilt_deg=float(rng.uniform(0, j.tilt_deg)), hfov_deg=self.hfov_deg)
        view = render_view(self.rasters[int(self.sources[i])], pose, (self.render_px,) * 2,
                           photometric=j.photometric or None, rng=rng)
        # what the runtime will embed: the frame turned north-up by the autopilot's (slightly wrong) compass
        return north_up(view.image, heading + float(rng.normal(0.0, j.compass_error_deg)))

    def load_pair(self, i):
        return self.render(i, None), self.reference_tile(int(self.locations[i]))

    def mining_query(self, i: int, rng: np.random.Generator) -> np.ndarray:
        return self.render(int(i), rng)

    def reference_image(self, loc: int) -> np.ndarray:
        return self.reference_tile(int(loc))

    def __getitem__(self, i: int):
        # pose jitter from torch's generator (seeded by the trainer, per worker by the DataLoader)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        drone = self.render(int(i), rng)
        sat = self.reference_tile(int(self.locations[i]))
        if self.augment is not None:
            drone, sat = self.augment(drone, sat)
        return (torch.from_numpy(self.preprocess(drone)), torch.from_numpy(self.preprocess(sat)),
                int(self.locations[i]))
