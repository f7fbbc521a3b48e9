"""A tiny CPU DDP job for the task tests: torchrun --standalone --nproc_per_node=2 ddp_tiny.py [--steps N] [--sleep S]

Each step trains a Linear(8, 1) under DistributedDataParallel (gloo) and checks an explicit
all_reduce; at the end the ranks' parameters must be identical. Rank 0 prints one OK line.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    dist.init_process_group("gloo")  # env:// from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(rank)
    loss = torch.zeros(())
    for _ in range(args.steps):
        x = torch.randn(16, 8, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        opt.zero_grad()
        loss.backward()  # DDP all-reduces the gradients
        opt.step()
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)
        assert total.item() == world * (world + 1) / 2, total
        if args.sleep:
            time.sleep(args.sleep)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], other) for other in gathered)
    if rank == 0:
        print(f"OK world={world} steps={args.steps} loss={loss.item():.4f} pid={os.getpid()}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
