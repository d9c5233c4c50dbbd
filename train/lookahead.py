"""Train the look-ahead (LA) embeddings of a frozen model.

``python -m train.lookahead --model DIR --data SPEC --num-lookahead L --out DIR [--steps N] ...``

Loads a Hugging Face model directory (tokenizer included), builds the ``--data`` pipeline,
initialises every LA embedding (``--init``: the mean token embedding by default, or the unk
token's as in the paper) and trains only them (base params
are constants; optimizer state exists only for the L x d_model LA array) with the packed
insertion loss of ``pass_jax.losses`` (M groups of L LA tokens per sequence; M = 1 is the paper's
recipe). The settings (``train.config.LookaheadTrainConfig``) come from the ``lookahead``
section of ``--config`` (configs/paper.yaml: the paper's AdamW lr 1e-2, batch 8, 10k steps, 20%
warmup, cosine, M = 1, CE); flags override them.

Output directory ``--out``:
  checkpoints/<step>/        orbax checkpoints (LA, optimizer state, step, RNG, data position)
                             every ``save_every`` steps, at the end and on SIGTERM or Ctrl-C;
                             re-running the same command resumes from the latest one (other
                             settings need another ``--out``)
  eval.jsonl                 held-out acceptance estimate per LA position (greedy agreement and
                             sum_v min(p, q) at the configured temperature / top-k), one line per
                             evaluation (step 0 is the initialisation); with ``--eval-new-tokens``
                             on the model's own continuations of the held-out rows
  lookahead.safetensors/.json  the final export (``pass_jax.lookahead.save_lookahead``) with the
                             final metrics; a finished run re-run with the same settings just
                             reports them.
``--json`` prints the final metrics as one JSON object on stdout.

Several processes (``--coordinator``, ``--num-processes``, ``--process-id``; every one runs the
same command with the same ``--out``, a shared directory): each reads its own shard of the corpus
and ``batch_size / processes`` rows of each batch, and saves its own data position with every
checkpoint (a checkpoint resumes with the same process count only); the base model's fingerprint
is computed from the whole embedding, the same on every process; SIGTERM (or Ctrl-C) to any
process stops them all after the same step; process 0 writes ``eval.jsonl`` and the export.

Shape letters as in ``pass_jax/__init__.py`` (X: the training sequence length ``--seq-len``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pass_jax import (
    checkpoint,
    cli,
    data,
    generation,
    gguf_file,
    hf,
    lookahead,
    losses,
    program_config,
    sharding,
)
from pass_jax.config import ModelConfig, SamplerConfig
from pass_jax.model import REMAT_POLICIES
from pass_jax.program_config import ArgumentParser, run_cli
from train import LoopResult, check_output_dir, check_resume, restore, train_loop
from train.config import LookaheadTrainConfig

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "paper.yaml"
)
EVAL_FILE = "eval.jsonl"


@dataclasses.dataclass
class FrozenModel:
    """The model whose LA embeddings train: its directory (a GGUF file's cached conversion),
    mesh (None: one device), config, params (constants), tokenizer, and identity (path and
    embedding hash, recorded with the export)."""

    path: str
    mesh: Any
    cfg: ModelConfig
    params: Any
    tok: Any
    identity: dict


@dataclasses.dataclass
class EvalLog:
    """The held-out acceptance estimate at the configured temperature / top-k on fixed batches
    (``eval_set``), its value for the initial LA embeddings, and every evaluation so far (also
    appended to ``path``, the output directory's ``eval.jsonl``)."""

    model: FrozenModel
    eval_set: list
    temperature: float
    top_k: int
    path: str
    at_init: dict = dataclasses.field(default_factory=dict)
    history: list[dict] = dataclasses.field(default_factory=list)

    def estimate(self, la_LxD) -> dict:
        """``heldout_estimate`` of ``la_LxD``."""
        return heldout_estimate(
            self.model.cfg, self.model.params, la_LxD, self.eval_set, self.temperature, self.top_k
        )

    def log(self, step: int, est: dict) -> None:
        """Records the estimate ``est`` made at ``step`` (in the file: by process 0 only)."""
        record = {"step": step, "temperature": self.temperature, "top_k": self.top_k, **est}
        self.history.append(record)
        if jax.process_index() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate(self, state: dict, step: int) -> dict:
        """The train loop's evaluation: estimate, record, mean acceptance for the bar."""
        est = self.estimate(state["la"].la)
        self.log(step, est)
        return {"acc": float(np.mean(est["sampled"])), "acc_greedy": float(np.mean(est["greedy"]))}

    def final(self, la_LxD, steps: int) -> dict:
        """The estimate at the last step: made there already, or now."""
        if self.history and self.history[-1]["step"] == steps:
            return self.history[-1]
        return self.estimate(la_LxD)


def _parse(argv) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m train.lookahead",
        description="Train the look-ahead embeddings of a frozen model.",
    )
    p.add_argument(
        "--model", required=True, help="Hugging Face model directory (with tokenizer) or GGUF file"
    )
    p.add_argument(
        "--data",
        required=True,
        help="corpus: tfds:NAME[/CONFIG][:SPLIT], files:GLOB, stdlib or self",
    )
    p.add_argument("--num-lookahead", "-L", type=int, required=True, help="L, LA tokens")
    p.add_argument("--out", required=True, help="output directory (checkpoints, export)")
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="YAML with a 'lookahead' section (default: configs/paper.yaml)",
    )
    p.add_argument("--data-dir", help="TFDS data dir (stdlib: where it is prepared)")
    p.add_argument("--steps", type=int)
    p.add_argument("--loss", choices=losses.LOSS_KINDS)
    p.add_argument(
        "--targets",
        choices=losses.TARGETS,
        help="which LA targets train: all (the paper's), or greedy: only where the tokens "
        "between the insertion point and the target are the model's own greedy choices, "
        "as in greedy decoding (for text the model wrote itself)",
    )
    p.add_argument("--groups", "-M", type=int, help="insertion groups per sequence (packed)")
    p.add_argument(
        "--batch-size", type=int, help="rows per step, in all (each process reads its share)"
    )
    p.add_argument("--seq-len", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int, help="warmup steps (default: warmup_fraction * steps)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="base model compute dtype")
    p.add_argument(
        "--remat",
        choices=tuple(REMAT_POLICIES),
        help="per-layer rematerialisation: none (default), layer (keep each layer's "
        "input only) or dots (also its weight matmuls): less activation memory "
        "for recomputation in the backward pass; same results",
    )
    p.add_argument("--temperature", type=float, help="acceptance estimate temperature (0: greedy)")
    p.add_argument("--top-k", type=int, help="acceptance estimate top-k (0: off)")
    p.add_argument(
        "--eval-new-tokens",
        type=int,
        help="acceptance estimate on the model's own text: the last N tokens of each held-out "
        "row are its continuation (at the estimate's temperature and top-k) and only they are "
        "drafted, as in decoding (0: the held-out text as it is; must exceed L)",
    )
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-batches", type=int, help="held-out batches of the estimate")
    p.add_argument("--eval-groups", type=int, help="insertion points per held-out row")
    p.add_argument("--save-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--init",
        help="LA initialisation: mean (mean token embedding; the default), "
        "unk (the paper's), zeros or token:ID",
    )
    p.add_argument(
        "--no-special-tokens",
        dest="add_special_tokens",
        action="store_false",
        help="documents without the special tokens the tokenizer adds by default "
        "(e.g. LLaMA's BOS)",
    )
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    cli.add_mesh_arg(p)
    return p.parse_args(argv)


def _sample_fn(cfg, params, tok, seq_len: int, seed: int):
    """``sample_fn(n)`` for the 'self' corpus: n texts of ``seq_len`` tokens sampled from the
    model (temperature 1) from BOS, a different seed each call."""
    bos = next(
        t for t in (cfg.bos_token_id, tok.bos_token_id, tok.eos_token_id, 0) if t is not None
    )
    calls = itertools.count()

    def sample(n: int) -> list[str]:
        result = generation.generate(
            cfg,
            params,
            [[bos]] * n,
            max_new_tokens=seq_len,
            sampler=SamplerConfig(temperature=1.0),
            seed=seed * 100_003 + next(calls),
        )
        return [tok.decode(t, skip_special_tokens=True) for t in result.tokens]

    return sample


def heldout_estimate(
    cfg, base_params, la_LxD, eval_set, temperature: float, top_k: int
) -> dict[str, list[float]]:
    """Acceptance per LA position over the fixed held-out set (``(tokens_BxX, ins_BxM)`` pairs),
    target-weighted: ``greedy`` argmax agreement and ``sampled`` sum_v min(p, q) on the warped
    distributions, plus the held-out LA ``ce`` and ``kl`` losses."""
    L = la_LxD.shape[0]
    greedy_L, sampled_L, n_L = np.zeros(L), np.zeros(L), np.zeros(L)
    ce = kl = n = 0.0
    for tokens_BxX, ins_BxM in eval_set:
        est = jax.device_get(
            losses.acceptance_estimate(
                cfg, base_params, la_LxD, tokens_BxX, ins_BxM, temperature, top_k
            )
        )
        greedy_L += est["greedy"] * est["num_targets"]
        sampled_L += est["sampled"] * est["num_targets"]
        n_L += est["num_targets"]
        _, m = jax.device_get(losses.la_loss(cfg, base_params, la_LxD, tokens_BxX, ins_BxM))
        ce, kl, n = (
            ce + m["ce"] * m["num_targets"],
            kl + m["kl"] * m["num_targets"],
            n + m["num_targets"],
        )
    n_L = np.maximum(n_L, 1)
    return {
        "greedy": (greedy_L / n_L).round(4).tolist(),
        "sampled": (sampled_L / n_L).round(4).tolist(),
        "ce": round(float(ce / max(n, 1)), 5),
        "kl": round(float(kl / max(n, 1)), 5),
    }


def _eval_set(
    texts, config: LookaheadTrainConfig, model: FrozenModel
) -> list[tuple[jax.Array, jax.Array]]:
    """Fixed held-out batches with fixed insertion points (``eval_groups`` per row), the same
    in every process (on the model's mesh: rows split over it).

    With ``eval_new_tokens`` N > 0, each row keeps its first X - N tokens and the frozen model
    writes the other N (``_continued``), and insertion points are drawn only where the next
    token and every LA target are the model's own: the drafts' situation when decoding, so the
    greedy estimate is what greedy decoding would accept at those positions.
    """
    settings = config.lookahead
    X, L, B = settings.seq_len, config.num_lookahead, settings.batch_size
    N = settings.eval_new_tokens
    span = N + 1 if N else X  # insertion points in the last `span` tokens: from X - N - 1 on
    M = min(settings.eval_groups, span - 1 - L)
    batches = itertools.islice(
        data.token_batches(
            texts,
            model.tok,
            X,
            B,
            settings.seed,
            shuffle=False,
            shard_index=0,
            shard_count=1,
            add_special_tokens=config.add_special_tokens,
        ),
        settings.eval_batches,
    )
    key = jax.random.PRNGKey(settings.seed + 1)
    pairs = []
    for i, b in enumerate(batches):
        tokens_BxX = b["tokens"]
        if N:
            tokens_BxX = _continued(model, tokens_BxX[:, : X - N], N, settings, seed=i)
        ins_BxM = losses.sample_insertion_points(jax.random.fold_in(key, i), B, M, span, L)
        pairs.append((tokens_BxX, ins_BxM + (X - span)))
    if model.mesh is None:
        return [(jnp.asarray(tokens_BxX), ins_BxM) for tokens_BxX, ins_BxM in pairs]
    return [sharding.shard_batch(pair, model.mesh, process_local=False) for pair in pairs]


def _continued(model: FrozenModel, prompts_BxP: np.ndarray, N: int, settings, seed: int):
    """``tokens_Bx(P+N)``: each prompt and N tokens the frozen model writes after it (no stop at
    EOS) at the estimate's temperature and top-k, with seed ``settings.seed`` and ``seed``."""
    result = generation.generate(
        model.cfg,
        model.params,
        np.asarray(prompts_BxP).tolist(),
        max_new_tokens=N,
        sampler=SamplerConfig(temperature=settings.temperature, top_k=settings.top_k),
        eos_ids=(),
        seed=settings.seed * 100_003 + seed,
        mesh=model.mesh,
    )
    return np.concatenate([np.asarray(prompts_BxP), np.asarray(result.tokens, np.int32)], axis=1)


def _eval_log_upto(path: str, step: int) -> list[dict]:
    """Keeps the records of the evaluation log up to ``step`` (where training resumes; the rest
    came after the checkpoint and will be redone) and returns them (process 0 rewrites the
    file)."""
    records = []
    if os.path.exists(path):
        with open(path) as f:
            records = [r for r in map(json.loads, f) if r["step"] <= step and step > 0]
    if jax.process_index() == 0:  # replaced whole: other processes read it meanwhile
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(path + ".tmp", path)
    return records


def _finished(out: str, resume_key: dict, defaults: dict) -> dict | None:
    """The metrics of a finished export in ``out`` made with the same settings (one it predates
    counts as its value in ``defaults``), else None."""
    try:
        metrics = lookahead.lookahead_metadata(out).get("metrics", {})
    except (FileNotFoundError, ValueError):
        return None
    settings = metrics.get("settings")
    same = settings is not None and not program_config.differences(
        settings, resume_key, defaults=defaults
    )
    return metrics if same else None


def load_config(args: argparse.Namespace) -> LookaheadTrainConfig:
    """The run's config: the ``lookahead`` section of the YAML ``--config``, overridden by the
    flags (each named like the field it sets)."""
    return program_config.load(
        LookaheadTrainConfig, args.config, args=args, sections=("lookahead",)
    )


def run(config: LookaheadTrainConfig, device_args: argparse.Namespace) -> dict[str, Any]:
    """Trains (or resumes, or reports a finished run); returns the final metrics, or
    ``{'preempted': step, 'exit_code': code}`` when SIGTERM or Ctrl-C stopped training after a
    checkpoint. ``device_args``: the ``--mesh`` and multi-host flags (``cli.add_mesh_arg``).
    Bad settings and unwritable output directories are found before any work."""
    t0 = time.perf_counter()
    spec = _check_before_work(config)
    model = load_model(config, device_args)
    resume_key, defaults = _resume_key(config, model), _resume_defaults(config)
    done = _finished(config.out, resume_key, defaults)
    if done is not None:
        print(
            f"{config.out} already holds this run's export; delete it to retrain", file=sys.stderr
        )
        return done
    train_texts, eval_set = _texts(config, spec, model)
    la_init_LxD, init_token = _la_init(config, model)
    state, step_fn = _trainer(config, model, la_init_LxD)
    settings = config.lookahead
    batches = data.token_batches(  # this process's shard of the data, its rows of each batch
        train_texts,
        model.tok,
        settings.seq_len,
        settings.batch_size // jax.process_count(),
        settings.seed,
        add_special_tokens=config.add_special_tokens,
    )
    mngr, state = _resume(config, resume_key, defaults, state, batches)
    evals = _eval_log(config, model, eval_set, la_init_LxD, int(state["la"].step))
    result, train_loss = _train(config, state, step_fn, batches, mngr, evals, resume_key)
    ckpt_dir = os.path.join(str(mngr.directory), str(result.step))
    mngr.close()
    if result.preempted:
        return {"preempted": result.step, "exit_code": result.exit_code}
    la_LxD = result.state["la"].la
    metrics = {
        **_metrics(config, model, result, train_loss, evals, t0),
        "checkpoint": ckpt_dir,
        "lookahead": os.path.abspath(config.out),
        "settings": resume_key,
    }
    if jax.process_index() == 0:
        lookahead.save_lookahead(
            config.out, la_LxD, model.cfg, model.identity, init_token_id=init_token, metrics=metrics
        )
    return metrics


def _check_before_work(config: LookaheadTrainConfig) -> data.DataSpec:
    """Writable output directories and a well-formed ``--data`` spec (returned), checked before
    the model is loaded."""
    check_output_dir(config.out, "--out")
    check_output_dir(os.path.join(config.out, "checkpoints"), "the checkpoint directory")
    return data.parse_spec(config.data)


def load_model(config: LookaheadTrainConfig, device_args: argparse.Namespace) -> FrozenModel:
    """The frozen model and its tokenizer (on ``--mesh``: base params in their shards), checked
    against the sequence length and insertion groups."""
    path = gguf_file.resolve_model(config.model)  # a .gguf file: its cached conversion
    mesh, cfg, params = cli.load_model_for_args(device_args, path, config.lookahead.dtype)
    tok = hf.load_tokenizer(path)
    if tok is None:
        raise FileNotFoundError(
            f"{path} has no tokenizer files; the data pipeline needs the model's tokenizer"
        )
    X, L, M = config.lookahead.seq_len, config.num_lookahead, config.lookahead.groups
    data.check_seq_len(X, cfg.max_position)
    B, processes = config.lookahead.batch_size, jax.process_count()
    if B % processes:
        raise ValueError(
            f"--batch-size {B} (rows per step, in all) is not divisible by the {processes} "
            "processes, which read equal shares of it"
        )
    if X - 1 - L < M:
        raise ValueError(
            f"--seq-len {X} is too short for {M} insertion groups of L={L} "
            f"look-ahead tokens (need seq_len >= groups + L + 1)"
        )
    identity = {**lookahead.model_fingerprint(cfg, params), "path": os.path.abspath(path)}
    return FrozenModel(path, mesh, cfg, params, tok, identity)


def _resume_key(config: LookaheadTrainConfig, model: FrozenModel) -> dict[str, Any]:
    """What a checkpoint or a finished export must agree with: the config less what may change
    on resume, flat (the ``lookahead`` section's keys next to ``data``, ``num_lookahead``, ...),
    with the model's embedding hash as ``model``."""
    return {
        **_flat(program_config.resume_view(config)),
        "model": model.identity["embedding_sha256"],
    }


def _resume_defaults(config: LookaheadTrainConfig) -> dict[str, Any]:
    """The defaults of ``_resume_key``'s settings, flat like it: what a checkpoint or export
    made before a setting existed ran with."""
    return _flat(program_config.resume_defaults(config))


def _flat(view: dict[str, Any]) -> dict[str, Any]:
    """A config view with the ``lookahead`` section's keys next to the top-level ones."""
    view = dict(view)
    return {**view.pop("lookahead"), **view}


def _texts(
    config: LookaheadTrainConfig, spec: data.DataSpec, model: FrozenModel
) -> tuple[Any, list[tuple[jax.Array, jax.Array]]]:
    """The training documents and the fixed held-out set (``_eval_set``); for ``self``, text
    sampled from the model."""
    settings = config.lookahead
    sample_fn = (
        _sample_fn(model.cfg, model.params, model.tok, settings.seq_len, settings.seed)
        if spec.kind == "self"
        else None
    )
    n_self = settings.self_texts
    train_texts = data.text_source(
        spec, "train", config.data_dir, sample_fn=sample_fn, num_self_texts=n_self
    )
    heldout_texts = data.text_source(
        spec, "heldout", config.data_dir, sample_fn=sample_fn, num_self_texts=max(4, n_self // 4)
    )
    eval_set = _eval_set(heldout_texts, config, model)
    if not eval_set:
        raise ValueError(f"empty corpus: the held-out split of {config.data} gives no batch")
    return train_texts, eval_set


def _la_init(config: LookaheadTrainConfig, model: FrozenModel) -> tuple[jax.Array, int | None]:
    """The initial LA embeddings (``init``; on a mesh: replicated) and the token they start from
    (None: not a token's embedding)."""
    # the unk token (the paper's start and the [UNK] baseline); HF configs rarely record it,
    # the tokenizer does
    cfg = model.cfg
    unk_token = next(
        (t for t in (cfg.unk_token_id, model.tok.unk_token_id) if t is not None),
        lookahead.default_init_token(cfg),
    )
    init = lookahead.parse_init(config.lookahead.init)
    init_token = unk_token if init == "unk" else init if isinstance(init, int) else None
    la_init_LxD = lookahead.init_lookahead(
        cfg,
        model.params,
        config.num_lookahead,
        dtype=jnp.float32,
        init=init,
        unk_token_id=unk_token,
    )
    if model.mesh is not None:  # as the trained embeddings will be: one evaluation program
        la_init_LxD = sharding.replicate(la_init_LxD, model.mesh)
    return la_init_LxD, init_token


def _trainer(config: LookaheadTrainConfig, model: FrozenModel, la_init_LxD):
    """``(state, step_fn)``: the LA training state ``{'la': LAState, 'rng': key}`` (on a mesh:
    replicated) and ``step_fn(state, batch) -> (state, metrics)`` (on a mesh: batch rows
    split)."""
    settings, mesh = config.lookahead, model.mesh
    optimizer = losses.paper_optimizer(
        settings.lr, settings.steps, settings.warmup, settings.weight_decay
    )
    la_state = losses.init_la_state(jnp.array(la_init_LxD), optimizer)  # a copy: donated
    rng = jax.random.PRNGKey(settings.seed)
    la_step = losses.make_la_train_step(
        model.cfg,
        optimizer,
        settings.loss,
        settings.groups,
        remat=settings.remat,
        mesh=mesh,
        targets=settings.targets,
    )
    if mesh is None:
        place_batch = lambda tokens_BxX: tokens_BxX
    else:
        la_state = sharding.replicate(la_state, mesh)
        rng = jax.device_put(rng, sharding.replicated(mesh))
        place_batch = lambda tokens_BxX: sharding.shard_batch(tokens_BxX, mesh)

    def step_fn(state, batch):
        la_state, metrics = la_step(
            state["la"], model.params, {"tokens": place_batch(batch["tokens"])}, state["rng"]
        )
        return {"la": la_state, "rng": state["rng"]}, metrics

    return {"la": la_state, "rng": rng}, step_fn


def _resume(
    config: LookaheadTrainConfig, resume_key: dict, defaults: dict, state: dict, batches
) -> tuple[Any, dict]:
    """The checkpoint manager of ``<out>/checkpoints`` and the state to start from: ``state``,
    or the latest checkpoint's (made with the same settings, those it predates at their
    ``defaults``; ``batches`` moved to its position)."""
    settings = config.lookahead
    os.makedirs(config.out, exist_ok=True)
    mngr = checkpoint.manager(
        os.path.join(config.out, "checkpoints"), save_every=settings.save_every, keep=settings.keep
    )
    step = check_resume(mngr, resume_key, "use another --out", defaults)
    restored = restore(mngr, step, state, batches)
    return mngr, state if restored is None else restored.state


def _eval_log(
    config: LookaheadTrainConfig, model: FrozenModel, eval_set, la_init_LxD, start_step: int
) -> EvalLog:
    """The evaluation log, with the estimate for the initial embeddings; resuming at
    ``start_step`` keeps the records up to it (step 0 logs the initial estimate)."""
    settings = config.lookahead
    evals = EvalLog(
        model, eval_set, settings.temperature, settings.top_k, os.path.join(config.out, EVAL_FILE)
    )
    evals.at_init = evals.estimate(la_init_LxD)
    evals.history = _eval_log_upto(evals.path, start_step)
    if start_step == 0:
        evals.log(0, evals.at_init)
    return evals


def _train(
    config: LookaheadTrainConfig,
    state: dict,
    step_fn,
    batches,
    mngr,
    evals: EvalLog,
    resume_key: dict,
) -> tuple[LoopResult, dict[str, float]]:
    """``train_loop`` to ``steps``; the result and the last logged train loss, ce and kl."""
    settings = config.lookahead
    last: dict[str, float] = {}

    def postfix(metrics):
        last.update(loss=float(metrics["loss"]), ce=float(metrics["ce"]), kl=float(metrics["kl"]))
        return {"loss": last["loss"]}

    result = train_loop(
        state,
        step_fn,
        batches,
        start_step=int(state["la"].step),
        steps=settings.steps,
        mngr=mngr,
        meta_fn=lambda step: {"resume_key": resume_key, "eval": evals.history[-1:]},
        evaluate=evals.evaluate,
        eval_every=settings.eval_every,
        postfix_fn=postfix,
        log_every=settings.log_every,
        tokens_per_step=settings.batch_size * settings.seq_len,
        desc="lookahead",
    )
    return result, last


def _metrics(
    config: LookaheadTrainConfig,
    model: FrozenModel,
    result: LoopResult,
    train_loss: dict[str, float],
    evals: EvalLog,
    t0: float,
) -> dict[str, Any]:
    """The final metrics: losses, held-out acceptance (final and initial), throughput."""
    settings = config.lookahead
    B, X = settings.batch_size, settings.seq_len
    final = evals.final(result.state["la"].la, settings.steps)
    steps_per_s = result.steps_per_s if result.steps_run > 1 else None
    return {
        "loss": train_loss.get("loss"),
        "train_ce": train_loss.get("ce"),
        "train_kl": train_loss.get("kl"),
        "heldout_ce": final["ce"],
        "heldout_kl": final["kl"],
        "acceptance": {"greedy": final["greedy"], "sampled": final["sampled"]},
        "acceptance_init": {"greedy": evals.at_init["greedy"], "sampled": evals.at_init["sampled"]},
        "init": settings.init,
        "temperature": settings.temperature,
        "top_k": settings.top_k,
        "steps": settings.steps,
        "steps_this_run": result.steps_run,
        "steps_per_s": steps_per_s,
        # sequence tokens (B x X per step; the M x L LA rows not counted), this process's steps
        "tokens_per_s": steps_per_s and steps_per_s * B * X,
        **throughput(
            model.cfg, B, X, settings.groups, config.num_lookahead, steps_per_s, settings.targets
        ),
        "wall_time_s": time.perf_counter() - t0,
    }


def throughput(
    cfg, B: int, X: int, M: int, L: int, steps_per_s: float | None, targets: str = "all"
) -> dict:
    """Model FLOPs per step (``losses.la_step_flops``), TFLOP/s per device and the model FLOPs
    utilisation against the device's bf16 peak (None where the peak is not known, e.g. CPUs)."""
    flops = losses.la_step_flops(cfg, B, X, M, L, targets)
    per_device = None if steps_per_s is None else flops * steps_per_s / jax.device_count()
    peak = losses.PEAK_FLOPS.get(jax.devices()[0].device_kind)
    return {
        "model_flops_per_step": flops,
        "model_tflops_per_s_per_device": per_device and per_device / 1e12,
        "mfu": per_device / peak if per_device and peak else None,
    }


def main(argv: list[str] | None = None) -> int:
    """The program; returns the exit status."""
    args = _parse(argv)
    config = load_config(args)
    metrics = run(config, args)
    if "preempted" in metrics:
        return metrics["exit_code"]
    if args.json:
        print(json.dumps(metrics))
    else:
        acc, ini = metrics["acceptance"], metrics["acceptance_init"]
        print(
            f"wrote {config.out}: held-out acceptance per LA position at T="
            f"{metrics['temperature']}, top-k {metrics['top_k']}: {acc['sampled']} "
            f"({metrics['init']} "
            f"init {ini['sampled']}); greedy {acc['greedy']} (init {ini['greedy']}); "
            f"{metrics['tokens_per_s'] or 0:.0f} tokens/s, "
            f"{metrics['model_tflops_per_s_per_device'] or 0:.3g} model TFLOP/s per device"
            + (f" (MFU {metrics['mfu']:.1%} of bf16 peak)" if metrics["mfu"] else ""),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
