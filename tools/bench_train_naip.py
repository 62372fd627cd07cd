"""Ablation on the bundled NAIP imagery (CPU): frozen ImageNet vs InfoNCE variants, cross-year retrieval.

Trains ``tf_efficientnet_lite0`` (offline ImageNet weights) with the ``demo`` preset on drone views rendered
from 2010/2012/2014 against 2018 reference tiles, and evaluates on views rendered from the held-out years
2016 and 2020 (R@1, R@5, median ground error of the top-1 tile). Variants:

1. frozen ImageNet features (no training);
2. InfoNCE, random distinct-location batches;
3. + GPS-neighbour hard negatives;
4. + visual-similarity hard negatives re-mined after every epoch.

    nice -n 10 python -m tools.bench_train_naip --out runs/bench_train_naip --seeds 0 1 [--set optim.epochs=2 ...]

Training seeds change the weights' draws, the location subset and the batches; the evaluation queries
are fixed (``eval.seed``), so every row is measured on the same queries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from tiles.io import atomic_write_json, atomic_write_text
from train.config import apply_overrides, preset
from train.evaluate import evaluate_config
from train.model import GeoModel
from train.trainer import train

VARIANTS = {
    "InfoNCE, random batches": ["sampler.kind=random", "sampler.mining_every_epochs=0"],
    "+ GPS neighbours": ["sampler.kind=gps", "sampler.mining_every_epochs=0"],
    "+ similarity mining": ["sampler.kind=gps", "sampler.mining_every_epochs=1"],
}


def _row(name, ev, seconds):
    alts = {a: v["all"] for a, v in ev["per_altitude"].items()}
    return {"variant": name, "R@1": ev["all"]["R@1"], "R@5": ev["all"]["R@5"],
            "median_error_m": ev["all"]["median_error_m"], "per_altitude_R@1": {a: m["R@1"] for a, m in alts.items()},
            "train_seconds": seconds}


def _table(rows) -> str:
    lines = ["| variant | seed | R@1 | R@5 | median error (m) | R@1 150/200/250/300 m | train time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        per = " / ".join(f"{v:.1f}" for v in r["per_altitude_R@1"].values())
        lines.append(f"| {r['variant']} | {r.get('seed', '-')} | {r['R@1']:.1f} | {r['R@5']:.1f} | "
                     f"{r['median_error_m']:.0f} | {per} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def _summary(rows) -> str:
    """Mean and range of R@1 per variant over the seeds."""
    lines = ["| variant | seeds | R@1 mean | R@1 min..max | R@1 at 150 m mean |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        r1 = [r["R@1"] for r in mine]
        low = [next(iter(r["per_altitude_R@1"].values())) for r in mine]
        lines.append(f"| {name} | {len(mine)} | {sum(r1) / len(r1):.1f} | {min(r1):.1f}..{max(r1):.1f} | "
                     f"{sum(low) / len(low):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_train_naip"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--only", action="append", help="run only these variants (by name prefix)")
    ap.add_argument("--no-frozen", action="store_true", help="skip the frozen ImageNet row")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (the queries stay fixed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = apply_overrides(preset("demo"), args.overrides)
    torch.set_num_threads(base.threads or torch.get_num_threads())
    rows = []
    t0 = time.perf_counter()
    if not args.no_frozen:
        frozen = GeoModel(base.model.name, pretrained=base.model.pretrained, img_size=base.model.img_size)
        rows.append(_row("frozen ImageNet", evaluate_config(base, frozen), 0.0))
        logging.info("frozen: %s (%.0f s)", rows[-1], time.perf_counter() - t0)
    for seed in args.seeds:
        for name, extra in VARIANTS.items():
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            folder = args.out / f"{name.replace(' ', '_').replace(',', '')}_seed{seed}"
            cfg = apply_overrides(base, extra + [f"run_dir={folder}", f"seed={seed}"])
            t = time.perf_counter()
            run = train(cfg, overwrite=True, command=["python", "-m", "tools.bench_train_naip"])
            rows.append(_row(name, json.loads((run / "eval.json").read_text()), time.perf_counter() - t))
            rows[-1]["seed"] = seed
            logging.info("%s: %s", name, rows[-1])
            _write(args.out, rows, base)
    _write(args.out, rows, base)
    print(_table(rows))
    print()
    print(_summary(rows))
    return 0


def _write(out: Path, rows, base) -> None:
    result = {"rows": rows, "config": base.to_dict(), "machine": {
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "load_avg": os.getloadavg()}}
    atomic_write_json(out / "ablation.json", result)
    atomic_write_text(out / "ablation.md", _table(rows) + "\n\n" + _summary(rows) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
