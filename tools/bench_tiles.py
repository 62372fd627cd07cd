"""Benchmark of tiles/: how fast a map is cut into tiles and drone views are rendered (CPU).

    python -m tools.bench_tiles [--raster data/naip/..._20180716.tif] [--repeat 5]

Prints a Markdown table (medians over ``--repeat`` runs): tile-grid planning per altitude, tiles read
per second at two output sizes, drone views rendered per second, and ``north_up`` per frame.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import validate
from common.cli import options_parser, parse_options
from common.options import option, shared

REPO = Path(__file__).resolve().parents[1]


def _median_rate(fn, n_items: int, repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        rates.append(n_items / (time.perf_counter() - t))
    return statistics.median(rates)


@dataclass
class Options:
    """Defaults of the shared sizes here: --n 300 (tiles or views per timed run)."""

    raster: str = option(str(next((REPO / "data" / "naip").glob("*_2018*.tif"), "")), "the GeoTIFF")
    repeat: int = option(5, "timed runs", check=validate.int_rule(1))
    n: int | None = shared("n")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__, prog="python -m tools.bench_tiles")


def main(argv=None) -> int:
    from runtime.engines.preprocess import north_up
    from tiles.grid import footprint_m, read_tile, tile_grid
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    args = parse_options(build_parser(), argv, Options, n=300)

    rows = []
    with open_raster(args.raster) as r:
        for alt in (150, 300):
            fp = footprint_m(alt, 60)
            t = time.perf_counter()
            tiles = tile_grid(r, fp, fp / 2)
            rows.append((f"plan the tile grid, {alt} m (hfov 60, stride half footprint)",
                         f"{len(tiles)} tiles in {1e3 * (time.perf_counter() - t):.0f} ms"))
        tiles = tile_grid(r, footprint_m(150, 60), footprint_m(150, 60) / 2)[: args.n]
        for px in (128, 384):
            rate = _median_rate(lambda px=px: [read_tile(r, t, px) for t in tiles], len(tiles), args.repeat)
            rows.append((f"read tiles ({footprint_m(150, 60):.0f} m) at {px} px", f"{rate:.0f} tiles/s"))
        rng = np.random.default_rng(0)
        poses = [CameraPose(t.x, t.y, 150, float(rng.uniform(0, 360)), float(rng.uniform(0, 10)), 60) for t in tiles]
        rate = _median_rate(lambda: [render_view(r, p, (256, 256)) for p in poses], len(poses), args.repeat)
        rows.append(("render drone views 256 px (any heading, tilt 0-10 deg)", f"{rate:.0f} views/s"))
        frame = render_view(r, poses[0], (512, 512)).image
        rate = _median_rate(lambda: [north_up(frame, 37.0) for _ in range(200)], 200, args.repeat)
        rows.append(("north_up, one 512 px frame", f"{1e3 / rate:.2f} ms"))
    print(f"raster: {Path(args.raster).name}; medians of {args.repeat} runs of {args.n} items\n")
    print("| operation | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
