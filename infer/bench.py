"""Benchmark: the PaSS paper's protocol (Table 1, L ablation) on any Hugging Face model directory.

    python -m infer.bench --model DIR --lookahead DIR[,DIR...] [--json OUT] [--out-dir results]
        [--num-prompts 16 --prompt-tokens 32 --max-new-tokens 128]
        [--temperatures 0.8,0.5,0.2,0 --top-k 10 --top-p 1]
        [--methods ar,unk,pass,pass-fused] [--batch-size 1,4] [--repeats 3]
        [--dtype bfloat16] [--cache-dtype {auto,float32,bfloat16}]
        [--data stdlib] [--data-dir DIR] [--hf-baselines | --no-hf-baselines]
        [--auto-costs FILE|none] [--auto-retime] [--config FILE.yaml]

    python -m infer.bench --random-model 125m [--json OUT]     # AR performance on a random model

``--lookahead`` takes one or more look-ahead exports (``train.lookahead --out``), comma separated,
or a directory whose subdirectories are exports (one per L, e.g. ``la/L2 la/L4 ..``).
``--depths 2,3`` also benchmarks the first L' rows of an export for each L' listed: the look-ahead
positions are causal (LA_i sees LA_1..i-1 only), so they are an L'-export trained jointly, and one
L = 8 training gives the whole L ablation.

Protocol (the paper's, sized by flags): the prompts are the first ``--prompt-tokens`` tokens of
random held-out documents of ``--data`` (when more prompts than documents are asked for, further
prompts start at random top-level lines of the same documents, round robin; the JSON says how
many of each). For every (temperature, batch size) cell, every method and every L, one warm-up
run (compilation excluded), then ``--repeats`` timed runs over all prompts with the methods
interleaved (the order rotates every repeat); the median wall time counts. Methods:

* ``ar``         autoregressive (one forward call per token)
* ``unk``        the paper's [UNK] baseline: PaSS with every LA embedding = the unk token's
* ``pass``       PaSS, the paper's schedule (drafting call + validation call), trained LA
* ``pass-fused`` PaSS with verification and drafting fused in one call per iteration
* ``auto``       the layout of the best expected tokens per second on this machine, chosen
  every 32 tokens from timed call costs and running acceptance statistics (``pass_jax.auto``;
  the share of tokens each layout produced is in the table)
* ``tree-3x2x1x1`` a fused draft tree (widths per depth, depth <= L; benchmarked for every L
  at least its depth): several draws per position verified at once, lossless by recursive
  rejection sampling
* ``tree-4+ctx2`` the same with a chain of 2 context drafts (tokens copied from the prompt and
  the text so far, ``pass_jax.context``) under the root and under every draft
* ``ctx-3``      3 context drafts alone (prompt-lookup decoding in our decode loop; needs no
  look-ahead export)
* ``hf-generate``, ``hf-prompt-lookup``: the same model dir in transformers (PyTorch)
  ``generate`` (greedy, or sampling with the same temperature / top-k / top-p) and its
  prompt-lookup decoding (batch 1 only), when torch is importable (``--hf-baselines``); on
  the GPU when JAX runs on one

Generation runs ``--max-new-tokens`` tokens per prompt, EOS ignored (``--stop-at-eos`` to stop),
so every method does the same work. Reported per cell: median seconds per generate call (N new
tokens per row; at batch 1 the paper's "s for N tokens"), speedup vs ``ar`` (with 5 or more
repeats, its 95% interval from a paired bootstrap of the repeats), tokens/s, tokens per
forward call, the cost of a call vs ``ar``, the draft tree and the tokens of a call,
acceptance per LA position, for temperature 0 whether the output is identical to ``ar`` (it must
be: PaSS is lossless), and the share of completions (prompt + completion up to its last complete
line) that parse with ``ast``.

Outputs (``--out-dir``): ``bench.json`` (or ``--json OUT``), ``bench.md`` (tables shaped like the
paper's Table 1, the L ablation, details, quality, transformers baselines; also printed),
``speedup_vs_temperature.png`` and ``time_vs_L.png``. The first line names the machine (CPU
model, cores, load average, JAX device kind) and library versions.

This module is the command line and the protocol (look-ahead exports, prompts, the cells); the
methods and our runner are in ``infer.bench_methods``, transformers' baselines in
``infer.bench_baselines``, a cell's JSON row in ``infer.bench_summary``, call costs and the
``--random-model`` report in ``infer.bench_calls``, the Markdown, plots and files in
``infer.bench_report``. The settings (``infer.config.BenchConfig``) may also come from a YAML
``--config`` whose keys are named like the flags (``batch_size: [1, 4]``); the flags given on
the command line win.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from infer.bench_baselines import hf_variants
from infer.bench_calls import call_ms_table, random_model_report
from infer.bench_methods import (
    OUR_METHODS,
    Run,
    Variant,
    batches,
    is_hf,
    is_ours,
    lookahead_free,
    ours_runner,
)
from infer.bench_report import (
    check_outputs,
    json_path,
    machine_info,
    machine_line,
    read_results,
    write_json,
    write_outputs,
)
from infer.bench_summary import greedy_summary, summarise
from infer.config import DTYPES, PROMPT_KINDS, RANDOM_MODELS, BenchConfig, comma_list, load
from infer.generate import add_auto_args, add_config_arg, add_decode_args, auto_cost_file
from infer.prompts import make_chat_prompts
from pass_jax.cli import add_mesh_arg, load_model_for_args
from pass_jax.config import SamplerConfig
from pass_jax.data import heldout_documents, text_source
from pass_jax.decode import batch_bucket, bucket, decode_stacked
from pass_jax.gguf_file import resolve_model
from pass_jax.hf import load_tokenizer
from pass_jax.layout import method_lookahead
from pass_jax.lookahead import (
    TENSOR_FILE,
    init_lookahead,
    load_lookahead,
    lookahead_metadata,
    recorded_acceptance,
)
from pass_jax.program_config import USER_ERRORS, ArgumentParser, InputError, run_cli
from pass_jax.tokenizer import with_special_tokens

# --------------------------------------------------------------------------- flags


def _numbers(kind: type, what: str):
    """An argparse type: a comma list of ``kind`` (an error names ``what`` it wants)."""

    def parse(text: str) -> list:
        try:
            return [kind(x) for x in comma_list(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of {what}") from None

    return parse


_floats, _ints = _numbers(float, "numbers"), _numbers(int, "integers")


def build_parser() -> argparse.ArgumentParser:
    """The flags; no defaults here (they are ``BenchConfig``'s): a flag not given is None."""
    ap = ArgumentParser(
        prog="python -m infer.bench",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--model", help="Hugging Face model directory (with tokenizer files) or GGUF file"
    )
    ap.add_argument(
        "--lookahead", help="look-ahead exports DIR[,DIR...], or a directory of per-L exports"
    )
    ap.add_argument(
        "--depths",
        type=_ints,
        help="comma separated L' < L: also benchmark the first L' look-ahead rows of "
        "the deepest export (an L ablation from one training)",
    )
    ap.add_argument(
        "--json",
        help="write the JSON results here (default OUT_DIR/bench.json); "
        "rewritten after every cell, so an interrupted run keeps what it measured",
    )
    ap.add_argument("--out-dir", help="JSON, Markdown and PNG outputs")
    ap.add_argument("--num-prompts", type=int)
    ap.add_argument("--prompt-tokens", type=int)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--temperatures", type=_floats, help="comma separated; 0 = greedy")
    ap.add_argument("--top-k", type=int, help="0 = off")
    ap.add_argument("--top-p", type=float, help="1 = off")
    ap.add_argument(
        "--methods",
        type=comma_list,
        help=f"comma separated, of {','.join(OUR_METHODS)}, draft trees "
        "tree-WxWx.. (e.g. tree-3x2x1x1), trees with context chains (e.g. tree-4+ctx2) and "
        "context drafts alone (e.g. ctx-3)",
    )
    add_auto_args(ap)
    ap.add_argument("--batch-size", type=_ints, help="comma separated, e.g. 1,4")
    ap.add_argument("--repeats", type=int)
    ap.add_argument(
        "--main-lookahead",
        type=int,
        help="L shown in the main table (default 4 if benchmarked, else the smallest)",
    )
    ap.add_argument("--data", help="corpus spec of the prompts (held-out split)")
    ap.add_argument(
        "--prompts",
        choices=PROMPT_KINDS,
        help="code: the first --prompt-tokens tokens of held-out documents (the "
        "paper's protocol); chat: the model's chat template around 'Write a Python "
        "function `sig`: <docstring>' from held-out functions (instruct models)",
    )
    ap.add_argument("--data-dir", help="TFDS data dir (stdlib: where it is prepared)")
    ap.add_argument("--seed", type=int, help="prompt choice and sampling seeds")
    ap.add_argument("--dtype", choices=DTYPES)
    add_decode_args(ap)
    ap.add_argument(
        "--no-special-tokens",
        dest="add_special_tokens",
        action="store_false",
        default=None,
        help="prompts without the special tokens the tokenizer adds by default (e.g. "
        "LLaMA's BOS, which otherwise comes on top of --prompt-tokens)",
    )
    ap.add_argument(
        "--stop-at-eos",
        action="store_true",
        default=None,
        help="stop rows at EOS (default: always generate --max-new-tokens)",
    )
    _add_baseline_args(ap)
    ap.add_argument(
        "--call-tokens",
        type=_ints,
        help="comma separated token counts, e.g. 1,5,25,64,128: also time one "
        "forward call of that many new tokens per row (after --prompt-tokens "
        "in the cache, at every --batch-size): where a bigger call stops being "
        "free on this machine",
    )
    ap.add_argument("--title", help="a line naming what is benchmarked")
    ap.add_argument("--no-plots", action="store_true", default=None)
    ap.add_argument(
        "--from-json",
        metavar="JSON",
        help="no benchmark: re-render the Markdown and plots of a results JSON into --out-dir",
    )
    ap.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    add_config_arg(ap, "model: DIR, batch_size: [1, 4], ...")
    _add_random_model_args(ap)
    add_mesh_arg(ap)
    return ap


def _add_baseline_args(ap: argparse.ArgumentParser) -> None:
    """The flags of transformers' baselines."""
    ap.add_argument(
        "--hf-baselines",
        action=argparse.BooleanOptionalAction,
        help="also time transformers generate / prompt lookup (needs torch)",
    )
    ap.add_argument(
        "--hf-temperatures",
        type=_floats,
        help="temperatures at which to run the transformers baselines (default: all; "
        "they cost much more than ours on a CPU)",
    )
    ap.add_argument(
        "--hf-repeats",
        type=int,
        help="timed repeats of the transformers baselines (default --repeats)",
    )
    ap.add_argument(
        "--prompt-lookup-tokens",
        type=int,
        help="prompt_lookup_num_tokens of the transformers baseline",
    )


def _add_random_model_args(ap: argparse.ArgumentParser) -> None:
    """The flags of ``--random-model`` (the AR performance report)."""
    rm = ap.add_argument_group("AR performance report on a random model")
    rm.add_argument(
        "--random-model",
        choices=RANDOM_MODELS,
        help="benchmark AR on a random LLaMA of this size (ours vs transformers)",
    )
    rm.add_argument(
        "--max-len", type=_ints, help="cache sizes for the per-step time of --random-model"
    )
    rm.add_argument("--rm-batch-size", type=_ints, help="batch sizes of --random-model")
    rm.add_argument(
        "--call-cost-methods",
        type=comma_list,
        help="methods (L = 4) whose cost of one call --random-model measures",
    )


# --------------------------------------------------------------------------- inputs


def find_lookaheads(spec: str) -> list[str]:
    """Export directories named by ``--lookahead``: DIR[,DIR...] or a directory of exports."""
    dirs: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if os.path.isfile(os.path.join(part, TENSOR_FILE)):
            dirs.append(part)
        elif os.path.isdir(part):
            subs = sorted(
                os.path.join(part, s)
                for s in os.listdir(part)
                if os.path.isfile(os.path.join(part, s, TENSOR_FILE))
            )
            if not subs:
                raise ValueError(
                    f"--lookahead {part}: neither an export ({TENSOR_FILE}) nor a "
                    "directory of exports"
                )
            dirs.extend(subs)
        else:
            raise FileNotFoundError(f"--lookahead {part}: no such directory")
    return dirs


def load_lookaheads(spec: str, cfg, params, depths=()) -> dict[int, tuple[str, object]]:
    """``{L: (dir, la_LxD)}`` for every export of ``--lookahead`` (one per L), plus, for each L'
    of ``depths`` without an export of its own, the first L' rows of the deepest export."""
    out: dict[int, tuple[str, object]] = {}
    for d in find_lookaheads(spec):
        la = load_lookahead(d, cfg, params)
        L = int(la.shape[0])
        if L in out:
            raise ValueError(f"two look-ahead exports with L={L}: {out[L][0]} and {d}")
        out[L] = (d, la)
    deepest = max(out)
    for L in depths:
        if not 1 <= L <= deepest:
            raise ValueError(f"--depths {L}: the deepest look-ahead export has L={deepest}")
        out.setdefault(L, (out[deepest][0], out[deepest][1][:L]))
    return dict(sorted(out.items()))


def _encode(tok, text: str) -> list[int]:
    """The text's own tokens: the special tokens are added to whole prompts (``--prompt-tokens``
    counts text tokens only; see ``run_benchmark``)."""
    return tok.encode(text, add_special_tokens=False, verbose=False)


def make_prompts(
    tok, data: str, data_dir: str | None, num_prompts: int, prompt_tokens: int, seed: int
) -> tuple[list[list[int]], dict]:
    """``num_prompts`` prompts of exactly ``prompt_tokens`` tokens from held-out documents.

    First the first tokens of random documents (the paper's protocol); if the split has fewer
    qualifying documents than prompts asked for, further prompts start at random top-level lines
    (a line that starts with a non-blank character) of those documents, round robin over
    documents, so every prompt still starts at the beginning of a line.
    """
    source = text_source(data, "heldout", data_dir)
    docs = heldout_documents(source, tok, num_prompts, seed=seed, min_tokens=prompt_tokens)
    prompts = [d[:prompt_tokens] for d in docs]
    origin = {
        "documents": len(docs),
        "heldout_documents_in_split": len(source),
        "from_document_start": len(prompts),
        "from_top_level_lines": 0,
    }
    if len(prompts) < num_prompts:
        rng = np.random.default_rng(seed + 1)
        starts = []
        texts = [tok.decode(d) for d in docs]
        for text in texts:
            s = [m.start() for m in re.finditer(r"(?m)^(?=\S)", text) if m.start() > 0]
            starts.append(list(rng.permutation(s)) if s else [])
        seen = {tuple(p) for p in prompts}
        while len(prompts) < num_prompts and any(starts):
            for di, text in enumerate(texts):
                if len(prompts) == num_prompts:
                    break
                while starts[di]:
                    s = int(starts[di].pop())
                    ids = _encode(tok, text[s : s + 40 * prompt_tokens])[:prompt_tokens]
                    if len(ids) == prompt_tokens and tuple(ids) not in seen:
                        seen.add(tuple(ids))
                        prompts.append(ids)
                        origin["from_top_level_lines"] += 1
                        break
        if len(prompts) < num_prompts:
            print(
                f"warning: only {len(prompts)} distinct prompts available "
                f"({num_prompts} asked for)",
                file=sys.stderr,
            )
    return prompts, origin


def prompt_set(config: BenchConfig, tok) -> tuple[list[list[int]], dict]:
    """The prompts of ``--prompts``: ``code`` (:func:`make_prompts`, the paper's protocol) or
    ``chat`` (``infer.prompts.make_chat_prompts``: the chat template around an instruction
    built from a held-out function of ``--data``)."""
    if config.prompts == "chat":
        return make_chat_prompts(
            tok,
            text_source(config.data, "heldout", config.data_dir),
            config.num_prompts,
            config.seed,
        )
    return make_prompts(
        tok, config.data, config.data_dir, config.num_prompts, config.prompt_tokens, config.seed
    )


# --------------------------------------------------------------------------- protocol


def parse_methods(names: Sequence[str]) -> list[str]:
    """``--methods`` as a list, ``ar`` first (speedups are relative to it); ``InputError`` naming
    an unknown method."""
    methods = list(names)
    for m in methods:
        if not is_ours(m):
            raise InputError(
                f"error: unknown method {m!r}; expected some of {','.join(OUR_METHODS)}, "
                "a draft tree tree-WxWx.., one with context chains tree-WxWx..+ctxM, or "
                "context drafts ctx-M"
            )
    if "ar" not in methods:
        methods.insert(0, "ar")  # speedups are relative to it
    return methods


def our_variants(
    config: BenchConfig, cfg, params, mesh, methods: list[str], las: dict, Ls: list[int]
) -> list[Variant]:
    """``ar``, then every other method at every L it fits (a tree no deeper than L): [UNK]
    embeddings for ``unk``, the export's for the others, ``auto`` starting from the
    acceptance the export recorded."""
    eos_ids = tuple(cfg.eos_token_ids) if config.stop_at_eos else ()
    auto = {
        "auto_methods": config.auto_methods and list(config.auto_methods),
        "auto_cost_file": auto_cost_file(config.auto_costs),
        "auto_retime": config.auto_retime,
    }
    decoding = {"precision": config.precision, "cache_dtype": config.cache_dtype}
    variants: list[Variant] = []
    for m in methods:
        if lookahead_free(m):
            variants.append(
                Variant(m, m, None, ours_runner(cfg, params, m, None, eos_ids, mesh, **decoding))
            )
            continue
        for L in Ls:
            if method_lookahead(m, L) > L:
                continue  # a tree deeper than L
            la = init_lookahead(cfg, params, L) if m == "unk" else las[L][1]
            prior = recorded_acceptance(las[L][0]) if m == "auto" else None
            prior = prior and {k: v[:L] for k, v in prior.items()}  # an export cut to L rows
            variants.append(
                Variant(
                    f"{m}@L{L}",
                    m,
                    L,
                    ours_runner(
                        cfg,
                        params,
                        "pass" if m == "unk" else m,
                        la,
                        eos_ids,
                        mesh,
                        auto_prior=prior,
                        **auto,
                        **decoding,
                    ),
                )
            )
    return variants


def baseline_variants(
    config: BenchConfig, cfg, threads: int | None
) -> tuple[list[Variant], str | None]:
    """transformers' baselines when ``--hf-baselines`` and torch is importable, else none and
    (torch missing) a note saying why."""
    if not config.hf_baselines:
        return [], None
    try:
        return hf_variants(config, cfg, threads), None
    except ImportError as e:
        note = f"transformers baselines skipped: {e}"
        print(note, file=sys.stderr)
        return [], note


def new_result(
    config: BenchConfig,
    info: dict,
    cfg,
    methods: list[str],
    las: dict,
    Ls: list[int],
    prompts,
    origin: dict,
    hf_note: str | None,
) -> dict:
    """The results JSON before any cell: machine, model, look-ahead exports, settings, prompts."""
    main_L = config.main_lookahead or (4 if 4 in Ls else (Ls[0] if Ls else None))
    result = {
        "title": config.title,
        "machine": info,
        "machine_line": machine_line(info),
        "model": os.path.abspath(config.model),
        "model_params": cfg.num_params(),
        "model_config": {
            k: v
            for k, v in cfg.to_dict().items()
            if k
            in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "dtype")
        },
        "lookahead": {str(L): os.path.abspath(d) for L, (d, _) in las.items()},
        "settings": _settings(config, len(prompts), methods, Ls, main_L, hf_note),
        "prompts": origin,
        "complete": False,
        "cells": [],
    }
    if hf_note:
        result["hf_note"] = hf_note
    return result


def _settings(
    config: BenchConfig,
    num_prompts: int,
    methods: list[str],
    Ls: list[int],
    main_L: int | None,
    hf_note: str | None,
) -> dict:
    """The results JSON's ``settings``: what was benchmarked, how (lists as lists)."""
    return {
        "num_prompts": num_prompts,
        "prompt_tokens": config.prompt_tokens,
        "max_new_tokens": config.max_new_tokens,
        "temperatures": list(config.temperatures),
        "top_k": config.top_k,
        "top_p": config.top_p,
        "methods": methods,
        "L": Ls,
        "main_L": main_L,
        "batch_sizes": list(config.batch_size),
        "repeats": config.repeats,
        "data": config.data,
        "prompts": config.prompts,
        "seed": config.seed,
        "precision": config.precision,
        "cache_dtype": config.cache_dtype,
        "layers": config.layers,
        "stop_at_eos": config.stop_at_eos,
        "add_special_tokens": config.add_special_tokens,
        "prompt_lookup_tokens": config.prompt_lookup_tokens,
        "hf_temperatures": list(config.hf_temperatures or config.temperatures),
        "hf_repeats": config.repeats if config.hf_repeats is None else config.hf_repeats,
        "hf_baselines": bool(config.hf_baselines) and hf_note is None,
    }


def hf_repeats(config: BenchConfig) -> int:
    """Timed repeats of transformers' baselines: ``--hf-repeats``, at most ``--repeats``."""
    return config.repeats if config.hf_repeats is None else min(config.hf_repeats, config.repeats)


def warm_up(
    config: BenchConfig, variants: list[Variant], prompts, T: float, B: int, sampler, bar
) -> tuple[dict[str, str], dict[str, dict]]:
    """One untimed run of every variant on one batch per compiled shape, so that the timed
    runs compile nothing. Returns the errors of the baselines that cannot run here (key ->
    message: reported, not fatal; ours raise), and for ``auto`` (key -> fields of its row) the
    seconds its warm-up spent timing the candidates (``auto_warmup_timing_s``: compiling and
    timing them on a machine that has no cost table yet) and compiling its segment programs
    (``auto_warmup_compile_s``)."""
    # one chunk per compiled shape (padded rows, prompt length bucket), so that the timed runs
    # compile nothing (chat prompts differ in length)
    warm = list(
        {
            (batch_bucket(len(c)), bucket(max(map(len, c)))): c
            for c in reversed(batches(prompts, B))
        }.values()
    )
    errors: dict[str, str] = {}
    setup: dict[str, dict] = {}
    for v in variants:
        bar.set_description(f"T={T} B={B} warm-up {v.key}")
        # ours: the full spec (max_new_tokens is static, so it must match); transformers
        # compiles nothing, a short call warms its caches; auto: every batch, twice (the
        # layouts it runs, so what it compiles, depend on the prompts and on the statistics
        # earlier calls left)
        n_warm = min(4, config.max_new_tokens) if is_hf(v.method) else config.max_new_tokens
        chunks = batches(prompts, B) * 2 if v.method == "auto" else warm
        try:
            for chunk in chunks:
                out = v.run(chunk, B, sampler, config.seed, n_warm)
                if out.auto:
                    row = setup.setdefault(v.key, {})
                    for name in ("timing", "compile"):
                        field = f"auto_warmup_{name}_s"
                        row[field] = round(row.get(field, 0.0) + out.auto[f"{name}_seconds"], 3)
        except Exception as e:  # a baseline that cannot run here is reported, not fatal
            if not is_hf(v.method):
                raise
            errors[v.key] = f"{type(e).__name__}: {e}"
            print(f"warning: {v.key} failed at T={T} B={B}: {errors[v.key]}", file=sys.stderr)
        bar.update(1)
    return errors, setup


def timed_runs(
    config: BenchConfig, variants: list[Variant], prompts, T: float, B: int, sampler, bar
) -> dict[str, list[Run]]:
    """``--repeats`` runs of every variant over all prompts (transformers': ``hf_repeats``),
    interleaved in an order that rotates every repeat."""
    runs: dict[str, list[Run]] = {v.key: [] for v in variants}
    for r in range(config.repeats):
        now = [v for v in variants if r < hf_repeats(config) or not is_hf(v.method)]
        k = r % max(len(now), 1)
        for v in now[k:] + now[:k]:  # interleaved, rotating order
            bar.set_description(f"T={T} B={B} repeat {r + 1} {v.key}")
            runs[v.key].append(
                v.run(prompts, B, sampler, config.seed + 1000 * r, config.max_new_tokens)
            )
            bar.update(1)
    return runs


def cell_rows(
    config: BenchConfig,
    variants: list[Variant],
    runs: dict,
    errors: dict,
    prompts,
    tok,
    eos_ids,
    T: float,
    B: int,
) -> list[dict]:
    """The JSON rows of one cell: ``ar`` (``variants[0]``) first, the others against it; a
    baseline that failed gets its error."""
    n_calls = len(batches(prompts, B))
    chat = config.prompts == "chat"
    ar_row = summarise(variants[0], runs["ar"], None, prompts, tok, eos_ids, n_calls, T, B, chat)
    ar_row["speedup_vs_ar"] = ar_row["call_cost_vs_ar"] = 1.0
    rows = [ar_row]
    for v in variants[1:]:
        if v.key in errors:
            rows.append(
                {
                    "temperature": T,
                    "batch_size": B,
                    "method": v.method,
                    "L": v.L,
                    "key": v.key,
                    "error": errors[v.key],
                }
            )
        else:
            rows.append(
                summarise(v, runs[v.key], ar_row, prompts, tok, eos_ids, n_calls, T, B, chat)
            )
    return rows


def run_cells(
    config: BenchConfig, result: dict, variants: list[Variant], prompts, tok, eos_ids
) -> None:
    """Every (temperature, batch size) cell in turn: warm-up, timed runs, rows; the results
    JSON is rewritten after every cell, so an interrupted run keeps the cells measured."""
    cells = [(T, B) for B in config.batch_size for T in config.temperatures]
    total = sum(
        1 + (hf_repeats(config) if is_hf(v.method) else config.repeats)
        for T, B in cells
        for v in variants
        if v.in_cell(T, B)
    )
    bar = tqdm(total=total, desc="bench", unit="run", disable=config.quiet, file=sys.stderr)
    rows: list[dict] = []
    for T, B in cells:
        sampler = SamplerConfig(T, config.top_k if T > 0 else 0, config.top_p if T > 0 else 1.0)
        cell_vars = [v for v in variants if v.in_cell(T, B)]
        errors, setup = warm_up(config, cell_vars, prompts, T, B, sampler, bar)
        runs = timed_runs(
            config, [v for v in cell_vars if v.key not in errors], prompts, T, B, sampler, bar
        )
        bar.update(hf_repeats(config) * len(errors))  # (only baselines fail)
        new = cell_rows(config, cell_vars, runs, errors, prompts, tok, eos_ids, T, B)
        rows += [{**row, **setup.get(row["key"], {})} for row in new]
        result.update(greedy_summary(rows))
        write_json(result, json_path(config))
    bar.close()


def run_benchmark(
    config: BenchConfig, device_args: argparse.Namespace, out_stream=sys.stdout
) -> dict:
    """The whole protocol, on the ``--mesh`` of ``device_args`` if any; returns the JSON-able
    results (also written to disk)."""
    info = machine_info()
    methods = parse_methods(config.methods)
    mesh, cfg, params = load_model_for_args(
        device_args, config.model, config.dtype, stacked=decode_stacked(config.layers)
    )
    tok = load_tokenizer(config.model)
    if tok is None:
        raise InputError(f"error: {config.model} has no tokenizer files: prompts need a tokenizer")
    las = load_lookaheads(config.lookahead, cfg, params, config.depths) if config.lookahead else {}
    Ls = sorted(las) or ([config.main_lookahead or 4] if "unk" in methods else [])

    prompts, origin = prompt_set(config, tok)
    # as tokenizer(text) gives them, e.g. BOS + the text's tokens (chat templates write theirs)
    if config.add_special_tokens and config.prompts != "chat":
        prompts = with_special_tokens(tok, prompts)

    variants = our_variants(config, cfg, params, mesh, methods, las, Ls)
    baselines, hf_note = baseline_variants(config, cfg, info["usable_cores"])
    result = new_result(config, info, cfg, methods, las, Ls, prompts, origin, hf_note)
    if config.call_tokens:
        result["call_ms_by_tokens"] = call_ms_table(
            cfg,
            params,
            config.call_tokens,
            config.batch_size,
            max(map(len, prompts)),
            config.repeats,
            config.cache_dtype,
        )
    run_cells(config, result, variants + baselines, prompts, tok, set(cfg.eos_token_ids))
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["complete"] = True
    write_outputs(result, config, out_stream)
    return result


def check_inputs(config: BenchConfig) -> None:
    """What the protocol reads besides the model, read before it loads (or a GGUF file is
    converted): the methods, the look-ahead exports they need and the ``--data`` source."""
    methods = parse_methods(config.methods)
    for d in find_lookaheads(config.lookahead) if config.lookahead else ():
        lookahead_metadata(d)  # a missing or broken export
    if any(not lookahead_free(m) and m != "unk" for m in methods) and not config.lookahead:
        raise InputError("error: methods pass / pass-fused / tree-.. need --lookahead DIR[,DIR...]")
    text_source(config.data, "heldout", config.data_dir)


def run(config: BenchConfig, device_args: argparse.Namespace) -> dict:
    """``--from-json``'s re-rendering, or the benchmark (``--model`` required; outputs checked
    writable before any work)."""
    if config.from_json:
        result = read_results(config.from_json)
        write_outputs(result, config)
        return result
    if not config.model:
        raise InputError("error: --model DIR is required (or --random-model / --from-json)")
    check_outputs(config)
    check_inputs(config)
    config = dataclasses.replace(config, model=resolve_model(config.model))  # .gguf: converted
    return run_benchmark(config, device_args)


def _or_exit(fn, *args):
    """``fn(*args)``; bad input (``USER_ERRORS``) exits with ``error: ...``."""
    try:
        return fn(*args)
    except USER_ERRORS as e:
        raise InputError(f"error: {e}") from None


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    config = _or_exit(load, BenchConfig, args)
    if config.random_model:
        return random_model_report(config)
    return _or_exit(run, config, args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
