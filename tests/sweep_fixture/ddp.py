"""A tiny CPU DDP trainer (gloo) with the sweep trainers' command line (config file, then key=value
overrides; out_dir, seed, steps): every step trains a Linear(8, 1) under DistributedDataParallel and
checks an explicit all_reduce. Each rank prints its rank, world size and host; rank 0 writes
<out_dir>/results.json with the world size and the host of every rank (tests/test_slurm_nodes.py)."""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> int:
    cfg: dict = {}
    with open(sys.argv[1]) as handle:
        exec(handle.read(), {}, cfg)  # noqa: S102 - a test fixture's own config file
    for word in sys.argv[2:]:
        key, _, value = word.lstrip("-").partition("=")
        cfg[key] = value
    dist.init_process_group("gloo")  # env:// from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    host = socket.gethostname()
    print(f"rank {rank} of {world} on {host}", flush=True)
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = DistributedDataParallel(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(rank)
    for step in range(int(cfg.get("steps", 3))):
        x = torch.randn(16, 8, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        opt.zero_grad()
        loss.backward()  # DDP all-reduces the gradients across the nodes
        opt.step()
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)
        assert total.item() == world * (world + 1) / 2, total
        if rank == 0:
            print(f"iter {step} | loss {loss.item():.4f}", flush=True)
    hosts: list = [None] * world
    dist.all_gather_object(hosts, host)
    if rank == 0:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        with open(os.path.join(cfg["out_dir"], "results.json"), "w") as handle:
            json.dump({"status": "completed", "world_size": world, "hosts": hosts}, handle)
        print(f"done world={world} hosts={','.join(hosts)}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
