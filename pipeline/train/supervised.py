"""One supervised training loop for every objective after pretraining: GPT-1 fine-tuning
(classifier + lambda * LM), InstructGPT's SFT (LM loss on response tokens only) and reward model
(K-way ranking loss), or plain LM. Each stage brings its model, its batches and its objective;
the loop owns the optimiser, the schedule, precision, clipping, evaluation and checkpoints.

Interface (what a caller provides)::

    trainer = SupervisedTrainer(
        model,            # nn.Module; `model.configure_optimizer(wd, lr, betas)` gives AdamW groups
                          # (GPT's rule: decay on matrices only). Wrappers around a GPT reuse it as
                          # `configure_optimizer = GPT.configure_optimizer`.
        loss_fn,          # loss_fn(model, batch) -> (loss: 0-d tensor, metrics: dict[str, float]);
                          # called inside autocast; `model.training` tells train from eval
        batches,          # batches(epoch) -> Sequence of batches (anything loss_fn understands,
                          # tensors moved with `to_device`); the same epoch must give the same
                          # batches in the same order (seed the shuffle with the epoch), which is
                          # what makes resume exact
        cfg,              # SupervisedConfig: lr, schedule, epochs or max_steps, clipping, ...
        seed=..., device=..., checkpoint=Path | None,
        evaluate=None,    # evaluate(model) -> dict[str, float], run in eval mode under no_grad
        log=None,         # log(metrics, step): curves (train/loss, train/lr, eval metrics)
    )
    result = trainer.run()   # the last train metrics, the final evaluation, steps, examples/s

Examples of objectives: ``lm_loss`` below (next-token cross entropy on ``batch["tokens"]`` with
``-1`` targets ignored: SFT masks the prompt by setting its targets to -1); GPT-1's
``L2 + lambda * L1`` lives in :mod:`pipeline.eval.finetune`; a reward model returns a scalar per
sequence and its loss_fn takes ``-log sigmoid(r_chosen - r_rejected)`` over the C(K, 2) pairs.

Schedule: linear warmup over ``warmup_steps`` (or ``warmup_fraction`` of all steps), then linear
decay to ``min_lr_ratio * lr`` (GPT-1's fine-tuning schedule) or cosine, or constant.
Exact resume: the checkpoint holds model, optimiser, step, RNG state and history; the position in
the epoch follows from the step, so a killed run continues with the very next batch.

DDP under torchrun (``dist.world_size > 1``): one optimiser step takes ``grad_accum * world_size``
micro-batches of the epoch, rank r the r-th of every ``world_size``, each weighted so that the
all-reduced gradient is the mean over all of them: the same step a single process takes with
``grad_accum * world_size`` accumulation. Rank 0 alone evaluates and writes checkpoints; the others
wait for it at the end, so whatever rank 0 saved can be read once ``run`` returns.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from pipeline.train.checkpoint import load_checkpoint, save_checkpoint
from pipeline.train.finite import check_loss, check_weights
from pipeline.train.loop import Dist, autocast, autocast_dtype, dtype_name

LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class SupervisedConfig:
    lr: float = 6.25e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 3
    max_steps: int | None = None  # stop earlier than `epochs`
    warmup_steps: int | None = None  # None: warmup_fraction of all steps (at least one step)
    warmup_fraction: float = 0.002
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    dtype: str = "auto"  # auto | float32 | bfloat16 (bf16 autocast on CPU, as pretraining)
    eval_interval: int = 0  # steps; 0 = only at the end
    log_interval: int = 10
    checkpoint_interval: int = 0  # steps; 0 = only at the end (when a checkpoint path is given)
    resume: bool = True


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) of ``total``: linear warmup, then decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return min_ratio + 0.5 * (1 + math.cos(math.pi * progress)) * (1 - min_ratio)
    return min_ratio + (1 - progress) * (1 - min_ratio)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors anywhere in dicts, lists and tuples moved to ``device``; everything else as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross entropy: ``batch["tokens"]`` (B, T+1) ids, or ``batch["x"]``/``batch["y"]``
    with -1 targets ignored (SFT: the prompt's targets are -1, so only the response is learned)."""
    if "tokens" in batch:
        x, y = batch["tokens"][:, :-1].clamp(min=0), batch["tokens"][:, 1:]
    else:
        x, y = batch["x"], batch["y"]
    logits, _ = model(x)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1)
    return loss, {"lm_loss": loss.item()}


@dataclass
class SupervisedTrainer:
    model: torch.nn.Module
    loss_fn: LossFn
    batches: Callable[[int], Sequence[Any]]
    cfg: SupervisedConfig
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint: Path | None = None
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    log: Callable[[dict[str, float], int], None] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    dist: Dist = field(default_factory=Dist)
    progress: str | None = None  # a label: the loop's steps on the terminal (pipeline/progress.py)

    def __post_init__(self) -> None:
        self.model.to(self.device)
        self.dtype = autocast_dtype(self.cfg.dtype, self.device)
        self.optimizer = self.model.configure_optimizer(self.cfg.weight_decay, self.cfg.lr, self.cfg.betas)
        self.per_step = self.cfg.grad_accum * self.dist.world_size  # micro-batches per optimiser step
        self.steps_per_epoch = math.ceil(len(self.batches(0)) / self.per_step)
        total = self.steps_per_epoch * self.cfg.epochs
        self.total_steps = min(total, self.cfg.max_steps) if self.cfg.max_steps else total
        warm = self.cfg.warmup_steps
        self.warmup = warm if warm is not None else max(1, round(self.cfg.warmup_fraction * self.total_steps))
        self.step = 0
        self.examples = 0
        self.elapsed = 0.0
        self.resumed_from = -1
        self.last: dict[str, float] = {}  # the last step's train metrics, kept across resumes
        torch.manual_seed(self.seed + self.dist.rank)  # each rank its own dropout masks
        if self.checkpoint is not None and self.cfg.resume and self.checkpoint.is_file():
            self._restore(load_checkpoint(self.checkpoint, self._config_tag()))
        check_weights(self.model, self.step)
        self.runner: torch.nn.Module = self.model  # what loss_fn gets while training
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # unused parameters: a reward model keeps its SFT model's LM head, which it never calls
            self.runner = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    # -- checkpoints
    def _config_tag(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: the model's shape and the run length."""
        tag = {"steps": self.total_steps, "params": sum(p.numel() for p in self.model.parameters())}
        config = getattr(self.model, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            tag.update(config.to_dict())
        return tag

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "model_config": self._config_tag(),
            "step": self.step,
            "examples": self.examples,
            "elapsed": self.elapsed,
            "history": self.history,
            "last": self.last,
            "rng_cpu": torch.get_rng_state(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.examples, self.elapsed = state["step"], state["examples"], state["elapsed"]
        self.history = list(state["history"])
        self.last = dict(state.get("last", {}))
        torch.set_rng_state(state["rng_cpu"])
        self.resumed_from = self.step

    def save(self) -> None:
        check_weights(self.model, self.step)  # a diverged run is never saved, nor its outputs written
        if self.checkpoint is not None and self.dist.main:
            save_checkpoint(self.checkpoint, self._state())

    # -- running
    @torch.no_grad()
    def run_eval(self) -> dict[str, float]:
        if self.evaluate is None or not self.dist.main:
            return {}
        was = self.model.training
        self.model.eval()
        with autocast(self.device, self.dtype):
            out = self.evaluate(self.model)
        self.model.train(was)
        return out

    def train_step(self, micro: Sequence[Any]) -> dict[str, float]:
        """One optimiser step over the micro-batches ``micro`` (of all ranks); the mean of their metrics."""
        factor = lr_factor(self.step, self.total_steps, self.warmup, self.cfg.schedule, self.cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor
        world, n = self.dist.world_size, len(micro)
        # this rank's share; a rank left without one (the epoch's last, short step) still takes part
        # in the gradient all-reduce, with a batch weighted 0
        mine = [(b, world / n) for b in micro[self.dist.rank :: world]] or [(micro[0], 0.0)]
        sums: dict[str, float] = {}
        for i, (batch, weight) in enumerate(mine):
            batch = to_device(batch, self.device)
            sync = i == len(mine) - 1 or world == 1
            with (
                contextlib.nullcontext() if sync else self.runner.no_sync(),
                autocast(self.device, self.dtype),
            ):
                loss, metrics = self.loss_fn(self.runner, batch)
            (loss * weight).backward()  # DDP then averages over ranks: the mean over all n
            counted = 1.0 if weight else 0.0  # the same keys on every rank, for the all-reduce
            for k, v in {"loss": loss.item(), **metrics, "_examples": batch_size(batch)}.items():
                sums[k] = sums.get(k, 0.0) + counted * float(v)
        if world > 1:  # metrics summed over all ranks' micro-batches
            import torch.distributed as tdist

            keys = sorted(sums)
            t = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.device)
            tdist.all_reduce(t)
            sums = dict(zip(keys, t.tolist(), strict=True))
        self.examples += int(sums.pop("_examples", 0))
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {f"train/{k}": v / n for k, v in sums.items()}
        out["train/lr"] = self.cfg.lr * factor
        return out

    def run(self) -> dict[str, float]:
        bar = None
        if self.progress and self.dist.main:
            from pipeline.progress import Progress

            bar = Progress(
                self.total_steps, f"{self.progress} ({dtype_name(self.dtype)})", "steps", initial=self.step
            )
        try:
            return self._run(bar)
        finally:
            if bar is not None:
                bar.close()

    def _run(self, bar: Any) -> dict[str, float]:
        self.model.train()
        t0 = time.perf_counter()
        last = dict(self.last)  # a run resumed at its end reports its own last figures
        accum = self.per_step
        epoch_batches: Sequence[Any] = ()
        loaded_epoch = -1
        while self.step < self.total_steps:
            epoch, k = divmod(self.step, self.steps_per_epoch)
            if epoch != loaded_epoch:
                epoch_batches, loaded_epoch = self.batches(epoch), epoch
            last = self.train_step(epoch_batches[k * accum : (k + 1) * accum])
            check_loss(last["train/loss"], self.step + 1)
            self.last = last
            self.step += 1
            if bar is not None:
                bar.update(1, loss=last["train/loss"])
            if self.log is not None and (
                self.step % self.cfg.log_interval == 0 or self.step == self.total_steps
            ):
                self.log(last, self.step)
            if (
                self.cfg.eval_interval
                and self.step % self.cfg.eval_interval == 0
                and self.step < self.total_steps
            ):
                metrics = self.run_eval()
                self.history.append({"step": self.step, **metrics})
                if self.log is not None and metrics:
                    self.log(metrics, self.step)
            if self.cfg.checkpoint_interval and self.step % self.cfg.checkpoint_interval == 0:
                self.elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save()
        self.elapsed += time.perf_counter() - t0
        final = self.run_eval()
        if final:
            self.history.append({"step": self.step, **final})
            if self.log is not None:
                self.log(final, self.step)
        self.save()
        if self.dist.world_size > 1:  # what rank 0 evaluated and saved is there for every rank
            import torch.distributed as tdist

            tdist.barrier()
        return {
            **last, **final, "steps": self.step, "examples": self.examples, "train_s": self.elapsed,
            "examples_per_s": self.examples / self.elapsed if self.elapsed > 0 else 0.0,
        }  # fmt: skip


def batch_size(batch: Any) -> int:
    """Examples in a batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.size(0))
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for v in batch:
            n = batch_size(v)
            if n:
                return n
    return 0
