"""Train the look-ahead (LA) embeddings of a frozen model.

``python -m train.lookahead --model DIR --data SPEC --num-lookahead L --out DIR [--steps N] ...``

Loads a Hugging Face model directory (tokenizer included), builds the ``--data`` pipeline,
initialises every LA embedding (``--init``: the mean token embedding by default, or the unk
token's as in the paper) and trains only them (base params
are constants; optimizer state exists only for the L x d_model LA array) with the packed
insertion loss of ``pass_jax.losses`` (M groups of L LA tokens per sequence; M = 1 is the paper's
recipe). Defaults come from the ``lookahead`` section of ``--config`` (configs/paper.yaml: the
paper's AdamW lr 1e-2, batch 8, 10k steps, 20% warmup, cosine, M = 1, CE); flags override them.

Output directory ``--out``:
  checkpoints/<step>/        orbax checkpoints (LA, optimizer state, step, RNG, data position)
                             every ``save_every`` steps, at the end and on SIGTERM or Ctrl-C;
                             re-running the same command resumes from the latest one (other
                             settings need another ``--out``)
  eval.jsonl                 held-out acceptance estimate per LA position (greedy agreement and
                             sum_v min(p, q) at the configured temperature / top-k), one line per
                             evaluation (step 0 is the initialisation)
  lookahead.safetensors/.json  the final export (``pass_jax.lookahead.save_lookahead``) with the
                             final metrics; a finished run re-run with the same settings just
                             reports them.
``--json`` prints the final metrics as one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pass_jax import checkpoint, cli, data, generation, gguf_file, hf, lookahead, losses, sharding
from pass_jax.config import SamplerConfig, load_yaml
from pass_jax.model import REMAT_POLICIES
from train import check_output_dir, check_resume, check_seed, require, run_cli, train_loop

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "paper.yaml")
EVAL_FILE = "eval.jsonl"
# Settings a checkpoint must agree with to be resumed (the rest only changes logging cadence).
_RESUME_KEYS = ("data", "num_lookahead", "loss", "groups", "lr", "weight_decay", "steps",
                "warmup", "batch_size", "seq_len", "seed", "dtype", "init")
_REQUIRED = ("lr", "batch_size", "seq_len", "steps", "groups", "loss", "dtype", "seed",
             "temperature", "top_k", "eval_every", "eval_batches", "save_every")
# Flags that override the config section, with their types.
_OVERRIDES = {"steps": int, "loss": str, "groups": int, "batch_size": int, "seq_len": int,
              "lr": float, "warmup": int, "dtype": str, "eval_every": int, "save_every": int,
              "seed": int, "temperature": float, "top_k": int, "init": str, "remat": str}


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.lookahead",
                                description="Train the look-ahead embeddings of a frozen model.")
    p.add_argument("--model", required=True,
                   help="Hugging Face model directory (with tokenizer) or GGUF file")
    p.add_argument("--data", required=True,
                   help="corpus: tfds:NAME[/CONFIG][:SPLIT], files:GLOB, stdlib or self")
    p.add_argument("--num-lookahead", "-L", type=int, required=True, help="L, LA tokens")
    p.add_argument("--out", required=True, help="output directory (checkpoints, export)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="YAML with a 'lookahead' section (default: configs/paper.yaml)")
    p.add_argument("--data-dir", help="TFDS data dir (stdlib: where it is prepared)")
    p.add_argument("--steps", type=int)
    p.add_argument("--loss", choices=losses.LOSS_KINDS)
    p.add_argument("--groups", "-M", type=int, help="insertion groups per sequence (packed)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int, help="warmup steps (default: warmup_fraction * steps)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="base model compute dtype")
    p.add_argument("--remat", choices=tuple(REMAT_POLICIES),
                   help="per-layer rematerialisation: none (default), layer (keep each layer's "
                        "input only) or dots (also its weight matmuls): less activation memory "
                        "for recomputation in the backward pass; same results")
    p.add_argument("--temperature", type=float, help="acceptance estimate temperature (0: greedy)")
    p.add_argument("--top-k", type=int, help="acceptance estimate top-k (0: off)")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--init", help="LA initialisation: mean (mean token embedding; the default), "
                   "unk (the paper's), zeros or token:ID")
    p.add_argument("--no-special-tokens", dest="add_special_tokens", action="store_false",
                   help="documents without the special tokens the tokenizer adds by default "
                   "(e.g. LLaMA's BOS)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    cli.add_mesh_arg(p)
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: the config's ``lookahead`` section, overridden by the flags."""
    s = dict(require(load_yaml(args.config).get("lookahead"), (),
                     f"config {args.config}: the 'lookahead' section"))
    for key in _OVERRIDES:
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    require(s, _REQUIRED, f"config {args.config}: the 'lookahead' section")
    if args.warmup is None:
        s["warmup"] = int(round(s.get("warmup_fraction", 0.2) * s["steps"]))
    s.update(data=args.data, num_lookahead=args.num_lookahead,
             add_special_tokens=args.add_special_tokens)
    s.setdefault("init", "mean")
    s.setdefault("remat", "none")
    if s["remat"] not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {s['remat']!r}")
    lookahead.parse_init(s["init"])
    if s["num_lookahead"] < 1:
        raise ValueError(f"--num-lookahead must be >= 1, got {s['num_lookahead']}")
    if s["groups"] < 1:
        raise ValueError(f"--groups must be >= 1, got {s['groups']}")
    if s["steps"] < 1:
        raise ValueError(f"--steps must be >= 1, got {s['steps']}")
    if s["loss"] not in losses.LOSS_KINDS:
        raise ValueError(f"unknown loss {s['loss']!r}; expected one of {losses.LOSS_KINDS}")
    check_seed(s["seed"], "--seed")
    return s


def _sample_fn(cfg, params, tok, seq_len: int, seed: int):
    """``sample_fn(n)`` for the 'self' corpus: n texts of ``seq_len`` tokens sampled from the
    model (temperature 1) from BOS, a different seed each call."""
    bos = next(t for t in (cfg.bos_token_id, tok.bos_token_id, tok.eos_token_id, 0)
               if t is not None)
    calls = itertools.count()

    def sample(n: int) -> list[str]:
        result = generation.generate(cfg, params, [[bos]] * n, max_new_tokens=seq_len,
                                 sampler=SamplerConfig(temperature=1.0),
                                 seed=seed * 100_003 + next(calls))
        return [tok.decode(t, skip_special_tokens=True) for t in result.tokens]

    return sample


def heldout_estimate(cfg, base_params, la_LxD, eval_set, temperature: float,
                     top_k: int) -> dict[str, list[float]]:
    """Acceptance per LA position over the fixed held-out set (``(tokens_BxN, ins_BxM)`` pairs),
    target-weighted: ``greedy`` argmax agreement and ``sampled`` sum_v min(p, q) on the warped
    distributions, plus the held-out LA ``ce`` and ``kl`` losses."""
    L = la_LxD.shape[0]
    greedy_L, sampled_L, n_L = np.zeros(L), np.zeros(L), np.zeros(L)
    ce = kl = n = 0.0
    for tokens_BxN, ins_BxM in eval_set:
        est = jax.device_get(losses.acceptance_estimate(cfg, base_params, la_LxD, tokens_BxN,
                                                        ins_BxM, temperature, top_k))
        greedy_L += est["greedy"] * est["num_targets"]
        sampled_L += est["sampled"] * est["num_targets"]
        n_L += est["num_targets"]
        _, m = jax.device_get(losses.la_loss(cfg, base_params, la_LxD, tokens_BxN, ins_BxM))
        ce, kl, n = ce + m["ce"] * m["num_targets"], kl + m["kl"] * m["num_targets"], \
            n + m["num_targets"]
    n_L = np.maximum(n_L, 1)
    return {"greedy": (greedy_L / n_L).round(4).tolist(),
            "sampled": (sampled_L / n_L).round(4).tolist(),
            "ce": round(float(ce / max(n, 1)), 5), "kl": round(float(kl / max(n, 1)), 5)}


def _eval_set(texts, tok, s: dict) -> list[tuple[jax.Array, jax.Array]]:
    """Fixed held-out batches with fixed insertion points (``eval_groups`` per row)."""
    N, L, B = s["seq_len"], s["num_lookahead"], s["batch_size"]
    M = min(s.get("eval_groups", 8), N - 1 - L)
    batches = itertools.islice(
        data.token_batches(texts, tok, N, B, s["seed"], shuffle=False,
                           add_special_tokens=s["add_special_tokens"]), s["eval_batches"])
    key = jax.random.PRNGKey(s["seed"] + 1)
    return [(jnp.asarray(b["tokens"]),
             losses.sample_insertion_points(jax.random.fold_in(key, i), B, M, N, L))
            for i, b in enumerate(batches)]


def _eval_log_upto(path: str, step: int) -> list[dict]:
    """Keeps the records of the evaluation log up to ``step`` (where training resumes; the rest
    came after the checkpoint and will be redone) and returns them."""
    records = []
    if os.path.exists(path):
        with open(path) as f:
            records = [r for r in map(json.loads, f) if r["step"] <= step and step > 0]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return records


def _finished(out: str, resume_key: dict) -> dict | None:
    """The metrics of a finished export in ``out`` made with the same settings, else None."""
    try:
        metrics = lookahead.lookahead_metadata(out).get("metrics", {})
    except (FileNotFoundError, ValueError):
        return None
    return metrics if metrics.get("settings") == resume_key else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains (or resumes, or reports a finished run); returns the final metrics, or
    ``{'preempted': step, 'exit_code': code}`` when SIGTERM or Ctrl-C stopped training after a
    checkpoint. Bad settings and unwritable output directories are found before any work."""
    t0 = time.perf_counter()
    s = settings(args)
    check_output_dir(args.out, "--out")
    check_output_dir(os.path.join(args.out, "checkpoints"), "the checkpoint directory")
    spec = data.parse_spec(s["data"])
    L, B, N, M = s["num_lookahead"], s["batch_size"], s["seq_len"], s["groups"]
    resume_key = {k: s[k] for k in _RESUME_KEYS}
    args.model = gguf_file.resolve_model(args.model)  # a .gguf file: its cached conversion
    # on --mesh: base params in their shards, LA state replicated, batch rows split
    mesh, cfg, base_params = cli.load_model_for_args(args, args.model, s["dtype"])
    tok = hf.load_tokenizer(args.model)
    if tok is None:
        raise FileNotFoundError(f"{args.model} has no tokenizer files; the data pipeline needs "
                                "the model's tokenizer")
    data.check_seq_len(N, cfg.max_position)
    if N - 1 - L < M:
        raise ValueError(f"--seq-len {N} is too short for {M} insertion groups of L={L} "
                         f"look-ahead tokens (need seq_len >= groups + L + 1)")
    identity = {**lookahead.model_fingerprint(cfg, base_params),
                "path": os.path.abspath(args.model)}
    resume_key["model"] = identity["embedding_sha256"]
    done = _finished(args.out, resume_key)
    if done is not None:
        print(f"{args.out} already holds this run's export; delete it to retrain",
              file=sys.stderr)
        return done

    sample_fn = _sample_fn(cfg, base_params, tok, N, s["seed"]) if spec.kind == "self" else None
    n_self = s.get("self_texts", 256)
    train_texts = data.text_source(spec, "train", args.data_dir, sample_fn=sample_fn,
                                   num_self_texts=n_self)
    heldout_texts = data.text_source(spec, "heldout", args.data_dir, sample_fn=sample_fn,
                                     num_self_texts=max(4, n_self // 4))
    eval_set = _eval_set(heldout_texts, tok, s)
    if not eval_set:
        raise ValueError(f"empty corpus: the held-out split of {s['data']} gives no batch")

    # the unk token (the paper's start and the [UNK] baseline); HF configs rarely record it,
    # the tokenizer does
    unk_token = next((t for t in (cfg.unk_token_id, tok.unk_token_id) if t is not None),
                     lookahead.default_init_token(cfg))
    init = lookahead.parse_init(s["init"])
    init_token = unk_token if init == "unk" else init if isinstance(init, int) else None
    la_init_LxD = lookahead.init_lookahead(cfg, base_params, L, dtype=jnp.float32, init=init,
                                           unk_token_id=unk_token)
    optimizer = losses.paper_optimizer(s["lr"], s["steps"], s["warmup"],
                                       s.get("weight_decay", 0.0))
    la_state = losses.init_la_state(jnp.array(la_init_LxD), optimizer)  # a copy: donated
    rng = jax.random.PRNGKey(s["seed"])
    la_step = losses.make_la_train_step(cfg, optimizer, s["loss"], M, remat=s["remat"],
                                        mesh=mesh)
    if mesh is None:
        place_batch = lambda tokens_BxN: tokens_BxN
    else:
        la_state = sharding.replicate(la_state, mesh)
        rng = jax.device_put(rng, sharding.replicated(mesh))
        place_batch = lambda tokens_BxN: sharding.shard_batch(tokens_BxN, mesh)
    state = {"la": la_state, "rng": rng}
    os.makedirs(args.out, exist_ok=True)
    mngr = checkpoint.manager(os.path.join(args.out, "checkpoints"),
                              save_every=s["save_every"], keep=s.get("keep", 2))
    batches = data.token_batches(train_texts, tok, N, B, s["seed"],
                                 add_special_tokens=s["add_special_tokens"])
    resume_step = check_resume(mngr, resume_key, "use another --out")
    if resume_step is not None:
        restored = checkpoint.restore(mngr, state, resume_step)
        state = restored.state
        data.restore_iterator(batches, restored.data_state)
        print(f"resuming from step {restored.step} ({mngr.directory})", file=sys.stderr)

    temperature, top_k = s["temperature"], s["top_k"]
    at_init = heldout_estimate(cfg, base_params, la_init_LxD, eval_set, temperature, top_k)
    start_step = int(state["la"].step)
    log_path = os.path.join(args.out, EVAL_FILE)
    history = _eval_log_upto(log_path, start_step)

    def log_eval(step: int, est: dict) -> None:
        record = {"step": step, "temperature": temperature, "top_k": top_k, **est}
        history.append(record)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    if start_step == 0:
        log_eval(0, at_init)

    def evaluate(state, step):
        est = heldout_estimate(cfg, base_params, state["la"].la, eval_set, temperature, top_k)
        log_eval(step, est)
        return {"acc": float(np.mean(est["sampled"])), "acc_greedy": float(np.mean(est["greedy"]))}

    last: dict[str, float] = {}

    def postfix(metrics):
        last.update(loss=float(metrics["loss"]), ce=float(metrics["ce"]), kl=float(metrics["kl"]))
        return {"loss": last["loss"]}

    def step_fn(state, batch):
        la_state, metrics = la_step(state["la"], base_params,
                                    {"tokens": place_batch(batch["tokens"])}, state["rng"])
        return {"la": la_state, "rng": state["rng"]}, metrics

    result = train_loop(
        state, step_fn, batches, start_step=start_step, steps=s["steps"], mngr=mngr,
        meta_fn=lambda step: {"resume_key": resume_key, "eval": history[-1:]},
        evaluate=evaluate, eval_every=s["eval_every"], postfix_fn=postfix,
        log_every=s.get("log_every", 10), tokens_per_step=B * N, desc="lookahead")
    ckpt_dir = os.path.join(str(mngr.directory), str(result.step))
    mngr.close()
    if result.preempted:
        return {"preempted": result.step, "exit_code": result.exit_code}
    la_LxD = result.state["la"].la
    final = history[-1] if history and history[-1]["step"] == s["steps"] else \
        heldout_estimate(cfg, base_params, la_LxD, eval_set, temperature, top_k)
    metrics = {
        "loss": last.get("loss"),
        "train_ce": last.get("ce"),
        "train_kl": last.get("kl"),
        "heldout_ce": final["ce"],
        "heldout_kl": final["kl"],
        "acceptance": {"greedy": final["greedy"], "sampled": final["sampled"]},
        "acceptance_init": {"greedy": at_init["greedy"], "sampled": at_init["sampled"]},
        "init": s["init"],
        "temperature": temperature,
        "top_k": top_k,
        "steps": s["steps"],
        "steps_this_run": result.steps_run,
        "steps_per_s": result.steps_per_s if result.steps_run > 1 else None,
        # sequence tokens (B x N per step; the M x L LA rows not counted), this process's steps
        "tokens_per_s": result.steps_per_s * B * N if result.steps_run > 1 else None,
        **throughput(cfg, B, N, M, s["num_lookahead"], result.steps_per_s
                     if result.steps_run > 1 else None),
        "wall_time_s": time.perf_counter() - t0,
        "checkpoint": ckpt_dir,
        "lookahead": os.path.abspath(args.out),
        "settings": resume_key,
    }
    lookahead.save_lookahead(args.out, la_LxD, cfg, identity, init_token_id=init_token,
                             metrics=metrics)
    return metrics


def throughput(cfg, B: int, N: int, M: int, L: int, steps_per_s: float | None) -> dict:
    """Model FLOPs per step (``losses.la_step_flops``), TFLOP/s per device and the model FLOPs
    utilisation against the device's bf16 peak (None where the peak is not known, e.g. CPUs)."""
    flops = losses.la_step_flops(cfg, B, N, M, L)
    per_device = None if steps_per_s is None else flops * steps_per_s / jax.device_count()
    peak = losses.PEAK_FLOPS.get(jax.devices()[0].device_kind)
    return {"model_flops_per_step": flops,
            "model_tflops_per_s_per_device": per_device and per_device / 1e12,
            "mfu": per_device / peak if per_device and peak else None}


def main(argv: list[str] | None = None) -> int:
    """The program; returns the exit status."""
    args = _parse(argv)
    metrics = run(args)
    if "preempted" in metrics:
        return metrics["exit_code"]
    if args.json:
        print(json.dumps(metrics))
    else:
        acc, ini = metrics["acceptance"], metrics["acceptance_init"]
        print(f"wrote {args.out}: held-out acceptance per LA position at T="
              f"{metrics['temperature']}, top-k {metrics['top_k']}: {acc['sampled']} ({metrics['init']} "
              f"init {ini['sampled']}); greedy {acc['greedy']} (init {ini['greedy']}); "
              f"{metrics['tokens_per_s'] or 0:.0f} tokens/s, "
              f"{metrics['model_tflops_per_s_per_device'] or 0:.3g} model TFLOP/s per device"
              + (f" (MFU {metrics['mfu']:.1%} of bf16 peak)" if metrics["mfu"] else ""),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
