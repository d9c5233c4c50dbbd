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
``train.steps=200 model.n_layers=2``. The config's sections are described in configs/demo.yaml;
an unknown key or a value of the wrong type is an error.
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

from pass_jax import checkpoint, data, hf, losses, tokenizer as tokenizer_lib
from pass_jax.config import ModelConfig, apply_overrides, load_yaml
from pass_jax.model import init_params
from train import (check_output_dir, check_resume, check_seed, check_types, require, run_cli,
                   train_loop)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "demo.yaml")
METRICS_FILE = "train_metrics.json"
_TRAIN_KEYS = ("seq_len", "batch_size", "steps", "lr", "warmup", "eval_every", "eval_batches",
               "unigram_batches", "save_every")
# Keys that only change how often the loop logs / evaluates / saves: free to change on resume.
_CADENCE_KEYS = ("eval_every", "save_every", "keep", "log_every")
_INT, _FLOAT, _STR = (int,), (float, int), (str,)
_OPTIONAL_INT, _OPTIONAL_STR = (int, type(None)), (str, type(None))
# The types a 'model' key may have, by its ModelConfig field annotation.
_FIELD_TYPES = {"int": _INT, "float": _FLOAT, "str": _STR, "bool": (bool,),
                "int | None": _OPTIONAL_INT, "RopeScaling | None": (dict, type(None))}
_FROM_TOKENIZER = ("vocab_size", "bos_token_id", "eos_token_ids", "pad_token_id", "unk_token_id")
# Every key a config may have, with its types (``check_types``); 'lookahead' is train.lookahead's.
_SCHEMA = {
    "out": _STR, "data": _STR, "data_dir": _OPTIONAL_STR, "lookahead": (dict,),
    "tokenizer": {"vocab_size": _INT, "max_docs": _OPTIONAL_INT, "dir": _OPTIONAL_STR},
    "model": {f.name: _FIELD_TYPES[f.type] for f in dataclasses.fields(ModelConfig)
              if f.name not in _FROM_TOKENIZER},
    "train": {"seq_len": _INT, "batch_size": _INT, "steps": _INT, "lr": _FLOAT, "warmup": _INT,
              "weight_decay": _FLOAT, "b2": _FLOAT, "clip": _FLOAT, "seed": _INT,
              "eval_every": _INT, "eval_batches": _INT, "unigram_batches": _INT,
              "save_every": _INT, "keep": _INT, "log_every": _INT},
}


@flax.struct.dataclass
class TrainState:
    """Base-model training state: step counter, params, optimizer state."""

    step: jax.Array  # int32 scalar
    params: Any
    opt_state: Any


def make_optimizer(lr: float, steps: int, warmup: int, weight_decay: float = 0.1,
                   b2: float = 0.95, clip: float = 1.0) -> optax.GradientTransformation:
    """AdamW, linear warmup to ``lr`` then cosine decay to lr/10, global-norm clipping.

    Weight decay applies to matrices (Dense kernels, embeddings), not to norm scales.
    """
    if not 0 <= warmup < steps:
        raise ValueError(f"need 0 <= warmup < steps, got warmup={warmup}, steps={steps}")
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end_value=lr / 10)

    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: path[-1].key in ("kernel", "embedding"), params)

    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(schedule, b2=b2, weight_decay=weight_decay, mask=decay_mask))


def init_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """Step 0: random params (``model.init_params``) and fresh optimizer state."""
    params = init_params(cfg, jax.random.PRNGKey(seed))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def train_step(state: TrainState, batch: dict, *, cfg: ModelConfig,
               optimizer: optax.GradientTransformation):
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
    return all(os.path.isfile(os.path.join(model_dir, f))
               for f in ("config.json", "model.safetensors", "tokenizer.json"))


def _model_config(conf: dict, tok) -> ModelConfig:
    """The architecture from the config's ``model`` section; vocab and special ids from ``tok``."""
    return ModelConfig.from_dict({
        **conf["model"], "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
        "eos_token_ids": (tok.eos_token_id,), "pad_token_id": tok.pad_token_id,
        "unk_token_id": tok.unk_token_id})


def _resume_key(conf: dict) -> dict:
    """The parts of the config a checkpoint must agree with to be resumed."""
    train = {k: v for k, v in conf["train"].items() if k not in _CADENCE_KEYS}
    return {"data": conf["data"], "tokenizer": conf["tokenizer"], "model": conf["model"],
            "train": train}


def work_dir(out: str) -> str:
    """Where the tokenizer and checkpoints of the model ``out`` live while it trains."""
    return out.rstrip("/") + ".train"


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m train.base",
                                     description="Pretrain a small LLaMA-style base model.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: "
                        "configs/demo.yaml)")
    parser.add_argument("--out", help="output model directory (default: the config's 'out')")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.steps=100")
    return parser.parse_intermixed_args(argv)


def run(conf: dict, out: str) -> dict:
    """Prepares data and tokenizer, trains (resuming if checkpointed), writes ``out``.

    Returns the metrics written to ``<out>/train_metrics.json``, or ``{'preempted': step,
    'exit_code': code}`` if SIGTERM or Ctrl-C stopped training (after a checkpoint). Bad
    settings, unwritable output directories and checkpoints made with another config are found
    before any work.
    """
    t0 = time.perf_counter()
    require(conf, ("data", "tokenizer", "model", "train"), "the config")
    tok_conf = require(conf["tokenizer"], ("vocab_size",), "the config's 'tokenizer' section")
    require(conf["model"], (), "the config's 'model' section")
    tc = require(conf["train"], _TRAIN_KEYS, "the config's 'train' section")
    seq_len, batch_size, seed = tc["seq_len"], tc["batch_size"], tc.get("seed", 0)
    check_seed(seed, "train.seed")
    work = work_dir(out)
    tok_dir = tok_conf.get("dir") or os.path.join(work, "tokenizer")
    for name, path in (("the output directory", out), ("the tokenizer directory", tok_dir),
                       ("the checkpoint directory", os.path.join(work, "checkpoints"))):
        check_output_dir(path, name)
    spec = data.parse_spec(conf["data"])
    if spec.kind == "self":
        raise ValueError("the base model cannot be trained on 'self' (text sampled from itself)")
    mngr = checkpoint.manager(os.path.join(work, "checkpoints"), save_every=tc["save_every"],
                              keep=tc.get("keep", 2))
    resume_key = _resume_key(conf)
    resume_step = check_resume(mngr, resume_key, f"delete {work} or use another --out")
    data_dir = conf.get("data_dir")
    train_texts = data.text_source(spec, "train", data_dir)
    heldout_texts = data.text_source(spec, "heldout", data_dir)

    print(f"corpus {conf['data']}: {len(train_texts)} train / {len(heldout_texts)} held-out "
          "documents", file=sys.stderr)
    max_docs = tok_conf.get("max_docs") or len(train_texts)
    tok = tokenizer_lib.train_bpe(
        (train_texts[i] for i in range(min(max_docs, len(train_texts)))),
        tok_conf["vocab_size"], tok_dir)
    cfg = _model_config(conf, tok)
    data.check_seq_len(seq_len, cfg.max_position)

    steps = tc["steps"]
    optimizer = make_optimizer(tc["lr"], steps, tc["warmup"], tc.get("weight_decay", 0.1),
                               tc.get("b2", 0.95), tc.get("clip", 1.0))
    batches = data.token_batches(train_texts, tok, seq_len, batch_size, seed)
    history: list[dict] = []  # held-out loss per evaluation
    if resume_step is None:
        state = init_state(cfg, optimizer, seed)
    else:
        target = jax.eval_shape(lambda: init_state(cfg, optimizer, seed))
        restored = checkpoint.restore(mngr, target, resume_step)
        state, history = restored.state, list(restored.meta["history"])
        data.restore_iterator(batches, restored.data_state)
        print(f"resuming from step {restored.step} ({mngr.directory})", file=sys.stderr)

    eval_batches = list(itertools.islice(
        data.token_batches(heldout_texts, tok, seq_len, batch_size, seed, shuffle=False),
        tc["eval_batches"]))
    unigram = data.unigram_loss(
        itertools.islice(data.token_batches(train_texts, tok, seq_len, batch_size, seed + 1),
                         tc["unigram_batches"]), eval_batches, cfg.vocab_size)
    print(f"model: {cfg.num_params() / 1e6:.2f}M params, vocab {cfg.vocab_size}; unigram "
          f"baseline held-out loss {unigram:.4f}", file=sys.stderr)

    def evaluate(state, step):
        loss = heldout_loss(cfg, state.params, eval_batches)
        history.append({"step": step, "heldout_loss": loss})
        return {"heldout": loss}

    step_fn = jax.jit(functools.partial(train_step, cfg=cfg, optimizer=optimizer),
                      donate_argnums=(0,))
    tokens_per_step = batch_size * seq_len
    result = train_loop(
        state, lambda s, b: step_fn(s, {"tokens": b["tokens"], "mask": b["mask"]}), batches,
        start_step=int(state.step), steps=steps, mngr=mngr,
        meta_fn=lambda step: {"resume_key": resume_key, "history": history},
        evaluate=evaluate, eval_every=tc["eval_every"],
        postfix_fn=lambda m: {"loss": float(m["loss"])}, log_every=tc.get("log_every", 10),
        tokens_per_step=tokens_per_step, desc="base")
    mngr.close()
    if result.preempted:
        return {"preempted": result.step, "exit_code": result.exit_code}
    final = history[-1]["heldout_loss"] if history and history[-1]["step"] == steps else \
        heldout_loss(cfg, result.state.params, eval_batches)
    hf.save_hf(cfg, result.state.params, out, tokenizer=tok)
    metrics = {
        "heldout_loss": final,
        "unigram_loss": unigram,
        "steps": steps,
        "steps_this_run": result.steps_run,
        "tokens_per_s": result.steps_per_s * tokens_per_step if result.steps_run > 1 else None,
        "train_tokens": steps * tokens_per_step,
        "wall_time_s": time.perf_counter() - t0,
        "num_params": cfg.num_params(),
        "heldout_history": history,
        "config": conf,
    }
    with open(os.path.join(out, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """The program; returns the exit status."""
    args = _parse(argv)
    conf = apply_overrides(load_yaml(args.config), args.overrides)
    check_types(conf, _SCHEMA)
    out = args.out or conf.get("out")
    if not out:
        raise ValueError("no output directory: give --out or set 'out' in the config")
    if is_complete(out):
        print(f"{out} is already a complete model directory (delete it to retrain)",
              file=sys.stderr)
        return 0
    work = work_dir(out)
    new_work = not os.path.exists(work)
    try:
        metrics = run(conf, out)
    except BaseException:  # nothing saved yet: leave no half-made work directory behind
        if new_work and not checkpoint.has_checkpoint(os.path.join(work, "checkpoints")):
            shutil.rmtree(work, ignore_errors=True)
        raise
    if "preempted" in metrics:
        return metrics["exit_code"]
    print(f"wrote {out}: held-out loss {metrics['heldout_loss']:.4f} nats/token "
          f"(unigram baseline {metrics['unigram_loss']:.4f}), {metrics['steps']} steps, "
          f"{metrics['tokens_per_s'] or 0:.0f} tokens/s, {metrics['wall_time_s']:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
