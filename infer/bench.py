"""Benchmark: the PaSS paper's protocol (Table 1, L ablation) on any Hugging Face model directory.

    python -m infer.bench --model DIR --lookahead DIR[,DIR...] [--json OUT] [--out-dir results]
        [--num-prompts 16 --prompt-tokens 32 --max-new-tokens 128]
        [--temperatures 0.8,0.5,0.2,0 --top-k 10 --top-p 1]
        [--methods ar,unk,pass,pass-fused] [--batch-size 1,4] [--repeats 3]
        [--data stdlib] [--data-dir DIR] [--hf-baselines | --no-hf-baselines]

    python -m infer.bench --random-model 125m [--json OUT]     # issue 2's AR performance report

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
* ``hf-generate``, ``hf-prompt-lookup``: the same model dir in transformers (PyTorch)
  ``generate`` (greedy, or sampling with the same temperature / top-k / top-p) and its
  prompt-lookup decoding (batch 1 only), when torch is importable (``--hf-baselines``); on
  the GPU when JAX runs on one

Generation runs ``--max-new-tokens`` tokens per prompt, EOS ignored (``--stop-at-eos`` to stop),
so every method does the same work. Reported per cell: median seconds per generate call (N new
tokens per row; at batch 1 the paper's "s for N tokens"), speedup vs ``ar``, tokens/s, tokens per
forward call, the cost of a call vs ``ar``, the draft tree and the tokens of a call,
acceptance per LA position, for temperature 0 whether the output is identical to ``ar`` (it must
be: PaSS is lossless), and the share of completions (prompt + completion up to its last complete
line) that parse with ``ast``.

Outputs (``--out-dir``): ``bench.json`` (or ``--json OUT``), ``bench.md`` (tables shaped like the
paper's Table 1, the L ablation, details, quality, transformers baselines; also printed),
``speedup_vs_temperature.png`` and ``time_vs_L.png``. The first line names the machine (CPU
model, cores, load average, JAX device kind) and library versions.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from infer.generate import add_decode_args
from infer.prompts import make_chat_prompts, strip_chat_answer
from pass_jax.decode import decode_stacked
from pass_jax.gguf_file import resolve_model
from pass_jax.cli import add_mesh_arg, load_model_for_args
from pass_jax.program_config import USER_ERRORS

OUR_METHODS = ("ar", "unk", "pass", "pass-fused", "auto")
HF_METHODS = ("hf-generate", "hf-prompt-lookup")
LABELS = {"ar": "autoregressive", "unk": "[UNK] look-ahead", "pass": "PaSS",
          "pass-fused": "PaSS fused", "auto": "PaSS auto", "hf-generate": "transformers generate",
          "hf-prompt-lookup": "transformers prompt lookup"}
COLORS = {"ar": "tab:gray", "unk": "tab:orange", "pass": "tab:blue", "pass-fused": "tab:green"}


def is_ours(method: str) -> bool:
    """One of our decoding methods (a draft tree ``tree-WxW..`` included)."""
    from pass_jax.layout import parse_tree

    return method in OUR_METHODS or parse_tree(method) is not None


def label(method: str) -> str:
    return LABELS.get(method) or "PaSS " + method.replace("-", " ")


def color(method: str) -> str | None:
    return COLORS.get(method)


def layout_text(method: str, L: int | None) -> str:
    """The draft tree (widths per depth) and the tokens of each call of ``method`` at L:
    ``3x2x1x1, 110``; ``1x1x1x1, 2 calls: 5 + 5``; ``-, 1``."""
    from pass_jax.layout import make_schedule, parse_tree

    schedule = make_schedule("pass" if method == "unk" else method, L or 0)
    widths = parse_tree(method) or (1,) * schedule.num_lookahead
    calls = [str(lay.T) for lay in schedule.step]
    return ("x".join(map(str, widths)) or "-") + ", " + (
        f"{len(calls)} calls: " if len(calls) > 1 else "") + " + ".join(calls)


# --------------------------------------------------------------------------- flags


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m infer.bench",
                                 description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="Hugging Face model directory (with tokenizer files) or "
                    "GGUF file")
    ap.add_argument("--lookahead", default="",
                    help="look-ahead exports DIR[,DIR...], or a directory of per-L exports")
    ap.add_argument("--depths", type=_ints, default=[],
                    help="comma separated L' < L: also benchmark the first L' look-ahead rows of "
                         "the deepest export (an L ablation from one training)")
    ap.add_argument("--json", help="write the JSON results here (default OUT_DIR/bench.json); "
                    "rewritten after every cell, so an interrupted run keeps what it measured")
    ap.add_argument("--out-dir", default="results", help="JSON, Markdown and PNG outputs")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperatures", type=_floats, default=_floats("0.8,0.5,0.2,0"),
                    help="comma separated; 0 = greedy")
    ap.add_argument("--top-k", type=int, default=10, help="0 = off")
    ap.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    ap.add_argument("--methods", default="ar,unk,pass,pass-fused",
                    help=f"comma separated, of {','.join(OUR_METHODS)} and draft trees "
                         "tree-WxWx.. (e.g. tree-3x2x1x1)")
    ap.add_argument("--auto-methods",
                    help="comma separated candidates of method auto (default: ar, pass, fused "
                         "chains of every depth <= L and a few trees)")
    ap.add_argument("--batch-size", type=_ints, default=[1], help="comma separated, e.g. 1,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--main-lookahead", type=int,
                    help="L shown in the main table (default 4 if benchmarked, else the smallest)")
    ap.add_argument("--data", default="stdlib", help="corpus spec of the prompts (held-out split)")
    ap.add_argument("--prompts", choices=("code", "chat"), default="code",
                    help="code: the first --prompt-tokens tokens of held-out documents (the "
                    "paper's protocol); chat: the model's chat template around 'Write a Python "
                    "function `sig`: <docstring>' from held-out functions (instruct models)")
    ap.add_argument("--data-dir", help="TFDS data dir (stdlib: where it is prepared)")
    ap.add_argument("--seed", type=int, default=0, help="prompt choice and sampling seeds")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    add_decode_args(ap)
    ap.add_argument("--no-special-tokens", dest="add_special_tokens", action="store_false",
                    help="prompts without the special tokens the tokenizer adds by default (e.g. "
                         "LLaMA's BOS, which otherwise comes on top of --prompt-tokens)")
    ap.add_argument("--stop-at-eos", action="store_true",
                    help="stop rows at EOS (default: always generate --max-new-tokens)")
    ap.add_argument("--hf-baselines", action=argparse.BooleanOptionalAction, default=True,
                    help="also time transformers generate / prompt lookup (needs torch)")
    ap.add_argument("--hf-temperatures", type=_floats,
                    help="temperatures at which to run the transformers baselines (default: all; "
                         "they cost much more than ours on a CPU)")
    ap.add_argument("--hf-repeats", type=int,
                    help="timed repeats of the transformers baselines (default --repeats)")
    ap.add_argument("--prompt-lookup-tokens", type=int, default=10,
                    help="prompt_lookup_num_tokens of the transformers baseline")
    ap.add_argument("--call-tokens", type=_ints, default=[],
                    help="comma separated token counts, e.g. 1,5,25,64,128: also time one "
                         "forward call of that many new tokens per row (after --prompt-tokens "
                         "in the cache, at every --batch-size): where a bigger call stops being "
                         "free on this machine")
    ap.add_argument("--title", default="", help="a line naming what is benchmarked")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--from-json", metavar="JSON",
                    help="no benchmark: re-render the Markdown and plots of a results JSON "
                         "into --out-dir")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    rm = ap.add_argument_group("AR performance report (issue 2)")
    rm.add_argument("--random-model", choices=("125m", "tiny"),
                    help="benchmark AR on a random LLaMA of this size (ours vs transformers)")
    rm.add_argument("--max-len", type=_ints, default=[256, 4096],
                    help="cache sizes for the per-step time of --random-model")
    rm.add_argument("--rm-batch-size", type=_ints, default=[1, 8],
                    help="batch sizes of --random-model")
    rm.add_argument("--call-cost-methods", default="ar,pass,pass-fused,tree-2x2x1x1,tree-3x2x1x1",
                    help="methods (L = 4) whose cost of one call --random-model measures")
    add_mesh_arg(ap)
    return ap


# --------------------------------------------------------------------------- machine


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def machine_info() -> dict:
    """CPU model, core counts, load average, JAX devices and library versions."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    devices = jax.devices()
    libs = {n: _version(n) for n in ("jax", "jaxlib", "flax", "numpy", "transformers", "torch")}
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "jax_backend": jax.default_backend(),
        "jax_device_kind": devices[0].device_kind, "jax_devices": len(devices),
        "python": platform.python_version(), "platform": platform.platform(),
        "libraries": {k: v for k, v in libs.items() if v},
    }


def machine_line(info: dict) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return (f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
            f"JAX {info['jax_backend']} device '{info['jax_device_kind']}' x{info['jax_devices']}"
            f"; load average {info['load_average'][0]} at start"
            + (f", {info['load_average_end'][0]} at end" if "load_average_end" in info else "")
            + f"; Python {info['python']}; {libs}")


# --------------------------------------------------------------------------- inputs


def find_lookaheads(spec: str) -> list[str]:
    """Export directories named by ``--lookahead``: DIR[,DIR...] or a directory of exports."""
    from pass_jax.lookahead import TENSOR_FILE

    dirs: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if os.path.isfile(os.path.join(part, TENSOR_FILE)):
            dirs.append(part)
        elif os.path.isdir(part):
            subs = sorted(os.path.join(part, s) for s in os.listdir(part)
                          if os.path.isfile(os.path.join(part, s, TENSOR_FILE)))
            if not subs:
                raise ValueError(f"--lookahead {part}: neither an export ({TENSOR_FILE}) nor a "
                                 "directory of exports")
            dirs.extend(subs)
        else:
            raise FileNotFoundError(f"--lookahead {part}: no such directory")
    return dirs


def load_lookaheads(spec: str, cfg, params, depths=()) -> dict[int, tuple[str, object]]:
    """``{L: (dir, la_LxD)}`` for every export of ``--lookahead`` (one per L), plus, for each L'
    of ``depths`` without an export of its own, the first L' rows of the deepest export."""
    from pass_jax.lookahead import load_lookahead

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


def make_prompts(tok, data: str, data_dir: str | None, num_prompts: int, prompt_tokens: int,
                 seed: int) -> tuple[list[list[int]], dict]:
    """``num_prompts`` prompts of exactly ``prompt_tokens`` tokens from held-out documents.

    First the first tokens of random documents (the paper's protocol); if the split has fewer
    qualifying documents than prompts asked for, further prompts start at random top-level lines
    (a line that starts with a non-blank character) of those documents, round robin over
    documents, so every prompt still starts at the beginning of a line.
    """
    from pass_jax.data import heldout_documents, text_source

    source = text_source(data, "heldout", data_dir)
    docs = heldout_documents(source, tok, num_prompts, seed=seed, min_tokens=prompt_tokens)
    prompts = [d[:prompt_tokens] for d in docs]
    origin = {"documents": len(docs), "heldout_documents_in_split": len(source),
              "from_document_start": len(prompts), "from_top_level_lines": 0}
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
                    ids = _encode(tok, text[s:s + 40 * prompt_tokens])[:prompt_tokens]
                    if len(ids) == prompt_tokens and tuple(ids) not in seen:
                        seen.add(tuple(ids))
                        prompts.append(ids)
                        origin["from_top_level_lines"] += 1
                        break
        if len(prompts) < num_prompts:
            print(f"warning: only {len(prompts)} distinct prompts available "
                  f"({num_prompts} asked for)", file=sys.stderr)
    return prompts, origin


def prompt_set(args, tok) -> tuple[list[list[int]], dict]:
    """The prompts of ``--prompts``: ``code`` (:func:`make_prompts`, the paper's protocol) or
    ``chat`` (``infer.prompts.make_chat_prompts``: the chat template around an instruction
    built from a held-out function of ``--data``)."""
    if args.prompts == "chat":
        from pass_jax.data import text_source

        return make_chat_prompts(tok, text_source(args.data, "heldout", args.data_dir),
                                 args.num_prompts, args.seed)
    return make_prompts(tok, args.data, args.data_dir, args.num_prompts, args.prompt_tokens,
                        args.seed)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False


def parses(text: str) -> bool:
    """Does ``text`` up to its last complete line parse as Python?"""
    cut = text.rfind("\n")
    return _parses(text[:cut + 1] if cut >= 0 else text)


def parses_toplevel(text: str, start: int = 0) -> bool:
    """Does ``text`` up to its last top-level line (one starting with a non-blank character,
    after offset ``start``, e.g. the prompt's end) parse? This drops the unfinished last
    statement or block, which generation at a fixed length almost always cuts."""
    cuts = [m.start() for m in re.finditer(r"(?m)^(?=\S)", text) if m.start() > start]
    return _parses(text[:cuts[-1]]) if cuts else parses(text)


# --------------------------------------------------------------------------- runners


@dataclass
class Run:
    """One method over all prompts: outputs and totals (summed over the batches)."""

    tokens: list[list[int]]
    wall: float
    calls: int = 0
    verify_calls: int = 0
    accepted: np.ndarray | None = None
    layouts: dict = field(default_factory=dict)  # auto: tokens per chosen method


@dataclass
class Variant:
    """A method (and its L) as the benchmark times it."""

    key: str  # e.g. 'ar', 'pass@L4', 'hf-generate'
    method: str
    L: int | None
    run: Callable[..., Run]  # (prompts, batch, sampler, seed, max_new_tokens) -> Run
    batch_sizes: tuple[int, ...] | None = None  # None: all
    temperatures: tuple[float, ...] | None = None  # None: all
    runs: dict = field(default_factory=dict)


def _chunks(prompts, B):
    return [prompts[i:i + B] for i in range(0, len(prompts), B)]


def ours_runner(cfg, params, method: str, la, eos_ids, mesh=None, auto_methods=None,
                auto_prior: dict | None = None, precision: str = "auto"):
    """A runner of our ``generate`` (``method`` 'ar', 'pass', 'pass-fused', a draft tree or
    'auto' choosing among ``auto_methods``, its statistics starting from ``auto_prior``: the
    export's recorded acceptance, greedy or sampled), on ``mesh`` when one is given, at matmul
    ``precision`` (``decode.decode_precision``)."""
    from pass_jax.generation import generate

    def run(prompts, B, sampler, seed, max_new_tokens):
        out = Run(tokens=[], wall=0.0, accepted=None)
        for i, chunk in enumerate(_chunks(prompts, B)):
            res = generate(cfg, params, chunk, max_new_tokens=max_new_tokens, method=method,
                           la_LxD=la, sampler=sampler, eos_ids=eos_ids, seed=seed + i,
                           mesh=mesh, auto_methods=auto_methods, auto_prior=auto_prior and
                           auto_prior["greedy" if sampler.greedy else "sampled"],
                           precision=precision)
            out.tokens += res.tokens
            out.wall += res.wall_time
            out.calls += sum(res.calls)
            out.verify_calls += sum(res.verify_calls)
            acc = res.accepted.sum(0)
            out.accepted = acc if out.accepted is None else out.accepted + acc
            for m, t in (res.auto.tokens.items() if res.auto else ()):
                out.layouts[m] = out.layouts.get(m, 0) + t
        return out
    return run


def load_hf_torch(model_dir, dtype: str, threads: int | None):
    """The same model dir in transformers, eval mode, on the GPU when JAX runs on one (and
    PyTorch sees it), else on the CPU with ``threads`` threads: both sides on one kind of
    device."""
    import jax
    import torch
    import transformers

    torch.set_num_threads(threads or 1)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32 if dtype == "float32" else torch.bfloat16).eval()
    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        model = model.to("cuda")
    return model


def hf_runner(model, pad_id: int | None, prompt_lookup: int, stop_at_eos: bool):
    """A runner of transformers ``generate`` (prompt lookup when ``prompt_lookup`` > 0)."""
    import torch

    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def run(prompts, B, sampler, seed, max_new_tokens):
        out = Run(tokens=[], wall=0.0)
        for i, chunk in enumerate(_chunks(prompts, B)):
            P = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), P), pad_id or 0, dtype=torch.long)
            mask = torch.zeros((len(chunk), P), dtype=torch.long)
            for r, p in enumerate(chunk):  # left padding
                ids[r, P - len(p):] = torch.tensor(p)
                mask[r, P - len(p):] = 1
            kw = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id)
            if not stop_at_eos:  # no EOS stopping (min_new_tokens would mask EOS logits instead)
                kw["eos_token_id"] = None
            if sampler.greedy:
                kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
            else:
                kw.update(do_sample=True, temperature=sampler.temperature,
                          top_k=sampler.top_k or None, top_p=sampler.top_p)
            if prompt_lookup:
                kw["prompt_lookup_num_tokens"] = prompt_lookup
            torch.manual_seed(seed + i)
            ids, mask = ids.to(model.device), mask.to(model.device)
            sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                gen = model.generate(ids, attention_mask=mask, **kw)
            sync()
            out.wall += time.perf_counter() - t0
            out.tokens += [g[P:].tolist() for g in gen]
        return out
    return run


# --------------------------------------------------------------------------- benchmark


def call_ms_by_tokens(cfg, params, token_counts, B: int, context: int, repeats: int,
                      steps: int = 8) -> dict[str, float]:
    """Milliseconds of one forward call of T new tokens per row (every layer, the KV cache
    written, logits of every token) after ``context`` cached tokens, for each T of
    ``token_counts``: ``steps`` calls in one jitted ``fori_loop`` (the cache carried, as in the
    decode loop), a warm-up, then the median of ``repeats`` divided by ``steps``."""
    import jax
    import jax.numpy as jnp

    from pass_jax.cache import init_cache
    from pass_jax.decode import round_cache_len
    from pass_jax.model import forward, is_stacked, logits_from_hidden

    max_len = round_cache_len(context + max(token_counts))
    out = {}
    for T in token_counts:
        tokens_BxT = jnp.ones((B, T), jnp.int32)
        positions_BxT = jnp.broadcast_to(context + jnp.arange(T, dtype=jnp.int32), (B, T))

        def call(i, carry):
            cache, acc = carry
            h_BxTxD, cache = forward(cfg, params, tokens_BxT, positions_BxT, cache,
                                     return_hidden=True)
            return cache, acc + logits_from_hidden(cfg, params, h_BxTxD)[..., 0].sum()

        run = jax.jit(lambda params, cache: jax.lax.fori_loop(0, steps, call, (cache, 0.0)))
        cache = init_cache(cfg, B, max_len, per_layer=not is_stacked(params))
        cache = cache.replace(lengths=jnp.full((B,), context, jnp.int32))
        jax.block_until_ready(run(params, cache))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(run(params, cache))
            times.append(time.perf_counter() - t0)
        out[str(T)] = 1000 * _median(times) / steps
    return out


def _median(xs):
    return float(statistics.median(xs)) if xs else None


def _cut_eos(tokens, eos_ids):
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:i]
    return tokens


def summarise(variant: Variant, runs: list[Run], ar_rows: dict | None, prompts, tok, eos_ids,
              num_calls_per_run: int, T: float, B: int, chat: bool = False) -> dict:
    """The JSON row of one (temperature, batch, variant) cell. ``chat``: the completions are
    chat answers, whose code is their first fenced block (or the whole answer)."""
    walls = [r.wall for r in runs]
    med = _median(walls)
    new_tokens = [sum(len(t) for t in r.tokens) for r in runs]
    row = {"temperature": T, "batch_size": B, "method": variant.method, "L": variant.L,
           "key": variant.key, "wall_s": [round(w, 5) for w in walls], "median_s": med,
           "s_per_call": med / num_calls_per_run,
           "new_tokens": new_tokens[0], "tokens_per_s": statistics.median(new_tokens) / med}
    if variant.method == "auto":
        total = max(sum(runs[0].layouts.values()), 1)
        row["auto_token_share"] = {m: round(t / total, 4) for m, t in sorted(
            runs[0].layouts.items(), key=lambda kv: -kv[1])}
        row["layout"] = ", ".join(f"{m} {s:.0%}" for m, s in row["auto_token_share"].items())
    elif is_ours(variant.method):
        row["layout"] = layout_text(variant.method, variant.L)
    if is_ours(variant.method):
        calls = sum(r.calls for r in runs)
        row["forward_calls"] = calls // len(runs)
        row["tokens_per_call"] = sum(new_tokens) / max(calls, 1)
        # one loop call serves all B rows: wall time per call ~ median * B / calls (exact at B=1)
        row["ms_per_forward_call"] = 1e3 * med * B * len(runs) / max(calls, 1)
        if variant.L:
            vc = max(sum(r.verify_calls for r in runs), 1)
            acc = sum(r.accepted for r in runs)
            row["acceptance_per_position"] = [round(float(a) / vc, 4) for a in acc]
            row["mean_accepted_per_verify"] = round(float(acc.sum()) / vc, 4)
    if ar_rows is not None:
        row["speedup_vs_ar"] = ar_rows["median_s"] / med
        if "ms_per_forward_call" in row:  # speedup ~= tokens_per_call / call_cost_vs_ar
            row["call_cost_vs_ar"] = row["ms_per_forward_call"] / ar_rows["ms_per_forward_call"]
    if T == 0 and ar_rows is not None and variant.method != "ar":
        ar_tokens = ar_rows["_tokens"]
        same = [a == b for a, b in zip(ar_tokens, runs[0].tokens)]
        row["greedy_identical_to_ar"] = all(same) and len(ar_tokens) == len(runs[0].tokens)
        row["greedy_mismatched_rows"] = int(sum(not s for s in same))
    if tok is not None and chat:
        texts = [("", strip_chat_answer(tok.decode(_cut_eos(c, eos_ids),
                                                   skip_special_tokens=True)))
                 for c in runs[0].tokens]
    elif tok is not None:
        texts = [(tok.decode(p, skip_special_tokens=True),
                  tok.decode(p + _cut_eos(c, eos_ids), skip_special_tokens=True))
                 for p, c in zip(prompts, runs[0].tokens)]
    if tok is not None:
        ok = [parses(t) for _, t in texts]
        top = [parses_toplevel(t, len(pt)) for pt, t in texts]
        row["ast_parse_share"] = sum(ok) / max(len(ok), 1)
        row["ast_parse_share_toplevel"] = sum(top) / max(len(top), 1)
        row["sample"] = texts[0][1] if texts else ""
    row["_tokens"] = runs[0].tokens
    return row


def run_benchmark(args, out_stream=sys.stdout) -> dict:
    """The whole protocol; returns the JSON-able results (also written to disk)."""
    from tqdm.auto import tqdm

    from pass_jax.config import SamplerConfig
    from pass_jax.decode import batch_bucket, bucket
    from pass_jax.hf import load_tokenizer
    from pass_jax.layout import method_lookahead
    from pass_jax.lookahead import init_lookahead, recorded_acceptance

    info = machine_info()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if not is_ours(m):
            raise SystemExit(f"unknown method {m!r}; expected some of {','.join(OUR_METHODS)} "
                             "or a draft tree tree-WxWx..")
    if "ar" not in methods:
        methods.insert(0, "ar")  # speedups are relative to it
    mesh, cfg, params = load_model_for_args(args, args.model, args.dtype,
                                             stacked=decode_stacked(args.layers))
    tok = load_tokenizer(args.model)
    if tok is None:
        raise SystemExit(f"{args.model} has no tokenizer files: prompts need a tokenizer")
    las = load_lookaheads(args.lookahead, cfg, params, args.depths) if args.lookahead else {}
    if any(m not in ("ar", "unk") for m in methods) and not las:
        raise SystemExit("methods pass / pass-fused / tree-.. need --lookahead DIR[,DIR...]")
    Ls = sorted(las) or ([args.main_lookahead or 4] if "unk" in methods else [])
    main_L = args.main_lookahead or (4 if 4 in Ls else (Ls[0] if Ls else None))
    eos_ids = tuple(cfg.eos_token_ids) if args.stop_at_eos else ()
    auto_methods = args.auto_methods and [m.strip() for m in args.auto_methods.split(",")
                                          if m.strip()]
    eos_for_cut = set(cfg.eos_token_ids)

    prompts, origin = prompt_set(args, tok)
    # as tokenizer(text) gives them, e.g. BOS + the text's tokens (chat templates write theirs)
    if args.add_special_tokens and args.prompts != "chat":
        from pass_jax.tokenizer import with_special_tokens
        prompts = with_special_tokens(tok, prompts)

    variants: list[Variant] = []
    for m in methods:
        if m == "ar":
            variants.append(Variant("ar", "ar", None, ours_runner(
                cfg, params, "ar", None, eos_ids, mesh, precision=args.precision)))
            continue
        for L in Ls:
            if method_lookahead(m, L) > L:
                continue  # a tree deeper than L
            la = init_lookahead(cfg, params, L) if m == "unk" else las[L][1]
            prior = recorded_acceptance(las[L][0]) if m == "auto" else None
            prior = prior and {k: v[:L] for k, v in prior.items()}  # an export cut to L rows
            variants.append(Variant(f"{m}@L{L}", m, L, ours_runner(
                cfg, params, "pass" if m == "unk" else m, la, eos_ids, mesh, auto_methods,
                prior, args.precision)))
    hf_note = None
    if args.hf_baselines:
        try:
            hf_model = load_hf_torch(args.model, args.dtype, info["usable_cores"])
            pad = cfg.pad_token_id if cfg.pad_token_id is not None else (
                cfg.eos_token_ids[0] if cfg.eos_token_ids else 0)
            hf_T = tuple(args.hf_temperatures) if args.hf_temperatures else None
            variants.append(Variant("hf-generate", "hf-generate", None,
                                    hf_runner(hf_model, pad, 0, args.stop_at_eos),
                                    temperatures=hf_T))
            variants.append(Variant("hf-prompt-lookup", "hf-prompt-lookup", None,
                                    hf_runner(hf_model, pad, args.prompt_lookup_tokens,
                                              args.stop_at_eos), batch_sizes=(1,),
                                    temperatures=hf_T))
        except ImportError as e:
            hf_note = f"transformers baselines skipped: {e}"
            print(hf_note, file=sys.stderr)

    cells = [(T, B) for B in args.batch_size for T in args.temperatures]
    result = {
        "title": args.title, "machine": info, "machine_line": machine_line(info),
        "model": os.path.abspath(args.model), "model_params": cfg.num_params(),
        "model_config": {k: v for k, v in cfg.to_dict().items()
                         if k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                                  "ffn_dim", "dtype")},
        "lookahead": {str(L): os.path.abspath(d) for L, (d, _) in las.items()},
        "settings": {"num_prompts": len(prompts), "prompt_tokens": args.prompt_tokens,
                     "max_new_tokens": args.max_new_tokens, "temperatures": args.temperatures,
                     "top_k": args.top_k, "top_p": args.top_p, "methods": methods,
                     "L": Ls, "main_L": main_L, "batch_sizes": args.batch_size,
                     "repeats": args.repeats, "data": args.data, "prompts": args.prompts,
                     "seed": args.seed, "precision": args.precision, "layers": args.layers,
                     "stop_at_eos": args.stop_at_eos,
                     "add_special_tokens": args.add_special_tokens,
                     "prompt_lookup_tokens": args.prompt_lookup_tokens,
                     "hf_temperatures": args.hf_temperatures or args.temperatures,
                     "hf_repeats": args.repeats if args.hf_repeats is None else args.hf_repeats,
                     "hf_baselines": bool(args.hf_baselines) and hf_note is None},
        "prompts": origin,
        "complete": False,
        "cells": [],
    }
    if hf_note:
        result["hf_note"] = hf_note
    if args.call_tokens:
        context = max(map(len, prompts))
        result["call_ms_by_tokens"] = {"context": context, "ms": {
            str(B): call_ms_by_tokens(cfg, params, args.call_tokens, B, context, args.repeats)
            for B in args.batch_size}}
    rows: list[dict] = []
    def in_cell(v, T, B):
        return ((v.batch_sizes is None or B in v.batch_sizes)
                and (v.temperatures is None or T in v.temperatures))

    hf_reps = args.repeats if args.hf_repeats is None else min(args.hf_repeats, args.repeats)
    total = sum(1 + (hf_reps if v.method.startswith("hf") else args.repeats)
                for T, B in cells for v in variants if in_cell(v, T, B))
    bar = tqdm(total=total, desc="bench", unit="run", disable=args.quiet, file=sys.stderr)
    for T, B in cells:
        sampler = SamplerConfig(T, args.top_k if T > 0 else 0, args.top_p if T > 0 else 1.0)
        cell_vars = [v for v in variants if in_cell(v, T, B)]
        n_calls = len(_chunks(prompts, B))
        runs: dict[str, list[Run]] = {v.key: [] for v in cell_vars}
        errors: dict[str, str] = {}
        for v in cell_vars:  # warm-up: compile every shape (first and last batch)
            bar.set_description(f"T={T} B={B} warm-up {v.key}")
            # one chunk per compiled shape (padded rows, prompt length bucket), so that the
            # timed runs compile nothing (chat prompts differ in length)
            warm = list({(batch_bucket(len(c)), bucket(max(map(len, c)))): c
                         for c in reversed(_chunks(prompts, B))}.values())
            # ours: the full spec (max_new_tokens is static, so it must match); transformers
            # compiles nothing, a short call warms its caches
            n_warm = min(4, args.max_new_tokens) if v.method.startswith("hf") else \
                args.max_new_tokens
            try:
                for chunk in warm:
                    v.run(chunk, B, sampler, args.seed, n_warm)
            except Exception as e:  # a baseline that cannot run here is reported, not fatal
                if not v.method.startswith("hf"):
                    raise
                errors[v.key] = f"{type(e).__name__}: {e}"
                print(f"warning: {v.key} failed at T={T} B={B}: {errors[v.key]}",
                      file=sys.stderr)
            bar.update(1)
        active = [v for v in cell_vars if v.key not in errors]
        hf_repeats = args.repeats if args.hf_repeats is None else max(1, args.hf_repeats)
        for r in range(args.repeats):
            now = [v for v in active if r < hf_repeats or not v.method.startswith("hf")]
            k = r % max(len(now), 1)
            for v in now[k:] + now[:k]:  # interleaved, rotating order
                bar.set_description(f"T={T} B={B} repeat {r + 1} {v.key}")
                runs[v.key].append(v.run(prompts, B, sampler, args.seed + 1000 * r,
                                         args.max_new_tokens))
                bar.update(1)
        chat = args.prompts == "chat"
        ar_row = summarise(variants[0], runs["ar"], None, prompts, tok, eos_for_cut, n_calls,
                           T, B, chat)
        ar_row["speedup_vs_ar"] = ar_row["call_cost_vs_ar"] = 1.0
        rows.append(ar_row)
        for v in cell_vars[1:]:
            if v.key in errors:
                rows.append({"temperature": T, "batch_size": B, "method": v.method, "L": v.L,
                             "key": v.key, "error": errors[v.key]})
                bar.update(hf_repeats if v.method.startswith("hf") else args.repeats)
                continue
            row = summarise(v, runs[v.key], ar_row, prompts, tok, eos_for_cut, n_calls, T, B,
                            chat)
            rows.append(row)
        result.update(greedy_summary(rows))
        write_json(result, json_path(args))  # an interrupted run keeps the cells measured
    bar.close()
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["complete"] = True
    write_outputs(result, args, out_stream)
    return result


# --------------------------------------------------------------------------- reports


def greedy_summary(rows: list[dict]) -> dict:
    """The cells (without their tokens) and, per method, whether greedy output equalled ``ar``."""
    greedy: dict[str, bool] = {}
    for row in rows:
        if "greedy_identical_to_ar" in row and not row["method"].startswith("hf"):
            key = row["key"]
            greedy[key] = greedy.get(key, True) and row["greedy_identical_to_ar"]
    hf_greedy = {f"{r['key']}@B{r['batch_size']}": r["greedy_identical_to_ar"] for r in rows
                 if r["method"].startswith("hf") and "greedy_identical_to_ar" in r}
    return {"greedy_identical_to_ar": greedy, "hf_greedy_identical_to_ours": hf_greedy,
            "cells": [{k: v for k, v in r.items() if k != "_tokens"} for r in rows]}


def _row(rows, T, B, method, L=None):
    for r in rows:
        if (r["temperature"] == T and r["batch_size"] == B and r["method"] == method
                and (L is None or r["L"] == L) and "error" not in r):
            return r
    return None


def _tname(T):
    return "greedy" if T == 0 else f"T={T:g}"


def markdown(result: dict) -> str:
    s = result["settings"]
    rows = result["cells"]
    Ts, Bs, Ls, L0 = s["temperatures"], s["batch_sizes"], s["L"], s["main_L"]
    ours = [m for m in s["methods"]]
    N = s["max_new_tokens"]
    out = []
    if result.get("title"):
        out.append(f"**{result['title']}**\n")
    out.append(result["machine_line"] + "\n")
    if not result.get("complete", True):
        out.append("**Incomplete run** (interrupted): only the cells measured before it stopped.\n")
    mc = result["model_config"]
    out.append(f"Model: {result['model_params'] / 1e6:.2f}M params (d={mc['d_model']}, "
               f"{mc['n_layers']} layers, vocab {mc['vocab_size']}, {mc['dtype']}); "
               + (f"{s['num_prompts']} chat prompts ({'-'.join(map(str, rng))} tokens: the chat "
                  f"template around an instruction from a held-out function of '{s['data']}', "
                  if (rng := result["prompts"].get("prompt_tokens_range")) else
                  f"{s['num_prompts']} prompts of {s['prompt_tokens']} tokens from '{s['data']}' ")
               + f"held-out ({result['prompts']['documents']} documents), {N} new tokens, "
               f"top-k {s['top_k']}, median of {s['repeats']} interleaved repeats after a warm-up"
               + (f" (transformers baselines: {s['hf_repeats']} repeat(s) at "
                  + ", ".join(_tname(T) for T in s["hf_temperatures"]) + ")"
                  if s.get("hf_baselines") and "hf_repeats" in s else "") + ".\n")
    for B in Bs:
        out.append(f"\n### Seconds per generate call ({N} new tokens x {B} row{'s' * (B > 1)}), "
                   f"speedup vs autoregressive (L={L0})\n")
        out.append("| method | " + " | ".join(_tname(T) for T in Ts) + " |")
        out.append("|---|" + "---|" * len(Ts))
        for m in ours + ["hf-generate", "hf-prompt-lookup"]:
            cells = []
            for T in Ts:
                r = _row(rows, T, B, m, None if m == "ar" or m.startswith("hf") else L0)
                cells.append("-" if r is None else
                             f"{r['s_per_call']:.3f} ({r['speedup_vs_ar']:.2f}x)")
            if all(c == "-" for c in cells):
                continue
            name = label(m) + (f" (L={L0})" if m != "ar" and not m.startswith("hf") else "")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(Ls) > 1:
        B = Bs[0]
        out.append(f"\n### L ablation: seconds per call (speedup), batch {B}\n")
        out.append("| method | L | " + " | ".join(_tname(T) for T in Ts) + " |")
        out.append("|---|---|" + "---|" * len(Ts))
        for m in [m for m in ours if m != "ar"]:
            for L in Ls:
                cells = []
                for T in Ts:
                    r = _row(rows, T, B, m, L)
                    cells.append("-" if r is None else
                                 f"{r['s_per_call']:.3f} ({r['speedup_vs_ar']:.2f}x)")
                if any(c != "-" for c in cells):
                    out.append(f"| {label(m)} | {L} | " + " | ".join(cells) + " |")
    out.append("\n### Details: tokens/s, tokens per forward call, cost of a call, acceptance\n")
    out.append("Speedup = tokens per call / call cost vs autoregressive: the first is draft "
               "quality, the second what a call of the layout's tokens costs on this machine "
               "(ms per call = wall time x batch / forward calls, prefill included).\n")
    out.append("| batch | method | L | draft tree, tokens per call | temperature | tokens/s | "
               "tokens/call | ms/call (vs AR) | acceptance per position | ast parses (to last "
               "line / to last top-level line) | greedy == AR |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            out.append(f"| {r['batch_size']} | {label(r['method'])} | - | - | "
                       f"{_tname(r['temperature'])} | error: {r['error'][:80]} | | | | | |")
            continue
        acc = r.get("acceptance_per_position")
        g = r.get("greedy_identical_to_ar")
        out.append(
            f"| {r['batch_size']} | {label(r['method'])} | {r['L'] or '-'} | "
            f"{r.get('layout', '-')} | {_tname(r['temperature'])} | {r['tokens_per_s']:.1f} | "
            + (f"{r['tokens_per_call']:.2f}" if "tokens_per_call" in r else "-") + " | "
            + (f"{r['ms_per_forward_call']:.2f} ({r['call_cost_vs_ar']:.2f}x)"
               if "call_cost_vs_ar" in r else "-") + " | "
            + (", ".join(f"{a:.2f}" for a in acc) if acc else "-") + " | "
            + (f"{r['ast_parse_share']:.0%}" if "ast_parse_share" in r else "-")
            + (f" / {r['ast_parse_share_toplevel']:.0%}" if "ast_parse_share_toplevel" in r
               else "") + " | "
            + ("-" if g is None else ("yes" if g else f"NO ({r['greedy_mismatched_rows']} rows)"))
            + " |")
    g = result["greedy_identical_to_ar"]
    if g:
        out.append("\nGreedy output identical to autoregressive: " + ", ".join(
            f"{k} {'yes' if v else 'NO'}" for k, v in g.items()) + ".")
    if result.get("hf_greedy_identical_to_ours"):
        out.append("transformers greedy output identical to ours: " + ", ".join(
            f"{k} {'yes' if v else 'NO'}" for k, v in result["hf_greedy_identical_to_ours"].items())
            + ".")
    if result.get("hf_note"):
        out.append("\n" + result["hf_note"])
    if result.get("call_ms_by_tokens"):
        cost = result["call_ms_by_tokens"]
        Ts = list(next(iter(cost["ms"].values())))
        out.append(f"\n### Cost of one forward call vs the tokens in it (after {cost['context']} "
                   "cached tokens; ms, and x the 1-token call when measured)\n")
        out.append("| batch | " + " | ".join(f"{T} tokens" for T in Ts) + " |")
        out.append("|---|" + "---|" * len(Ts))
        for B, ms in cost["ms"].items():
            one = ms.get("1")
            out.append(f"| {B} | " + " | ".join(
                f"{ms[T]:.2f}" + (f" ({ms[T] / one:.2f}x)" if one else "") for T in Ts) + " |")
    return "\n".join(out) + "\n"


def plots(result: dict, out_dir: str) -> list[str]:
    """speedup_vs_temperature.png and time_vs_L.png; returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, rows = result["settings"], result["cells"]
    Ts, Bs, Ls, L0 = s["temperatures"], s["batch_sizes"], s["L"], s["main_L"]
    paths = []
    fig, axes = plt.subplots(1, len(Bs), figsize=(5 * len(Bs), 4), squeeze=False)
    for ax, B in zip(axes[0], Bs):
        for m in s["methods"]:  # (transformers' baselines are in the tables: ~0.01-0.1x here)
            pts = [(T, _row(rows, T, B, m, None if m == "ar" else L0)) for T in Ts]
            pts = [(T, r["speedup_vs_ar"]) for T, r in pts if r is not None]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="o", color=color(m),
                        ls=":" if m == "ar" else "-",
                        label=label(m) + (f" L={L0}" if m != "ar" else ""))
        ax.set_xlabel("temperature (0 = greedy)")
        ax.set_ylabel("speedup vs autoregressive (wall time)")
        ax.set_title(f"batch {B}")
        ax.legend(fontsize=7)
    fig.suptitle(result.get("title") or "PaSS speedup", fontsize=9)
    fig.tight_layout()
    p = os.path.join(out_dir, "speedup_vs_temperature.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    B = Bs[0]
    fig, axes = plt.subplots(1, len(Ts), figsize=(4 * len(Ts), 3.6), squeeze=False, sharey=True)
    for ax, T in zip(axes[0], Ts):
        ar = _row(rows, T, B, "ar")
        if ar:
            ax.axhline(ar["s_per_call"], color="gray", ls=":", label="autoregressive")
        for m in [m for m in s["methods"] if m != "ar"]:
            pts = [(L, _row(rows, T, B, m, L)) for L in Ls]
            pts = [(L, r["s_per_call"]) for L, r in pts if r is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color(m), label=label(m))
        ax.set_xlabel("L (look-ahead tokens)")
        ax.set_title(_tname(T))
        ax.set_xticks(Ls)
    axes[0][0].set_ylabel(f"s per call ({s['max_new_tokens']} tokens, batch {B})")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    p = os.path.join(out_dir, "time_vs_L.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def json_path(args) -> str:
    """Where the JSON results go: ``--json`` or ``OUT_DIR/bench.json``."""
    return args.json or os.path.join(args.out_dir, "bench.json")


def check_outputs(args) -> None:
    """Creates ``--out-dir`` and the JSON's folder, or raises ValueError naming the path that
    cannot be written: before any model call, so no measurement is lost at the end."""
    path = json_path(args)
    for d in (args.out_dir, os.path.dirname(path) or "."):
        if os.path.exists(d) and not os.path.isdir(d):
            raise ValueError(f"output folder {d} is an existing file")
        os.makedirs(d, exist_ok=True)
        if not os.access(d, os.W_OK | os.X_OK):
            raise ValueError(f"output folder {d} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"--json {path} is a directory; give a file name")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"--json {path} is not writable")


def write_json(result: dict, path: str) -> None:
    """Writes ``result`` to ``path`` atomically (a temporary file renamed over it)."""
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".json", dir=os.path.dirname(path) or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


def write_outputs(result: dict, args, out_stream=sys.stdout):
    check_outputs(args)
    json_path_ = json_path(args)
    md = markdown(result)
    md_path = os.path.join(args.out_dir, "bench.md")
    with open(md_path, "w") as f:
        f.write(md)
    result["outputs"] = {"json": json_path_, "markdown": md_path}
    if not args.no_plots:
        result["outputs"]["plots"] = plots(result, args.out_dir)
    write_json(result, json_path_)
    if out_stream is not None:
        out_stream.write(md)
        out_stream.write(f"\nwritten: {json_path_}, {md_path}"
                         + "".join(f", {p}" for p in result["outputs"].get("plots", [])) + "\n")


# --------------------------------------------------------------------------- issue 2 report


RANDOM_MODELS = {
    "125m": dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4,
                 ffn_dim=2048),
    "tiny": dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128),
}


CALL_COST_SLOTS = 512  # one cache size for every method's call cost (more for long prompts)


def random_model_report(args, out_stream=sys.stdout) -> dict:
    """AR tokens/s of a random LLaMA (ours vs transformers, same weights), our per-step time at
    several cache sizes with per-layer params (how the programs decode) and with the stacked,
    scanned params training uses, and the cost of one call per method (issue 2's report)."""
    import jax

    from pass_jax.auto import iteration_seconds, timing_slots
    from pass_jax.config import ModelConfig, SamplerConfig
    from pass_jax.decode import round_cache_len
    from pass_jax.hf import load_hf, save_hf
    from pass_jax.layout import make_schedule
    from pass_jax.lookahead import init_lookahead
    from pass_jax.model import init_params, stack_layers

    info = machine_info()
    N, P, reps = args.max_new_tokens, args.prompt_tokens, max(args.repeats, 1)
    max_pos = max([4096] + args.max_len) + 64
    cfg = ModelConfig(**RANDOM_MODELS[args.random_model], max_position=max_pos, bos_token_id=1,
                      eos_token_ids=(2,), pad_token_id=0)
    tmp = tempfile.mkdtemp(prefix="pass_jax_random_")
    results = {"model": args.random_model, "params": cfg.num_params(), "machine": info,
               "max_new_tokens": N, "prompt_tokens": P, "repeats": reps, "tokens_per_s": {},
               "step_ms": {}, "step_ms_scanned": {}, "call_ms": {}}
    try:
        save_hf(cfg, init_params(cfg, jax.random.PRNGKey(0)), os.path.join(tmp, "model"))
        # exactly the weights torch gets, per layer as the programs decode
        cfg, params = load_hf(os.path.join(tmp, "model"), stacked=False)
        hf = load_hf_torch(os.path.join(tmp, "model"), "float32", info["usable_cores"])
        rng = np.random.default_rng(0)
        greedy = SamplerConfig()
        ours = ours_runner(cfg, params, "ar", None, ())
        theirs = hf_runner(hf, 0, 0, False)
        for B in args.rm_batch_size:
            prompts = rng.integers(4, cfg.vocab_size, (B, P)).tolist()
            ours(prompts, B, greedy, 0, N)  # warm-up (compile)
            theirs(prompts, B, greedy, 0, N)
            t_ours, t_hf, same = [], [], True
            for _ in range(reps):
                a = ours(prompts, B, greedy, 0, N)
                b = theirs(prompts, B, greedy, 0, N)
                t_ours.append(a.wall)
                t_hf.append(b.wall)
                same = same and a.tokens == b.tokens
            results["tokens_per_s"][str(B)] = {
                "ours": B * N / _median(t_ours), "transformers": B * N / _median(t_hf),
                "ours_s": t_ours, "transformers_s": t_hf, "greedy_identical": same}
        # per-call time: K loop steps jitted in one fori_loop on a live decode state (rows
        # re-activated after a short generation), so prefill, compilation and dispatch drop out
        prompt = [rng.integers(4, cfg.vocab_size, P).tolist()]
        la = init_lookahead(cfg, params, 4)  # [UNK] drafts: the cost of a call, not its yield

        # every method at one cache size: enough for its steps after a long prompt too
        cost_methods = [m.strip() for m in args.call_cost_methods.split(",") if m.strip()]
        slots = max([CALL_COST_SLOTS] + [round_cache_len(timing_slots(
            P, make_schedule(m, 4))) for m in cost_methods])

        def call_ms(method: str, max_len: int = slots, params=params) -> float:
            # the paper's schedule: the mean of a drafting and a validation call
            calls = len(make_schedule(method, 4).step)
            return 1000 * iteration_seconds(cfg, params, method, la, prompt, reps,
                                            max_len) / calls

        scanned = stack_layers(params)
        for max_len in args.max_len:
            results["step_ms"][str(max_len)] = call_ms("ar", max_len)
            results["step_ms_scanned"][str(max_len)] = call_ms("ar", max_len, scanned)
        del scanned
        results["call_slots"] = slots
        for method in cost_methods:  # the step-cost side of a PaSS speedup
            results["call_ms"][method] = call_ms(method)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    lines = [machine_line(info), "",
             f"Random LLaMA {args.random_model} ({cfg.num_params() / 1e6:.1f}M params, float32), "
             f"greedy AR, prompt {P} tokens, {N} new tokens, median of {reps}:", "",
             "| batch | ours tokens/s | transformers tokens/s | greedy identical |",
             "|---|---|---|---|"]
    for B, r in results["tokens_per_s"].items():
        lines.append(f"| {B} | {r['ours']:.1f} | {r['transformers']:.1f} | "
                     f"{'yes' if r['greedy_identical'] else 'no'} |")
    lines += ["", "Our step time (ms/token, batch 1), per-layer params (how `generate`, `bench` "
              "and the demo decode) vs the stacked params of training under `nn.scan`:", "",
              "| cache max_len | per-layer | scanned |", "|---|---|---|"]
    for L, ms in results["step_ms"].items():
        lines.append(f"| {L} | {ms:.2f} | {results['step_ms_scanned'][L]:.2f} |")
    ar_ms = results["call_ms"]["ar"]
    lines += ["", f"Cost of one forward call, batch 1, L=4, {results['call_slots']} cache slots "
              "(PaSS: the mean of a drafting and a validation call; fused: 1 + L + L(L+1) = 25 "
              "tokens; a draft tree: its nodes, each with a group of LA tokens). A method is "
              "faster than autoregressive only when it yields more tokens per call than this "
              "ratio:", "",
              "| method | draft tree, tokens per call | ms per call | vs autoregressive |",
              "|---|---|---|---|"]
    for m, ms in results["call_ms"].items():
        lines.append(f"| {label(m)} | {layout_text(m, 4)} | {ms:.2f} | {ms / ar_ms:.2f}x |")
    text = "\n".join(lines) + "\n"
    results["markdown"] = text
    if args.json:
        if os.path.dirname(args.json):
            os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
            f.write(text)
    if out_stream is not None:
        out_stream.write(text)
    return results


def check_args(args) -> None:
    """Raises ValueError naming the first flag whose value cannot work."""
    for flag, value in (("--repeats", args.repeats), ("--num-prompts", args.num_prompts),
                        ("--prompt-tokens", args.prompt_tokens),
                        ("--max-new-tokens", args.max_new_tokens),
                        ("--hf-repeats", 1 if args.hf_repeats is None else args.hf_repeats)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    for flag, values in (("--batch-size", args.batch_size), ("--depths", args.depths),
                         ("--call-tokens", args.call_tokens)):
        if any(v < 1 for v in values):
            raise ValueError(f"{flag} must be >= 1, got {','.join(map(str, values))}")
    if any(T < 0 for T in args.temperatures):
        raise ValueError(f"--temperatures must be >= 0, got {args.temperatures}")


def read_results(path: str) -> dict:
    """A results JSON written by this program (``--from-json``), or ValueError saying why not."""
    try:
        with open(path) as f:
            result = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--from-json {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--from-json {path}: not a results JSON ({e})") from None
    missing = [k for k in ("settings", "cells", "machine_line", "model_config")
               if not isinstance(result, dict) or k not in result]
    if missing:
        raise ValueError(f"--from-json {path}: not a results JSON of infer.bench "
                         f"(missing {', '.join(missing)})")
    return result


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.random_model:
        return random_model_report(args)
    try:
        if args.from_json:
            result = read_results(args.from_json)
            args.json = args.json or os.path.join(args.out_dir, "bench.json")
            write_outputs(result, args)
            return result
        if not args.model:
            raise SystemExit("--model DIR is required (or --random-model / --from-json)")
        check_args(args)
        check_outputs(args)
        args.model = resolve_model(args.model)  # a .gguf file: its cached conversion
        return run_benchmark(args)
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
