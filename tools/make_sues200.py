"""Write a SUES-200-layout dataset from real GeoTIFFs, so replay and training run on the real layout.

For each of N locations on the reference map, and each altitude (150/200/250/300 m by default), a drone
"flies" a short curved path over the location and 50 frames are rendered along it from a *drone* raster
(another year of the same area: a real appearance gap), with heading changes, a mild forward tilt and
photometric changes; one satellite image per location is cut north-up from the *reference* raster.
The result has the benchmark's raw archive layout (REFERENCE.md section 2)::

    OUT/SUES-200-512x512/drone_view_512/<loc>/<alt>/<i>.jpg
    OUT/SUES-200-512x512/satellite-view/<loc>/0.png
    OUT/SUES-200-512x512/ground_truth.json     location centres (metric CRS and WGS84), per-frame poses

and, with ``--split``, also the benchmark's split layout (``OUT/split/Training/<alt>/...``, hard links).

Location ids are taken from the official split: about 40% from the 80 test ids, the rest from the 120
training ids, so :class:`common.sues200_layout.SUES200` applies the official split unchanged.

Geometry: a nadir camera of horizontal field of view ``hfov_deg`` at altitude ``h`` sees
``2 h tan(hfov/2)`` metres; the satellite image covers ``satellite_side_m`` (default: 1.15 x the
footprint at the highest altitude, so every flight's view lies inside it). The path is an arc of
``path_m`` metres (default: 0.25 x the footprint at that altitude) through the location centre, starting
in a random direction; the camera faces along the path (+- a few degrees) and tilts 0-10 deg forward.

Resumable: images already on disk are kept when a run with the same settings is repeated (every file
is written atomically); a different setting in an existing folder is refused unless ``--overwrite``.

    python -m tools.make_sues200 --reference data/naip/m_4709963_se_14_1_20180716.tif \\
        --drone data/naip/m_4709963_se_14_1_20160816.tif data/naip/m_4709963_se_14_1_20200831.tif \\
        --out runs/sues200_naip --locations 20 --size 256
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import validate
from common.cli import options_parser, parse_options
from common.options import DEFAULT_HFOV_DEG, option, shared
from common.sues200_layout import (
    ALTITUDES,
    ARCHIVE_DIR,
    FRAMES_PER_FLIGHT,
    RAW_DRONE,
    RAW_SATELLITE,
    TEST_IDS,
    TRAIN_IDS,
)
from tiles.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

GROUND_TRUTH = "ground_truth.json"
SETTINGS = "generator_settings.json"
FORMAT = "sues200-generated"


def pick_ids(n_locations: int, test_fraction: float = 0.4) -> list[str]:
    """Location ids from the official split: ``round(n * test_fraction)`` test ids, the rest training ids."""
    if not 1 <= n_locations <= 200:
        raise ValueError(f"SUES-200 has ids 0001..0200: n_locations must be 1..200, got {n_locations}")
    n_test = min(len(TEST_IDS), max(1 if n_locations > 1 else 0, round(n_locations * test_fraction)))
    n_train = n_locations - n_test
    if n_train > len(TRAIN_IDS):
        n_train = len(TRAIN_IDS)
        n_test = n_locations - n_train
    return sorted(list(TRAIN_IDS[:n_train]) + list(TEST_IDS[:n_test]))


def place_locations(bounds_m, n: int, margin_m: float, min_spacing_m: float, rng) -> np.ndarray:
    """``n`` centres (x, y) inside ``bounds_m`` shrunk by ``margin_m``, at least ``min_spacing_m`` apart."""
    xmin, ymin, xmax, ymax = bounds_m
    lo = np.array([xmin + margin_m, ymin + margin_m])
    hi = np.array([xmax - margin_m, ymax - margin_m])
    if np.any(hi <= lo):
        raise ValueError(
            f"the map ({xmax - xmin:.0f} x {ymax - ymin:.0f} m) is too small for a margin of {margin_m:.0f} m; "
            "use lower altitudes, a narrower --hfov-deg or a smaller --satellite-side-m"
        )
    pts: list[np.ndarray] = []
    for _ in range(20000):
        p = lo + rng.random(2) * (hi - lo)
        if all(np.hypot(*(p - q)) >= min_spacing_m for q in pts):
            pts.append(p)
            if len(pts) == n:
                return np.array(pts)
    raise ValueError(
        f"could place only {len(pts)} of {n} locations {min_spacing_m:.0f} m apart on the map; "
        "ask for fewer --locations or a smaller --min-spacing-m"
    )


def flight_poses(centre, altitude_m: float, n_frames: int, path_m: float, rng) -> list[dict]:
    """Poses along an arc of ``path_m`` metres through ``centre``: x, y, heading_deg, tilt_deg per frame."""
    direction = rng.uniform(0, 2 * math.pi)  # of travel, compass radians (0 = north)
    bend = rng.uniform(-0.6, 0.6)  # total heading change along the path, radians
    tilt0 = rng.uniform(0.0, 10.0)
    heading_offset = rng.uniform(-8.0, 8.0)
    s = np.linspace(-0.5, 0.5, n_frames) * path_m
    ang = direction + bend * (s / max(path_m, 1e-9))  # heading of travel at each arc length
    # integrate the heading along the path, then centre the path on the location
    ds = np.gradient(s) if n_frames > 1 else np.zeros(1)
    xs = np.cumsum(np.sin(ang) * ds)
    ys = np.cumsum(np.cos(ang) * ds)
    mid = n_frames // 2
    xs = xs - xs[mid] + centre[0]
    ys = ys - ys[mid] + centre[1]
    poses = []
    for i in range(n_frames):
        poses.append({
            "x": float(xs[i]), "y": float(ys[i]), "altitude_m": float(altitude_m),
            "heading_deg": float((math.degrees(ang[i]) + heading_offset + rng.normal(0, 1.5)) % 360.0),
            "tilt_deg": float(np.clip(tilt0 + rng.normal(0, 1.0), 0.0, 15.0)),
        })
    return poses


def _write_image(path: Path, rgb: np.ndarray, jpeg_quality: int = 92) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise OSError(f"OpenCV could not encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def make_sues200(
    out: str | os.PathLike,
    reference: str | os.PathLike,
    drone: list[str | os.PathLike],
    *,
    n_locations: int = 20,
    altitudes=ALTITUDES,
    frames: int = FRAMES_PER_FLIGHT,
    size_px: int = 512,
    satellite_size_px: int | None = None,
    hfov_deg: float = 60.0,
    satellite_side_m: float | None = None,
    path_fraction: float = 0.25,
    min_spacing_m: float | None = None,
    photometric: float = 0.7,
    test_fraction: float = 0.4,
    seed: int = 0,
    split: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the dataset (see the module docstring) and return the archive folder ``OUT/SUES-200-512x512``."""
    from tiles.grid import footprint_m
    from tiles.raster import open_raster

    out = Path(out)
    base = out / ARCHIVE_DIR
    altitudes = tuple(int(a) for a in altitudes)
    if not drone:
        raise ValueError("give at least one --drone raster (another year of the reference area)")
    if frames < 1 or size_px < 8:
        raise ValueError(f"frames must be >= 1 and size_px >= 8, got {frames} and {size_px}")
    satellite_size_px = int(satellite_size_px or size_px)
    top_fp = footprint_m(max(altitudes), hfov_deg)
    satellite_side_m = float(satellite_side_m or 1.15 * top_fp)
    min_spacing_m = float(min_spacing_m if min_spacing_m is not None else satellite_side_m)

    ref = open_raster(reference)
    drones = [open_raster(p) for p in drone]
    settings = {
        "format": FORMAT, "version": 1, "reference": Path(reference).name, "reference_sha256": ref.sha256(),
        "drone": [Path(p).name for p in drone], "drone_sha256": [d.sha256() for d in drones],
        "n_locations": int(n_locations), "altitudes_m": list(altitudes), "frames": int(frames),
        "size_px": int(size_px), "satellite_size_px": satellite_size_px, "hfov_deg": float(hfov_deg),
        "satellite_side_m": satellite_side_m, "path_fraction": float(path_fraction),
        "min_spacing_m": min_spacing_m, "photometric": float(photometric),
        "test_fraction": float(test_fraction), "seed": int(seed),
    }
    _prepare_archive(out, base, settings, overwrite)
    for d in drones:
        if d.metric_crs != ref.metric_crs:
            raise ValueError(f"{d.path.name} is in {d.metric_crs.to_string()}, the reference in "
                             f"{ref.metric_crs.to_string()}; reproject it to the reference's CRS first")
    rng = np.random.default_rng(seed)
    ids = pick_ids(n_locations, test_fraction)
    # the tilted view reaches further ahead than a nadir one: keep a generous margin
    margin = max(satellite_side_m / 2, 0.75 * top_fp + path_fraction * top_fp / 2) + 2 * ref.gsd_m
    centres = place_locations(_common_bounds(ref, drones), len(ids), margin, min_spacing_m, rng)

    truth = {"format": FORMAT, "version": 1, "crs": ref.metric_crs.to_string(), "settings": settings,
             "locations": {}}
    counts = [0, 0]  # images written, kept from an earlier run
    for li, (loc, c) in enumerate(zip(ids, centres)):
        truth["locations"][loc] = _write_location(base, loc, li, c, ref, drones, settings, counts)
        log.info("location %s (%d/%d) at (%.0f, %.0f)", loc, li + 1, len(ids), c[0], c[1])
    atomic_write_json(base / GROUND_TRUTH, truth)
    log.info("%s: %d images written, %d kept from an earlier run", base, *counts)
    if split:
        write_split_layout(base, out / "split", ids, altitudes)
    for r in [ref, *drones]:
        r.close()
    return base


def _prepare_archive(out: Path, base: Path, settings: dict, overwrite: bool) -> None:
    """The archive folder ready for ``settings``: replaced (``overwrite``), resumed when an earlier run wrote
    it with the same settings, refused otherwise; the settings written."""
    spath = base / SETTINGS
    if base.exists():
        old = json.loads(spath.read_text()) if spath.is_file() else None
        if overwrite:
            shutil.rmtree(base)
            if (out / "split").exists():
                shutil.rmtree(out / "split")
        elif old != settings:
            raise FileExistsError(
                f"{base} exists and was written with other settings (or by something else); pass "
                "--overwrite to replace it, or choose another --out"
            )
        else:
            log.info("resuming into %s: existing images are kept", base)
    atomic_write_json(spath, settings)


def _common_bounds(ref, drones) -> tuple:
    """The metric bounds where the reference and every drone raster overlap."""
    bounds = np.array(ref.bounds_m)
    for d in drones:
        b = d.bounds_m
        bounds = np.array([max(bounds[0], b[0]), max(bounds[1], b[1]), min(bounds[2], b[2]), min(bounds[3], b[3])])
    return tuple(bounds)


def _write_location(base: Path, loc: str, li: int, c, ref, drones, settings: dict, counts: list) -> dict:
    """One location's satellite image and its flight at every altitude (images already there are kept);
    its ground-truth entry. ``counts``: [written, kept], advanced."""
    from tiles.grid import footprint_m
    from tiles.views import CameraPose, render_view

    hfov_deg, side_m, size_px = settings["hfov_deg"], settings["satellite_side_m"], settings["size_px"]
    lat, lon = ref.to_wgs84(float(c[0]), float(c[1]))
    item = {"x": float(c[0]), "y": float(c[1]), "lat": float(lat), "lon": float(lon),
            "split": "test" if loc in TEST_IDS else "train", "satellite_side_m": side_m, "flights": {}}
    sat_path = base / RAW_SATELLITE / loc / "0.png"
    if sat_path.is_file():
        counts[1] += 1
    else:
        rgb, _ = ref.read_ground_square(float(c[0]), float(c[1]), side_m, settings["satellite_size_px"])
        _write_image(sat_path, rgb)
        counts[0] += 1
    for alt in settings["altitudes_m"]:
        frng = np.random.default_rng([settings["seed"], li, alt])
        src = drones[int(frng.integers(len(drones)))]
        fp = footprint_m(alt, hfov_deg)
        poses = flight_poses(c, alt, settings["frames"], settings["path_fraction"] * fp, frng)
        look_seed = int(frng.integers(2**31))  # one appearance per flight
        for i, p in enumerate(poses):
            path = base / RAW_DRONE / loc / str(alt) / f"{i}.jpg"
            if path.is_file():
                counts[1] += 1
                continue
            pose = CameraPose(p["x"], p["y"], alt, p["heading_deg"], p["tilt_deg"], hfov_deg)
            img = render_view(src, pose, (size_px, size_px)).image
            if settings["photometric"]:
                from tiles.views import photometric_jitter

                img = photometric_jitter(img, np.random.default_rng(look_seed), settings["photometric"])
            _write_image(path, img)
            counts[0] += 1
        item["flights"][str(alt)] = {
            "source": src.path.name, "footprint_m": fp,
            "frames": [[round(p["x"], 2), round(p["y"], 2), round(p["heading_deg"], 2),
                        round(p["tilt_deg"], 2)] for p in poses],
            "frame_fields": ["x", "y", "heading_deg", "tilt_deg"],
        }
    return item


def write_split_layout(raw_base: Path, split_root: Path, ids: list[str], altitudes) -> Path:
    """The benchmark's split layout from the raw one (hard links where the filesystem allows)."""
    train = [i for i in ids if i in TRAIN_IDS]
    test = [i for i in ids if i not in TRAIN_IDS]

    def put(src: Path, dst: Path):
        if dst.exists():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)

    def drone_dir(dst_dir: Path, loc: str, alt: int):
        for f in sorted((raw_base / RAW_DRONE / loc / str(alt)).iterdir()):
            put(f, dst_dir / loc / f.name)

    for alt in altitudes:
        a = str(alt)
        for loc in train:
            drone_dir(split_root / "Training" / a / "drone", loc, alt)
            put(raw_base / RAW_SATELLITE / loc / "0.png", split_root / "Training" / a / "satellite" / loc / "0.png")
        for loc in test:
            drone_dir(split_root / "Testing" / a / "query_drone", loc, alt)
            put(raw_base / RAW_SATELLITE / loc / "0.png",
                split_root / "Testing" / a / "query_satellite" / loc / "0.png")
        for loc in ids:
            drone_dir(split_root / "Testing" / a / "gallery_drone", loc, alt)
            put(raw_base / RAW_SATELLITE / loc / "0.png",
                split_root / "Testing" / a / "gallery_satellite" / loc / "0.png")
    return split_root


@dataclass
class Options:
    """Defaults of the shared sizes here: --frames 50 (SUES-200's own per flight), --photometric 0.7."""

    reference: str | None = option(None, "GeoTIFF the satellite images are cut from", required=True)
    drone: list[str] | None = option(None, "GeoTIFF(s) of the same area the drone frames are rendered from",
                                     required=True)
    out: str | None = option(None, "output folder (SUES-200-512x512/ is created inside)", required=True)
    locations: int = option(20, "number of locations", check=validate.int_rule(1))
    altitudes_m: list[float] | None = shared("altitudes_m")
    frames: int | None = shared("frames")
    size: int = shared("size")
    satellite_size: int | None = option(None, "satellite image side in pixels (default: --size)",
                                        check=validate.int_rule(16, 8192))
    hfov_deg: float | None = shared("hfov_deg")
    satellite_side_m: float | None = option(None, "ground side of a satellite image",
                                            check=validate.positive_rule("m"))
    min_spacing_m: float | None = option(None, "minimum distance between locations",
                                         check=validate.positive_rule("m"))
    photometric: float | None = shared("photometric")
    test_fraction: float = option(0.4, "share of ids taken from the official test ids",
                                  check=validate.fraction_rule(zero_ok=True))
    seed: int = shared("seed")
    split: bool = option(False, "also write the benchmark's split layout under OUT/split")
    overwrite: bool = shared("overwrite")
    verbose: bool = shared("verbose")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__.split("\n\n")[0], "python -m tools.make_sues200")


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options, altitudes_m=[float(a) for a in ALTITUDES], frames=FRAMES_PER_FLIGHT, photometric=0.7, hfov_deg=DEFAULT_HFOV_DEG)
    args.altitudes = [int(a) for a in args.altitudes_m]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        base = make_sues200(
            args.out, args.reference, args.drone, n_locations=args.locations, altitudes=args.altitudes,
            frames=args.frames, size_px=args.size, satellite_size_px=args.satellite_size,
            hfov_deg=args.hfov_deg, satellite_side_m=args.satellite_side_m, min_spacing_m=args.min_spacing_m,
            photometric=args.photometric, test_fraction=args.test_fraction, seed=args.seed,
            split=args.split, overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    print(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
