"""train.loss: symmetric InfoNCE by hand, and the gathered loss over 2 gloo processes."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tests.loopback import free_port as _free_port
from train.loss import InfoNCELoss, info_nce


def _smoothed_ce(row: np.ndarray, target: int, eps: float) -> float:
    logp = row - math.log(np.exp(row).sum())
    return -(1 - eps) * logp[target] - eps * logp.mean()


def test_info_nce_matches_a_hand_computed_case():
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    r = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    scale = torch.tensor(math.log(2.0))
    # logits = 2 * q @ r.T = [[1.6, 0], [1.92, 1.6]]
    logits = np.array([[1.6, 0.0], [1.92, 1.6]])
    rows = [_smoothed_ce(logits[i], i, 0.1) for i in range(2)]
    cols = [_smoothed_ce(logits[:, j], j, 0.1) for j in range(2)]
    expected = (np.mean(rows) + np.mean(cols)) / 2
    assert info_nce(q, r, scale, 0.1).item() == pytest.approx(expected, rel=1e-6)
    # without smoothing, a perfect and confident match drives the loss to 0
    eye = torch.eye(3)
    assert info_nce(eye, eye, torch.tensor(math.log(100.0)), 0.0).item() < 1e-20 + 1e-6


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.zeros(2, 4), torch.zeros(3, 4), torch.tensor(1.0))


def _worker(rank, world, port, q, r, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n = q.shape[0] // world
        lq = q[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        lr = r[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
        loss = InfoNCELoss(0.1)(lq, lr, scale)
        loss.backward()
        # numpy arrays travel by value: a torch tensor would be shared through a file descriptor that
        # vanishes when this process exits before the parent reads it
        out.put((rank, loss.item(), lq.grad.numpy().copy(), lr.grad.numpy().copy()))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_over_two_processes_equals_single_process_loss():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    r = torch.nn.functional.normalize(q + 0.5 * torch.randn(8, 16), dim=1)
    gq, gr = q.clone().requires_grad_(True), r.clone().requires_grad_(True)
    single = InfoNCELoss(0.1)(gq, gr, torch.tensor(math.log(1 / 0.07)))
    single.backward()

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port(socket.SOCK_STREAM)  # gloo's rendezvous is TCP
    procs = [ctx.Process(target=_worker, args=(rank, 2, port, q, r, out)) for rank in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, loss, grad_q, grad_r in results:
        assert loss == pytest.approx(single.item(), rel=1e-6)
        # each rank holds world x its share of the gradient; DDP's mean over ranks restores it exactly
        rows = slice(rank * 4, rank * 4 + 4)
        assert torch.allclose(torch.from_numpy(grad_q) / 2, gq.grad[rows], atol=1e-6)
        assert torch.allclose(torch.from_numpy(grad_r) / 2, gr.grad[rows], atol=1e-6)
