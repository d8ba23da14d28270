"""GradientReducer on 2 gloo processes: bucketed averages equal the plain mean, a tensor one rank
left without a gradient counts as zero there, and only the armed backward reduces."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as td
import torch.multiprocessing as mp

from u1lib.train.distributed import GradientReducer

SIZES = (3, 5, 7, 2, 4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n)) for n in SIZES]  # the same values on both ranks
    reducer = GradientReducer(params, world_size=2, bucket_bytes=20)  # small buckets: several of them
    calls, all_reduce = [], td.all_reduce
    td.all_reduce = lambda tensor, **kw: calls.append(tensor.numel()) or all_reduce(tensor, **kw)
    scale = float(rank + 1)
    # micro-step 1 (not armed): all but params[4]; micro-step 2 (armed): rank 1 leaves out params[1]
    # (which has a gradient from step 1) and params[4] (which then has none at all)
    sum(p.sum() * scale for p in params[:4]).backward()
    reducer.arm()
    used = params if rank == 0 else [params[0], params[2], params[3]]
    sum((p**2).sum() * scale for p in used).backward()
    reducer.finish()
    out[rank] = [p.grad.clone() for p in params]
    out[f"calls{rank}"] = calls  # one collective per bucket, all in the armed step
    td.destroy_process_group()


def test_bucketed_average_over_two_ranks():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(_free_port(), out), nprocs=2, join=True)
        grads = dict(out)
    buckets = GradientReducer([torch.nn.Parameter(torch.zeros(n)) for n in SIZES], 2, 20).buckets
    assert len(buckets) > 1
    assert grads["calls0"] == grads["calls1"] == [sum(p.numel() for p in b) for b in buckets]
    torch.manual_seed(0)
    params = [torch.randn(n) for n in SIZES]
    for i, p in enumerate(params):
        first = 0.0 if i == 4 else 1.0  # d(sum p)/dp of micro-step 1
        rank0 = first + 2 * p  # scale 1, + d(sum p^2)/dp
        rank1 = 2.0 * (first + (2 * p if i in (0, 2, 3) else 0))  # scale 2; params[4]: zeros
        expected = (rank0 + rank1) / 2
        for rank in (0, 1):
            assert torch.allclose(grads[rank][i], expected), (rank, i)
