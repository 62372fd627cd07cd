"""The training loop: AdamW, warmup + cosine per batch, AMP, clipping by norm, DDP, exact resume.

``train(cfg) -> run_dir``, in named steps: :func:`build_run` (weights, data, sampler, optimiser: every
check that can fail runs before the run folder is created), :func:`restore` (from ``checkpoint.pt``),
:func:`train_one_epoch`, :func:`end_of_epoch` (mining, evaluation, checkpoint, metrics) and
:func:`finish` (the final evaluation and ``DONE``). The run folder's files are in :mod:`train.run_dir`.

Checkpoints (docs/CONTRACTS.md section 5) are written atomically at the end of every epoch, every
``optim.checkpoint_every_steps`` steps, when a run stops early (``stop_at_step``), and on SIGINT/SIGTERM
(the first signal finishes the current step, saves and stops; a second one aborts at once). Resume is
exact with ``num_workers=0``, also inside an epoch (model, optimiser, scheduler, scaler, sampler position
and every RNG restored); with worker processes the sample order is exact and only the augmentation draws
of the interrupted epoch differ. An existing run folder is never reused silently: pass ``resume=True``
(``--resume``) or ``overwrite=True`` (``--overwrite``); a folder whose run never wrote a checkpoint is
reused.

Multi-GPU: ``torchrun --nproc_per_node=N -m train ...``; ``optim.batch_size`` is per process, each rank
takes its slice of every global batch and the loss gathers the features of all ranks (see
:mod:`train.distributed` for seeds and timeouts).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from tiles.io import atomic_write_json, atomic_write_text
from train.augment import PairAugment
from train.build import (
    PairForward,
    TrainSetupError,
    build_dataset,
    build_model,
    check_inputs,
    has_training_batchnorm,
    lr_lambda,
)
from train.config import TrainConfig, validate
from train.distributed import amp_settings, any_rank, barrier, loader_seed, seed_process, setup_distributed
from train.loss import InfoNCELoss
from train.mining import mine_neighbours, neighbour_geometry
from train.model import GeoModel, save_checkpoint
from train.run_dir import (
    CHECKPOINT,
    RunExistsError,
    prepare_run_dir,
    read_checkpoint,
    rng_state,
    set_rng_state,
    tensorboard,
    write_run_files,
)
from train.samplers import build_sampler


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped the run after it wrote a checkpoint."""


__all__ = ["CHECKPOINT", "RunExistsError", "TrainSetupError", "TrainingInterrupted", "train", "build_run"]

_logger = logging.getLogger(__name__)

# ---- one run -------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one training run holds; :func:`build_run` makes it."""

    cfg: TrainConfig
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    model: GeoModel
    dataset: object
    sampler: object
    steps_per_epoch: int
    total_steps: int
    loader: object = None
    loader_gen: torch.Generator = field(default_factory=torch.Generator)
    pair: torch.nn.Module = None
    optimizer: torch.optim.Optimizer = None
    scheduler: object = None
    scaler: object = None
    loss_fn: InfoNCELoss = None
    use_amp: bool = False
    amp_dtype: torch.dtype | None = None
    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    writer: object = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def build_run(cfg: TrainConfig, run_dir: Path | None = None) -> Run:
    """Weights, data, sampler, loader and optimiser; raises :class:`TrainSetupError` before any file exists."""
    validate(cfg)
    check_inputs(cfg)
    rank, world, device = setup_distributed(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_process(cfg.seed, 0)  # the same initial weights on every rank
    model = build_model(cfg).to(device)
    seed_process(cfg.seed, rank)  # from here every rank draws its own augmentation and jitter
    try:
        dataset = build_dataset(cfg, model.preprocess, PairAugment(cfg.augment) if cfg.augment.enabled else None)
        s = cfg.sampler
        geo = neighbour_geometry(dataset, cfg)
        sampler = build_sampler(s.kind, dataset.locations, cfg.optim.batch_size, xy_m=dataset.xy_m,
                                neighbour_select=s.neighbour_select, neighbour_range=s.neighbour_range,
                                neighbour_radius_m=s.neighbour_radius_m, seed=cfg.seed, groups=geo.get("groups"),
                                footprint_m=geo.get("footprint_m"), max_overlap=geo.get("max_overlap"))
    except (ValueError, FileNotFoundError) as e:
        raise TrainSetupError(str(e)) from e
    steps = len(sampler)
    total = steps * cfg.optim.epochs
    total = min(total, cfg.optim.max_steps) if cfg.optim.max_steps else total
    run = Run(cfg, Path(run_dir or cfg.run_dir), rank, world, device, model, dataset, sampler, steps, total)
    _build_optimisation(run)
    return run


def _build_optimisation(run: Run) -> None:
    cfg, model = run.cfg, run.model
    # the loader draws its worker base seed from its own generator (re-seeded per epoch and rank), never
    # from the global RNG, so a resumed epoch sees the same random stream as an uninterrupted one
    run.loader = torch.utils.data.DataLoader(run.dataset, batch_sampler=run.sampler, num_workers=cfg.data.num_workers,
                                             pin_memory=run.device.type == "cuda", generator=run.loader_gen,
                                             worker_init_fn=_worker_ignores_ctrl_c if cfg.data.num_workers else None)
    separate = cfg.model.separate_view_passes
    if separate is None:
        separate = has_training_batchnorm(model, cfg.model.freeze_bn)
    run.pair = PairForward(model, bool(separate))
    if run.world > 1:
        run.pair = torch.nn.parallel.DistributedDataParallel(
            run.pair, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    warmup = int(round(cfg.optim.warmup_epochs * run.steps_per_epoch))
    run.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda st: lr_lambda(st, warmup, run.total_steps))
    run.use_amp, run.amp_dtype = amp_settings(cfg.optim.amp, run.device)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.use_amp and run.amp_dtype == torch.float16)
    run.loss_fn = InfoNCELoss(cfg.optim.label_smoothing)


def restore(run: Run) -> None:
    """Continue from ``checkpoint.pt``: weights, optimiser, scheduler, scaler, sampler position, RNG."""
    ckpt = read_checkpoint(run.run_dir / CHECKPOINT)
    run.model.load_state_dict(ckpt["state_dict"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.sampler.load_state_dict(ckpt["sampler"])
    rng = ckpt["rng"]
    set_rng_state(rng[run.rank] if isinstance(rng, list) and run.rank < len(rng) else rng)
    run.epoch, run.step = ckpt["epoch"], ckpt["step"]
    run.batch_in_epoch = ckpt["sampler"].get("start_batch", 0)
    _logger.info("resumed %s at epoch %d, step %d (batch %d of the epoch)", run.run_dir, run.epoch, run.step,
                 run.batch_in_epoch)


def save(run: Run) -> None:
    """Write ``checkpoint.pt`` (rank 0; every rank's RNG state goes in, so each resumes its own stream)."""
    states = [rng_state()]
    if run.world > 1:
        states = [None] * run.world
        dist.all_gather_object(states, rng_state())
    if not run.main:
        return
    sampler_state = run.sampler.state_dict()
    sampler_state.update(epoch=run.epoch, start_batch=run.batch_in_epoch)
    save_checkpoint(run.run_dir / CHECKPOINT, run.model, config=run.cfg.to_dict(), epoch=run.epoch, step=run.step,
                    optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                    scaler=run.scaler.state_dict(), sampler=sampler_state,
                    rng=states if run.world > 1 else states[0])


# ---- the loop ------------------------------------------------------------------------------------------


class StopSignals:
    """While active, the first SIGINT/SIGTERM asks the loop to stop after its step (a second one aborts)."""

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _logger.warning("%s: stopping after this step and writing a checkpoint (again to abort now)",
                        signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _train_step(run: Run, drone: torch.Tensor, sat: torch.Tensor) -> float:
    cfg, device = run.cfg, run.device
    drone, sat = drone.to(device, non_blocking=True), sat.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        f_drone, f_sat = run.pair(drone, sat)
        loss = run.loss_fn(f_drone, f_sat, run.model.logit_scale)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.optim.clip_grad_norm:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.step += 1
    run.batch_in_epoch += 1
    return loss.item()


def _set_train_mode(run: Run) -> None:
    run.pair.train()
    if run.cfg.model.freeze_bn:
        for m in run.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def train_one_epoch(run: Run, stop_at_step: int | None, signals: StopSignals) -> tuple[dict, bool, bool]:
    """Train from the sampler's position to the epoch's end or a stop.

    Returns (metrics record, stopped, epoch completed). An epoch's length is the sampler's plan for that
    epoch (distinct-location batching may give one epoch a batch fewer than another)."""
    from common.progress import progress_bar

    cfg = run.cfg
    run.sampler.set_epoch(run.epoch, run.batch_in_epoch)
    run.loader_gen.manual_seed(loader_seed(cfg.seed, run.epoch, run.rank))
    _set_train_mode(run)
    t0, seen, losses, stopped = time.perf_counter(), 0, [], False
    bar = progress_bar(run.loader, total=len(run.sampler), desc=f"epoch {run.epoch + 1}/{cfg.optim.epochs}",
                       enabled=run.main, leave=False)
    for drone, sat, _ in bar:
        losses.append(_train_step(run, drone, sat))
        seen += 2 * drone.shape[0] * run.world
        if run.main and run.step % cfg.log_every == 0:
            _logger.info("step %d loss %.4f lr %.2e scale %.2f", run.step, losses[-1],
                         run.scheduler.get_last_lr()[0], run.model.logit_scale.exp().item())
            if run.writer:
                run.writer.add_scalar("train/loss", losses[-1], run.step)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)  # shown at the next write (rare in a log)
        stopped = (run.step >= run.total_steps or (stop_at_step is not None and run.step >= stop_at_step)
                   or any_rank(signals.requested, run.world))
        if stopped:
            break
        every = cfg.optim.checkpoint_every_steps
        if every and run.step % every == 0 and run.batch_in_epoch < len(run.sampler.global_batches()):
            save(run)
    elapsed = time.perf_counter() - t0
    completed = not stopped or run.batch_in_epoch >= len(run.sampler.global_batches())
    record = {"epoch": run.epoch, "step": run.step, "loss": sum(losses) / max(1, len(losses)),
              "images_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed, "lr": run.scheduler.get_last_lr()[0],
              "temperature": 1.0 / run.model.logit_scale.exp().item()}
    return record, stopped, completed


def end_of_epoch(run: Run, record: dict, completed: bool) -> None:
    """After an epoch (or a stop): mining and evaluation when due, then the checkpoint and the metrics line."""
    cfg, s = run.cfg, run.cfg.sampler
    if completed:
        run.epoch, run.batch_in_epoch = run.epoch + 1, 0
        record["epoch"] = run.epoch
        more = run.epoch < cfg.optim.epochs and run.step < run.total_steps
        if s.mining_every_epochs and run.epoch % s.mining_every_epochs == 0 and more:
            nb = mine_neighbours(run.model, run.dataset, cfg, run.device, run.epoch) if run.main else None
            if run.world > 1:
                holder = [nb]
                dist.broadcast_object_list(holder, src=0)  # the other ranks wait here (long group timeout)
                nb = holder[0]
            run.sampler.set_neighbours(nb, source="similarity")
            record["mined"] = "similarity"
        if cfg.eval.every_epochs and run.epoch % cfg.eval.every_epochs == 0 and more:
            if run.main:
                from train.evaluate import evaluate_config

                record["eval"] = evaluate_config(cfg, run.model, run.device)
            barrier(run.world)
    save(run)
    if run.main:
        with open(run.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        _logger.info("epoch %s: loss %.4f, %.1f images/s", record["epoch"], record["loss"], record["images_per_s"])


def finish(run: Run) -> None:
    """The final evaluation (``eval.json``) and ``DONE``, on rank 0."""
    cfg = run.cfg
    if run.main and cfg.eval.every_epochs >= 0:
        if _has_eval_data(cfg):
            from train.evaluate import evaluate_config

            results = evaluate_config(cfg, run.model, run.device)
            atomic_write_json(run.run_dir / "eval.json", json.loads(json.dumps(results, default=float)))
        atomic_write_text(run.run_dir / "DONE", f"step {run.step}\n")
    barrier(run.world)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, command: list[str] | None = None,
          stop_at_step: int | None = None) -> Path:
    """Train with ``cfg``; returns the run folder (final model in ``run_dir / "checkpoint.pt"``).

    ``stop_at_step`` ends the run (checkpointed, resumable) after that global step without changing the
    schedule: for jobs cut into time slices. Raises :class:`TrainSetupError` (nothing written) for a
    setting or input that cannot work, :class:`TrainingInterrupted` after SIGINT/SIGTERM (checkpointed).
    """
    run = build_run(cfg)
    handler = None
    if run.main:
        resume = prepare_run_dir(run.run_dir, resume, overwrite)
        handler = write_run_files(run.run_dir, cfg.to_dict(), " ".join(command if command is not None else sys.argv),
                                  resume)
    resume = any_rank(resume, run.world)
    barrier(run.world)
    try:
        if resume:
            restore(run)
        run.writer = tensorboard(run.run_dir) if run.main else None
        _logger.info("training %s on %s: %d samples, %d locations, %d steps/epoch x %d epochs (%d steps), global "
                     "batch %d (%d per process x %d), views in %s, amp %s", cfg.model.name, run.device,
                     len(run.dataset), run.dataset.n_locations, run.steps_per_epoch, cfg.optim.epochs,
                     run.total_steps, cfg.optim.batch_size * run.world, cfg.optim.batch_size, run.world,
                     "separate passes" if _unwrap(run.pair).separate else "one pass",
                     run.amp_dtype if run.use_amp else "off")
        _loop(run, stop_at_step)
    finally:
        if run.writer:
            run.writer.close()
        if handler is not None:
            logging.getLogger("train").removeHandler(handler)
            handler.close()
    return run.run_dir


def _loop(run: Run, stop_at_step: int | None) -> None:
    with StopSignals() as signals:
        stopped = False
        while run.epoch < run.cfg.optim.epochs and run.step < run.total_steps and not stopped:
            record, stopped, completed = train_one_epoch(run, stop_at_step, signals)
            end_of_epoch(run, record, completed)
        if signals.requested:
            raise TrainingInterrupted(f"interrupted at step {run.step}; checkpoint written. Continue with: "
                                      f"python -m train --run-dir {run.run_dir} --resume")
    if run.step >= run.total_steps or run.epoch >= run.cfg.optim.epochs:
        finish(run)


def _worker_ignores_ctrl_c(_worker_id: int) -> None:
    """Ctrl-C in a terminal (and a job scheduler's SIGTERM to the process group) reach the DataLoader
    workers too: they leave it to the main process, which finishes its step, saves and ends them (a worker
    that died of it would fail that step instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def _has_eval_data(cfg: TrainConfig) -> bool:
    if cfg.data.kind == "geotiff":
        return bool(cfg.data.eval_rasters)
    return bool(cfg.data.root)
