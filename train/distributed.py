"""Processes and randomness: the process group (with a long timeout), seeds per rank and worker, AMP.

Seeds: the model is built with ``cfg.seed`` on every rank (DDP also broadcasts rank 0's weights); then
every rank re-seeds its own random streams from ``(seed, rank)`` (:func:`seed_process`) and its
DataLoader from ``(seed, epoch, rank)`` (:func:`loader_seed`; workers add their id), so no two ranks or
workers draw the same augmentation and pose jitter. Batch plans stay identical on every rank: the
samplers use their own generator seeded from ``(seed, epoch)``.

Evaluation and mining run on rank 0 while the other ranks wait, at a barrier or in the broadcast of the
mined lists; a full University-1652 evaluation takes longer than NCCL's default watchdog (10 minutes
in some versions), so the process group is created with ``cfg.dist_timeout_min``.
"""

from __future__ import annotations

import datetime
import logging
import os
import random

import numpy as np
import torch
import torch.distributed as dist

_logger = logging.getLogger(__name__)


def setup_distributed(cfg) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=cfg.dist_timeout_min))
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if cfg.device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
    else:
        device = torch.device(cfg.device)
    return rank, world, device


def barrier(world: int) -> None:
    """All ranks wait here (rank 0's evaluation may take long: the group's timeout is long)."""
    if world > 1:
        dist.barrier()


def any_rank(flag: bool, world: int) -> bool:
    """True when ``flag`` is true on any rank (so every rank stops at the same step)."""
    if world == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _mix(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def seed_process(seed: int, rank: int = 0) -> None:
    """Seed torch, numpy and random from ``(seed, rank)``: every rank its own augmentation stream."""
    s = _mix(seed, rank, 0xA06)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def loader_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The DataLoader generator's seed for one epoch on one rank (workers add their id to it)."""
    return _mix(seed, epoch, rank, 0x10AD)


def amp_settings(mode: str, device: torch.device) -> tuple[bool, torch.dtype | None]:
    if device.type != "cuda" or mode == "off":
        if mode in ("fp16", "bf16") and device.type != "cuda":
            _logger.warning("optim.amp=%s needs a CUDA device; training in fp32 on %s", mode, device)
        return False, None
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return True, torch.bfloat16 if mode == "bf16" else torch.float16
