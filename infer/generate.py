"""Generate text with a Hugging Face model directory or GGUF file: autoregressive, PaSS,
fused PaSS, [UNK], draft trees, or the fastest of them on this machine.

    python -m infer.generate --model DIR|FILE.gguf [--lookahead DIR]
        [--method {ar,pass,pass-fused,unk,auto,tree-WxWx..}] --prompt TEXT --max-new-tokens N
        [--temperature T --top-k K --top-p P --seed S] [--json]

``tree-3x2x1x1`` is a fused draft tree: 3 draws for the first position, 2 for the second under
each of those, ..; its depth must not exceed the number of look-ahead embeddings. ``auto`` times
the candidate layouts on this machine (once per process) and decodes with the one of the best
expected tokens per second (autoregressive when none pays), re-chosen every 32 tokens; its
choices are in the stats.

The prompt is tokenized as transformers' ``tokenizer(text)`` does, with the special tokens the
tokenizer adds by default (BOS for LLaMA-family tokenizers; ``--no-special-tokens``: none). The
method defaults to ``pass-fused`` with ``--lookahead``, else ``ar``.

Text is streamed to stdout as it is generated (decoded in the context of the prompt, an
incomplete multi-byte character held back until complete); with ``--json`` one JSON object is
printed at the end instead (prompt and generated token ids, text, and stats: forward calls,
tokens per call, acceptance per LA position, wall time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pass_jax.cli import add_mesh_arg, load_model_for_args
from pass_jax.config import SamplerConfig
from pass_jax.decode import LAYER_FORMS, PRECISIONS, decode_stacked
from pass_jax.generation import generate
from pass_jax.gguf_file import resolve_model
from pass_jax.hf import load_tokenizer
from pass_jax.layout import MAX_LOOKAHEAD, make_schedule, parse_tree
from pass_jax.lookahead import init_lookahead, load_lookahead, recorded_acceptance
from pass_jax.program_config import USER_ERRORS

METHODS = ("ar", "pass", "pass-fused", "unk", "auto")
REPLACEMENT_CHAR = "\ufffd"  # what decoding shows for the bytes of an incomplete character


def method_arg(text: str) -> str:
    """``--method``: one of METHODS or a draft tree ``tree-WxWx..``."""
    if text not in METHODS and parse_tree(text) is None:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(METHODS)}, tree-WxWx..)")
    return text


def add_decode_args(ap: argparse.ArgumentParser) -> None:
    """``--layers`` and ``--precision``: how our decode step runs (generate and bench)."""
    ap.add_argument("--layers", default="auto", choices=LAYER_FORMS,
                    help="decode with per-layer params (a layer loop) or scanned ones: auto = "
                         "per-layer on a CPU, scanned on GPU/TPU")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="matmul precision of the decode step: auto = highest for greedy float32 "
                         "(greedy output exactly autoregressive's on GPUs too, whose float32 "
                         "default is TF32), else JAX's default")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m infer.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True,
                    help="Hugging Face model directory or GGUF file (converted once, cached)")
    ap.add_argument("--lookahead", help="trained look-ahead embeddings (train.lookahead --out)")
    ap.add_argument("--method", type=method_arg,
                    help=f"{', '.join(METHODS)} or a draft tree such as tree-3x2x1x1 (default: "
                         "pass-fused with --lookahead, else ar)")
    ap.add_argument("--auto-methods",
                    help="comma separated candidates of --method auto (default: ar, pass, fused "
                         "chains of every depth <= L and a few trees)")
    ap.add_argument("--num-lookahead", type=int,
                    help="L for --method unk, or untrained (unk-initialised) pass runs")
    ap.add_argument("--prompt", required=True, help="prompt text")
    ap.add_argument("--no-special-tokens", dest="add_special_tokens", action="store_false",
                    help="tokenize the prompt without the special tokens the tokenizer adds by "
                         "default (e.g. LLaMA's BOS)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=0, help="0 = off")
    ap.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-len", type=int, help="KV-cache slots (default: just enough)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="compute dtype")
    add_decode_args(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    add_mesh_arg(ap)
    return ap


def check_flags(args) -> None:
    """Raises ValueError naming the first flag whose value cannot work (before any loading)."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.num_lookahead is not None and not 1 <= args.num_lookahead <= MAX_LOOKAHEAD:
        raise ValueError(f"--num-lookahead must be in [1, {MAX_LOOKAHEAD}], got "
                         f"{args.num_lookahead}")
    if args.method not in ("ar", "unk", "auto"):  # a tree too wide or deep for one call
        make_schedule(args.method, args.num_lookahead or MAX_LOOKAHEAD)
    if args.max_len is not None and args.max_len < 1:
        raise ValueError(f"--max-len must be >= 1, got {args.max_len}")


def resolve_method(args) -> str:
    """``args.method``, defaulted: pass-fused when --lookahead is given, else ar. Raises
    ValueError for ``--method ar --lookahead DIR`` (the embeddings would go unused)."""
    if args.method is None:
        return "pass-fused" if args.lookahead else "ar"
    if args.method == "ar" and args.lookahead:
        raise ValueError("--method ar uses no look-ahead embeddings; drop --lookahead or use "
                         "--method pass / pass-fused")
    return args.method


def lookahead_for(args, cfg, params):
    """The LA embeddings a method needs (None for ar), with clear errors for bad flag mixes."""
    if args.method == "ar":
        return None
    if args.method == "unk":
        if args.lookahead:
            raise ValueError("--method unk uses no trained embeddings; drop --lookahead")
        if not args.num_lookahead:
            raise ValueError("--method unk needs --num-lookahead L")
        return init_lookahead(cfg, params, args.num_lookahead)
    if args.lookahead:
        return load_lookahead(args.lookahead, cfg, params, num_lookahead=args.num_lookahead)
    if not args.num_lookahead:
        raise ValueError(f"--method {args.method} needs --lookahead DIR (or --num-lookahead L "
                         "for untrained, unk-initialised embeddings)")
    print("warning: no --lookahead given; using untrained (unk-initialised) embeddings",
          file=sys.stderr)
    return init_lookahead(cfg, params, args.num_lookahead)


def continuation_text(tok, prompt_ids, new_ids, prompt_text: str | None = None) -> str:
    """The text of ``new_ids`` as it reads after the prompt: decode prompt + new and strip the
    decoded prompt (``prompt_text``, if already known). Decoding ``new_ids`` alone loses the
    space between prompt and continuation with SentencePiece-style tokenizers, whose decoder
    drops the leading space of the first token."""
    if prompt_text is None:
        prompt_text = tok.decode(list(prompt_ids), skip_special_tokens=True)
    text = tok.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=True)
    return text[len(os.path.commonprefix([text, prompt_text])):]


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
        self.put(out_BxN[0, :n_B[0]].tolist())

    def _show(self, text: str) -> None:
        if len(text) > len(self.shown):
            self.out.write(text[len(self.shown):])
            self.out.flush()
            self.shown = text


def auto_prior(args, sampler) -> list[float] | None:
    """``--method auto``'s starting acceptance per depth: what the ``--lookahead`` export
    recorded at training (greedy or sampled), if anything."""
    if args.method != "auto" or not args.lookahead:
        return None
    acc = recorded_acceptance(args.lookahead)
    return acc and acc["greedy" if sampler.greedy else "sampled"]


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        args.method = resolve_method(args)
        check_flags(args)
        sampler = SamplerConfig(args.temperature, args.top_k, args.top_p)
        args.model = resolve_model(args.model)  # a .gguf file: its cached conversion
        mesh, cfg, params = load_model_for_args(args, args.model, args.dtype,
                                                 stacked=decode_stacked(args.layers))
        tok = load_tokenizer(args.model)
        if tok is None:
            raise ValueError(f"{args.model} has no tokenizer files; --prompt needs a tokenizer")
        la = lookahead_for(args, cfg, params)
        ids = tok(args.prompt, add_special_tokens=args.add_special_tokens)["input_ids"]
        if not ids and cfg.bos_token_id is not None:
            ids = [cfg.bos_token_id]
        stream = None if args.json else TextStream(tok, ids)
        if stream is not None:
            sys.stdout.write(args.prompt)
        res = generate(cfg, params, [ids], max_new_tokens=args.max_new_tokens,
                       method="pass" if args.method == "unk" else args.method, la_LxD=la,
                       sampler=sampler, seed=args.seed, max_len=args.max_len, stream=stream,
                       mesh=mesh, auto_methods=args.auto_methods and [
                           m.strip() for m in args.auto_methods.split(",") if m.strip()],
                       auto_prior=auto_prior(args, sampler), precision=args.precision)
        if stream is not None:
            stream.end(res.tokens[0])
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from None
    result = {"method": args.method, "prompt": args.prompt, "prompt_ids": ids,
              "token_ids": res.tokens[0],
              "text": continuation_text(tok, ids, res.tokens[0]), "stats": res.stats()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"\n[{res.stats()['new_tokens']} tokens, {res.stats()['forward_calls']} forward "
              f"calls, {res.stats()['wall_time_s']:.2f} s incl. compilation]", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
