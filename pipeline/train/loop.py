"""The pretraining loop: AdamW with decay/no-decay groups, linear warmup then cosine decay,
gradient accumulation and clipping, bf16 autocast, optional torch.compile, DDP under torchrun,
periodic validation per source in bits per byte, exact resume from checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.config import PretrainConfig
from pipeline.model.gpt import GPT, GPTConfig
from pipeline.progress import Progress
from pipeline.tokenizer import TokenData
from pipeline.train.checkpoint import load_checkpoint, save_checkpoint
from pipeline.train.data import TrainBatches, source_windows
from pipeline.train.finite import check_loss, check_weights


# ------------------------------------------------------------------------------------------- devices
@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def device_for(pref: str) -> torch.device:
    """The device every stage runs on for a ``device`` param: ``auto`` is CUDA when there is one."""
    return torch.device("cuda" if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()) else "cpu")


def setup_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
    want_cuda = device_for(device_pref).type == "cuda"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        import torch.distributed as tdist

        d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if want_cuda else "gloo")
        device = torch.device(f"cuda:{d.local_rank}") if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(device)
        return d, device
    return Dist(), torch.device("cuda" if want_cuda else "cpu")


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device``; float32 runs as is."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX on x86, the BF16
    extension on Arm). Without it oneDNN emulates bf16 and a training step runs 5-35x slower than in
    float32, so ``dtype: auto`` must not pick bf16 there."""
    import platform

    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_WARNED_SLOW_BF16 = False


def autocast_dtype(pref: str | None, device: torch.device) -> torch.dtype:
    """The compute dtype for ``pref`` (``auto``/``None``, ``float32``, ``bfloat16``) on ``device``.

    ``auto`` is bf16 where the hardware has it (CUDA with bf16 support, a CPU with native bf16) and
    float32 elsewhere; an explicit ``bfloat16`` on a CPU without native bf16 runs as asked, with one
    warning that it is slow."""
    global _WARNED_SLOW_BF16
    if pref == "float32":
        return torch.float32
    if device.type == "cuda":
        if pref == "bfloat16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    native = cpu_bf16_native()
    if pref == "bfloat16":
        if not native and not _WARNED_SLOW_BF16:
            _WARNED_SLOW_BF16 = True
            import sys

            print(
                "warning: dtype bfloat16 on a CPU without native bf16 is emulated and several times slower "
                "than float32 (set common.dtype: auto)",
                file=sys.stderr,
            )
        return torch.bfloat16
    return torch.bfloat16 if native else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def measure_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Achieved matmul FLOP/s on this device in this dtype: the yardstick for MFU when no peak is given."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    best = 0.0
    for _ in range(5):  # best of five short trials: a busy machine lowers single measurements
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            a @ b
            reps += 1
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at cfg.max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def curve_name(key: str) -> str:
    """``val/<src>/loss`` -> ``val/sources/<src>/loss``; other names unchanged."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "val" and parts[1] != "sources":
        return f"val/sources/{parts[1]}/{parts[2]}"
    return key


# -------------------------------------------------------------------------------------------- trainer
@dataclass
class Trainer:
    model_config: GPTConfig
    cfg: PretrainConfig
    seed: int
    train: TokenData
    val: TokenData | None
    source_names: list[str]
    tokens_per_byte: dict[str, float]  # per source, from the validation split, for bits per byte
    checkpoint: Path
    log: Callable[[dict[str, float], int], None] = lambda metrics, step: None
    sample: Callable[[GPT, int], str | None] | None = None  # returns the text to keep in samples
    dist: Dist = field(default_factory=Dist)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    history: list[dict[str, float]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # every sample block, across resumed runs too

    def __post_init__(self) -> None:
        torch.manual_seed(self.seed)
        self.model = GPT(self.model_config).to(self.device)
        self.dtype = autocast_dtype(self.cfg.dtype, self.device)
        self.optimizer = self.model.configure_optimizer(
            self.cfg.weight_decay, self.cfg.lr, (self.cfg.beta1, self.cfg.beta2)
        )
        self.batches = TrainBatches(self.train, self.model_config.block_size, self.cfg.batch_size, self.seed)
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.windows = {}
        if self.val is not None:
            for i, name in enumerate(self.source_names):
                w = source_windows(self.val, i, self.model_config.block_size, self.cfg.eval_windows)
                if len(w):
                    self.windows[name] = w
        self.resumed_from = -1
        if self.cfg.resume and self.checkpoint.is_file():
            self._restore(load_checkpoint(self.checkpoint, self.model_config.to_dict()))
        self.runner: torch.nn.Module = self.model
        if self.cfg.compile:
            self.runner = torch.compile(self.model)
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.runner = DistributedDataParallel(self.runner, device_ids=ids)

    # -- checkpoints
    def _state(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "model_config": self.model_config.to_dict(),
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "history": self.history,
            "samples": self.samples,
            "rng_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.history = list(state["history"])
        self.samples = list(state.get("samples", []))
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.resumed_from = self.step

    def save(self) -> None:
        if not self.dist.main:
            return
        check_weights(self.model, self.step)  # a diverged run is never saved, nor its outputs written
        save_checkpoint(self.checkpoint, self._state())
        every = self.cfg.keep_checkpoints_every
        if every and self.step % every == 0:  # weights only, for scores across training (evaluate)
            save_checkpoint(
                self.checkpoint.with_name(f"step_{self.step:06d}.pt"),
                {
                    "model": self.model.state_dict(),
                    "model_config": self.model_config.to_dict(),
                    "step": self.step,
                },
            )

    # -- evaluation
    @torch.no_grad()
    def evaluate(self, desc: str | None = None) -> dict[str, float]:
        """Validation loss per source and overall; with ``desc``, progress names the source under way."""
        from pipeline.progress import Phases

        self.model.eval()
        out: dict[str, float] = {}
        total_loss = total_tokens = 0.0
        phases = Phases(desc, len(self.windows)) if desc and self.dist.main else None
        for name, windows in self.windows.items():
            if phases is not None:
                phases.next(f"validation loss on {name} ({len(windows)} windows)")
            loss_sum = n_tok = 0.0
            for chunk in windows.split(self.cfg.batch_size):
                chunk = chunk.to(self.device)
                x, y = chunk[:, :-1].clamp(min=0), chunk[:, 1:]
                with autocast(self.device, self.dtype):
                    logits, _ = self.model(x)
                loss_sum += F.cross_entropy(
                    logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="sum"
                ).item()
                n_tok += (y != -1).sum().item()
            loss = loss_sum / max(n_tok, 1)
            out[f"val/{name}/loss"] = loss
            out[f"val/{name}/bpb"] = loss / math.log(2) * self.tokens_per_byte.get(name, float("nan"))
            total_loss += loss_sum
            total_tokens += n_tok
        if total_tokens:
            out["val/loss"] = total_loss / total_tokens
        if phases is not None:
            phases.close()
        self.model.train()
        return out

    # -- training
    def train_step(self) -> float:
        """One optimizer step over the global batch; returns the mean micro-batch loss."""
        cfg, accum = self.cfg, self.cfg.grad_accum
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for a in range(accum):
            x, y = self.batches.get(self.step, self.dist.rank * accum + a)
            x, y = x.to(self.device), y.to(self.device)
            sync = a == accum - 1 or self.dist.world_size == 1
            ctx = contextlib.nullcontext() if sync else self.runner.no_sync()
            with ctx, autocast(self.device, self.dtype):
                _, loss = self.runner(x, y)
            (loss / accum).backward()
            total += loss.detach().float()  # one host sync per step, not per micro-batch
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = total / accum
        if self.dist.world_size > 1:
            import torch.distributed as tdist

            tdist.all_reduce(loss)
            loss = loss / self.dist.world_size
        return loss.item()

    def run(self, peak_flops: float) -> dict[str, float]:
        cfg = self.cfg
        tokens_per_step = (
            cfg.batch_size * cfg.grad_accum * self.dist.world_size * self.model_config.block_size
        )
        flops_per_token = self.model.flops_per_token()
        t_start = time.perf_counter()
        t_log, tok_log, losses = time.perf_counter(), 0, []
        last: dict[str, float] = {}
        bar = (
            Progress(cfg.max_steps, f"pretrain ({dtype_name(self.dtype)})", "steps", initial=self.step)
            if self.dist.main
            else None
        )
        while self.step < cfg.max_steps:
            if cfg.max_minutes is not None and self._stop_for_time(t_start):
                break
            loss = self.train_step()
            check_loss(loss, self.step + 1)
            self.step += 1
            self.tokens += tokens_per_step
            tok_log += tokens_per_step
            losses.append(loss)
            if bar is not None:
                bar.update(1, loss=loss, **({"tok/s": last["perf/tokens_per_s"]} if last else {}))
            if self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                dt = time.perf_counter() - t_log
                tps = tok_log / dt
                last = {
                    "train/loss": sum(losses) / len(losses),
                    "train/lr": lr_at(self.step - 1, cfg),
                    "perf/tokens_per_s": tps,
                    "perf/mfu": tps * flops_per_token / (peak_flops * self.dist.world_size),
                }
                self.history.append({"step": self.step, **{k: float(v) for k, v in last.items()}})
                if self.dist.main:
                    self._log(last, self.step)
                t_log, tok_log, losses = time.perf_counter(), 0, []
            t_pause = time.perf_counter()
            if cfg.eval_interval and (self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps):
                self._eval_and_log()
            if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                self.elapsed += time.perf_counter() - t_start
                t_start = time.perf_counter()
                self.save()
            t_log += time.perf_counter() - t_pause  # evaluation and saving are not training throughput
        if bar is not None:
            bar.close()
        self.elapsed += time.perf_counter() - t_start
        if not last:  # resumed a run that had already finished: report its last logged figures
            last = next((dict(h) for h in reversed(self.history) if "train/loss" in h), {})
            last.pop("step", None)
        final = self.evaluate("pretrain: final evaluation") if self.windows else {}
        evaluated_here = any(h["step"] == self.step and "val/loss" in h for h in self.history)
        if final and self.dist.main and not evaluated_here:  # else the curve already ends on it
            self._log(final, self.step)
        self.save()
        mean_tps = self.tokens / self.elapsed if self.elapsed > 0 else 0.0
        return {
            **last, **final, "steps": self.step, "tokens": self.tokens,
            # over the whole run (resumed parts included), not just the last log interval
            "perf/tokens_per_s": mean_tps,
            "perf/mfu": mean_tps * flops_per_token / (peak_flops * self.dist.world_size),
        }  # fmt: skip

    def _eval_and_log(self) -> None:
        metrics = self.evaluate()
        if metrics:
            self.history.append({"step": self.step, **metrics})
            if self.dist.main:
                self._log(metrics, self.step)
        if self.sample is not None and self.dist.main:
            block = self.sample(self.model, self.step)
            if block:
                self.samples.append(block)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        """Curves under the names the stage's summary uses (``val/sources/<src>/bpb``), so MLflow
        holds each per-source figure once."""
        self.log({curve_name(k): v for k, v in metrics.items()}, step)

    def _stop_for_time(self, t_start: float) -> bool:
        """All ranks stop together once the minutes budget (over all resumed runs) is spent."""
        over = self.elapsed + time.perf_counter() - t_start >= 60 * self.cfg.max_minutes
        if self.dist.world_size > 1:
            import torch.distributed as tdist

            flag = torch.tensor([int(over)], device=self.device)
            tdist.broadcast(flag, 0)
            over = bool(flag.item())
        return over
