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
are fixed (``eval.seed``), so every row is measured on the same queries. ``--resume`` keeps the rows of an
existing ``<out>/ablation.json`` made with the same configuration and trains only the (variant, seed) pairs
it lacks (and the frozen row only if it is missing), so an interrupted ablation completes without
retraining finished rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common import validate
from common.cli import options_parser, parse_options
from common.options import option, shared
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


def _comparable(value):
    """A config with every path reduced to its file name (a checkout moved elsewhere is the same run)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return Path(value).name if isinstance(value, str) and "/" in value else value


def _previous_rows(out: Path, base) -> list:
    """Rows of ``out/ablation.json`` (for ``--resume``); refuses a file made with another configuration."""
    path = out / "ablation.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    old, new = _comparable(saved.get("config", {})), _comparable(base.to_dict())
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise SystemExit(f"{path} was made with another configuration (differs in {diff}): pass the same "
                         "--set options as that run, or a new --out")
    return saved["rows"]


def _pending(rows, seeds, names) -> list:
    """(seed, variant) pairs of ``seeds`` x ``names`` that have no row yet, in running order."""
    done = {(r.get("seed"), r["variant"]) for r in rows}
    return [(seed, name) for seed in seeds for name in names if (seed, name) not in done]


def _ordered(rows) -> list:
    """Frozen row first, then by seed and the order of :data:`VARIANTS`."""
    rank = {name: i for i, name in enumerate(VARIANTS)}
    return sorted(rows, key=lambda r: (r.get("seed", -1), rank.get(r["variant"], -1)))


@dataclass
class Options:
    out: str = option("runs/bench_train_naip", "folder for ablation.json and the runs")
    set: list[str] = shared("set")
    only: list[str] | None = option(None, "run only these variants (by name prefix; repeatable)", append=True)
    frozen: bool = option(True, "include the frozen ImageNet row (--no-frozen: skip it)")
    seeds: list[int] = option([0], "training seeds (the queries stay fixed)", check=validate.int_rule(None))
    resume: bool = shared("resume")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__.split("\n")[0])


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options)
    args.out, args.overrides = Path(args.out), args.set
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = apply_overrides(preset("demo"), args.overrides)
    torch.set_num_threads(base.threads or torch.get_num_threads())
    rows = _previous_rows(args.out, base) if args.resume else []
    t0 = time.perf_counter()
    if not (not args.frozen) and not any(r["variant"] == "frozen ImageNet" for r in rows):
        frozen = GeoModel(base.model.name, pretrained=base.model.pretrained, img_size=base.model.img_size)
        rows.append(_row("frozen ImageNet", evaluate_config(base, frozen), 0.0))
        logging.info("frozen: %s (%.0f s)", rows[-1], time.perf_counter() - t0)
    names = [n for n in VARIANTS if not args.only or any(n.startswith(o) for o in args.only)]
    for seed, name in _pending(rows, args.seeds, names):
        extra = VARIANTS[name]
        folder = args.out / f"{name.replace(' ', '_').replace(',', '')}_seed{seed}"
        cfg = apply_overrides(base, extra + [f"run_dir={folder}", f"seed={seed}"])
        t = time.perf_counter()
        run = train(cfg, overwrite=True, command=["python", "-m", "tools.bench_train_naip"])
        rows.append(_row(name, json.loads((run / "eval.json").read_text()), time.perf_counter() - t))
        rows[-1].update(seed=seed, load_avg=os.getloadavg())  # the machine is shared: its load per row
        logging.info("%s: %s", name, rows[-1])
        _write(args.out, rows, base)
    rows = _ordered(rows)
    _write(args.out, rows, base)
    print(_table(rows))
    print()
    print(_summary(rows))
    return 0


def _write(out: Path, rows, base) -> None:
    rows = _ordered(rows)
    result = {"rows": rows, "config": base.to_dict(), "machine": {
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "load_avg": os.getloadavg()}}
    atomic_write_json(out / "ablation.json", result)
    atomic_write_text(out / "ablation.md", _table(rows) + "\n\n" + _summary(rows) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
