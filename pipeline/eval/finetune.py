"""GPT-1 supervised fine-tuning (Radford et al. 2018, section 3.2): a linear head on the final
hidden state of the extract token, trained with ``L3 = L2 + lambda * L1``, where L2 is the task
loss and L1 the language-modelling loss on the same input sequences (an auxiliary objective that
GPT-1 found to help generalisation and convergence on larger data sets).

The model is the pretrained GPT, or the same architecture from random initialisation (the
baseline), or the first ``layers_transferred`` blocks (with the embeddings) from pretraining and
the rest fresh (GPT-1 Figure 2 left); 0 layers is exactly the random initialisation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.eval.task import Task
from pipeline.eval.transforms import Form, Specials, collate, sequences
from pipeline.model.gpt import GPT


class GPTClassifier(nn.Module):
    """A GPT with a linear head on the extract token's final state (after ln_f)."""

    configure_optimizer = GPT.configure_optimizer  # the same decay / no-decay rule as pretraining

    def __init__(self, gpt: GPT, form: Form, n_out: int, clf_dropout: float = 0.1):
        super().__init__()
        self.gpt = gpt
        self.form = form
        self.config = gpt.config
        self.clf_dropout = nn.Dropout(clf_dropout)
        self.head = nn.Linear(gpt.config.n_embd, n_out)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, tokens: torch.Tensor, extract: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Extract-token states (B, S, C) of ``tokens`` (B, S, T), and all final states (B*S, T, C)."""
        B, S, T = tokens.shape
        h = self.gpt.hidden(tokens.reshape(B * S, T))
        feats = h[torch.arange(B * S, device=h.device), extract.reshape(-1)]
        return feats.view(B, S, -1), h

    def forward(self, tokens: torch.Tensor, extract: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head outputs: (B, n_classes), (B, K) for multiple choice, (B,) for a regression score;
        and the final states for the LM loss."""
        feats, h = self.features(tokens, extract)
        if self.form == "choice":
            return self.head(self.clf_dropout(feats)).squeeze(-1), h  # one score per choice
        pooled = feats.sum(1) if self.form == "similar" else feats[:, 0]  # both orders added
        out = self.head(self.clf_dropout(pooled))
        return (out.squeeze(-1) if self.head.out_features == 1 else out), h  # a regression score: (B,)


def build_model(pretrained: GPT | None, layers_transferred: int | None, form: Form, n_out: int,
                clf_dropout: float, seed: int) -> GPTClassifier:  # fmt: skip
    """Random initialisation from ``seed``, then the pretrained embeddings and first k blocks copied
    in (k = ``layers_transferred``, None = all, 0 = none: the random-init model itself)."""
    config = pretrained.config
    torch.manual_seed(seed)
    model = GPTClassifier(GPT(config), form, n_out, clf_dropout)
    k = config.n_layer if layers_transferred is None else min(layers_transferred, config.n_layer)
    if k > 0:
        src, dst = pretrained.transformer, model.gpt.transformer
        with torch.no_grad():
            dst.wte.weight.copy_(src.wte.weight)
            dst.wpe.weight.copy_(src.wpe.weight)
            for i in range(k):
                dst.h[i].load_state_dict(src.h[i].state_dict())
            if k == config.n_layer and "ln_f" in src:
                dst.ln_f.load_state_dict(src.ln_f.state_dict())
    return model


def objective(lm_coef: float, regression: bool) -> Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]:  # fmt: skip
    """The loss_fn for pipeline.train.supervised: L2 (cross entropy, or squared error for a score)
    plus ``lm_coef`` times the LM loss over every real token of the same sequences. With
    ``lm_coef == 0`` the LM loss is not even computed, so the gradient is exactly L2's."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out, h = model(batch["tokens"], batch["extract"])
        if regression:
            l2 = F.mse_loss(out.float(), batch["label"].float())
        else:
            l2 = F.cross_entropy(out.float(), batch["label"])
        metrics = {"clf_loss": l2.item()}
        if lm_coef == 0:
            return l2, metrics
        # the vocabulary projection only where there is a next token (padding and extract tokens
        # have none): the same mean as ignore_index=-1 over every position, without the wasted rows
        targets = batch["targets"].reshape(-1)
        real = targets >= 0
        logits = model.gpt.lm_head(h.reshape(-1, h.size(-1))[real])
        l1 = F.cross_entropy(logits.float(), targets[real])
        metrics["lm_loss"] = l1.item()
        return l2 + lm_coef * l1, metrics

    return loss_fn


def encode_items(task_form: Form, items: Sequence[dict[str, Any]], encode: Callable[[str], list[int]],
                 sp: Specials, max_len: int, regression: bool = False) -> list[tuple[list[list[int]], Any]]:  # fmt: skip
    return [
        (
            sequences(task_form, it, encode, sp, max_len),
            float(it["label"]) if regression else int(it["label"]),
        )
        for it in items
    ]


def _length(example: tuple[list[list[int]], Any]) -> int:
    return max(len(seq) for seq in example[0])


def epoch_batches(examples: Sequence[tuple[list[list[int]], Any]], batch_size: int, seed: int,
                  regression: bool, bucket: int = 8) -> Callable[[int], list[dict[str, torch.Tensor]]]:  # fmt: skip
    """batches(epoch): a seeded shuffle per epoch, so a resumed run sees the same order.

    Each run of ``bucket`` batches of the shuffled order is sorted by length before it is cut into
    batches, and the batches are shuffled again: a batch holds examples of similar length, so less
    of it is padding (``bucket=1``: plain random batches)."""

    def batches(epoch: int) -> list[dict[str, torch.Tensor]]:
        rng = random.Random(f"{seed}/{epoch}")
        order = list(range(len(examples)))
        rng.shuffle(order)
        groups = []
        if bucket <= 1:
            groups = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        else:
            chunk = batch_size * bucket
            for c in range(0, len(order), chunk):
                part = sorted(order[c : c + chunk], key=lambda i: _length(examples[i]))
                groups.extend(part[s : s + batch_size] for s in range(0, len(part), batch_size))
            rng.shuffle(groups)
        return [collate([examples[i] for i in g], regression) for g in groups]

    return batches


@torch.no_grad()
def predict(model: GPTClassifier, examples: Sequence[tuple[list[list[int]], Any]], batch_size: int,
            regression: bool, device: torch.device | str = "cpu") -> np.ndarray:  # fmt: skip
    """Head outputs for every example, in order: (N, classes), (N, K) or (N,). The examples are
    batched by length (less padding); padding after a sequence does not change its states."""
    was = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: -_length(examples[i]))
    outs = []
    for s in range(0, len(order), batch_size):
        b = collate([examples[i] for i in order[s : s + batch_size]], regression)
        out, _ = model(b["tokens"].to(device), b["extract"].to(device))
        outs.append(out.float().cpu())
    model.train(was)
    if not outs:
        return np.zeros((0,))
    result = torch.empty_like(torch.cat(outs))
    result[torch.tensor(order)] = torch.cat(outs)
    return result.numpy()


def task_metrics(task: Task, outputs: np.ndarray, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of head outputs on the test side, and the predictions (class, choice or score)."""
    from pipeline.eval.metrics import classification_metrics, regression_metrics

    gold = np.array([it["label"] for it in task.test])
    if task.regression:
        return regression_metrics(gold, outputs, task.metrics), outputs
    pred = outputs.argmax(-1)
    if task.form == "choice":
        k = len(task.test[0]["choices"])
        return classification_metrics(gold, pred, task.metrics, k, seed, chance_acc=1 / k), pred
    return classification_metrics(gold, pred, task.metrics, task.n_out, seed), pred


def train_variant(pretrained: GPT, layers: int | None, task: Task, train_ex: Sequence[Any], test_ex: Sequence[Any],
                  cfg: Any, seed: int, device: torch.device, checkpoint: Any = None,
                  log: Callable[[dict[str, float], int], None] | None = None,
                  lm_coef: float | None = None, progress: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Fine-tune one model (``layers`` transferred, see build_model) on ``task`` with the recipe in
    ``cfg`` (a FinetuneConfig) and score it on the test side: ``{model, metrics, pred, outputs, train}``.
    ``progress``: a label to show the training steps on the terminal under."""
    from pipeline.progress import Phases
    from pipeline.train.supervised import SupervisedConfig, SupervisedTrainer

    coef = cfg.lm_coef if lm_coef is None else lm_coef
    train_cfg = SupervisedConfig(
        lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), epochs=cfg.epochs,
        warmup_fraction=cfg.warmup_fraction, schedule="linear", grad_clip=cfg.grad_clip, dtype=cfg.dtype,
        eval_interval=cfg.eval_interval, checkpoint_interval=cfg.checkpoint_interval, resume=cfg.resume,
    )  # fmt: skip
    model = build_model(pretrained, layers, task.form, task.n_out, cfg.clf_dropout, seed)

    def evaluate(m: Any) -> dict[str, float]:
        metrics, _ = task_metrics(task, predict(m, test_ex, cfg.batch_size, task.regression, device), seed)
        return {f"test/{k}": v["value"] for k, v in metrics.items() if isinstance(v, dict)}

    trainer = SupervisedTrainer(
        model, objective(coef, task.regression), epoch_batches(train_ex, cfg.batch_size, seed, task.regression),
        train_cfg, seed=seed, device=device, checkpoint=checkpoint, evaluate=evaluate if cfg.eval_interval else None,
        log=log, progress=progress,
    )  # fmt: skip
    result = trainer.run()
    phases = Phases(f"{progress}: test set", 2) if progress else None
    if phases is not None:
        phases.next(f"predictions on {len(test_ex)} items")
    outputs = predict(model, test_ex, cfg.batch_size, task.regression, device)
    if phases is not None:
        phases.next("metrics with bootstrap intervals")
    metrics, pred = task_metrics(task, outputs, seed)
    if phases is not None:
        phases.close()
    train = {
        "loss": result.get("train/loss", float("nan")), "steps": result["steps"],
        "train_s": round(result["train_s"], 3), "resumed_from_step": trainer.resumed_from,
    }  # fmt: skip
    return {"model": model, "metrics": metrics, "pred": pred, "outputs": outputs, "train": train}
