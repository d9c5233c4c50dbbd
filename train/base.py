"""Pretrain a small LLaMA-style base model: ``python -m train.base --config configs/demo.yaml``.

Steps, each cached: the corpus (``data``, e.g. ``stdlib``: prepared as a TFDS dataset), a
byte-level BPE tokenizer trained on its train split, then next-token training with AdamW and a
warmup + cosine schedule (orbax checkpoints in ``<out>.train/checkpoints``, also on SIGTERM and
Ctrl-C; re-running the same command resumes), and finally the model as a Hugging Face directory
``<out>`` (tokenizer included) plus ``<out>/train_metrics.json``: final held-out loss next to a
unigram baseline, steps, tokens/s, wall time. If ``<out>`` is already a complete model directory
the program says so and exits. A run that fails before its first checkpoint removes the
``<out>.train`` it created.

Usage: ``python -m train.base --config CONFIG [--out DIR] [section.key=value ...]``, e.g.
``train.steps=200 model.n_layers=2``. The config is ``train.config.BaseTrainConfig`` (its sections
are described in configs/demo.yaml); an unknown key or a value of the wrong type is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import shutil
import sys
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from pass_jax import checkpoint, data, hf, losses, program_config
from pass_jax import tokenizer as tokenizer_lib
from pass_jax.config import ModelConfig
from pass_jax.model import init_params
from pass_jax.program_config import ArgumentParser, run_cli
from train import LoopResult, check_output_dir, check_resume, restore, train_loop
from train.config import BaseTrainConfig

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.yaml"
)
METRICS_FILE = "train_metrics.json"


@flax.struct.dataclass
class TrainState:
    """Base-model training state: step counter, params, optimizer state."""

    step: jax.Array  # int32 scalar
    params: Any
    opt_state: Any


def make_optimizer(
    lr: float,
    steps: int,
    warmup: int,
    weight_decay: float = 0.1,
    b2: float = 0.95,
    clip: float = 1.0,
) -> optax.GradientTransformation:
    """AdamW, linear warmup to ``lr`` then cosine decay to lr/10, global-norm clipping.

    Weight decay applies to matrices (Dense kernels, embeddings), not to norm scales.
    """
    if not 0 <= warmup < steps:
        raise ValueError(f"need 0 <= warmup < steps, got warmup={warmup}, steps={steps}")
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end_value=lr / 10)

    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: path[-1].key in ("kernel", "embedding"), params
        )

    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(schedule, b2=b2, weight_decay=weight_decay, mask=decay_mask),
    )


def init_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """Step 0: random params (``model.init_params``) and fresh optimizer state."""
    params = init_params(cfg, jax.random.PRNGKey(seed))
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
    )


def train_step(
    state: TrainState, batch: dict, *, cfg: ModelConfig, optimizer: optax.GradientTransformation
):
    """One AdamW step on the next-token loss of ``batch`` (tokens_BxT, mask_BxT)."""

    def loss_fn(params):
        return losses.lm_loss(cfg, params, batch["tokens"], batch["mask"])

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def heldout_loss(cfg: ModelConfig, params, batches: list[dict]) -> float:
    """Mean next-token cross-entropy (nats/token) over fixed held-out batches."""
    total = count = 0.0
    for batch in batches:
        _, metrics = losses.lm_loss(cfg, params, batch["tokens"], batch["mask"])
        n = float(metrics["num_targets"])
        total, count = total + float(metrics["loss"]) * n, count + n
    return total / max(count, 1.0)


def is_complete(model_dir: str) -> bool:
    """True if ``model_dir`` holds a config, weights and a tokenizer (a finished run's output)."""
    return all(
        os.path.isfile(os.path.join(model_dir, f))
        for f in ("config.json", "model.safetensors", "tokenizer.json")
    )


def work_dir(out: str) -> str:
    """Where the tokenizer and checkpoints of the model ``out`` live while it trains."""
    return out.rstrip("/") + ".train"


def _parse(argv):
    parser = ArgumentParser(
        prog="python -m train.base", description="Pretrain a small LLaMA-style base model."
    )
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="YAML config (default: configs/demo.yaml)"
    )
    parser.add_argument("--out", help="output model directory (default: the config's 'out')")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100"
    )
    return parser.parse_intermixed_args(argv)


@dataclasses.dataclass
class Corpus:
    """The training corpus's splits (grain datasets of documents) and its tokenizer."""

    train: Any
    heldout: Any
    tok: Any


@dataclasses.dataclass
class HeldOut:
    """Fixed held-out batches, the unigram baseline's loss on them, and the held-out loss of
    each evaluation so far (``{'step', 'heldout_loss'}``, saved with every checkpoint)."""

    batches: list[dict]
    unigram: float
    history: list[dict]

    def evaluate(self, cfg: ModelConfig, params, step: int) -> float:
        """The held-out loss of ``params`` at ``step``, added to the history."""
        loss = heldout_loss(cfg, params, self.batches)
        self.history.append({"step": step, "heldout_loss": loss})
        return loss

    def final(self, cfg: ModelConfig, params, steps: int) -> float:
        """The held-out loss at the last step: evaluated there already, or now."""
        if self.history and self.history[-1]["step"] == steps:
            return self.history[-1]["heldout_loss"]
        return heldout_loss(cfg, params, self.batches)


def load_config(args: argparse.Namespace) -> BaseTrainConfig:
    """The run's config: the YAML ``--config``, then its ``key=value`` overrides, then ``--out``."""
    return program_config.load(BaseTrainConfig, args.config, overrides=args.overrides, args=args)


def run(config: BaseTrainConfig) -> dict:
    """Prepares data and tokenizer, trains (resuming if checkpointed), writes ``config.out``.

    Returns the metrics written to ``<out>/train_metrics.json``, or ``{'preempted': step,
    'exit_code': code}`` if SIGTERM or Ctrl-C stopped training (after a checkpoint). Bad
    settings, unwritable output directories and checkpoints made with another config are found
    before any work.
    """
    t0 = time.perf_counter()
    mngr, resume_step = _check_before_work(config)
    corpus = _corpus(config)
    cfg = _model_config(config, corpus.tok)
    t = config.train
    optimizer = make_optimizer(t.lr, t.steps, t.warmup, t.weight_decay, t.b2, t.clip)
    batches = data.token_batches(corpus.train, corpus.tok, t.seq_len, t.batch_size, t.seed)
    state, history = _start(config, cfg, optimizer, mngr, resume_step, batches)
    heldout = _heldout(config, cfg, corpus, history)
    result = _train(config, cfg, optimizer, state, batches, mngr, heldout)
    mngr.close()
    if result.preempted:
        return {"preempted": result.step, "exit_code": result.exit_code}
    return _finish(config, cfg, corpus.tok, result, heldout, t0)


def _check_before_work(config: BaseTrainConfig) -> tuple[Any, int | None]:
    """The checks made before any work (writable outputs, a corpus the model can be trained on,
    checkpoints made with this config); the checkpoint manager and the step to resume from."""
    work = work_dir(config.out)
    for name, path in (
        ("the output directory", config.out),
        ("the tokenizer directory", _tokenizer_dir(config)),
        ("the checkpoint directory", os.path.join(work, "checkpoints")),
    ):
        check_output_dir(path, name)
    if data.parse_spec(config.data).kind == "self":
        raise ValueError("the base model cannot be trained on 'self' (text sampled from itself)")
    mngr = checkpoint.manager(
        os.path.join(work, "checkpoints"),
        save_every=config.train.save_every,
        keep=config.train.keep,
    )
    resume_step = check_resume(
        mngr,
        program_config.resume_view(config),
        f"delete {work} or use another --out",
        program_config.resume_defaults(config),
    )
    return mngr, resume_step


def _tokenizer_dir(config: BaseTrainConfig) -> str:
    return config.tokenizer.dir or os.path.join(work_dir(config.out), "tokenizer")


def _corpus(config: BaseTrainConfig) -> Corpus:
    """The corpus's train and held-out splits, and the BPE tokenizer trained on the first
    (cached in its directory)."""
    spec = data.parse_spec(config.data)
    train_texts = data.text_source(spec, "train", config.data_dir)
    heldout_texts = data.text_source(spec, "heldout", config.data_dir)
    print(
        f"corpus {config.data}: {len(train_texts)} train / {len(heldout_texts)} held-out documents",
        file=sys.stderr,
    )
    max_docs = config.tokenizer.max_docs or len(train_texts)
    tok = tokenizer_lib.train_bpe(
        (train_texts[i] for i in range(min(max_docs, len(train_texts)))),
        config.tokenizer.vocab_size,
        _tokenizer_dir(config),
    )
    return Corpus(train_texts, heldout_texts, tok)


def _model_config(config: BaseTrainConfig, tok) -> ModelConfig:
    """The architecture from the config's ``model`` section; vocab and special ids from ``tok``."""
    cfg = config.model_config(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_ids=(tok.eos_token_id,),
        pad_token_id=tok.pad_token_id,
        unk_token_id=tok.unk_token_id,
    )
    data.check_seq_len(config.train.seq_len, cfg.max_position)
    return cfg


def _start(
    config: BaseTrainConfig, cfg: ModelConfig, optimizer, mngr, resume_step: int | None, batches
) -> tuple[TrainState, list[dict]]:
    """Step 0 (random params), or the checkpoint to resume from with its held-out history (and
    ``batches`` moved to its position)."""
    seed = config.train.seed
    if resume_step is None:
        return init_state(cfg, optimizer, seed), []
    target = jax.eval_shape(lambda: init_state(cfg, optimizer, seed))
    restored = restore(mngr, resume_step, target, batches)
    return restored.state, list(restored.meta["history"])


def _heldout(
    config: BaseTrainConfig, cfg: ModelConfig, corpus: Corpus, history: list[dict]
) -> HeldOut:
    """The fixed held-out batches and the unigram baseline (fit on train batches of another
    seed); prints the model's size and the baseline."""
    t = config.train
    eval_batches = list(
        itertools.islice(
            data.token_batches(
                corpus.heldout, corpus.tok, t.seq_len, t.batch_size, t.seed, shuffle=False
            ),
            t.eval_batches,
        )
    )
    unigram = data.unigram_loss(
        itertools.islice(
            data.token_batches(corpus.train, corpus.tok, t.seq_len, t.batch_size, t.seed + 1),
            t.unigram_batches,
        ),
        eval_batches,
        cfg.vocab_size,
    )
    print(
        f"model: {cfg.num_params() / 1e6:.2f}M params, vocab {cfg.vocab_size}; unigram "
        f"baseline held-out loss {unigram:.4f}",
        file=sys.stderr,
    )
    return HeldOut(eval_batches, unigram, history)


def _train(
    config: BaseTrainConfig,
    cfg: ModelConfig,
    optimizer,
    state: TrainState,
    batches,
    mngr,
    heldout: HeldOut,
) -> LoopResult:
    """``train_loop`` from ``state`` to ``train.steps``, evaluating into ``heldout``."""
    t = config.train
    resume_key = program_config.resume_view(config)
    step_fn = jax.jit(
        functools.partial(train_step, cfg=cfg, optimizer=optimizer), donate_argnums=(0,)
    )
    return train_loop(
        state,
        lambda s, b: step_fn(s, {"tokens": b["tokens"], "mask": b["mask"]}),
        batches,
        start_step=int(state.step),
        steps=t.steps,
        mngr=mngr,
        meta_fn=lambda step: {"resume_key": resume_key, "history": heldout.history},
        evaluate=lambda s, step: {"heldout": heldout.evaluate(cfg, s.params, step)},
        eval_every=t.eval_every,
        postfix_fn=lambda m: {"loss": float(m["loss"])},
        log_every=t.log_every,
        tokens_per_step=t.batch_size * t.seq_len,
        desc="base",
    )


def _finish(
    config: BaseTrainConfig, cfg: ModelConfig, tok, result: LoopResult, heldout: HeldOut, t0: float
) -> dict:
    """Writes the model directory ``config.out`` and its metrics file (wall time since
    ``t0``); returns the metrics."""
    t = config.train
    final = heldout.final(cfg, result.state.params, t.steps)
    hf.save_hf(cfg, result.state.params, config.out, tokenizer=tok)
    tokens_per_step = t.batch_size * t.seq_len
    metrics = {
        "heldout_loss": final,
        "unigram_loss": heldout.unigram,
        "steps": t.steps,
        "steps_this_run": result.steps_run,
        "tokens_per_s": result.steps_per_s * tokens_per_step if result.steps_run > 1 else None,
        "train_tokens": t.steps * tokens_per_step,
        "wall_time_s": time.perf_counter() - t0,
        "num_params": cfg.num_params(),
        "heldout_history": heldout.history,
        "config": program_config.to_dict(config),
    }
    with open(os.path.join(config.out, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """The program; returns the exit status."""
    args = _parse(argv)
    config = load_config(args)
    out = config.out
    if not out:
        raise ValueError("no output directory: give --out or set 'out' in the config")
    if is_complete(out):
        print(
            f"{out} is already a complete model directory (delete it to retrain)", file=sys.stderr
        )
        return 0
    work = work_dir(out)
    new_work = not os.path.exists(work)
    try:
        metrics = run(config)
    except BaseException:  # nothing saved yet: leave no half-made work directory behind
        if new_work and not checkpoint.has_checkpoint(os.path.join(work, "checkpoints")):
            shutil.rmtree(work, ignore_errors=True)
        raise
    if "preempted" in metrics:
        return metrics["exit_code"]
    print(
        f"wrote {out}: held-out loss {metrics['heldout_loss']:.4f} nats/token "
        f"(unigram baseline {metrics['unigram_loss']:.4f}), {metrics['steps']} steps, "
        f"{metrics['tokens_per_s'] or 0:.0f} tokens/s, {metrics['wall_time_s']:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
