"""The decoding methods ``infer.bench`` times, and how one of ours runs over the prompts.

Names: ours (``OUR_METHODS`` and draft trees ``tree-WxW..``) and transformers' baselines
(``HF_METHODS``), with their labels, plot colours and the draft tree and tokens of one call
(``layout_text``). ``Run`` is one method over all prompts (outputs and totals), ``Variant`` a
method and its L as the cells time it, and ``ours_runner`` our ``generate`` as a runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pass_jax.generation import generate
from pass_jax.layout import make_schedule, method_lookahead, parse_context, parse_tree

OUR_METHODS = ("ar", "unk", "pass", "pass-fused", "auto")
HF_METHODS = ("hf-generate", "hf-prompt-lookup")
LABELS = {
    "ar": "autoregressive",
    "unk": "[UNK] look-ahead",
    "pass": "PaSS",
    "pass-fused": "PaSS fused",
    "auto": "PaSS auto",
    "hf-generate": "transformers generate",
    "hf-prompt-lookup": "transformers prompt lookup",
}
COLORS = {"ar": "tab:gray", "unk": "tab:orange", "pass": "tab:blue", "pass-fused": "tab:green"}


def is_ours(method: str) -> bool:
    """One of our decoding methods (draft trees ``tree-WxW..[+ctxM]`` and context drafts
    ``ctx-M`` included)."""
    return method in OUR_METHODS or parse_tree(method) is not None


def lookahead_free(method: str) -> bool:
    """A method of ours that uses no look-ahead embeddings (``ar``, ``ctx-M``): one variant,
    whatever the exports' L."""
    return method_lookahead(method, 1) == 0


def is_hf(method: str) -> bool:
    """One of transformers' baselines (``HF_METHODS``)."""
    return method.startswith("hf")


def label(method: str) -> str:
    """The method's name in tables and plots (a chain ``tree-1x1``: the fused chain of that
    depth)."""
    widths = parse_tree(method)
    if widths == ():
        return f"context drafts {parse_context(method)} (prompt lookup)"
    if widths and set(widths) == {1} and not parse_context(method):
        return f"PaSS fused, depth {len(widths)}"
    return LABELS.get(method) or "PaSS " + method.replace("-", " ")


def color(method: str) -> str | None:
    return COLORS.get(method)


def layout_text(method: str, L: int | None) -> str:
    """The draft tree (widths per depth, ``+ctxM`` for context chains) and the tokens of each
    call of ``method`` at L: ``3x2x1x1, 110``; ``1x1x1x1, 2 calls: 5 + 5``; ``4+ctx2, 30``;
    ``ctx3, 4``; ``-, 1``."""
    schedule = make_schedule("pass" if method == "unk" else method, L or 0)
    widths = parse_tree(method)
    widths = (1,) * schedule.num_lookahead if widths is None else widths
    m = parse_context(method)
    tree = "x".join(map(str, widths)) + (f"+ctx{m}" if widths and m else f"ctx{m}" if m else "")
    calls = [str(lay.T) for lay in schedule.step]
    return (
        (tree or "-")
        + ", "
        + (f"{len(calls)} calls: " if len(calls) > 1 else "")
        + " + ".join(calls)
    )


@dataclass
class Run:
    """One method over all prompts: outputs and totals (summed over the batches)."""

    tokens: list[list[int]]
    wall: float
    calls: int = 0
    verify_calls: int = 0
    accepted: np.ndarray | None = None
    layouts: dict = field(default_factory=dict)  # auto: tokens per chosen method
    # auto: the last call's choices (AutoLog.stats), with the compile and timing seconds of
    # all calls
    auto: dict = field(default_factory=dict)


@dataclass
class Variant:
    """A method (and its L) as the benchmark times it."""

    key: str  # e.g. 'ar', 'pass@L4', 'hf-generate'
    method: str
    L: int | None
    run: Callable[..., Run]  # (prompts, batch, sampler, seed, max_new_tokens) -> Run
    batch_sizes: tuple[int, ...] | None = None  # None: all
    temperatures: tuple[float, ...] | None = None  # None: all

    def in_cell(self, T: float, B: int) -> bool:
        """Is it timed in the cell of temperature ``T`` and batch size ``B``?"""
        return (self.batch_sizes is None or B in self.batch_sizes) and (
            self.temperatures is None or T in self.temperatures
        )


def batches(prompts: list, B: int) -> list[list]:
    """``prompts`` in batches of ``B`` (the last one may be smaller)."""
    return [prompts[i : i + B] for i in range(0, len(prompts), B)]


def ours_runner(
    cfg,
    params,
    method: str,
    la,
    eos_ids,
    mesh=None,
    auto_methods=None,
    auto_prior: dict | None = None,
    auto_cost_file=None,
    auto_retime: bool = False,
    precision: str = "auto",
    cache_dtype: str = "auto",
):
    """A runner of our ``generate`` (``method`` 'ar', 'pass', 'pass-fused', a draft tree or
    'auto' choosing among ``auto_methods``, its statistics starting from ``auto_prior``: the
    export's recorded acceptance, greedy or sampled; its call costs kept in ``auto_cost_file``,
    timed again if ``auto_retime``), on ``mesh`` when one is given, at matmul
    ``precision`` (``decode.decode_precision``), with a KV cache of ``cache_dtype`` (auto: the
    compute dtype)."""

    def run(prompts, B, sampler, seed, max_new_tokens):
        out = Run(tokens=[], wall=0.0)
        for i, chunk in enumerate(batches(prompts, B)):
            res = generate(
                cfg,
                params,
                chunk,
                max_new_tokens=max_new_tokens,
                method=method,
                la_LxD=la,
                sampler=sampler,
                eos_ids=eos_ids,
                seed=seed + i,
                mesh=mesh,
                auto_methods=auto_methods,
                auto_prior=auto_prior and auto_prior["greedy" if sampler.greedy else "sampled"],
                auto_cost_file=auto_cost_file,
                auto_retime=auto_retime,
                precision=precision,
                cache_dtype=cache_dtype,
            )
            out.tokens += res.tokens
            out.wall += res.wall_time
            out.calls += sum(res.calls)
            out.verify_calls += sum(res.verify_calls)
            acc = res.accepted.sum(0)
            out.accepted = acc if out.accepted is None else out.accepted + acc
            if res.auto:
                for m, t in res.auto.tokens.items():
                    out.layouts[m] = out.layouts.get(m, 0) + t
                spent = {
                    k: round(out.auto.get(k, 0.0) + getattr(res.auto, k), 3)
                    for k in ("compile_seconds", "timing_seconds")
                }
                out.auto = {**res.auto.stats(), **spent}
        return out

    return run
