"""Registration as the check of retrieval: register each frame around its top-1 retrieved tile.

Frames of a held-out year are rendered (nadir, random heading), turned north-up by a noisy compass and
embedded by a bundle's model (ONNX Runtime, CPU), searched in the tile database's layer for the altitude;
the frame is then registered around the top-1 tile's centre. A top-1 tile is *right* when the frame
centre lies within the tile's footprint (Chebyshev distance <= footprint / 2), else *wrong*: registration
must reject wrong ones (the database needs its imagery: ``python -m export.map_imagery DB MAP.tif``).

    python tools/bench_registration_top1.py --bundle /work/demo-base/trained/bundle --db DB \\
        --query data/naip/m_4709963_se_14_1_20160816.tif --altitudes 200 300 --n 60
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli import options_parser, parse_options  # noqa: E402 (after the path above)
from common.options import DEFAULT_HFOV_DEG, option, shared  # noqa: E402 (after the path above)


@dataclass
class Options:
    """Defaults of the shared sizes here: --altitudes-m 200 300, --n 60."""

    bundle: str | None = shared("bundle", required=True)
    db: str | None = shared("db", required=True)
    query: str | None = shared("query", required=True)
    altitudes_m: list[float] | None = shared("altitudes_m")
    n: int | None = shared("n")
    hfov_deg: float | None = shared("hfov_deg")
    compass_sigma: float = shared("compass_sigma")
    seed: int = shared("seed")
    out: str | None = option(None, "results JSON")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def main(argv=None) -> int:
    import cv2

    from runtime.engines.engine import load_engine
    from runtime.engines.preprocess import north_up
    from runtime.localisation.registration import Registrar
    from tiles.db import TileDatabase
    from tiles.grid import footprint_m
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    args = parse_options(build_parser(), argv, Options, altitudes_m=[200.0, 300.0], n=60, hfov_deg=DEFAULT_HFOV_DEG)
    cv2.setNumThreads(2)
    rng = np.random.default_rng(args.seed)
    db = TileDatabase.open(args.db)
    reg = Registrar.from_database(db)
    if reg is None:
        raise SystemExit(f"{args.db} has no imagery: python -m export.map_imagery {args.db} MAP.tif")
    engine = load_engine(args.bundle, precision="fp32", backend="onnxruntime")
    q = open_raster(args.query)
    xmin, ymin, xmax, ymax = reg.imagery.bounds_m
    table = {}
    for alt in args.altitudes_m:
        fp = footprint_m(alt, args.hfov_deg)
        sl = db.layer_slice(db.layer_for_altitude(alt))
        emb, ent = np.asarray(db.embeddings[sl], np.float32), db.entries[sl]
        counts = {"right": 0, "right_ok": 0, "wrong": 0, "wrong_ok": 0}
        errs = []
        for _ in range(args.n):
            x, y = rng.uniform(xmin + fp, xmax - fp), rng.uniform(ymin + fp, ymax - fp)
            h = float(rng.uniform(0, 360))
            frame = render_view(q, CameraPose(x, y, alt, h, 0.0, args.hfov_deg), (320, 320)).image
            compass = h + float(rng.normal(0, args.compass_sigma))
            top = int(np.argmax(emb @ engine.embed([north_up(frame, compass)])[0]))
            tx, ty = float(ent["x"][top]), float(ent["y"][top])
            kind = "right" if max(abs(tx - x), abs(ty - y)) <= fp / 2 else "wrong"
            r = reg.register(frame, alt, args.hfov_deg, (tx, ty), compass)
            counts[kind] += 1
            counts[kind + "_ok"] += int(r.ok)
            if r.ok:
                errs.append(math.hypot(r.x - x, r.y - y))
        counts["max_err_m_of_ok"] = max(errs) if errs else None
        counts["median_err_m_of_ok"] = float(np.median(errs)) if errs else None
        table[f"{alt:g}"] = counts
        print(f"{alt:g} m: {json.dumps(counts)}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
