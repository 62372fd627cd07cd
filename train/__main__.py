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
from pathlib import Path

from common.cli import run_main
from train.config import PRESETS, apply_overrides, from_dict, preset
from train.trainer import CHECKPOINT, TrainingInterrupted, train


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=PRESETS, default=None, help="named config (default sues200)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)")
    ap.add_argument("--run-dir", help="run folder (default from the preset)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int, help="distinct locations per step and process (the global batch "
                    "is this x the number of processes)")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--model", help="timm model name")
    ap.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # torchrun: only rank 0 logs progress
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    overrides = list(args.overrides)
    for flag, key in (("epochs", "optim.epochs"), ("batch_size", "optim.batch_size"), ("lr", "optim.lr"),
                      ("model", "model.name"), ("run_dir", "run_dir")):
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
