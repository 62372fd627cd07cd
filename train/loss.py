"""Symmetric InfoNCE over drone/satellite pairs, with the negatives of every process.

For a batch of ``B`` pairs with L2-normalised features ``q`` (drone) and ``r`` (satellite)::

    logits = exp(logit_scale) * q @ r.T                          (B, B)
    loss   = (CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2

with cross-entropy label smoothing (0.1 in the paper). Row ``i``'s only positive is column ``i``: the
samplers guarantee that no location appears twice in a (global) batch.

Under ``torch.distributed`` the features of all ranks are gathered first, so every rank computes the loss
of the whole global batch. :func:`gather_with_grad` returns the gathered tensor; its backward sums the
gradients of all ranks (each rank computed the same loss) and keeps this rank's rows. DDP then averages
parameter gradients over ranks, which gives exactly the gradient of the single-process loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        if any(int(s) != x.shape[0] for s in sizes):
            raise ValueError(f"every rank needs the same batch size to gather features, got "
                             f"{[int(s) for s in sizes]}; use a batch sampler with drop_last")
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order (``x`` itself outside distributed runs)."""
    return _GatherWithGrad.apply(x) if _distributed() else x


def info_nce(query: torch.Tensor, reference: torch.Tensor, logit_scale: torch.Tensor,
             label_smoothing: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE of matching rows (features already L2-normalised), on this process only."""
    if query.shape != reference.shape:
        raise ValueError(f"query and reference features must have the same shape, got "
                         f"{tuple(query.shape)} and {tuple(reference.shape)}")
    logits = logit_scale.exp() * (query.float() @ reference.float().T)
    labels = torch.arange(query.shape[0], device=query.device)
    return (F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            + F.cross_entropy(logits.T, labels, label_smoothing=label_smoothing)) / 2


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE over the global batch (features of all ranks gathered with gradients)."""

    def __init__(self, label_smoothing: float = 0.1, gather: bool = True):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.gather = gather

    def forward(self, query: torch.Tensor, reference: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        if self.gather:
            query, reference = gather_with_grad(query), gather_with_grad(reference)
        return info_nce(query, reference, logit_scale, self.label_smoothing)
