"""Params sections of the InstructGPT stages (Ouyang et al. 2022): instructions, sft, comparisons,
reward, ppo. Pydantic only, so the labeler side stays free of torch."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.section import Section

FAMILIES = (
    "module_of", "docstring", "passage",  # grounded in the corpus (this Python's stdlib)
    "copy", "first_word", "last_word", "count_words", "reverse_words", "sort_words", "arithmetic",  # by rule
    "forbidden", "unanswerable",
)  # fmt: skip
Family = Literal[
    "module_of", "docstring", "passage", "copy", "first_word", "last_word", "count_words", "reverse_words",
    "sort_words", "arithmetic", "forbidden", "unanswerable",
]  # fmt: skip
DemoLayout = Literal["auto", "prompt_response", "dolly", "alpaca", "messages", "oasst", "hh"]
ComparisonLayout = Literal["auto", "chosen_rejected", "ranked"]


class DataSource(Section):
    """Real data: a local file (.jsonl, .jsonl.gz, .json, .parquet) or a ``datasets`` name."""

    path: str | None = None  # relative to the project root
    dataset: str | None = None  # a hub name (needs common.offline: false) or a local dataset folder
    config: str | None = None
    split: str = "train"
    layout: str = "auto"  # narrowed per use below
    max_records: int | None = Field(None, ge=1)
    # characters of one example (prompt turns + response; each response of a comparison): longer
    # ones are dropped and counted, never cut (a cut response would teach a truncated answer)
    max_chars: int = Field(20_000, ge=1)

    @model_validator(mode="after")
    def _one_origin(self) -> DataSource:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("set exactly one of path or dataset")
        return self


class DemonstrationSource(DataSource):
    layout: DemoLayout = "auto"


class ComparisonSource(DataSource):
    layout: ComparisonLayout = "auto"


class SplitSizes(Section):
    """Prompts per split. InstructGPT had about 13k SFT, 33k RM and 31k PPO prompts."""

    sft: int = Field(3000, ge=1)
    rm: int = Field(1600, ge=1)
    ppo: int = Field(800, ge=1)
    eval: int = Field(1200, ge=1)


class InstructionsConfig(Section):
    """The embedded instruction suite (every answer computable by rule or read from the corpus), or
    real demonstrations and comparisons, dealt into prompt-disjoint splits."""

    families: list[Family] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    sizes: SplitSizes = SplitSizes()
    max_modules: int | None = Field(None, ge=1)  # stdlib modules read for the grounded families; None = all
    system: str | None = None  # a system message before every prompt (costs tokens in a 128 context)
    demonstrations: DemonstrationSource | None = None  # real SFT data instead of the suite
    comparisons: ComparisonSource | None = None  # real rankings for the reward model

    @model_validator(mode="after")
    def _unique(self) -> InstructionsConfig:
        if len(set(self.families)) != len(self.families):
            raise ValueError("families lists a family more than once")
        return self


class TrainSection(Section):
    """What SFT and the reward model share: the supervised loop's recipe."""

    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decay to this fraction of lr
    warmup_fraction: float = Field(0.03, ge=0, lt=1)
    epochs: int = Field(4, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    eval_interval: int = Field(0, ge=0)  # steps; 0 = only at the end
    checkpoint_interval: int = Field(50, ge=0)
    resume: bool = True
    dtype: Literal["auto", "float32", "bfloat16"] | None = None  # None = common.dtype
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc_per_node: int = Field(1, ge=1)  # > 1: the stage relaunches itself under torchrun (DDP);
    # batch_size is per process, so the global batch grows with it


class SftConfig(TrainSection):
    """InstructGPT SFT: 16 epochs, cosine lr, residual dropout 0.2, loss on the response only; the
    checkpoint kept is the one with the best validation loss."""

    epochs: int = Field(6, ge=1)
    eval_interval: int = Field(100, ge=0)  # steps between validations (best checkpoint); 0 = at the end
    # all of the model's dropout: embeddings, attention weights and residual branches (GPT-2's one rate);
    # the paper names residual dropout 0.2, for 175B
    dropout: float = Field(0.1, ge=0, lt=1)
    val_fraction: float = Field(0.05, gt=0, lt=1)  # of the SFT split, for the validation loss
    eval_prompts: int = Field(20, ge=1)  # per family, greedy at each evaluation (all at the end)
    max_new_tokens: int = Field(48, ge=1)
    fewshot: int = Field(3, ge=0)  # the pretrained baseline: this many solved examples in the prompt


class ComparisonsConfig(Section):
    """K responses per RM prompt sampled from SFT, ranked by the simulated labeler (or real rankings)."""

    k_min: int = Field(4, ge=2)  # InstructGPT showed labelers 4 to 9 responses per prompt
    k_max: int = Field(9, ge=2)
    temperature: float = Field(1.0, gt=0)
    # a mix of policies, as InstructGPT's K came from several models: a prompt's responses take these
    # temperatures in turn (from a random one on); None = all at ``temperature``
    temperatures: list[Annotated[float, Field(gt=0)]] | None = Field([0.7, 1.0, 1.3], min_length=1)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(64, ge=1)  # sequences per generation batch
    noise: float = Field(0.33, ge=0, le=0.5)  # each pairwise comparison flipped with this probability:
    # 0.33 makes two simulated labelers agree on ~73% of pairs, as InstructGPT's training labelers did
    source: Literal["labeler", "data"] = "labeler"  # data: the rankings of instructions.comparisons
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _k(self) -> ComparisonsConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self


class RewardConfig(TrainSection):
    """The RM: SFT's body with a scalar head on the final token; all C(K,2) pairs of a prompt form one
    batch element (weight 1/C(K,2)); afterwards a bias makes SFT demonstrations score 0 on average."""

    lr: float = Field(3e-4, gt=0)
    epochs: int = Field(2, ge=1)  # the paper trains one epoch: more overfits
    batch_size: int = Field(4, ge=1)  # prompts (each with its K responses) per batch
    val_fraction: float = Field(0.2, gt=0, lt=1)  # of the comparison prompts, held out
    bias_samples: int = Field(512, ge=1)  # SFT demonstrations used for the bias shift


class PpoConfig(Section):
    """InstructGPT's RL step (Ouyang et al. 2022, section 3.5): PPO on the PPO split's prompts with a
    per-token KL penalty to the SFT model, a value model initialised from the RM and, for PPO-ptx,
    the pretraining LM loss mixed in with coefficient ``ptx_coef`` (gamma). Rollouts sample at
    temperature 1 from the whole distribution (no top-k, no top-p): the KL estimate is only unbiased
    for samples of the policy itself."""

    steps: int = Field(40, ge=1)  # rollout batches (PPO iterations)
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1
    )  # this run's own seed (rollouts, minibatch order, ptx windows); None =
    # common.seed. The validation/test prompts and their sampling stay on common.seed, so seeds compare alike
    rollout_prompts: int = Field(32, ge=1)  # episodes per rollout batch
    minibatch_size: int = Field(8, ge=1)  # episodes per optimiser step
    ppo_epochs: int = Field(4, ge=1)  # passes over each rollout batch
    lr: float = Field(1e-4, gt=0)  # policy
    value_lr: float = Field(1e-4, gt=0)  # value model
    weight_decay: float = Field(0.0, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    kl_coef: float = Field(0.05, ge=0)  # beta (paper 0.02): reward = RM - beta * (log pi - log pi_SFT)
    kl_target: float | None = Field(None, gt=0)  # adaptive KL controller (Ziegler et al. 2019): target KL
    kl_horizon: int = Field(10000, ge=1)  # its horizon in episodes
    gamma: float = Field(1.0, ge=0, le=1)  # discount
    lam: float = Field(0.95, ge=0, le=1)  # GAE lambda
    cliprange: float = Field(0.2, gt=0)  # policy ratio clip
    cliprange_value: float = Field(0.2, gt=0)  # value clip around the rollout's values
    whiten_advantages: bool = True
    missing_end_penalty: float = Field(1.0, ge=0)  # off the RM score of a response with no <|end|>
    max_new_tokens: int = Field(48, ge=1)
    ptx_coef: float = Field(0.0, ge=0)  # gamma of PPO-ptx on the mean per-token LM loss; 0 = plain PPO
    ptx_batch_size: int = Field(8, ge=1)  # pretraining windows (block_size tokens) per optimiser step
    ema: float | None = Field(None, gt=0, lt=1)  # decay of an EMA of the policy weights (evaluated, kept)
    val_prompts: int = Field(300, ge=1)  # of the eval split: picks the best checkpoint (gold score)
    test_prompts: int | None = Field(600, ge=1)  # of the rest of the eval split (None = all): final figures
    eval_interval: int = Field(5, ge=0)  # steps between validation (gold + RM score vs KL); 0 = at the end
    tax_windows: int = Field(32, ge=1)  # pretraining validation windows for the alignment tax
    checkpoint_interval: int = Field(10, ge=0)
    resume: bool = True
    # ratios of log-probabilities want float32; None = common.dtype
    dtype: Literal["auto", "float32", "bfloat16"] | None = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _sizes(self) -> PpoConfig:
        if self.minibatch_size > self.rollout_prompts:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must not exceed rollout_prompts ({self.rollout_prompts})"
            )
        return self
