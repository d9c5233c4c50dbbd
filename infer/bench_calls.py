"""Call costs, timed apart from generation: what one forward call costs against the tokens in it
(``call_ms_by_tokens``, ``infer.bench --call-tokens``), and the AR performance report on a
random LLaMA (``random_model_report``, ``infer.bench --random-model``): ours vs
transformers on the same weights, our per-step time at several cache sizes with per-layer and
with stacked (scanned) params, and the cost of one call per decoding method.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from infer.bench_baselines import hf_runner, load_hf_torch
from infer.bench_methods import label, layout_text, ours_runner
from infer.bench_report import machine_info, machine_line
from infer.bench_summary import median
from infer.config import BenchConfig
from pass_jax.cache import init_cache
from pass_jax.config import ModelConfig, SamplerConfig
from pass_jax.decode import round_cache_len
from pass_jax.hf import load_hf, save_hf
from pass_jax.iteration_cost import iteration_seconds, time_iterations, timing_slots
from pass_jax.layout import make_schedule
from pass_jax.lookahead import init_lookahead
from pass_jax.model import forward, init_params, is_stacked, logits_from_hidden, stack_layers

RANDOM_MODELS = {"125m": ModelConfig.llama_125m, "tiny": ModelConfig.tiny}


CALL_COST_SLOTS = 512  # one cache size for every method's call cost (more for long prompts)


# --------------------------------------------------------------------------- --call-tokens


@partial(jax.jit, static_argnums=(0, 1))
def _calls(cfg, steps: int, params, cache, tokens_BxT, positions_BxT):
    """``steps`` forward calls of ``tokens_BxT`` in one ``fori_loop``, the cache carried; the
    sum of one logit per token keeps every call's logits live."""

    def call(i, carry):
        cache, acc = carry
        h_BxTxD, cache = forward(cfg, params, tokens_BxT, positions_BxT, cache, return_hidden=True)
        return cache, acc + logits_from_hidden(cfg, params, h_BxTxD)[..., 0].sum()

    return jax.lax.fori_loop(0, steps, call, (cache, 0.0))


def call_ms_by_tokens(
    cfg,
    params,
    token_counts,
    B: int,
    context: int,
    repeats: int,
    steps: int = 8,
    cache_dtype: str = "auto",
) -> dict[str, float]:
    """Milliseconds of one forward call of T new tokens per row (every layer, the KV cache of
    ``cache_dtype`` written, logits of every token) after ``context`` cached tokens, for each T
    of ``token_counts``: ``steps`` calls in one jitted ``fori_loop`` (the cache carried, as in
    the decode loop), a warm-up, then the median of ``repeats`` divided by ``steps``."""
    max_len = round_cache_len(context + max(token_counts))
    out = {}
    for T in token_counts:
        tokens_BxT = jnp.ones((B, T), jnp.int32)
        positions_BxT = jnp.broadcast_to(context + jnp.arange(T, dtype=jnp.int32), (B, T))

        cache = init_cache(cfg, B, max_len, cache_dtype, per_layer=not is_stacked(params))
        cache = cache.replace(lengths=jnp.full((B,), context, jnp.int32))
        args = (params, cache, tokens_BxT, positions_BxT)
        jax.block_until_ready(_calls(cfg, steps, *args))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(_calls(cfg, steps, *args))
            times.append(time.perf_counter() - t0)
        out[str(T)] = 1000 * median(times) / steps
    return out


def call_ms_table(
    cfg, params, token_counts, batch_sizes, context: int, repeats: int, cache_dtype: str = "auto"
) -> dict:
    """``call_ms_by_tokens`` at every batch size: ``{"context": .., "ms": {B: {T: ms}}}``."""
    return {
        "context": context,
        "ms": {
            str(B): call_ms_by_tokens(
                cfg, params, token_counts, B, context, repeats, cache_dtype=cache_dtype
            )
            for B in batch_sizes
        },
    }


# --------------------------------------------------------------------------- random-model report


def random_model_report(config: BenchConfig, out_stream=sys.stdout) -> dict:
    """AR tokens/s of a random LLaMA (ours vs transformers, same weights), our per-step time at
    several cache sizes with per-layer params (how the programs decode) and with the stacked,
    scanned params training uses, and the cost of one call per method."""
    info = machine_info()
    N, P, reps = config.max_new_tokens, config.prompt_tokens, max(config.repeats, 1)
    max_pos = max(4096, *config.max_len) + 64
    cfg = RANDOM_MODELS[config.random_model](
        max_position=max_pos, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0
    )
    tmp = tempfile.mkdtemp(prefix="pass_jax_random_")
    results = {
        "model": config.random_model,
        "params": cfg.num_params(),
        "machine": info,
        "max_new_tokens": N,
        "prompt_tokens": P,
        "repeats": reps,
        "tokens_per_s": {},
        "step_ms": {},
        "step_ms_scanned": {},
        "call_ms": {},
    }
    try:
        save_hf(cfg, init_params(cfg, jax.random.PRNGKey(0)), os.path.join(tmp, "model"))
        # exactly the weights torch gets, per layer as the programs decode
        cfg, params = load_hf(os.path.join(tmp, "model"), stacked=False)
        hf = load_hf_torch(os.path.join(tmp, "model"), "float32", info["usable_cores"])
        rng = np.random.default_rng(0)
        results["tokens_per_s"] = ar_tokens_per_s(
            cfg, params, hf, config.rm_batch_size, P, N, reps, rng
        )
        prompt = [rng.integers(4, cfg.vocab_size, P).tolist()]
        results.update(
            call_costs(cfg, params, prompt, config.max_len, config.call_cost_methods, reps)
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = random_model_markdown(results)
    results["markdown"] = text
    if config.json:
        if os.path.dirname(config.json):
            os.makedirs(os.path.dirname(config.json), exist_ok=True)
        with open(config.json, "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.splitext(config.json)[0] + ".md", "w") as f:
            f.write(text)
    if out_stream is not None:
        out_stream.write(text)
    return results


def ar_tokens_per_s(
    cfg, params, hf_model, batch_sizes, P: int, N: int, reps: int, rng: np.random.Generator
) -> dict:
    """Greedy AR tokens/s, ours and transformers' (``hf_model``, the same weights), on random
    prompts of ``P`` tokens, per batch size: a warm-up, then the median of ``reps`` runs, with
    whether both gave the same tokens."""
    greedy = SamplerConfig()
    ours = ours_runner(cfg, params, "ar", None, ())
    theirs = hf_runner(hf_model, 0, 0, False)
    out = {}
    for B in batch_sizes:
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
        out[str(B)] = {
            "ours": B * N / median(t_ours),
            "transformers": B * N / median(t_hf),
            "ours_s": t_ours,
            "transformers_s": t_hf,
            "greedy_identical": same,
        }
    return out


def call_costs(
    cfg, params, prompt: list[list[int]], max_lens, methods: Sequence[str], reps: int
) -> dict:
    """Milliseconds per call: autoregressive at every cache size of ``max_lens`` with per-layer
    (``step_ms``) and stacked params (``step_ms_scanned``), and every method of ``methods``
    (L = 4, [UNK] drafts: the cost of a call, not its yield) at one cache size (``call_slots``)
    in ``call_ms`` (the paper's schedule: the mean of its drafting and validation calls).
    ``iteration_cost.time_iterations`` times them: K loop steps jitted
    in one fori_loop on a live decode state (rows re-activated after a short generation), so
    prefill, compilation and dispatch drop out."""
    la = init_lookahead(cfg, params, 4)
    # every method at one cache size: enough for its steps after a long prompt too
    cost_methods = list(methods)
    slots = max(
        [CALL_COST_SLOTS]
        + [round_cache_len(timing_slots(len(prompt[0]), make_schedule(m, 4))) for m in cost_methods]
    )

    def ar_ms(max_len: int, params) -> float:
        return 1000 * iteration_seconds(cfg, params, "ar", la, prompt, reps, max_len)

    out = {"step_ms": {}, "step_ms_scanned": {}}
    scanned = stack_layers(params)
    for max_len in max_lens:
        out["step_ms"][str(max_len)] = ar_ms(max_len, params)
        out["step_ms_scanned"][str(max_len)] = ar_ms(max_len, scanned)
    del scanned
    out["call_slots"] = slots
    # the step-cost side of a speedup: every method's program compiled at once, then timed
    seconds = time_iterations(
        cfg, params, la, dict.fromkeys(cost_methods, slots), prompt, reps, desc="call costs"
    )
    out["call_ms"] = {m: 1000 * s / len(make_schedule(m, 4).step) for m, s in seconds.items()}
    return out


def random_model_markdown(results: dict) -> str:
    """The report's Markdown: machine, AR tokens/s (ours vs transformers), step time per cache
    size and layer form, the cost of one call per method."""
    N, P, reps = results["max_new_tokens"], results["prompt_tokens"], results["repeats"]
    lines = [
        machine_line(results["machine"]),
        "",
        f"Random LLaMA {results['model']} ({results['params'] / 1e6:.1f}M params, "
        f"float32), greedy AR, prompt {P} tokens, {N} new tokens, median of {reps}:",
        "",
        "| batch | ours tokens/s | transformers tokens/s | greedy identical |",
        "|---|---|---|---|",
    ]
    for B, r in results["tokens_per_s"].items():
        lines.append(
            f"| {B} | {r['ours']:.1f} | {r['transformers']:.1f} | "
            f"{'yes' if r['greedy_identical'] else 'no'} |"
        )
    lines += [
        "",
        "Our step time (ms/token, batch 1), per-layer params (how `generate`, `bench` "
        "and the demo decode) vs the stacked params of training under `nn.scan`:",
        "",
        "| cache max_len | per-layer | scanned |",
        "|---|---|---|",
    ]
    for L, ms in results["step_ms"].items():
        lines.append(f"| {L} | {ms:.2f} | {results['step_ms_scanned'][L]:.2f} |")
    ar_ms = results["call_ms"]["ar"]
    lines += [
        "",
        f"Cost of one forward call, batch 1, L=4, {results['call_slots']} cache slots "
        "(PaSS: the mean of a drafting and a validation call; fused: 1 + L + L(L+1) = 25 "
        "tokens; a draft tree: its nodes, each with a group of LA tokens). A method is "
        "faster than autoregressive only when it yields more tokens per call than this "
        "ratio:",
        "",
        "| method | draft tree, tokens per call | ms per call | vs autoregressive |",
        "|---|---|---|---|",
    ]
    for m, ms in results["call_ms"].items():
        lines.append(f"| {label(m)} | {layout_text(m, 4)} | {ms:.2f} | {ms / ar_ms:.2f}x |")
    return "\n".join(lines) + "\n"
