"""SUES-200 on disk: both layouts, the official split and the two evaluation protocols (torch-free).

The benchmark (REFERENCE.md section 2) comes in two layouts, both detected from ``root``:

- the raw archive ``SUES-200-512x512/``::

      drone_view_512/<loc 0001..0200>/<150|200|250|300>/<0..49>.jpg
      satellite-view/<loc>/0.png

- the benchmark's split layout (its split script), one tree per altitude ``h``::

      Training/<h>/drone/<loc>/*.jpg          Training/<h>/satellite/<loc>/*.png       (120 ids)
      Testing/<h>/query_drone/<loc>/          Testing/<h>/query_satellite/<loc>/       (80 ids)
      Testing/<h>/gallery_drone/<loc>/        Testing/<h>/gallery_satellite/<loc>/     (all 200 ids)

``root`` may be the folder that holds ``drone_view_512``/``satellite-view`` or ``Training``/``Testing``,
or a parent that holds ``SUES-200-512x512``. Datasets written by ``tools/make_sues200.py`` use the same
layouts with fewer locations; the split then is the official one restricted to the ids present.

Evaluation protocols, per altitude (both are reported, labelled):

- ``official``: drone->satellite queries are the test locations' drone frames, the gallery holds the
  satellite image of *every* location (the 120 training locations are distractors); satellite->drone
  queries are the test satellites, the gallery every location's drone frames.
- ``query_only``: the gallery keeps only the test locations (Sample4Geo's evaluation, reused by CAMP
  and DAC, which drops gallery items whose location is not a query): an easier gallery.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import UserError
from common.image_files import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

ALTITUDES = (150, 200, 250, 300)
ARCHIVE_DIR = "SUES-200-512x512"
RAW_DRONE = "drone_view_512"
RAW_SATELLITE = "satellite-view"
FRAMES_PER_FLIGHT = 50
PROTOCOLS = ("official", "query_only")
DIRECTIONS = ("drone2sat", "sat2drone")

# The 120 official training locations, from the benchmark's script/indexs.yaml (REFERENCE.md section 2).
TRAIN_IDS: tuple[str, ...] = tuple(
    """
    0001 0002 0003 0004 0005 0006 0007 0009 0010 0011 0013 0015 0016 0020 0021 0024 0025 0026 0027 0028
    0029 0030 0031 0032 0033 0034 0036 0037 0039 0043 0044 0045 0051 0055 0056 0057 0058 0060 0064 0066
    0067 0069 0070 0073 0074 0076 0077 0080 0081 0082 0084 0085 0086 0087 0088 0089 0090 0091 0094 0096
    0097 0100 0101 0102 0103 0104 0105 0106 0113 0116 0118 0119 0120 0123 0125 0126 0127 0129 0132 0134
    0137 0139 0141 0142 0145 0146 0147 0148 0149 0151 0152 0155 0156 0157 0158 0159 0160 0163 0166 0167
    0168 0169 0171 0174 0179 0180 0182 0183 0184 0185 0186 0187 0191 0192 0193 0196 0197 0198 0199 0200
    """.split()
)
ALL_IDS: tuple[str, ...] = tuple(f"{i:04d}" for i in range(1, 201))
_TRAIN_SET = frozenset(TRAIN_IDS)
TEST_IDS: tuple[str, ...] = tuple(i for i in ALL_IDS if i not in _TRAIN_SET)
assert len(TRAIN_IDS) == 120 and len(_TRAIN_SET) == 120 and len(TEST_IDS) == 80

SPLIT_DRONE_DIRS = (("Training", "drone"), ("Testing", "query_drone"), ("Testing", "gallery_drone"))
SPLIT_SAT_DIRS = (("Training", "satellite"), ("Testing", "query_satellite"), ("Testing", "gallery_satellite"))


class SUES200LayoutError(UserError, FileNotFoundError):
    """The folder does not hold SUES-200 in either known layout, or an expected part is missing."""


@dataclass
class RetrievalSet:
    """One evaluation: query and gallery images with their location labels."""

    altitude_m: int
    protocol: str  # "official" | "query_only"
    direction: str  # "drone2sat" | "sat2drone"
    query_paths: list[Path] = field(default_factory=list)
    query_labels: list[str] = field(default_factory=list)
    gallery_paths: list[Path] = field(default_factory=list)
    gallery_labels: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.direction}@{self.altitude_m}m[{self.protocol}]"


def _sort_key(p: Path):
    stem = p.stem
    return (0, int(stem), p.name) if stem.isdigit() else (1, 0, p.name)


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, numeric names in numeric order (0, 1, 2, ..., 10), then the rest."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_sort_key)


def _subdirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _detect(root: Path) -> tuple[str, Path]:
    candidates = [root, root / ARCHIVE_DIR]
    for c in candidates:
        if (c / RAW_DRONE).is_dir() and (c / RAW_SATELLITE).is_dir():
            return "raw", c
        if (c / "Training").is_dir() or (c / "Testing").is_dir():
            return "split", c
    if not root.exists():
        why = "does not exist"
    elif not root.is_dir():
        why = "is not a folder"
    else:
        found = ", ".join(_subdirs(root)[:8]) or "no sub-folders"
        why = f"holds {found}"
    raise SUES200LayoutError(
        f"no SUES-200 dataset at {root} ({why}). Expected either the raw archive layout "
        f"({ARCHIVE_DIR}/{RAW_DRONE}/<loc>/<altitude>/<i>.jpg and {RAW_SATELLITE}/<loc>/0.png, root being "
        f"the archive folder or its parent) or the benchmark's split layout (Training/<altitude>/"
        "{drone,satellite}/<loc>, Testing/<altitude>/{query_drone,query_satellite,gallery_drone,"
        "gallery_satellite}/<loc>). Unpack the archive there, or generate one with "
        "`python -m tools.make_sues200`."
    )


class SUES200:
    """Read access to a SUES-200 tree in either layout (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.given_root = Path(root)
        self.layout, self.root = _detect(self.given_root)
        self.altitudes = self._find_altitudes()
        if not self.altitudes:
            raise SUES200LayoutError(
                f"{self.root} looks like the SUES-200 {self.layout} layout but holds no altitude folder "
                f"named one of {ALTITUDES}"
            )
        log.info("SUES-200 at %s: %s layout, altitudes %s, %d locations",
                 self.root, self.layout, self.altitudes, len(self.locations()))

    def __repr__(self) -> str:
        return f"SUES200({str(self.root)!r}, layout={self.layout!r}, altitudes={self.altitudes})"

    # ---- discovery ----------------------------------------------------------------------------
    def _find_altitudes(self) -> tuple[int, ...]:
        found: set[int] = set()
        if self.layout == "raw":
            for loc in _subdirs(self.root / RAW_DRONE):
                found.update(int(a) for a in _subdirs(self.root / RAW_DRONE / loc) if a.isdigit())
        else:
            for part in ("Training", "Testing"):
                found.update(int(a) for a in _subdirs(self.root / part) if a.isdigit())
        return tuple(sorted(found))

    def _check_altitude(self, altitude_m) -> int:
        alt = int(altitude_m)
        if alt not in self.altitudes:
            raise SUES200LayoutError(
                f"altitude {altitude_m!r} is not in {self.root} (available: {list(self.altitudes)})"
            )
        return alt

    def locations(self, altitude_m: int | None = None) -> list[str]:
        """Location ids present (with drone frames at ``altitude_m`` if given)."""
        if self.layout == "raw":
            locs = _subdirs(self.root / RAW_DRONE)
            if altitude_m is not None:
                locs = [c for c in locs if (self.root / RAW_DRONE / c / str(int(altitude_m))).is_dir()]
            return locs
        alts = self.altitudes if altitude_m is None else (int(altitude_m),)
        found: set[str] = set()
        for alt in alts:
            for part, sub in SPLIT_DRONE_DIRS + SPLIT_SAT_DIRS:
                found.update(_subdirs(self.root / part / str(alt) / sub))
        return sorted(found)

    # ---- images -------------------------------------------------------------------------------
    def drone_frames(self, location: str, altitude_m: int) -> list[Path]:
        """The drone frames of one location and altitude, in flight order (0..49)."""
        loc = normalize_id(location)
        alt = self._check_altitude(altitude_m)
        if self.layout == "raw":
            folder = self.root / RAW_DRONE / loc / str(alt)
            frames = list_images(folder)
            tried = [folder]
        else:
            frames, tried = [], []
            for part, sub in SPLIT_DRONE_DIRS:
                folder = self.root / part / str(alt) / sub / loc
                tried.append(folder)
                frames = list_images(folder)
                if frames:
                    break
        if not frames:
            raise SUES200LayoutError(
                f"no drone frames for location {loc} at {alt} m under {self.root}; looked in "
                + ", ".join(str(t) for t in tried)
            )
        return frames

    def satellite_image(self, location: str, altitude_m: int | None = None) -> Path:
        """The satellite image of a location (the same for every altitude)."""
        loc = normalize_id(location)
        tried: list[Path] = []
        if self.layout == "raw":
            folder = self.root / RAW_SATELLITE / loc
            tried.append(folder)
            images = list_images(folder)
        else:
            alts = self.altitudes if altitude_m is None else (self._check_altitude(altitude_m),)
            images = []
            for alt in alts:
                for part, sub in SPLIT_SAT_DIRS:
                    folder = self.root / part / str(alt) / sub / loc
                    tried.append(folder)
                    images = list_images(folder)
                    if images:
                        break
                if images:
                    break
        if not images:
            raise SUES200LayoutError(
                f"no satellite image for location {loc} under {self.root}; looked in "
                + ", ".join(str(t) for t in tried[:6])
            )
        return images[0]

    # ---- split and protocols ------------------------------------------------------------------
    def split(self, altitude_m: int) -> dict[str, list[str]]:
        """``{"train": ids, "test": ids}`` at one altitude.

        Raw layout: the official split restricted to the ids present. Split layout: the folders
        (``Training/<h>/drone`` and ``Testing/<h>/query_drone``); a difference from the official ids is
        logged.
        """
        alt = self._check_altitude(altitude_m)
        present = self.locations(alt)
        if self.layout == "raw":
            return {"train": [i for i in present if i in _TRAIN_SET],
                    "test": [i for i in present if i not in _TRAIN_SET]}
        train = _subdirs(self.root / "Training" / str(alt) / "drone")
        test = _subdirs(self.root / "Testing" / str(alt) / "query_drone")
        odd = sorted(set(train) - _TRAIN_SET) + sorted(set(test) & _TRAIN_SET)
        if odd:
            log.warning("%s at %d m: the split folders disagree with the official split for ids %s",
                        self.root, alt, odd[:10])
        return {"train": train, "test": test}

    def retrieval_set(self, altitude_m: int, protocol: str = "official",
                      direction: str = "drone2sat") -> RetrievalSet:
        """Queries and gallery of one evaluation (see the module docstring for the protocols)."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
        alt = self._check_altitude(altitude_m)
        sp = self.split(alt)
        test = sp["test"]
        if not test:
            raise SUES200LayoutError(
                f"{self.root} has no test location at {alt} m (ids present: {self.locations(alt)[:10]}...); "
                f"the official test ids are {TEST_IDS[:5]}..."
            )
        gallery_ids = self.protocol_gallery_ids(alt, protocol)
        rs = RetrievalSet(alt, protocol, direction)
        if direction == "drone2sat":
            for loc in test:
                frames = self.drone_frames(loc, alt)
                rs.query_paths += frames
                rs.query_labels += [loc] * len(frames)
            for loc in gallery_ids:
                rs.gallery_paths.append(self.satellite_image(loc, alt))
                rs.gallery_labels.append(loc)
        else:
            for loc in test:
                rs.query_paths.append(self.satellite_image(loc, alt))
                rs.query_labels.append(loc)
            for loc in gallery_ids:
                frames = self.drone_frames(loc, alt)
                rs.gallery_paths += frames
                rs.gallery_labels += [loc] * len(frames)
        return rs

    def protocol_gallery_ids(self, altitude_m: int, protocol: str) -> list[str]:
        """The gallery locations of a protocol (the one definition, used by train.evaluate and the replay):
        ``official``: every location; ``query_only``: the test locations."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
        return self.gallery_ids(altitude_m) if protocol == "official" else list(self.split(altitude_m)["test"])

    def protocol_junk(self, altitude_m: int, protocol: str, gallery_labels) -> list[bool]:
        """Per item of a gallery holding every location: True where ``protocol`` leaves it out."""
        keep = set(self.protocol_gallery_ids(altitude_m, protocol))
        return [str(label) not in keep for label in gallery_labels]

    def gallery_ids(self, altitude_m: int) -> list[str]:
        """Locations of the official gallery: every location (train ones as distractors)."""
        alt = self._check_altitude(altitude_m)
        if self.layout == "split":
            ids = _subdirs(self.root / "Testing" / str(alt) / "gallery_satellite")
            if ids:
                return ids
        return self.locations(alt)

    def train_pairs(self, altitudes=None) -> list[tuple[Path, Path, str, int]]:
        """Training pairs ``(drone_frame, satellite_image, location, altitude_m)`` of the train split."""
        alts = self.altitudes if altitudes is None else tuple(self._check_altitude(a) for a in
                                                              ([altitudes] if isinstance(altitudes, int)
                                                               else altitudes))
        pairs = []
        for alt in alts:
            for loc in self.split(alt)["train"]:
                sat = self.satellite_image(loc, alt)
                pairs += [(f, sat, loc, alt) for f in self.drone_frames(loc, alt)]
        return pairs


def normalize_id(location) -> str:
    """``7``, ``"7"`` or ``"0007"`` -> ``"0007"``."""
    s = str(location).strip()
    if s.isdigit():
        return f"{int(s):04d}"
    raise ValueError(f"SUES-200 location ids are numbers like '0007', got {location!r}")
