"""Generate text with a Hugging Face model directory: autoregressive, PaSS, fused PaSS, [UNK],
draft trees.

    python -m infer.generate --model DIR [--lookahead DIR]
        --method {ar,pass,pass-fused,unk,auto,tree-WxWx..} --prompt TEXT --max-new-tokens N
        [--temperature T --top-k K --top-p P --seed S] [--json]

``tree-3x2x1x1`` is a fused draft tree: 3 draws for the first position, 2 for the second under
each of those, ..; its depth must not exceed the number of look-ahead embeddings. ``auto`` times
the candidate layouts on this machine (once per process) and decodes with the one of the best
expected tokens per second (autoregressive when none pays), re-chosen every 32 tokens; its
choices are in the stats.

Text is streamed to stdout as it is generated; with ``--json`` one JSON object is printed at the
end instead (token ids, text, and stats: forward calls, tokens per call, acceptance per LA
position, wall time).
"""
from __future__ import annotations

import argparse
import json
import sys

from pass_jax.sharding import add_mesh_arg, load_model_for_args

METHODS = ("ar", "pass", "pass-fused", "unk", "auto")


def method_arg(text: str) -> str:
    """``--method``: one of METHODS or a draft tree ``tree-WxWx..``."""
    from pass_jax.layout import parse_tree

    if text not in METHODS and parse_tree(text) is None:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(METHODS)}, tree-WxWx..)")
    return text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m infer.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--lookahead", help="trained look-ahead embeddings (train.lookahead --out)")
    ap.add_argument("--method", type=method_arg, default="ar",
                    help=f"{', '.join(METHODS)} or a draft tree such as tree-3x2x1x1")
    ap.add_argument("--auto-methods",
                    help="comma separated candidates of --method auto (default: ar, pass, fused "
                         "chains of every depth <= L and a few trees)")
    ap.add_argument("--num-lookahead", type=int,
                    help="L for --method unk, or untrained (unk-initialised) pass runs")
    ap.add_argument("--prompt", required=True, help="prompt text")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=0, help="0 = off")
    ap.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-len", type=int, help="KV-cache slots (default: just enough)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="compute dtype")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    add_mesh_arg(ap)
    return ap


def lookahead_for(args, cfg, params):
    """The LA embeddings a method needs (None for ar), with clear errors for bad flag mixes."""
    from pass_jax.lookahead import init_lookahead, load_lookahead

    if args.method == "ar":
        return None
    if args.method == "unk":
        if args.lookahead:
            raise SystemExit("--method unk uses no trained embeddings; drop --lookahead")
        if not args.num_lookahead:
            raise SystemExit("--method unk needs --num-lookahead L")
        return init_lookahead(cfg, params, args.num_lookahead)
    if args.lookahead:
        return load_lookahead(args.lookahead, cfg, params, num_lookahead=args.num_lookahead)
    if not args.num_lookahead:
        raise SystemExit(f"--method {args.method} needs --lookahead DIR (or --num-lookahead L "
                         "for untrained, unk-initialised embeddings)")
    print("warning: no --lookahead given; using untrained (unk-initialised) embeddings",
          file=sys.stderr)
    return init_lookahead(cfg, params, args.num_lookahead)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from pass_jax.config import SamplerConfig
    from pass_jax.decode import generate
    from pass_jax.hf import load_tokenizer

    try:
        sampler = SamplerConfig(args.temperature, args.top_k, args.top_p)
        mesh, cfg, params = load_model_for_args(args, args.model, args.dtype, stacked=False)
        tok = load_tokenizer(args.model)
        if tok is None:
            raise ValueError(f"{args.model} has no tokenizer files; --prompt needs a tokenizer")
        la = lookahead_for(args, cfg, params)
        ids = tok(args.prompt, add_special_tokens=False)["input_ids"]
        if not ids and cfg.bos_token_id is not None:
            ids = [cfg.bos_token_id]
        shown = [""]

        def stream(out_BxN, n_B):
            text = tok.decode(out_BxN[0, :n_B[0]].tolist(), skip_special_tokens=True)
            sys.stdout.write(text[len(shown[0]):])
            sys.stdout.flush()
            shown[0] = text

        if not args.json:
            sys.stdout.write(args.prompt)
        res = generate(cfg, params, [ids], max_new_tokens=args.max_new_tokens,
                       method="pass" if args.method == "unk" else args.method, la_LxD=la,
                       sampler=sampler, seed=args.seed, max_len=args.max_len,
                       stream=None if args.json else stream, mesh=mesh,
                       auto_methods=args.auto_methods and [
                           m.strip() for m in args.auto_methods.split(",") if m.strip()])
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        raise SystemExit(f"error: {e}") from None
    result = {"method": args.method, "prompt": args.prompt, "prompt_ids": ids,
              "token_ids": res.tokens[0],
              "text": tok.decode(res.tokens[0], skip_special_tokens=True), "stats": res.stats()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"\n[{res.stats()['new_tokens']} tokens, {res.stats()['forward_calls']} forward "
              f"calls, {res.stats()['wall_time_s']:.2f} s incl. compilation]", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
