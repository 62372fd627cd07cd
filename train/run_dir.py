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

from common.cli import UserError, one_line
from tiles.io import atomic_write_json

_logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class RunExistsError(UserError, FileExistsError):
    """The run folder already holds a run."""


class ResumeError(UserError, ValueError):
    """``--resume`` of a run folder that holds no readable checkpoint (nothing in the folder is touched)."""


# what a checkpoint a run resumes from must hold (trainer.save writes them, trainer.restore reads them)
CHECKPOINT_KEYS = ("state_dict", "optimizer", "scheduler", "scaler", "sampler", "rng", "epoch", "step")


def read_checkpoint(path: Path, *, mmap: bool = False) -> dict:
    """The run's checkpoint, or a :class:`ResumeError` naming the file and the fix when it is missing,
    unreadable (cut short, not a checkpoint) or lacks what a resume needs."""
    fix = "restore it from a copy, or start the run again without --resume (--overwrite replaces the folder)"
    if not path.is_file():
        raise ResumeError(f"cannot resume: {path} does not exist (the run stopped before its first checkpoint); "
                          "start the run again without --resume (--overwrite replaces the folder)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # pickle, zip and torch errors alike: the file is not a checkpoint
        raise ResumeError(f"cannot resume: {path} is not a readable checkpoint ({type(e).__name__}: "
                          f"{one_line(e)}); {fix}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ResumeError(f"cannot resume: {path} lacks {', '.join(missing)} (not a checkpoint of python -m train); "
                          f"{fix}")
    return ckpt


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Make ``run_dir`` ready; returns True when the run continues from its checkpoint.

    ``resume`` needs a readable checkpoint (:func:`read_checkpoint`): without one it is refused before
    anything in the folder changes (its metrics and logs stay). Without ``resume``, a folder whose run
    never wrote a checkpoint (stopped or failed before its first one) holds nothing worth keeping: it is
    cleared and reused.
    """
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    has_checkpoint = (run_dir / CHECKPOINT).is_file()
    if resume:
        if not (run_dir / "config.json").is_file():
            raise ResumeError(f"cannot resume: {run_dir} is not a run folder (no config.json); start without --resume")
        read_checkpoint(run_dir / CHECKPOINT, mmap=True)  # readable, with what a resume needs
        return True
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
