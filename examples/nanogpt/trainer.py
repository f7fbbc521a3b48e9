"""The training loop behind train.py: model, optimizer, DDP, evals, checkpoints, SIGTERM handling.

train.py validates the config and the data first (without importing torch, so those errors come
back in a fraction of a second) and then hands over to Trainer.run().
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import runtime
import torch
import torch.distributed as dist
from configurator import Config, ConfigError, DistInfo, config_echo
from data import TokenStream
from model import GPT, GPTConfig
from torch.nn.parallel import DistributedDataParallel as DDP

ARCH_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")
EXIT_INTERRUPTED = 143


class Trainer:
    def __init__(self, cfg: Config, d: DistInfo, train: TokenStream, val: TokenStream) -> None:
        self.cfg, self.d, self.train_stream, self.val_stream = cfg, d, train, val
        self.t_start = time.time()
        self.stop = runtime.StopFlag()  # SIGTERM from now on: stop after the current step
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_path = self.out_dir / "ckpt.pt"
        self.device = runtime.pick_device(cfg.device, d)
        self.dtype = runtime.pick_dtype(cfg.dtype, self.device)
        self.backend = runtime.resolve_backend(cfg.backend, self.device) if d.is_ddp else None
        self.cpu_group = runtime.init_distributed(self.backend) if self.backend else None
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:  # exact, repeatable runs on CPU (resume gives bit-identical losses)
            torch.use_deterministic_algorithms(True)
        self.autocast = torch.autocast(self.device.type, dtype=self.dtype,
                                       enabled=self.dtype != torch.float32)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.raw_model = GPT(GPTConfig(**{k: getattr(cfg, k) for k in (*ARCH_KEYS, "dropout")}))
        self.raw_model.to(self.device)
        torch.manual_seed(cfg.seed + d.rank)  # different dropout masks per rank
        self.optimizer = self.raw_model.make_optimizer(
            cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), fused=self.device.type == "cuda")
        self.scaler = runtime.make_grad_scaler(self.device, enabled=self.dtype == torch.float16)
        self.peak_flops = runtime.peak_flops(cfg.peak_flops, self.device, self.dtype)
        self.flops_per_token = self.raw_model.flops_per_token()
        self.tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps * d.world
        self.iter = 0
        self.best_val_loss: float | None = None
        self.last_train_loss: float | None = None
        self.last_val_loss: float | None = None
        self.last_eval_iter = -1
        self.elapsed_before = 0.0  # seconds spent in earlier (resumed) runs
        self.saved_tok_per_sec: float | None = None
        # training-loss accumulators since the last eval (a device tensor: no GPU sync until a log or
        # eval needs the value); checkpointed, so a resume between evals reports the same train_loss
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_steps = 0
        self.resumed = cfg.resume and self.load_checkpoint()
        self.start_iter = self.iter
        model: torch.nn.Module = self.raw_model
        if cfg.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        if d.is_ddp:
            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = model
        self.train_time = 0.0
        self.train_tokens = 0
        self.wandb_run: Any = None  # wandb_log=True: the W&B run of rank 0

    # ---------------------------------------------------------------- output
    def log(self, line: str) -> None:
        if self.d.master:
            print(line, flush=True)

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    def throughput(self) -> tuple[float | None, float | None]:
        """(tokens/s, MFU) of this process's training steps so far (first step excluded)."""
        if self.train_time <= 0:
            return self.saved_tok_per_sec, self.mfu(self.saved_tok_per_sec)
        tps = self.train_tokens / self.train_time
        return tps, self.mfu(tps)

    def mfu(self, tok_per_sec: float | None) -> float | None:
        if tok_per_sec is None or self.peak_flops is None:
            return None
        return self.flops_per_token * tok_per_sec / (self.peak_flops * self.d.world)

    def start_outputs(self) -> None:
        if not self.d.master:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        runtime.atomic_write_json(self.cfg.to_dict(), self.out_dir / "config.json")
        if self.cfg.wandb_log:  # W&B settings from the environment; a resumed run continues its WANDB_RUN_ID
            import wandb

            self.wandb_run = wandb.init(config=self.cfg.to_dict(), dir=os.environ.get("WANDB_DIR") or str(self.out_dir))
        metrics = self.out_dir / "metrics.jsonl"
        kept = []
        if self.resumed and metrics.exists():  # drop rows written after the checkpoint we resume from
            for line in metrics.read_text().splitlines():
                try:
                    if json.loads(line)["iter"] <= self.start_iter:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):  # a torn last line after a crash
                    continue
        metrics.write_text("".join(line + "\n" for line in kept))

    def write_results(self, status: str) -> None:
        if not self.d.master:
            return
        tps, mfu = self.throughput()
        runtime.atomic_write_json({
            "status": status, "iters": self.iter, "final_train_loss": self.last_train_loss,
            "final_val_loss": self.last_val_loss, "best_val_loss": self.best_val_loss,
            "tokens_per_sec": tps, "mfu": mfu, "elapsed_s": round(self.elapsed(), 3),
            "tokens": self.train_stream.tokens_read, "world_size": self.d.world,
            "params": self.raw_model.num_params(),
        }, self.out_dir / "results.json")

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        rng = runtime.rng_state(self.device)
        rng_states: list[Any] = [rng]
        if self.cpu_group is not None:  # every rank's RNG, so dropout continues exactly
            rng_states = [None] * self.d.world
            dist.all_gather_object(rng_states, rng, group=self.cpu_group)
        # every rank has trained the same number of steps since the last eval: keep the mean of the
        # ranks' loss sums (restored on every rank, it gives the same mean whatever the new world size)
        loss_sum = self.all_mean(self.loss_sum.clone())
        if not self.d.master:
            return
        runtime.atomic_torch_save({
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "iter": self.iter, "data": self.train_stream.state_dict(),
            "rng": rng_states, "model_args": {k: getattr(self.cfg, k) for k in ARCH_KEYS},
            "config": self.cfg.to_dict(), "best_val_loss": self.best_val_loss,
            "last_train_loss": self.last_train_loss, "last_val_loss": self.last_val_loss,
            "last_eval_iter": self.last_eval_iter, "loss_sum": loss_sum, "loss_steps": self.loss_steps,
            "elapsed_s": self.elapsed(), "tokens_per_sec": self.throughput()[0],
        }, self.ckpt_path)

    def load_checkpoint(self) -> bool:
        if not self.ckpt_path.exists():
            self.log(f"resume: no checkpoint at {self.ckpt_path}, starting fresh")
            return False
        ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        for key, value in ckpt["model_args"].items():
            if getattr(self.cfg, key) != value:
                raise ConfigError(f"resume: {self.ckpt_path} has {key}={value} but the config says "
                                  f"{key}={getattr(self.cfg, key)}")
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.train_stream.load_state_dict(ckpt["data"])
        self.iter = int(ckpt["iter"])
        if self.d.rank < len(ckpt["rng"]):
            runtime.set_rng_state(ckpt["rng"][self.d.rank], self.device)
        else:  # more ranks than when saved
            torch.manual_seed(self.cfg.seed + self.d.rank + 1000 * self.iter)
        self.best_val_loss = ckpt["best_val_loss"]
        self.last_train_loss, self.last_val_loss = ckpt["last_train_loss"], ckpt["last_val_loss"]
        self.last_eval_iter = ckpt["last_eval_iter"]
        self.loss_sum.fill_(float(ckpt.get("loss_sum", 0.0)))  # (absent in older checkpoints)
        self.loss_steps = int(ckpt.get("loss_steps", 0))
        self.elapsed_before, self.saved_tok_per_sec = ckpt["elapsed_s"], ckpt["tokens_per_sec"]
        data = ckpt["data"]
        self.log(f"resume: continuing from {self.ckpt_path} at iter {self.iter} "
                 f"(train shard {data['shard']}, token offset {data['offset']})")
        return True

    # ---------------------------------------------------------------- training
    def lr_at(self, it: int) -> float:
        """Linear warmup, then cosine decay to min_lr at lr_decay_iters, then constant."""
        cfg = self.cfg
        if it < cfg.warmup_iters:
            return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
        if it >= cfg.lr_decay_iters:
            return cfg.min_lr
        ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)

    def batch(self, stream: TokenStream) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = stream.next_batch(self.cfg.batch_size, self.cfg.block_size, self.d.rank, self.d.world)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        if self.device.type == "cuda":
            return (xt.pin_memory().to(self.device, non_blocking=True),
                    yt.pin_memory().to(self.device, non_blocking=True))
        return xt, yt

    def train_step(self, lr: float) -> torch.Tensor:
        """One optimizer step over gradient_accumulation_steps micro batches; returns the mean loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        steps = self.cfg.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        for micro in range(steps):
            x, y = self.batch(self.train_stream)
            # under DDP, all-reduce gradients only on the last micro step
            no_sync = self.d.is_ddp and micro < steps - 1
            with self.model.no_sync() if no_sync else nullcontext():  # type: ignore[operator]
                with self.autocast:
                    _, loss = self.model(x, y)
                loss = loss / steps
                self.scaler.scale(loss).backward()
            total += loss.detach()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    @torch.no_grad()
    def mean_loss(self, stream: TokenStream) -> float:
        """Eval-mode loss over eval_iters optimizer steps' worth of tokens (so the same tokens whatever
        the split into batch_size / gradient_accumulation_steps / ranks), averaged over ranks."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        n = self.cfg.eval_iters * self.cfg.gradient_accumulation_steps
        for _ in range(n):
            x, y = self.batch(stream)
            with self.autocast:
                _, loss = self.model(x, y)
            total += loss
        self.model.train()
        return self.all_mean(total / n)

    def all_mean(self, value: torch.Tensor) -> float:
        if self.d.is_ddp:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value = value / self.d.world
        return float(value.item())

    def evaluate(self, it: int) -> None:
        if self.loss_steps:
            train_loss = self.all_mean(self.loss_sum / self.loss_steps)
        else:  # nothing trained since the start: measure the next training batches instead
            train_loss = self.mean_loss(copy.copy(self.train_stream))
        self.loss_sum.zero_()
        self.loss_steps = 0
        self.val_stream.load_state_dict({"shard": 0, "offset": 0, "epoch": 0, "tokens_read": 0})
        val_loss = self.mean_loss(self.val_stream)
        self.last_train_loss, self.last_val_loss = train_loss, val_loss
        self.last_eval_iter = it
        if self.best_val_loss is None or val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
        self.log(f"eval iter {it} | train {train_loss:.4f} | val {val_loss:.4f}")
        if self.d.master:
            tps, mfu = self.throughput()
            row = {"iter": it, "train_loss": train_loss, "val_loss": val_loss, "lr": self.lr_at(it),
                   "tokens_per_sec": tps, "mfu": mfu, "elapsed_s": round(self.elapsed(), 3)}
            with (self.out_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            if self.wandb_run is not None:
                self.wandb_run.log({k: v for k, v in row.items() if v is not None and k != "iter"}, step=it)

    def simulate_oom(self, it: int) -> None:
        cfg = self.cfg
        if 0 < cfg.simulate_oom_batch_over < cfg.batch_size and it >= cfg.simulate_oom_at_iter:
            oom_error = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5
            raise oom_error(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated: batch_size={cfg.batch_size} "
                f"> simulate_oom_batch_over={cfg.simulate_oom_batch_over})")

    def eval_due(self, it: int) -> bool:
        return it == self.cfg.max_iters or bool(self.cfg.eval_interval and it % self.cfg.eval_interval == 0)

    def checkpoint_due(self, it: int) -> bool:
        cfg = self.cfg
        return it > self.start_iter and (
            it == cfg.max_iters or bool(cfg.checkpoint_interval and it % cfg.checkpoint_interval == 0))

    def sync(self) -> None:
        """Wait for the GPU's queued work (a no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self) -> int:
        cfg = self.cfg
        self.start_outputs()
        self.log(config_echo(cfg))
        self.log(f"model: {self.raw_model.num_params() / 1e6:.2f}M params | device {self.device} | "
                 f"dtype {str(self.dtype).removeprefix('torch.')} | world_size {self.d.world} | "
                 + (f"backend {self.backend} | " if self.backend else "")
                 + f"tokens/iter {self.tokens_per_iter}")
        it = self.iter
        window_time, window_steps, first = 0.0, 0, True  # the log window (since the last log line)
        # Timing: a stretch of training steps runs from a start (GPU idle) to a CUDA synchronize at
        # its end, which comes before every log line, eval and checkpoint: queued GPU work is counted
        # in the stretch that queued it, and eval, checkpoint and log time is never counted.
        stretch_t0: float | None = None
        stretch_steps = 0
        while True:
            if self.eval_due(it) and it != self.last_eval_iter:  # (a resumed run may have done it)
                self.evaluate(it)
            if self.checkpoint_due(it):
                self.save_checkpoint()
            if it >= cfg.max_iters:
                break
            self.simulate_oom(it)
            if stretch_t0 is None:
                self.sync()
                stretch_t0 = time.perf_counter()
            loss = self.train_step(self.lr_at(it))
            it += 1
            self.iter = it
            self.loss_sum += loss
            self.loss_steps += 1
            stretch_steps += 1
            log_now = it % cfg.log_interval == 0 or it == cfg.max_iters
            stop = it < cfg.max_iters and self.stop.agreed(self.cpu_group)
            if first or log_now or stop or self.stop.checkpoint or self.eval_due(it) or self.checkpoint_due(it):
                self.sync()
                dt = time.perf_counter() - stretch_t0
                if not first:  # the first step includes warm-up / compilation
                    self.train_time += dt
                    self.train_tokens += stretch_steps * self.tokens_per_iter
                window_time += dt
                window_steps += stretch_steps
                stretch_t0, stretch_steps, first = None, 0, False
            if log_now:
                tps = window_steps * self.tokens_per_iter / window_time
                mfu = self.mfu(tps)
                mfu_text = f"{100 * mfu:.2f}%" if mfu is not None else "n/a"
                ms = 1000 * window_time / window_steps
                self.log(f"iter {it} | loss {float(loss.item()):.4f} | lr {self.lr_at(it - 1):.2e} | "
                         f"{tps:.0f} tok/s | mfu {mfu_text} | {ms:.1f} ms/iter")
                window_time, window_steps = 0.0, 0
            if self.stop.checkpoint and not stop:  # SIGUSR2: Slurm's time limit or preemption is near
                self.stop.checkpoint = False
                self.save_checkpoint()
                self.log(f"SIGUSR2: checkpoint saved at iter {it}")
            if stop:
                self.save_checkpoint()
                self.write_results("interrupted")
                self.log(f"interrupted: checkpoint saved at iter {it}")
                return EXIT_INTERRUPTED
        self.write_results("completed")
        self.log(f"done: iters={it} best_val_loss={self.best_val_loss:.4f}" if self.best_val_loss is not None
                 else f"done: iters={it} best_val_loss=n/a")
        return 0

    def close(self) -> None:
        """Leave the process group once rank 0 has written everything (all ranks exit together)."""
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.cpu_group is not None:
            dist.barrier(group=self.cpu_group)
            dist.destroy_process_group()
