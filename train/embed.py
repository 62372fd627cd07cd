"""The model's embeddings of images, with its own preprocessing (evaluation and mining)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def embed_images(model, images, batch_size: int = 64, device="cpu", bar=None) -> np.ndarray:
    """Embed RGB uint8 arrays or image paths with the model's own preprocessing -> float32 (N, D); ``bar``
    (:func:`common.progress.progress_bar`) is advanced by each batch's images."""
    from train.datasets import read_image

    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        chunk = [read_image(x) if isinstance(x, (str, Path)) else x for x in images[s:s + batch_size]]
        x = torch.from_numpy(model.preprocess.batch(chunk)).to(device)
        out.append(model(x).float().cpu().numpy())
        if bar is not None:
            bar.update(len(chunk))
    d = getattr(model, "embedding_dim", 0)
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)
