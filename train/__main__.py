"""``python -m train``: train a Sample4Geo model (``torchrun --nproc_per_node=N -m train ...`` for DDP).

Examples::

    python -m train --preset sues200 --set data.root=/data/SUES-200-512x512 --set data.altitudes_m=150
    python -m train --preset geotiff --set data.reference=map2022.tif --set data.train_rasters=a.tif,b.tif \\
        --set data.eval_rasters=c.tif --run-dir runs/myarea
    python -m train --preset demo            # CPU-sized, bundled NAIP imagery
    python -m train --run-dir runs/demo --resume

``--batch-size`` is per process: the global batch (the distinct locations the loss compares per step)
is it times the number of processes. Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint
and exits with status 130; ``--resume`` continues exactly there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common import validate
from common.cli import add_dataclass_options, run_main, with_defaults
from common.options import option, shared
from train.config import PRESETS, apply_overrides, from_dict, preset
from train.trainer import CHECKPOINT, TrainingInterrupted, train


@dataclass
class TrainOptions:
    """The options of ``python -m train``; everything else is ``--set section.key=value`` on the config tree."""

    preset: str | None = shared("preset")
    set: list[str] = shared("set")
    run_dir: str | None = option(None, "run folder (default from the preset)")
    epochs: int | None = option(None, "optim.epochs", check=validate.int_rule(1))
    batch_size: int | None = shared("batch_size")
    lr: float | None = option(None, "optim.lr", check=validate.positive_rule())
    model_name: str | None = shared("model_name")
    resume: bool = shared("resume")
    overwrite: bool = shared("overwrite")
    print_config: bool = option(False, "print the resolved config and exit")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0])
    add_dataclass_options(ap, TrainOptions)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = with_defaults(ap.parse_args(argv), TrainOptions)
    if args.preset is not None and args.preset not in PRESETS:
        ap.error(f"--preset {args.preset!r} is not one of {', '.join(PRESETS)}")
    rank = int(os.environ.get("RANK", "0"))  # torchrun: only rank 0 logs progress
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    overrides = list(args.set)
    for flag, key in (("epochs", "optim.epochs"), ("batch_size", "optim.batch_size"), ("lr", "optim.lr"),
                      ("model_name", "model.name"), ("run_dir", "run_dir")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={json.dumps(getattr(args, flag))}")
    if args.resume and args.preset is None and args.run_dir:
        saved = Path(args.run_dir) / "config.json"
        if not saved.is_file():
            ap.error(f"--resume: {saved} not found; is {args.run_dir} a run folder?")
        cfg = from_dict(json.loads(saved.read_text()))
    else:
        cfg = preset(args.preset or "sues200")
    try:
        cfg = apply_overrides(cfg, overrides)
    except ValueError as e:
        ap.error(str(e))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    return run_main(_train, cfg, args, argv, logger_name="train")


def _train(cfg, args, argv) -> int:
    try:
        run_dir = train(cfg, resume=args.resume, overwrite=args.overwrite, command=["python", "-m", "train", *argv])
    except TrainingInterrupted as e:
        logging.getLogger("train").warning("%s", e)
        return 130
    logging.getLogger("train").info("done: %s", run_dir / CHECKPOINT)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
