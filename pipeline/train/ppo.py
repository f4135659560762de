"""PPO for a language model against a learned reward, as InstructGPT did it (Ouyang et al. 2022,
section 3.5, after Ziegler et al. 2019 and Stiennon et al. 2020).

Four models: the **policy** (starts as the SFT model, trained), the **reference** (a frozen copy of
SFT), the **value model** (the RM's body and scalar head, read at every position, trained) and the
**reward model** (frozen). Each PPO iteration:

1. *Rollout*: ``rollout_prompts`` prompts of the PPO split, one response each, sampled from the
   policy at temperature 1 over the whole vocabulary (no top-k, no top-p: the KL estimate
   ``log pi - log pi_ref`` of a token is unbiased only for a token drawn from pi itself; truncated
   sampling makes it negative), with the KV cache. A response ends at ``<|end|>`` or after
   ``max_new_tokens``.
2. *Reward* per response token t: ``-beta * (log pi(y_t) - log pi_ref(y_t))``, plus, at the last
   token, the RM score of prompt + response (minus ``missing_end_penalty`` when the response never
   emitted ``<|end|>``). ``beta`` is fixed or follows the adaptive controller of Ziegler et al.
   (``kl_target``, ``kl_horizon``).
3. *Advantages*: GAE with ``gamma`` = 1 and ``lambda`` = 0.95 on the value model's estimates
   ``V(s_t)`` (the value of the prefix before token t), whitened over the rollout batch.
4. *Update*: ``ppo_epochs`` passes over the batch, each dealing the episodes into new random
   minibatches: the clipped surrogate (``cliprange``) for the policy, the clipped value loss
   (``cliprange_value``) for the value model, each with its own AdamW; optionally an EMA of the
   policy weights. Policy and value model run with dropout off throughout (eval mode, as TRL's PPO
   disables dropout): the old log-probs and values of the rollout and those of the updates come from
   one and the same function, so the first ratio is exactly 1.

**PPO-ptx** adds ``ptx_coef * LM loss`` on windows of the pretraining mix's training tokens to the
policy loss of every minibatch (``ptx_coef = 0`` is plain PPO). Both terms here are per-token means:
the policy term averages whitened advantages (unit scale) over response tokens, the ptx term is the
mean next-token cross entropy. The paper's gamma = 27.8 multiplies the log-likelihood of whole
2048-token pretraining sequences against a per-episode objective in reward units, a number tied to
its batch shapes; we keep its role instead: gamma is sized by the ratio of the two gradients on our
batches (``ptx_batch_size`` windows of ``block_size`` tokens against ``minibatch_size`` responses).
On the default profile the SFT model's LM gradient is ~5x the policy gradient, so 0.05 makes the
ptx term about a quarter of it (params.yaml).

Everything random comes from generators seeded by (seed, step), so a run killed after a checkpoint
resumes to exactly the state an uninterrupted run reaches (weights, optimisers, KL coefficient,
EMA, history and the best checkpoint are in the checkpoint; the CPU RNG state too).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.feedback.config import PpoConfig
from pipeline.model.gpt import GPT
from pipeline.model.reward import RewardModel
from pipeline.train.checkpoint import load_checkpoint, save_checkpoint
from pipeline.train.finite import check_loss, check_weights
from pipeline.train.instruct import left_pad
from pipeline.train.loop import autocast, autocast_dtype


# ------------------------------------------------------------------------------------------ models
class ValueModel(nn.Module):
    """V(s_t) at every position: a GPT body with a scalar head on each final hidden state. Starts as
    a copy of the reward model (body and head), as InstructGPT initialised it: the RM's score of a
    prefix is a sensible first guess of the return from there."""

    def __init__(self, gpt: GPT, head: nn.Linear):
        super().__init__()
        self.gpt = gpt
        self.config = gpt.config
        self.head = head

    @classmethod
    def from_reward_model(cls, rm: RewardModel) -> ValueModel:
        return cls(copy.deepcopy(rm.gpt), copy.deepcopy(rm.head))

    def forward(self, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Values (B, T) of left/right-padded ``idx`` (B, T) with ``mask`` 1 on real tokens."""
        return self.head(self.gpt.hidden(idx, attention_mask=mask).float()).squeeze(-1)

    configure_optimizer = GPT.configure_optimizer


def frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# ----------------------------------------------------------------------------------------- batches
@dataclass
class Episodes:
    """Prompts (left-padded to ``prompt_width``) followed by their responses (right-padded).

    ``idx``/``mask`` (B, P + L): ids and 1 on real tokens; ``actions`` (B, L) 1 on response tokens
    (up to and including ``<|end|>``); ``ended`` (B,) whether the response emitted ``<|end|>``."""

    idx: torch.Tensor
    mask: torch.Tensor
    actions: torch.Tensor
    ended: torch.Tensor
    prompt_width: int

    def __len__(self) -> int:
        return self.idx.size(0)

    @property
    def lengths(self) -> torch.Tensor:
        return self.actions.sum(1)

    def responses(self) -> list[list[int]]:
        P = self.prompt_width
        return [row[P : P + int(n)].tolist() for row, n in zip(self.idx, self.lengths, strict=True)]

    def select(self, rows: torch.Tensor) -> Episodes:
        """The episodes ``rows``, with columns no selected episode uses trimmed away."""
        idx, mask, actions = self.idx[rows], self.mask[rows], self.actions[rows]
        P = self.prompt_width
        left = int((mask[:, :P].sum(0) > 0).float().argmax()) if P else 0
        right = max(1, int(actions.sum(1).max()))
        return Episodes(
            idx[:, left : P + right],
            mask[:, left : P + right],
            actions[:, :right],
            self.ended[rows],
            P - left,
        )


@torch.no_grad()
def sample_episodes(
    model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, end_id: int, *,
    temperature: float = 1.0, generator: torch.Generator | None = None, device: torch.device | None = None,
) -> Episodes:  # fmt: skip
    """One response per prompt from ``model`` with the KV cache; temperature 1 samples from the
    model's own distribution (no truncation), 0 is greedy."""
    device = device or next(model.parameters()).device
    keep = max(1, model.config.block_size - max_new_tokens)
    idx, mask = left_pad(prompts, keep)
    P = idx.size(1)
    new = min(max_new_tokens, model.config.block_size - P)
    was = model.training
    model.eval()
    out = model.generate(
        idx.to(device), new, temperature=temperature, generator=generator, eos_token=end_id,
        attention_mask=mask.to(device),
    ).cpu()  # fmt: skip
    model.train(was)
    resp = out[:, P:]
    is_end = resp == end_id
    ended = is_end.any(1)
    # a response runs up to and including its first <|end|> (generate pads finished rows with it)
    first_end = torch.where(
        ended, is_end.float().argmax(1), torch.full_like(ended, resp.size(1), dtype=torch.long)
    )
    length = torch.where(ended, first_end + 1, first_end)
    actions = (torch.arange(resp.size(1))[None, :] < length[:, None]).long()
    if resp.size(1) == 0:  # no room to generate: an empty response
        actions = torch.zeros(len(prompts), 0, dtype=torch.long)
    return Episodes(out, torch.cat([mask, actions], 1), actions, ended, P)


def to(ep: Episodes, device: torch.device) -> Episodes:
    return Episodes(
        ep.idx.to(device), ep.mask.to(device), ep.actions.to(device), ep.ended.to(device), ep.prompt_width
    )


# ------------------------------------------------------------------------------------ log-probs etc.
def token_logprobs(
    model: GPT, ep: Episodes, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | x, y_<t) of every response token (B, L), and the entropy of pi at each (the LM
    head is applied to the response positions only)."""
    P, L = ep.prompt_width, ep.actions.size(1)
    h = model.hidden(ep.idx, attention_mask=ep.mask)[:, P - 1 : P - 1 + L]
    logits = model.lm_head(h).float()
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ep.idx[:, P : P + L].unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1) if entropy else None
    return logp, ent


def token_values(value: ValueModel, ep: Episodes) -> torch.Tensor:
    """V(s_t) (B, L): the value of the prefix before each response token."""
    P, L = ep.prompt_width, ep.actions.size(1)
    return value(ep.idx, ep.mask)[:, P - 1 : P - 1 + L]


@torch.no_grad()
def reward_scores(rm: RewardModel, ep: Episodes) -> torch.Tensor:
    """The RM's score (B,) of each prompt + response, read at its last real token."""
    h = rm.gpt.hidden(ep.idx, attention_mask=ep.mask)
    last = ep.prompt_width + ep.lengths - 1
    return rm.head(h[torch.arange(len(ep), device=h.device), last].float()).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries; 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def per_token_rewards(
    scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, actions: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, kl) per token (B, L): ``-beta * kl`` everywhere and the score at the last token."""
    kl = (logp - ref_logp) * actions
    rewards = -beta * kl
    n = actions.sum(1).long()
    rows = torch.nonzero(n > 0).squeeze(1)
    rewards[rows, n[rows] - 1] += scores[rows]
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, actions: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (B, L); the state after the last token is terminal."""
    L = rewards.size(1)
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(L)):
        cont = actions[:, t + 1].float() if t + 1 < L else torch.zeros_like(last)
        next_v = values[:, t + 1] * cont if t + 1 < L else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * cont * last
        adv[:, t] = last
    adv = adv * actions
    return adv, (adv + values) * actions


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, actions: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017), a mean over response tokens."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), actions)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), actions).item(),
            "approxkl": 0.5 * masked_mean(log_ratio**2, actions).item(),
            "ratio": masked_mean(ratio, actions).item(),
        }
    return loss, stats


def clipped_value_loss(
    v: torch.Tensor, old_v: torch.Tensor, returns: torch.Tensor, actions: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, float]]:
    v_clipped = old_v + (v - old_v).clamp(-clip, clip)
    a, b = (v - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(a, b), actions)
    return loss, {"value_clipfrac": masked_mean((b > a).float(), actions).item()}


def ptx_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy on pretraining windows (PPO-ptx's term, before ``ptx_coef``)."""
    _, loss = model(x, y)
    return loss


def policy_objective(
    policy: GPT, mb: dict[str, Any], cfg: PpoConfig, ptx: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy's loss on one minibatch: clipped surrogate, plus ``ptx_coef`` times the LM loss on
    the pretraining windows ``ptx`` (left out when ``ptx_coef`` is 0)."""
    ep = mb["episodes"]
    logp, ent = token_logprobs(policy, ep, entropy=True)
    loss, stats = clipped_policy_loss(logp, mb["logp"], mb["advantages"], ep.actions.float(), cfg.cliprange)
    stats["policy_loss"] = loss.item()
    stats["entropy"] = masked_mean(ent.detach(), ep.actions.float()).item()
    if cfg.ptx_coef > 0 and ptx is not None:
        lm = ptx_loss(policy, *ptx)
        stats["ptx_loss"] = lm.item()
        loss = loss + cfg.ptx_coef * lm
    return loss, stats


class AdaptiveKL:
    """Ziegler et al. (2019): beta moves by a clipped proportional error toward a target KL."""

    def __init__(self, beta: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, episodes: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * episodes / self.horizon


# ----------------------------------------------------------------------------------------- trainer
@dataclass
class PPOTrainer:
    """Runs ``cfg.steps`` PPO iterations. ``score_fn(reward, episodes)`` scores responses (default: the
    reward model at the last token; a test can plant a rule). ``evaluate(trainer)`` (optional) returns validation metrics;
    the weights with the highest ``select`` metric are saved to ``best_dir``. ``ptx(u)`` gives the
    pretraining windows (x, y) of optimiser update ``u`` (needed when ``cfg.ptx_coef`` > 0)."""

    policy: GPT
    value: ValueModel
    reward: RewardModel
    prompts: Sequence[Sequence[int]]
    end_id: int
    cfg: PpoConfig
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ptx: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None
    checkpoint: Path | None = None
    evaluate: Callable[[PPOTrainer], dict[str, float]] | None = None
    select: str = "valid/gold_score"
    best_dir: Path | None = None
    log: Callable[[dict[str, float], int], None] | None = None
    progress: Callable[[int, dict[str, float]], None] | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per step
    evals: list[dict[str, float]] = field(default_factory=list)  # one row per validation
    ref: GPT | None = None  # the frozen SFT copy; made from the policy when not given
    score_fn: Callable[[nn.Module, Episodes], torch.Tensor] | None = None  # default: the RM (reward_scores)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("PPO needs at least one prompt")
        # dropout off for rollout, old log-probs and updates alike: one function, ratio 1 before a step
        self.policy.to(self.device).eval()
        self.value.to(self.device).eval()
        self.reward = frozen_copy(self.reward).to(self.device)
        self.ref = frozen_copy(self.ref if self.ref is not None else self.policy).to(self.device)
        self.ema = frozen_copy(self.policy).to(self.device) if self.cfg.ema else None
        betas = (self.cfg.beta1, self.cfg.beta2)
        self.opt_policy = self.policy.configure_optimizer(self.cfg.weight_decay, self.cfg.lr, betas)
        self.opt_value = self.value.configure_optimizer(self.cfg.weight_decay, self.cfg.value_lr, betas)
        self.kl_ctl = AdaptiveKL(self.cfg.kl_coef, self.cfg.kl_target, self.cfg.kl_horizon)
        self.step = 0
        self.elapsed = 0.0
        self.resumed_from = -1
        self.best: dict[str, float] = {"value": -math.inf, "step": -1}
        self.dtype = autocast_dtype(self.cfg.dtype, self.device)
        torch.manual_seed(self.seed)
        if self.checkpoint is not None and self.cfg.resume and self.checkpoint.is_file():
            self._restore(load_checkpoint(self.checkpoint, self._config_tag()))
        check_weights(self.policy, self.step)
        check_weights(self.value, self.step)

    # -- checkpoints
    def _config_tag(self) -> dict[str, Any]:
        return {"steps": self.cfg.steps, "params": sum(p.numel() for p in self.policy.parameters()),
                **self.policy.config.to_dict()}  # fmt: skip

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.policy.state_dict(), "value": self.value.state_dict(),
            "opt_policy": self.opt_policy.state_dict(), "opt_value": self.opt_value.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {}, "model_config": self._config_tag(),
            "step": self.step, "kl_coef": self.kl_ctl.value, "elapsed": self.elapsed, "history": self.history,
            "evals": self.evals, "best": self.best, "rng_cpu": torch.get_rng_state(),
        }  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["model"])
        self.value.load_state_dict(state["value"])
        self.opt_policy.load_state_dict(state["opt_policy"])
        self.opt_value.load_state_dict(state["opt_value"])
        if self.ema is not None and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.step, self.elapsed, self.kl_ctl.value = state["step"], state["elapsed"], state["kl_coef"]
        self.history, self.evals, self.best = (
            list(state["history"]),
            list(state["evals"]),
            dict(state["best"]),
        )
        torch.set_rng_state(state["rng_cpu"])
        self.resumed_from = self.step

    def save(self) -> None:
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, self._state())

    # -- pieces
    @property
    def eval_model(self) -> GPT:
        """The weights evaluated and kept: the EMA when there is one."""
        return self.ema if self.ema is not None else self.policy

    def generator(self, *parts: Any, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded by (seed, *parts): the same draws whenever the same step runs again."""
        g = torch.Generator(device=device or self.device)
        return g.manual_seed(random.Random(repr((self.seed, *parts))).getrandbits(63))

    def prompt_batch(self, step: int) -> list[Sequence[int]]:
        """The prompts of ``step``: an endless stream of shuffled passes over the prompts."""
        n, k = len(self.prompts), self.cfg.rollout_prompts
        out = []
        for i in range(step * k, (step + 1) * k):
            epoch, j = divmod(i, n)
            order = list(range(n))
            random.Random(f"{self.seed}/ppo/{epoch}").shuffle(order)
            out.append(self.prompts[order[j]])
        return out

    @torch.no_grad()
    def score(self, ep: Episodes, model: GPT | None = None) -> dict[str, torch.Tensor]:
        """Everything PPO needs about sampled episodes, from ``model`` (default: the policy)."""
        model = model or self.policy
        was = model.training
        model.eval()
        with autocast(self.device, self.dtype):
            logp, ent = token_logprobs(model, ep, entropy=True)
            ref_logp, _ = token_logprobs(self.ref, ep)
            values = token_values(self.value, ep).float()
            rm = (self.score_fn or reward_scores)(self.reward, ep).float()
        model.train(was)
        return {"logp": logp, "ref_logp": ref_logp, "entropy": ent, "values": values, "rm": rm}

    # -- one iteration
    def rollout(self) -> tuple[Episodes, dict[str, torch.Tensor], float]:
        t0 = time.perf_counter()
        with autocast(self.device, self.dtype):
            ep = sample_episodes(self.policy, self.prompt_batch(self.step), self.cfg.max_new_tokens,
                                 self.end_id, temperature=1.0, generator=self.generator("rollout", self.step),
                                 device=self.device)  # fmt: skip
        gen_s = time.perf_counter() - t0
        ep = to(ep, self.device)
        return ep, self.score(ep), gen_s

    def advantages(self, ep: Episodes, s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        actions = ep.actions.float()
        scores = s["rm"] - self.cfg.missing_end_penalty * (~ep.ended).float()
        rewards, kl = per_token_rewards(scores, s["logp"], s["ref_logp"], actions, self.kl_ctl.value)
        adv, returns = gae(rewards, s["values"] * actions, actions, self.cfg.gamma, self.cfg.lam)
        if self.cfg.whiten_advantages:
            adv = whiten(adv, actions)
        return {"scores": scores, "rewards": rewards, "kl": kl, "advantages": adv, "returns": returns}

    def update(
        self, ep: Episodes, s: dict[str, torch.Tensor], a: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        cfg = self.cfg
        sums: dict[str, float] = {}
        n_updates = 0
        per_epoch = math.ceil(len(ep) / cfg.minibatch_size)
        for epoch in range(cfg.ppo_epochs):
            # every epoch deals the episodes into new minibatches (as TRL does), not only a new order
            perm = torch.randperm(
                len(ep), generator=self.generator("minibatches", self.step, epoch, device="cpu")
            )
            for k, rows in enumerate(perm.split(cfg.minibatch_size)):
                rows = rows.to(self.device)
                sub = ep.select(rows)
                L = sub.actions.size(1)
                mb = {"episodes": sub, "logp": s["logp"][rows, :L], "advantages": a["advantages"][rows, :L]}
                u = (self.step * cfg.ppo_epochs + epoch) * per_epoch + k
                ptx = None
                if cfg.ptx_coef > 0 and self.ptx is not None:
                    ptx = tuple(t.to(self.device) for t in self.ptx(u))
                with autocast(self.device, self.dtype):
                    loss, stats = policy_objective(self.policy, mb, cfg, ptx)
                self.opt_policy.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
                self.opt_policy.step()
                with autocast(self.device, self.dtype):
                    v = token_values(self.value, sub).float()
                    vloss, vstats = clipped_value_loss(
                        v, s["values"][rows, :L], a["returns"][rows, :L], sub.actions.float(), cfg.cliprange_value
                    )  # fmt: skip
                self.opt_value.zero_grad(set_to_none=True)
                vloss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.value.parameters(), cfg.grad_clip)
                self.opt_value.step()
                self._ema_update()
                stats.update(vstats, value_loss=vloss.item())
                for key, val in stats.items():
                    sums[key] = sums.get(key, 0.0) + val
                n_updates += 1
        return {k: v / n_updates for k, v in sums.items()}

    @torch.no_grad()
    def _ema_update(self) -> None:
        if self.ema is None:
            return
        d = self.cfg.ema
        for e, p in zip(self.ema.parameters(), self.policy.parameters(), strict=True):
            e.mul_(d).add_(p.detach(), alpha=1 - d)

    def iteration(self) -> dict[str, float]:
        t0 = time.perf_counter()
        ep, s, gen_s = self.rollout()
        a = self.advantages(ep, s)
        stats = self.update(ep, s, a)
        actions = ep.actions.float()
        kl_seq = a["kl"].sum(1)
        beta = self.kl_ctl.value
        self.kl_ctl.update(kl_seq.mean().item(), len(ep))
        step_s = time.perf_counter() - t0
        out = {
            "objective/kl": kl_seq.mean().item(),
            "objective/entropy": (s["entropy"] * actions).sum(1).mean().item(),
            "objective/non_score_reward": (-beta * kl_seq).mean().item(),
            "objective/rlhf_reward": (a["scores"] - beta * kl_seq).mean().item(),
            "objective/scores": a["scores"].mean().item(),
            "objective/rm_score": s["rm"].mean().item(),
            "objective/kl_coef": beta,
            "policy/approxkl_avg": stats["approxkl"],
            "policy/clipfrac_avg": stats["clipfrac"],
            "policy/entropy_avg": stats["entropy"],
            "loss/policy_avg": stats["policy_loss"],
            "loss/value_avg": stats["value_loss"],
            "val/ratio": stats["ratio"],
            "val/clipfrac_avg": stats["value_clipfrac"],
            "response/length": ep.lengths.float().mean().item(),
            "response/end_rate": ep.ended.float().mean().item(),
            "perf/step_s": step_s,
            "perf/generate_s": gen_s,
            "perf/generate_share": gen_s / step_s if step_s > 0 else 0.0,
        }
        if "ptx_loss" in stats:
            out["loss/ptx_avg"] = stats["ptx_loss"]
        return out

    def validate(self) -> None:
        if self.evaluate is None:
            return
        metrics = {"step": self.step, **self.evaluate(self)}
        self.evals.append(metrics)
        if self.log is not None:
            self.log({k: v for k, v in metrics.items() if k != "step"}, self.step)
        value = metrics.get(self.select)
        if value is not None and value > self.best["value"] and self.best_dir is not None:
            from pipeline.model.export import save_model

            save_model(self.eval_model, self.best_dir)
            self.best = {"value": value, "step": self.step}

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        if self.step == 0 and not self.evals:  # the SFT policy itself: KL 0 on the curve
            self.validate()
        while self.step < cfg.steps:
            metrics = self.iteration()
            self.step += 1
            # a diverged policy is stopped before it samples, validates or saves again
            check_loss({"policy loss": metrics["loss/policy_avg"], "value loss": metrics["loss/value_avg"]},
                       self.step)  # fmt: skip
            check_weights(self.policy, self.step)
            check_weights(self.value, self.step)
            self.history.append({"step": self.step, **metrics})
            if self.log is not None:
                self.log(metrics, self.step)
            if self.progress is not None:
                self.progress(self.step, metrics)
            if (cfg.eval_interval and self.step % cfg.eval_interval == 0) or self.step == cfg.steps:
                self.validate()
            if (
                cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0
            ) or self.step == cfg.steps:
                self.elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save()
        self.elapsed += time.perf_counter() - t0
        return {"steps": self.step, "train_s": self.elapsed, "best": self.best}


# ---------------------------------------------------------------------------------- alignment tax
@torch.no_grad()
def lm_loss_on(model: GPT, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross entropy (nats/token) over ``windows`` (N, block_size + 1)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total = n = 0.0
    for chunk in windows.split(batch_size):
        chunk = chunk.to(device)
        x, y = chunk[:, :-1].clamp(min=0), chunk[:, 1:]
        logits, _ = model(x)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                                 reduction="sum").item()  # fmt: skip
        n += (y != -1).sum().item()
    model.train(was)
    return total / max(n, 1)


def spread_windows(tokens: Any, block_size: int, n: int) -> torch.Tensor:
    """``n`` windows of ``block_size + 1`` tokens at evenly spaced offsets over ``tokens``: a fixed
    subset that touches every part of the split (every source, in the mix's order)."""
    import numpy as np

    span = len(tokens) - block_size - 1
    if span < 0:
        raise ValueError(f"{len(tokens)} tokens are fewer than one window of {block_size + 1}")
    starts = np.linspace(0, span, num=min(n, span + 1)).astype(np.int64)
    return torch.from_numpy(
        np.stack([np.asarray(tokens[s : s + block_size + 1], dtype=np.int64) for s in starts])
    )


# --------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def sample_and_score(
    model: GPT, ref: GPT, rm: RewardModel, prompts: Sequence[Sequence[int]], max_new_tokens: int, end_id: int, *,
    temperature: float, seed: int, batch_size: int = 64,
) -> dict[str, list]:  # fmt: skip
    """Responses of ``model`` to ``prompts`` (greedy at temperature 0, else sampled), batched by prompt
    length, with the RM score of each and its KL to ``ref`` (the sum of log pi - log pi_ref over its
    tokens; for greedy responses a log-ratio, not an estimate of the KL)."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[str, list] = {"ids": [None] * len(prompts), "rm": [0.0] * len(prompts), "kl": [0.0] * len(prompts),
                            "ended": [False] * len(prompts)}  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(seed)
    was = model.training
    model.eval()
    for k in range(0, len(order), batch_size):
        rows = order[k : k + batch_size]
        ep = to(sample_episodes(model, [prompts[i] for i in rows], max_new_tokens, end_id,
                                temperature=temperature, generator=gen, device=device), device)  # fmt: skip
        logp, _ = token_logprobs(model, ep)
        ref_logp, _ = token_logprobs(ref, ep)
        kl = ((logp - ref_logp) * ep.actions).sum(1).tolist()
        scores = reward_scores(rm, ep).tolist()
        for j, (i, ids) in enumerate(zip(rows, ep.responses(), strict=True)):
            out["ids"][i], out["rm"][i], out["kl"][i] = ids, scores[j], kl[j]
            out["ended"][i] = bool(ep.ended[j])
    model.train(was)
    return out
