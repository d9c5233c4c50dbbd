"""Generate text with a Hugging Face model directory or GGUF file: autoregressive, PaSS,
fused PaSS, [UNK], draft trees, context drafts, or the fastest of them on this machine.

    python -m infer.generate --model DIR|FILE.gguf [--lookahead DIR]
        [--method {ar,pass,pass-fused,unk,auto,tree-WxWx..,tree-WxWx..+ctxM,ctx-M}]
        --prompt TEXT --max-new-tokens N
        [--chat [--system TEXT]] [--temperature T --top-k K --top-p P --seed S]
        [--dtype bfloat16]
        [--cache-dtype {auto,float32,bfloat16}] [--auto-costs FILE|none] [--auto-retime]
        [--json] [--config FILE.yaml]

``tree-3x2x1x1`` is a fused draft tree: 3 draws for the first position, 2 for the second under
each of those, ..; its depth must not exceed the number of look-ahead embeddings.
``tree-4+ctx2`` adds a chain of 2 context drafts (tokens copied from the prompt and the text so
far, after the latest earlier occurrence of the last tokens of the path) under the root and
under every draft; ``ctx-3`` drafts 3 context tokens alone (prompt-lookup decoding: no
look-ahead embeddings, no ``--lookahead`` needed). ``auto`` times
the candidate layouts on this machine and decodes with the one of the best expected tokens per
second (autoregressive when none pays), re-chosen every 32 tokens; its choices are in the
stats. The timed costs are kept in a file (``--auto-costs``, default
``~/.cache/pass_jax/iteration-costs.json``), so later runs on the same machine, model, batch
and cache size (or one within 2x) skip the timing (``--auto-retime``: time again).

The prompt is tokenized as transformers' ``tokenizer(text)`` does, with the special tokens the
tokenizer adds by default (BOS for LLaMA-family tokenizers; ``--no-special-tokens``: none).
With ``--chat`` it is a user message instead: the tokenizer's chat template wraps it (after a
``--system`` message, if given) and opens the assistant turn, as transformers'
``apply_chat_template(..., add_generation_prompt=True)`` does; the answer stops at the model's
end-of-turn token when that is its EOS (SmolLM2's ``<|im_end|>``). The method defaults to
``pass-fused`` with ``--lookahead``, else ``ar``.

Text is streamed to stdout as it is generated (decoded in the context of the prompt, an
incomplete multi-byte character held back until complete); with ``--json`` one JSON object is
printed at the end instead (prompt and generated token ids, text, and stats: forward calls,
tokens per call, acceptance per LA position, wall time).

The settings (``infer.config.GenerateConfig``) may also come from a YAML ``--config`` whose keys
are named like the flags (``max_new_tokens: 32``); the flags given on the command line win.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from infer.config import (
    CACHE_DTYPES,
    DTYPES,
    METHODS,
    GenerateConfig,
    comma_list,
    load,
    method_error,
)
from infer.prompts import chat_prompt_ids
from pass_jax.cli import add_mesh_arg, load_model_for_args
from pass_jax.config import SamplerConfig
from pass_jax.decode import LAYER_FORMS, PRECISIONS, decode_stacked
from pass_jax.generation import generate
from pass_jax.gguf_file import resolve_model
from pass_jax.hf import load_tokenizer
from pass_jax.iteration_cost import default_cost_file
from pass_jax.layout import method_lookahead
from pass_jax.lookahead import (
    init_lookahead,
    load_lookahead,
    lookahead_metadata,
    recorded_acceptance,
)
from pass_jax.program_config import USER_ERRORS, ArgumentParser, InputError, run_cli

REPLACEMENT_CHAR = "\ufffd"  # what decoding shows for the bytes of an incomplete character


def method_arg(text: str) -> str:
    """``--method``: one of METHODS, a draft tree ``tree-WxWx..[+ctxM]`` or ``ctx-M``."""
    error = method_error(text)
    if error:
        raise argparse.ArgumentTypeError(error)
    return text


def add_decode_args(ap: argparse.ArgumentParser) -> None:
    """``--cache-dtype``, ``--layers`` and ``--precision``: how our decode step runs (generate
    and bench; all default to auto, in the programs' configs)."""
    ap.add_argument(
        "--cache-dtype",
        choices=CACHE_DTYPES,
        help="KV cache dtype: auto = the compute dtype (--dtype); bfloat16 under float32 "
        "compute halves the cache (keys/values rounded to bfloat16, attention in float32; "
        "greedy PaSS still equals greedy autoregressive decoding with that cache)",
    )
    ap.add_argument(
        "--layers",
        choices=LAYER_FORMS,
        help="decode with per-layer params (a layer loop) or scanned ones: auto = "
        "per-layer on a CPU, scanned on GPU/TPU",
    )
    ap.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="matmul precision of the decode step: auto = highest for greedy float32 "
        "(greedy output exactly autoregressive's on GPUs too, whose float32 "
        "default is TF32), else JAX's default",
    )


def add_auto_args(ap: argparse.ArgumentParser) -> None:
    """``--auto-methods``, ``--auto-costs`` and ``--auto-retime``: what method auto chooses
    from and where it keeps the call costs it times (generate and bench)."""
    ap.add_argument(
        "--auto-methods",
        type=comma_list,
        help="comma separated candidates of method auto (default: ar, pass, fused "
        "chains of every depth <= L, a few trees, ctx-3, ctx-6 and tree-4+ctx2)",
    )
    ap.add_argument(
        "--auto-costs",
        metavar="FILE|none",
        help="file that keeps method auto's timed call costs per model, batch, cache size and "
        "machine, so a later run skips timing them (default: "
        "$PASS_JAX_CACHE/iteration-costs.json, else ~/.cache/pass_jax/iteration-costs.json); "
        "none: time them in every process",
    )
    ap.add_argument(
        "--auto-retime",
        action="store_true",
        default=None,
        help="time method auto's call costs again (and update --auto-costs), e.g. after the "
        "machine's load changed",
    )


def auto_cost_file(setting: str | None):
    """The ``--auto-costs`` file: the default one (None), none (``"none"``) or the path."""
    if setting is None:
        return default_cost_file()
    return None if setting.lower() == "none" else setting


def add_config_arg(ap: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE.yaml``: the program's settings named like its flags (which win)."""
    ap.add_argument(
        "--config",
        metavar="FILE.yaml",
        help=f"YAML of settings named like the flags ({example}); flags given here override it",
    )


def config_given(argv, prog: str) -> bool:
    """Whether the command line names a ``--config`` file (which may hold the required
    settings)."""
    pre = ArgumentParser(prog=prog, add_help=False)
    pre.add_argument("--config")
    return pre.parse_known_args(argv)[0].config is not None


def build_parser(required: bool = True) -> argparse.ArgumentParser:
    """The flags; no defaults here (they are ``GenerateConfig``'s): a flag not given is None.
    ``required=False``: --model and --prompt may come from the ``--config`` file instead."""
    ap = ArgumentParser(
        prog="python -m infer.generate", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    ap.add_argument(
        "--model",
        required=required,
        help="Hugging Face model directory or GGUF file (converted once, cached)",
    )
    ap.add_argument("--lookahead", help="trained look-ahead embeddings (train.lookahead --out)")
    ap.add_argument(
        "--method",
        type=method_arg,
        help=f"{', '.join(METHODS)}, a draft tree such as tree-3x2x1x1, one with context "
        "chains such as tree-4+ctx2, or context drafts alone such as ctx-3 (default: "
        "pass-fused with --lookahead, else ar)",
    )
    add_auto_args(ap)
    ap.add_argument(
        "--num-lookahead",
        type=int,
        help="L for --method unk, or untrained (unk-initialised) pass runs",
    )
    ap.add_argument("--prompt", required=required, help="prompt text")
    ap.add_argument(
        "--no-special-tokens",
        dest="add_special_tokens",
        action="store_false",
        default=None,
        help="tokenize the prompt without the special tokens the tokenizer adds by "
        "default (e.g. LLaMA's BOS)",
    )
    ap.add_argument(
        "--chat",
        action="store_true",
        default=None,
        help="the prompt is a user message: wrap it in the tokenizer's chat template (an "
        "instruct model's, e.g. SmolLM2-135M-Instruct's) with the assistant turn opened",
    )
    ap.add_argument(
        "--system", help="with --chat: the system message (default: the template's own)"
    )
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--temperature", type=float, help="0 = greedy")
    ap.add_argument("--top-k", type=int, help="0 = off")
    ap.add_argument("--top-p", type=float, help="1 = off")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--max-len", type=int, help="KV-cache slots (default: just enough)")
    ap.add_argument("--dtype", choices=DTYPES, help="compute dtype")
    add_decode_args(ap)
    ap.add_argument(
        "--json", action="store_true", default=None, help="print one JSON object at the end"
    )
    add_config_arg(ap, "model: DIR, max_new_tokens: 32, ...")
    add_mesh_arg(ap)
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed flags (--model and --prompt required unless a --config file is given)."""
    return build_parser(required=not config_given(argv, "python -m infer.generate")).parse_args(
        argv
    )


def lookahead_for(config: GenerateConfig, cfg, params):
    """The LA embeddings a method needs (None for ar and context drafts alone; the flag
    mixes were checked by ``GenerateConfig``)."""
    if method_lookahead(config.method, 1) == 0:
        return None
    if config.method == "unk":
        return init_lookahead(cfg, params, config.num_lookahead)
    if config.lookahead:
        return load_lookahead(config.lookahead, cfg, params, num_lookahead=config.num_lookahead)
    print(
        "warning: no --lookahead given; using untrained (unk-initialised) embeddings",
        file=sys.stderr,
    )
    return init_lookahead(cfg, params, config.num_lookahead)


def continuation_text(tok, prompt_ids, new_ids, prompt_text: str | None = None) -> str:
    """The text of ``new_ids`` as it reads after the prompt: decode prompt + new and strip the
    decoded prompt (``prompt_text``, if already known). Decoding ``new_ids`` alone loses the
    space between prompt and continuation with SentencePiece-style tokenizers, whose decoder
    drops the leading space of the first token."""
    if prompt_text is None:
        prompt_text = tok.decode(list(prompt_ids), skip_special_tokens=True)
    text = tok.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=True)
    return text[len(os.path.commonprefix([text, prompt_text])) :]


class TextStream:
    """Writes one row's continuation to ``out`` while it is generated, decoded in the context
    of the prompt (``continuation_text``).

    A multi-byte character whose tokens have not all arrived decodes to U+FFFD; such a tail is
    held back until it is complete (as transformers' ``TextStreamer`` does), so no U+FFFD is
    printed and nothing shifts. Call it as ``decode.generate``'s ``stream`` (row 0), then
    ``end`` with the final tokens.
    """

    def __init__(self, tok, prompt_ids, out=None):
        self.tok, self.prompt_ids = tok, list(prompt_ids)
        self.out = sys.stdout if out is None else out
        self.prompt_text = tok.decode(self.prompt_ids, skip_special_tokens=True)
        self.shown = ""

    def text(self, new_ids) -> str:
        """The continuation's full text so far."""
        return continuation_text(self.tok, self.prompt_ids, new_ids, self.prompt_text)

    def put(self, new_ids) -> None:
        """Write what is new in the text of ``new_ids`` (the tokens so far), up to an
        incomplete trailing character."""
        self._show(self.text(new_ids).rstrip(REPLACEMENT_CHAR))

    def end(self, new_ids) -> None:
        """Write the rest of the final text (a U+FFFD that never completed included)."""
        self._show(self.text(new_ids))

    def __call__(self, out_BxN, n_B) -> None:
        self.put(out_BxN[0, : n_B[0]].tolist())

    def _show(self, text: str) -> None:
        if len(text) > len(self.shown):
            self.out.write(text[len(self.shown) :])
            self.out.flush()
            self.shown = text


def auto_prior(config: GenerateConfig, sampler) -> list[float] | None:
    """``--method auto``'s starting acceptance per depth: what the ``--lookahead`` export
    recorded at training (greedy or sampled), if anything."""
    if config.method != "auto" or not config.lookahead:
        return None
    acc = recorded_acceptance(config.lookahead)
    return acc and acc["greedy" if sampler.greedy else "sampled"]


def run(config: GenerateConfig, device_args: argparse.Namespace) -> dict:
    """Loads the model (on the ``--mesh`` of ``device_args``, if any) and generates, streaming
    the text unless ``config.json``; returns the result (prompt ids, tokens, text, stats)."""
    sampler = SamplerConfig(config.temperature, config.top_k, config.top_p)
    if config.lookahead:  # a missing or broken export fails before the model loads
        lookahead_metadata(config.lookahead)
    config = dataclasses.replace(config, model=resolve_model(config.model))  # .gguf: converted
    mesh, cfg, params = load_model_for_args(
        device_args, config.model, config.dtype, stacked=decode_stacked(config.layers)
    )
    tok = load_tokenizer(config.model)
    if tok is None:
        raise ValueError(f"{config.model} has no tokenizer files; --prompt needs a tokenizer")
    la = lookahead_for(config, cfg, params)
    if config.chat:
        ids = chat_prompt_ids(tok, config.prompt, config.system)
    else:
        ids = tok(config.prompt, add_special_tokens=config.add_special_tokens)["input_ids"]
    if not ids and cfg.bos_token_id is not None:
        ids = [cfg.bos_token_id]
    stream = None if config.json else TextStream(tok, ids)
    if stream is not None and not config.chat:  # a chat shows the answer alone
        sys.stdout.write(config.prompt)
    res = generate(
        cfg,
        params,
        [ids],
        max_new_tokens=config.max_new_tokens,
        method="pass" if config.method == "unk" else config.method,
        la_LxD=la,
        sampler=sampler,
        seed=config.seed,
        max_len=config.max_len,
        stream=stream,
        mesh=mesh,
        auto_methods=config.auto_methods and list(config.auto_methods),
        auto_prior=auto_prior(config, sampler),
        auto_cost_file=auto_cost_file(config.auto_costs),
        auto_retime=config.auto_retime,
        precision=config.precision,
        cache_dtype=config.cache_dtype,
    )
    if stream is not None:
        stream.end(res.tokens[0])
    return {
        "method": config.method,
        "prompt": config.prompt,
        "chat": config.chat,
        "system": config.system,
        "prompt_ids": ids,
        "token_ids": res.tokens[0],
        "text": continuation_text(tok, ids, res.tokens[0]),
        "stats": res.stats(),
    }


def summary(stats: dict) -> str:
    """The line after the streamed text: tokens, forward calls and seconds (``auto`` leaves
    compiling and getting its call costs out of its wall time, and says so)."""
    calls = f"{stats['new_tokens']} tokens, {stats['forward_calls']} forward calls"
    auto = stats.get("auto")
    if auto is None:
        return f"{calls}, {stats['wall_time_s']:.2f} s incl. compilation"
    return (
        f"{calls}, {stats['wall_time_s']:.2f} s, besides {auto['compile_seconds']:.2f} s "
        f"compiling and {auto['timing_seconds']:.2f} s getting the layouts' call costs"
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        config = load(GenerateConfig, args)
        result = run(config, args)
    except USER_ERRORS as e:
        raise InputError(f"error: {e}") from None
    if config.json:
        print(json.dumps(result))
    else:
        print(f"\n[{summary(result['stats'])}]", file=sys.stderr)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
