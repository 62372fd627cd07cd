"""The parts a run is built from: the model with its weights resolved, the dataset, the two-view forward.

Everything here runs before the run folder exists, so a setting that cannot work (weights that cannot
be downloaded, missing data) fails in one line and leaves nothing behind (:class:`TrainSetupError`).
"""

from __future__ import annotations

import math

import torch

from train.config import TrainConfig
from train.model import GeoModel

OFFLINE_HINT = ("give local weights with --set model.pretrained=/path/to/weights.pth, or train offline with "
                "--model tf_efficientnet_lite0 --set model.pretrained=lite0-offline")


class TrainSetupError(ValueError):
    """A setting or input that stops the run before it starts (printed as one line)."""


def _pretrained_arg(value: str):
    return {"none": False, "false": False, "timm": True, "true": True}.get(value.lower(), value)


def build_model(cfg: TrainConfig) -> GeoModel:
    """The model with its weights resolved now (a download that cannot happen fails here, in one line)."""
    m = cfg.model
    pretrained = _pretrained_arg(m.pretrained)
    try:
        return GeoModel(m.name, pretrained=pretrained, img_size=m.img_size, grad_checkpointing=m.grad_checkpointing)
    except Exception as e:  # the hub's many connection errors (requests, huggingface_hub, OSError)
        if pretrained is True:
            first = str(e).splitlines()[0][:160] if str(e) else "no connection"
            raise TrainSetupError(f"cannot get the pretrained weights of {m.name!r} ({type(e).__name__}: {first}); "
                                  f"{OFFLINE_HINT}") from e
        if isinstance(e, (ValueError, FileNotFoundError, ImportError)):
            raise TrainSetupError(str(e)) from e
        raise


def check_inputs(cfg: TrainConfig) -> None:
    """The data the config names exists (cheap: runs before any weights are downloaded)."""
    from pathlib import Path

    d = cfg.data
    if d.kind in ("sues200", "university1652"):
        name = {"sues200": "SUES-200", "university1652": "University-1652"}[d.kind]
        if not d.root:
            raise TrainSetupError(f"data.root must name the {name} folder: --set data.root=/path/to/{name}")
        paths = [d.root]
    else:
        paths = [d.reference, *d.train_rasters, *d.eval_rasters] if d.reference else []
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise TrainSetupError(f"{missing[0]} does not exist (named in the config's data section): fix the path "
                              "with --set data.root=... / data.reference=... / data.train_rasters=...")
    if d.kind == "geotiff":
        check_held_out(d.train_rasters, d.eval_rasters)


def check_held_out(train_rasters, eval_rasters) -> None:
    """No evaluation raster is also a training raster (the same file, or a copy of it: same content), so
    the evaluation never measures images the model was trained on."""
    from pathlib import Path

    from tiles.io import file_sha256

    seen = {file_sha256(p): p for p in train_rasters}
    for p in eval_rasters:
        twin = seen.get(file_sha256(p))
        if twin is not None:
            same = "is" if Path(p).resolve() == Path(twin).resolve() else f"has the same content as {twin}, which is"
            raise TrainSetupError(f"data.eval_rasters: {p} {same} also a training raster (data.train_rasters): the "
                                  "evaluation would measure images the model was trained on; hold it out of one list")


def build_dataset(cfg: TrainConfig, preprocess, augment=None):
    from train.datasets import GeoTiffPairs, SUES200Pairs, University1652Pairs, ViewJitter

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


def has_training_batchnorm(model: torch.nn.Module, freeze_bn: bool) -> bool:
    bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return bn and not freeze_bn


class PairForward(torch.nn.Module):
    """``(drone, satellite) -> (drone features, satellite features)`` through one shared model.

    ``separate=True`` runs the views in two passes (the official model's way: BatchNorm normalises each
    view with its own batch statistics); ``False`` runs one pass over both (the same result when
    BatchNorm is frozen or absent, and one call)."""

    def __init__(self, model: GeoModel, separate: bool):
        super().__init__()
        self.model, self.separate = model, separate

    def forward(self, drone: torch.Tensor, sat: torch.Tensor):
        if self.separate:
            return self.model(drone), self.model(sat)
        return self.model(torch.cat([drone, sat])).chunk(2)


