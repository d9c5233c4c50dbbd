"""From timed runs to ``infer.bench``'s results: the JSON row of one (temperature, batch, method)
cell (``summarise``: time, speedup, tokens and cost per call, acceptance, greedy equality with
autoregressive, the share of completions that parse as Python) and the greedy-equality summary
over the cells (``greedy_summary``).
"""

from __future__ import annotations

import ast
import re
import statistics

import numpy as np

from infer.bench_methods import Run, Variant, is_hf, is_ours, layout_text
from infer.prompts import strip_chat_answer


def median(xs):
    return float(statistics.median(xs)) if xs else None


# Fewer repeats give a bootstrap interval that holds the true speedup far less often than it
# says: simulated with a shared drift and 4% noise per method, a "95%" interval held it in 73%
# of runs with 3 repeats, 89% with 4, 92% with 5, 97.5% with 9
# (results/smollm2/auto-noise/coverage.py).
MIN_INTERVAL_REPEATS = 5


def speedup_interval(
    ar_walls, walls, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> list[float] | None:
    """The ``level`` interval of the speedup ``median(ar_walls) / median(walls)`` from a paired
    bootstrap: the repeats are resampled with replacement, repeat r of both methods together
    (they ran interleaved, at about the same time, so the machine's drift cancels in a pair).
    ``[low, high]``; None with fewer than ``MIN_INTERVAL_REPEATS`` repeats, or when the two
    ran a different number of repeats (a baseline timed in fewer, ``--hf-repeats``: its
    speedup is against every ``ar`` repeat, which an interval over the common ones would not
    match). Seeded: the same walls give the same interval."""
    n = len(walls)
    if n < MIN_INTERVAL_REPEATS or len(ar_walls) != n:
        return None
    ar_R, m_R = np.asarray(ar_walls, float), np.asarray(walls, float)
    idx_SxR = np.random.default_rng(seed).integers(0, n, (resamples, n))
    ratio_S = np.median(ar_R[idx_SxR], axis=1) / np.median(m_R[idx_SxR], axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratio_S, [tail, 100 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def _cut_eos(tokens, eos_ids):
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:i]
    return tokens


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False


def parses(text: str) -> bool:
    """Does ``text`` up to its last complete line parse as Python?"""
    cut = text.rfind("\n")
    return _parses(text[: cut + 1] if cut >= 0 else text)


def parses_toplevel(text: str, start: int = 0) -> bool:
    """Does ``text`` up to its last top-level line (one starting with a non-blank character,
    after offset ``start``, e.g. the prompt's end) parse? This drops the unfinished last
    statement or block, which generation at a fixed length almost always cuts."""
    cuts = [m.start() for m in re.finditer(r"(?m)^(?=\S)", text) if m.start() > start]
    return _parses(text[: cuts[-1]]) if cuts else parses(text)


def summarise(
    variant: Variant,
    runs: list[Run],
    ar_rows: dict | None,
    prompts,
    tok,
    eos_ids,
    num_calls_per_run: int,
    T: float,
    B: int,
    chat: bool = False,
) -> dict:
    """The JSON row of one (temperature, batch, variant) cell. ``chat``: the completions are
    chat answers, whose code is their first fenced block (or the whole answer)."""
    walls = [r.wall for r in runs]
    med = median(walls)
    new_tokens = [sum(len(t) for t in r.tokens) for r in runs]
    row = {
        "temperature": T,
        "batch_size": B,
        "method": variant.method,
        "L": variant.L,
        "key": variant.key,
        "wall_s": [round(w, 5) for w in walls],
        "median_s": med,
        "s_per_call": med / num_calls_per_run,
        "new_tokens": new_tokens[0],
        "tokens_per_s": statistics.median(new_tokens) / med,
    }
    if variant.method == "auto":
        row.update(_auto_shares(runs[0].layouts))
        row["auto_choice"] = _auto_choice(runs[-1].auto)
        row["auto_compile_s"] = round(sum(r.auto.get("compile_seconds", 0.0) for r in runs), 3)
    elif is_ours(variant.method):
        row["layout"] = layout_text(variant.method, variant.L)
    if is_ours(variant.method):
        row.update(_call_stats(variant, runs, new_tokens, med, B))
    if ar_rows is not None:
        row["speedup_vs_ar"] = ar_rows["median_s"] / med
        row["speedup_ci95"] = speedup_interval(ar_rows["wall_s"], row["wall_s"])
        if "ms_per_forward_call" in row:  # speedup ~= tokens_per_call / call_cost_vs_ar
            row["call_cost_vs_ar"] = row["ms_per_forward_call"] / ar_rows["ms_per_forward_call"]
    if T == 0 and ar_rows is not None and variant.method != "ar":
        ar_tokens = ar_rows["_tokens"]
        same = [a == b for a, b in zip(ar_tokens, runs[0].tokens)]
        row["greedy_identical_to_ar"] = all(same) and len(ar_tokens) == len(runs[0].tokens)
        row["greedy_mismatched_rows"] = int(sum(not s for s in same))
    if tok is not None:
        row.update(_parse_shares(tok, prompts, runs[0].tokens, eos_ids, chat))
    row["_tokens"] = runs[0].tokens
    return row


def _auto_shares(layouts: dict) -> dict:
    """Method auto: the share of the tokens each chosen layout produced, and as text."""
    total = max(sum(layouts.values()), 1)
    shares = {m: round(t / total, 4) for m, t in sorted(layouts.items(), key=lambda kv: -kv[1])}
    return {
        "auto_token_share": shares,
        "layout": ", ".join(f"{m} {s:.0%}" for m, s in shares.items()),
    }


def _auto_choice(stats: dict) -> dict:
    """Method auto: what its last call chose from, at its end, per candidate: the speed it
    judged by (``pass_jax.auto.speeds``), the expected tokens per loop iteration and the
    timed milliseconds per iteration (timed, or read from the cost file)."""
    keys = ("judged_tokens_per_s", "expected_tokens_per_iteration", "ms_per_iteration")
    return {k: stats.get(k, {}) for k in keys} | {
        "ms_per_iteration_from": stats.get("ms_per_iteration_from")
    }


def _call_stats(
    variant: Variant, runs: list[Run], new_tokens: list[int], med: float, B: int
) -> dict:
    """Our methods: forward calls, tokens and milliseconds per call, acceptance per position."""
    calls = sum(r.calls for r in runs)
    # one loop call serves all B rows: wall time per call ~ median * B / calls (exact at B=1)
    out = {
        "forward_calls": calls // len(runs),
        "tokens_per_call": sum(new_tokens) / max(calls, 1),
        "ms_per_forward_call": 1e3 * med * B * len(runs) / max(calls, 1),
    }
    if variant.method != "ar":
        vc = max(sum(r.verify_calls for r in runs), 1)
        acc = sum(r.accepted for r in runs)
        out["acceptance_per_position"] = [round(float(a) / vc, 4) for a in acc]
        out["mean_accepted_per_verify"] = round(float(acc.sum()) / vc, 4)
    return out


def _parse_shares(tok, prompts, completions, eos_ids, chat: bool) -> dict:
    """The shares of prompt + completion (``chat``: of the answer's code) that parse up to the
    last line and up to the last top-level line, and the first as a sample."""
    if chat:
        texts = [
            ("", strip_chat_answer(tok.decode(_cut_eos(c, eos_ids), skip_special_tokens=True)))
            for c in completions
        ]
    else:
        texts = [
            (
                tok.decode(p, skip_special_tokens=True),
                tok.decode(p + _cut_eos(c, eos_ids), skip_special_tokens=True),
            )
            for p, c in zip(prompts, completions)
        ]
    ok = [parses(t) for _, t in texts]
    top = [parses_toplevel(t, len(pt)) for pt, t in texts]
    return {
        "ast_parse_share": sum(ok) / max(len(ok), 1),
        "ast_parse_share_toplevel": sum(top) / max(len(top), 1),
        "sample": texts[0][1] if texts else "",
    }


def greedy_summary(rows: list[dict]) -> dict:
    """The cells (without their tokens) and, per method, whether greedy output equalled ``ar``."""
    greedy: dict[str, bool] = {}
    for row in rows:
        if "greedy_identical_to_ar" in row and not is_hf(row["method"]):
            key = row["key"]
            greedy[key] = greedy.get(key, True) and row["greedy_identical_to_ar"]
    hf_greedy = {
        f"{r['key']}@B{r['batch_size']}": r["greedy_identical_to_ar"]
        for r in rows
        if is_hf(r["method"]) and "greedy_identical_to_ar" in r
    }
    return {
        "greedy_identical_to_ar": greedy,
        "hf_greedy_identical_to_ours": hf_greedy,
        "cells": [{k: v for k, v in r.items() if k != "_tokens"} for r in rows],
    }
