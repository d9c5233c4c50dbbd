"""The training programs' settings: ``BaseTrainConfig`` (``train.base``) and
``LookaheadTrainConfig`` (``train.lookahead``), frozen dataclasses of nested sections.

Both are read by ``pass_jax.program_config.load``: the YAML file, then ``key=value`` overrides
(train.base) or flags named like the fields (train.lookahead), checked once against the
annotations (unknown keys, wrong types, missing keys) and here in ``__post_init__`` (ranges,
choices). Fields marked ``free_on_resume`` (cadence: eval/save/log/keep; paths; memory layout)
may change when a run resumes from a checkpoint; every other field must match it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pass_jax import lookahead, losses
from pass_jax.config import ModelConfig
from pass_jax.model import REMAT_POLICIES
from pass_jax.program_config import free_on_resume, subset
from train import check_seed

# ModelConfig fields the base model takes from its tokenizer, not from the config file.
FROM_TOKENIZER = ("vocab_size", "bos_token_id", "eos_token_ids", "pad_token_id", "unk_token_id")

ModelSettings = subset(
    ModelConfig,
    "ModelSettings",
    FROM_TOKENIZER,
    doc="""The 'model' section:
    the architecture (``ModelConfig`` fields); vocabulary and special ids come from the
    tokenizer.""",
)


@dataclass(frozen=True, kw_only=True)
class TokenizerSettings:
    """The 'tokenizer' section: a byte-level BPE trained on the corpus's train split."""

    vocab_size: int
    max_docs: int | None = None  # train on at most this many documents (None: all)
    dir: str | None = None  # None: <out>.train/tokenizer


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """The 'train' section of train.base: AdamW, warmup + cosine, evaluation and checkpoints."""

    seq_len: int
    batch_size: int
    steps: int
    lr: float  # AdamW peak; linear warmup, cosine decay to lr/10
    warmup: int
    weight_decay: float = 0.1
    b2: float = 0.95
    clip: float = 1.0
    seed: int = 0
    eval_every: int = free_on_resume()  # held-out loss every N steps (and at the end)
    eval_batches: int
    unigram_batches: int  # train batches the unigram baseline is fit on
    save_every: int = free_on_resume()  # checkpoint every N steps (and at the end, on SIGTERM)
    keep: int = free_on_resume(2)
    log_every: int = free_on_resume(10)

    def __post_init__(self):
        check_seed(self.seed, "train.seed")


@dataclass(frozen=True, kw_only=True)
class BaseTrainConfig:
    """``python -m train.base``: pretrain a small LLaMA-style model (configs/demo.yaml)."""

    out: str | None = free_on_resume(None)  # the model directory written at the end (--out)
    data: str  # --data spec of the training corpus
    data_dir: str | None = free_on_resume(None)  # where TFDS datasets live / stdlib is prepared
    tokenizer: TokenizerSettings
    model: ModelSettings
    train: TrainSettings
    lookahead: dict[str, Any] | None = free_on_resume(None)  # train.lookahead's section

    def __post_init__(self):
        self.model_config(vocab_size=1)  # the architecture's own checks, before any work

    def model_config(self, **from_tokenizer) -> ModelConfig:
        """The ``ModelConfig``: the 'model' section plus ``FROM_TOKENIZER`` values."""
        return ModelConfig.from_dict({**dataclasses.asdict(self.model), **from_tokenizer})


@dataclass(frozen=True, kw_only=True)
class LookaheadSettings:
    """The 'lookahead' section (configs/paper.yaml: the paper's recipe); flags named like the
    fields (``--lr``, ``--steps``, ...) override it."""

    lr: float
    weight_decay: float = 0.0
    batch_size: int  # rows per step in all: each of several processes reads its share
    seq_len: int
    steps: int
    warmup: int | None = None  # None: set to warmup_fraction * steps
    warmup_fraction: float = 0.2
    groups: int  # insertion groups per sequence (packed)
    loss: str  # losses.LOSS_KINDS
    targets: str = "all"  # losses.TARGETS; greedy: only after the model's own greedy choices
    init: str = "mean"  # lookahead.parse_init
    dtype: str  # base model compute dtype
    seed: int
    temperature: float  # held-out acceptance estimate (0: greedy)
    top_k: int
    eval_every: int = free_on_resume()
    eval_batches: int
    eval_groups: int = 8  # insertion points per held-out row
    # > 0: the last eval_new_tokens of each held-out row are the frozen model's own continuation
    # (at the estimate's temperature / top-k), and the estimate drafts only there, as decoding does
    eval_new_tokens: int = 0
    save_every: int = free_on_resume()
    keep: int = free_on_resume(2)
    log_every: int = free_on_resume(10)
    self_texts: int = 256  # documents sampled from the model for --data self
    remat: str = free_on_resume("none")  # model.REMAT_POLICIES: memory only, same results

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}")
        lookahead.parse_init(self.init)
        if self.groups < 1:
            raise ValueError(f"--groups must be >= 1, got {self.groups}")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if not 0 <= self.eval_new_tokens < self.seq_len:
            raise ValueError(
                f"--eval-new-tokens must be 0 (off) or less than --seq-len {self.seq_len} "
                f"(the rest of the row is the prompt), got {self.eval_new_tokens}"
            )
        losses.check_loss_kind(self.loss)
        losses.check_targets(self.targets)
        check_seed(self.seed, "--seed")
        if self.warmup is None:  # frozen: set once, here
            object.__setattr__(self, "warmup", int(round(self.warmup_fraction * self.steps)))


@dataclass(frozen=True, kw_only=True)
class LookaheadTrainConfig:
    """``python -m train.lookahead``: train the look-ahead embeddings of a frozen model."""

    model: str = free_on_resume()  # --model; a checkpoint records its embedding hash instead
    data: str  # --data
    num_lookahead: int  # --num-lookahead, L
    out: str = free_on_resume()  # --out
    data_dir: str | None = free_on_resume(None)  # --data-dir
    add_special_tokens: bool = True  # --no-special-tokens: documents without them
    lookahead: LookaheadSettings

    def __post_init__(self):
        if self.num_lookahead < 1:
            raise ValueError(f"--num-lookahead must be >= 1, got {self.num_lookahead}")
        new, L = self.lookahead.eval_new_tokens, self.num_lookahead
        if 0 < new <= L:
            raise ValueError(
                f"--eval-new-tokens {new} leaves no insertion point for L={L} look-ahead "
                f"tokens: the next token and every LA target must be generated (need > {L})"
            )
