"""The training loop: AdamW, warmup + cosine per batch, AMP, clipping by norm, DDP, exact resume.

``train(cfg) -> run_dir``. The run folder holds ``config.json`` (the resolved config), ``command.txt``,
``metrics.jsonl`` (one JSON line per epoch), ``train.log``, TensorBoard events when ``tensorboard`` is
installed, and ``checkpoint.pt``: written atomically at the end of every epoch (and when a run stops
early), resumable, and the final model when the run ends (docs/CONTRACTS.md section 5). An existing run
folder is never reused silently: pass ``resume=True`` (``--resume``) or ``overwrite=True``
(``--overwrite``).

Multi-GPU: ``torchrun --nproc_per_node=N -m train ...``; each rank takes its slice of every global batch
and the loss gathers the features of all ranks. Resume is exact with ``num_workers=0`` (model, optimiser,
scheduler, scaler, sampler position and every RNG restored); with worker processes the sample order is
exact and only the augmentation draws of the interrupted epoch differ.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tiles.io import atomic_write_json, atomic_write_text

from .augment import PairAugment
from .config import TrainConfig, validate
from .loss import InfoNCELoss
from .model import GeoModel, save_checkpoint
from .samplers import build_sampler, mine_similar_neighbours

_logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class RunExistsError(FileExistsError):
    """The run folder already holds a run."""


# ---- setup -----------------------------------------------------------------------------------------


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend)
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


def _amp(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype | None]:
    mode = cfg.optim.amp
    if device.type != "cuda" or mode == "off":
        if mode in ("fp16", "bf16") and device.type != "cuda":
            _logger.warning("optim.amp=%s needs a CUDA device; training in fp32 on %s", mode, device)
        return False, None
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return True, torch.bfloat16 if mode == "bf16" else torch.float16


def _pretrained_arg(value: str):
    return {"none": False, "false": False, "timm": True, "true": True}.get(value.lower(), value)


def build_dataset(cfg: TrainConfig, preprocess, augment=None):
    from .datasets import GeoTiffPairs, SUES200Pairs, University1652Pairs, ViewJitter

    d = cfg.data
    if d.kind == "sues200":
        if not d.root:
            raise ValueError("data.root must name the SUES-200 folder: --set data.root=/path/to/SUES-200-512x512")
        return SUES200Pairs(d.root, preprocess, altitudes=d.altitudes_m, augment=augment)
    if d.kind == "university1652":
        if not d.root:
            raise ValueError("data.root must name the University-1652 folder: --set data.root=/path/University-Release")
        return University1652Pairs(d.root, preprocess, augment=augment)
    if not d.reference or not d.train_rasters:
        raise ValueError("GeoTIFF training needs data.reference (the map) and data.train_rasters (other "
                         "years/seasons of the area), e.g. --set data.reference=map.tif "
                         "--set data.train_rasters=2019.tif,2021.tif")
    j = d.jitter
    return GeoTiffPairs(d.reference, d.train_rasters, d.altitudes_m or [150, 200, 250, 300], d.hfov_deg, preprocess,
                        stride_frac=d.stride_frac, augment=augment, seed=cfg.seed, max_locations=d.max_locations,
                        jitter=ViewJitter(j.offset_frac, j.heading_deg, j.tilt_deg, j.altitude_frac, j.photometric,
                                          j.compass_error_deg))


def lr_lambda(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then cosine to 0 at ``total_steps`` (a multiplier of the base lr)."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    taken = run_dir.exists() and any(run_dir.iterdir())
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    if resume:
        if not (run_dir / CHECKPOINT).is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir / CHECKPOINT} does not exist (start without --resume)")
        return
    if taken:
        if not overwrite:
            raise RunExistsError(f"run folder {run_dir} already holds a run; pass --resume to continue it, "
                                 "--overwrite to replace it, or choose another --run-dir")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


# ---- mining -----------------------------------------------------------------------------------------


@torch.no_grad()
def mine_neighbours(model, dataset, k: int, batch_size: int, device) -> list[np.ndarray]:
    """Embed one (drone, satellite) pair per location and mine each location's ``k`` hardest references."""
    from .evaluate import embed_images

    reps = dataset.representatives()
    pairs = [dataset.load_pair(int(i)) for i in reps]
    q = embed_images(model, [p[0] for p in pairs], batch_size, device)
    r = embed_images(model, [p[1] for p in pairs], batch_size, device)
    return mine_similar_neighbours(q, r, k)


# ---- the loop ---------------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, command: list[str] | None = None,
          stop_at_step: int | None = None) -> Path:
    """Train with ``cfg``; returns the run folder (final model in ``run_dir / "checkpoint.pt"``).

    ``stop_at_step`` ends the run (checkpointed, resumable) after that global step without changing the
    schedule: for jobs cut into time slices.
    """
    validate(cfg)
    run_dir = Path(cfg.run_dir)
    rank, world, device = _setup_distributed(cfg)
    main = rank == 0
    if main:
        prepare_run_dir(run_dir, resume, overwrite)
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
        cmd = " ".join(command if command is not None else sys.argv)
        with open(run_dir / "command.txt", "a") as f:
            f.write(("resume: " if resume else "") + cmd + "\n")
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logging.getLogger("train").addHandler(handler)
    if world > 1:
        dist.barrier()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    model = GeoModel(cfg.model.name, pretrained=_pretrained_arg(cfg.model.pretrained), img_size=cfg.model.img_size,
                     grad_checkpointing=cfg.model.grad_checkpointing).to(device)
    augment = PairAugment(cfg.augment) if cfg.augment.enabled else None
    dataset = build_dataset(cfg, model.preprocess, augment)
    s = cfg.sampler
    sampler = build_sampler(s.kind, dataset.locations, cfg.optim.batch_size, xy_m=dataset.xy_m,
                            neighbour_select=s.neighbour_select, neighbour_range=s.neighbour_range,
                            neighbour_radius_m=s.neighbour_radius_m, seed=cfg.seed)
    # the loader draws its worker base seed from its own generator (re-seeded per epoch), never from the
    # global RNG, so a resumed epoch sees the same random stream as an uninterrupted one
    loader_gen = torch.Generator()
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                         pin_memory=device.type == "cuda", generator=loader_gen)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * cfg.optim.epochs
    if cfg.optim.max_steps:
        total_steps = min(total_steps, cfg.optim.max_steps)
    warmup_steps = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda st: lr_lambda(st, warmup_steps, total_steps))
    use_amp, amp_dtype = _amp(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    loss_fn = InfoNCELoss(cfg.optim.label_smoothing)

    epoch, step, batch_in_epoch = 0, 0, 0
    if resume:
        ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        sampler.load_state_dict(ckpt["sampler"])
        _set_rng_state(ckpt["rng"])
        epoch, step = ckpt["epoch"], ckpt["step"]
        batch_in_epoch = ckpt["sampler"].get("start_batch", 0)
        _logger.info("resumed %s at epoch %d, step %d", run_dir, epoch, step)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = _tensorboard(run_dir) if main else None

    def checkpoint(epoch_: int, start_batch: int) -> None:
        if not main:
            return
        sampler_state = sampler.state_dict()
        sampler_state.update(epoch=epoch_, start_batch=start_batch)
        save_checkpoint(run_dir / CHECKPOINT, model, config=cfg.to_dict(), epoch=epoch_, step=step,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict(), sampler=sampler_state, rng=_rng_state())

    _logger.info("training %s on %s: %d samples, %d locations, %d steps/epoch x %d epochs (%d steps), "
                 "world %d, amp %s", cfg.model.name, device, len(dataset), dataset.n_locations, steps_per_epoch,
                 cfg.optim.epochs, total_steps, world, amp_dtype if use_amp else "off")
    stopped = False
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x
    while epoch < cfg.optim.epochs and step < total_steps and not stopped:
        sampler.set_epoch(epoch, batch_in_epoch)
        loader_gen.manual_seed(cfg.seed * 100_003 + epoch)
        ddp_model.train()
        if cfg.model.freeze_bn:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        t0, seen, loss_sum, n_loss = time.perf_counter(), 0, 0.0, 0
        bar = tqdm(loader, total=len(sampler), desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=not main,
                   leave=False)
        for drone, sat, _ in bar:
            drone, sat = drone.to(device, non_blocking=True), sat.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                # one pass over both views: one set of BatchNorm statistics for the pair batch
                feats = ddp_model(torch.cat([drone, sat]))
                loss = loss_fn(*feats.chunk(2), model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            batch_in_epoch += 1
            seen += 2 * drone.shape[0] * world
            loss_sum += loss.item()
            n_loss += 1
            if main and step % cfg.log_every == 0:
                _logger.info("step %d loss %.4f lr %.2e scale %.2f", step, loss.item(), scheduler.get_last_lr()[0],
                             model.logit_scale.exp().item())
                if writer:
                    writer.add_scalar("train/loss", loss.item(), step)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= total_steps or (stop_at_step is not None and step >= stop_at_step):
                stopped = True
                break
        elapsed = time.perf_counter() - t0
        epoch_done = not stopped or batch_in_epoch >= steps_per_epoch
        record = {"epoch": epoch + 1 if epoch_done else epoch, "step": step, "loss": loss_sum / max(1, n_loss),
                  "images_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed,
                  "lr": scheduler.get_last_lr()[0], "temperature": 1.0 / model.logit_scale.exp().item()}
        if epoch_done:
            epoch, batch_in_epoch = epoch + 1, 0
            if s.mining_every_epochs and epoch % s.mining_every_epochs == 0 and epoch < cfg.optim.epochs:
                nb = mine_neighbours(model, dataset, s.neighbour_range, cfg.eval.batch_size, device) if main else None
                if world > 1:
                    holder = [nb]
                    dist.broadcast_object_list(holder, src=0)
                    nb = holder[0]
                sampler.set_neighbours(nb, source="similarity")
                record["mined"] = "similarity"
            if main and cfg.eval.every_epochs and epoch % cfg.eval.every_epochs == 0 and epoch < cfg.optim.epochs:
                from .evaluate import evaluate_config

                record["eval"] = evaluate_config(cfg, model, device)
        checkpoint(epoch, batch_in_epoch)
        if main:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record, default=float) + "\n")
            _logger.info("epoch %s: loss %.4f, %.1f images/s", record["epoch"], record["loss"],
                         record["images_per_s"])
    finished = step >= total_steps or epoch >= cfg.optim.epochs
    if main and finished and cfg.eval.every_epochs >= 0:
        from .evaluate import evaluate_config

        if _has_eval_data(cfg):
            results = evaluate_config(cfg, model, device)
            atomic_write_json(run_dir / "eval.json", json.loads(json.dumps(results, default=float)))
        atomic_write_text(run_dir / "DONE", f"step {step}\n")
    if writer:
        writer.close()
    if world > 1:
        dist.barrier()
    return run_dir


def _has_eval_data(cfg: TrainConfig) -> bool:
    if cfg.data.kind == "geotiff":
        return bool(cfg.data.eval_rasters)
    return bool(cfg.data.root)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))
