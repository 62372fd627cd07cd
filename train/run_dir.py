"""The run folder: refuse to clobber a run, reuse one that never saved anything, write the run's files.

A run folder holds ``config.json``, ``command.txt``, ``metrics.jsonl``, ``train.log``, TensorBoard events
(when ``tensorboard`` is installed), ``checkpoint.pt`` and, when the run has ended, ``DONE``.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from tiles.io import atomic_write_json

_logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class RunExistsError(FileExistsError):
    """The run folder already holds a run."""


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Make ``run_dir`` ready; returns True when the run continues from its checkpoint.

    A folder whose run never wrote a checkpoint (stopped or failed before its first one) holds nothing
    worth keeping: it is cleared and reused, with or without ``resume``.
    """
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    has_checkpoint = (run_dir / CHECKPOINT).is_file()
    if resume:
        if has_checkpoint:
            return True
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir} is not a run folder (no config.json); "
                                    "start without --resume")
        _logger.warning("%s holds no checkpoint yet (the run stopped before its first one): starting over",
                        run_dir)
    taken = run_dir.exists() and any(run_dir.iterdir())
    if taken and has_checkpoint and not overwrite:
        raise RunExistsError(f"run folder {run_dir} already holds a run; pass --resume to continue it, "
                             "--overwrite to replace it, or choose another --run-dir")
    if taken:
        if not has_checkpoint:
            _logger.warning("reusing %s: its run never wrote a checkpoint", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return False


def write_run_files(run_dir: Path, config: dict, command: str, resumed: bool) -> logging.Handler:
    """``config.json``, a line of ``command.txt`` and the ``train.log`` handler (returned, to remove)."""
    atomic_write_json(run_dir / "config.json", config)
    with open(run_dir / "command.txt", "a") as f:
        f.write(("resume: " if resumed else "") + command + "\n")
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logging.getLogger("train").addHandler(handler)
    return handler


def tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
