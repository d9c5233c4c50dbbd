"""The embedded default, end to end: corpus -> tokenizer -> base model -> LA embeddings -> benchmark.

    python -m infer.demo [--quick] [--ablation] [--artifacts artifacts] [--out-dir DIR]
                         [-- extra infer.bench flags]

Works on any machine with Python and no download (DESIGN.md section 6):

1. the corpus: this interpreter's standard library, prepared as a TFDS dataset
   (``ARTIFACTS/tfds``, shared by the full and the quick variant);
2. a byte-level BPE tokenizer and a small LLaMA-style model pretrained on it
   (``python -m train.base --config configs/demo.yaml``) -> ``ARTIFACTS/<demo>/base``;
3. the look-ahead embeddings for L = 4 (with ``--ablation`` also L = 2, 6, 8)
   (``python -m train.lookahead``) -> ``ARTIFACTS/<demo>/lookahead/L<L>``;
4. the benchmark (``python -m infer.bench``, CPU-sized settings) -> ``--out-dir``
   (default ``ARTIFACTS/<demo>/results``): JSON, Markdown table (also printed), PNG plots.

``<demo>`` is ``demo`` or ``demo-quick``. Each step is skipped when its output is complete, so a
second run goes straight to the benchmark; an interrupted training run resumes from its last
checkpoint. ``--quick`` is a smoke test of the whole path (a tiny model, a few steps, a few
prompts; about 3 minutes on 2 cores, most of it compilation); the full run takes about 25 minutes
on a 2-core CPU (``--ablation`` adds three more LA trainings and benchmark columns).

The programs run in this process, through their ``main()`` functions, with the same flags one
would type (printed as they run).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo.yaml")

# The quick variant: configs/demo.yaml shrunk to a seconds-long model (train.base overrides).
QUICK_BASE = [
    "tokenizer.vocab_size=512", "tokenizer.max_docs=60",
    "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
    "model.ffn_dim=176", "model.max_position=512",
    "train.seq_len=128", "train.batch_size=8", "train.steps=60", "train.warmup=6",
    "train.eval_every=30", "train.eval_batches=2", "train.unigram_batches=8",
    "train.save_every=60", "train.log_every=10",
]
QUICK_LA = ["--steps", "40", "--seq-len", "64", "--batch-size", "8", "--eval-every", "20",
            "--save-every", "40"]
# Benchmark sizes: full = CPU-sized version of the paper's protocol; quick = smoke test.
# transformers' generate costs tens of ms per token in Python overhead on a CPU whatever the
# model size, so its baselines run at two temperatures only (greedy and sampling), timed once.
FULL_BENCH = dict(num_prompts=12, max_new_tokens=128, temperatures="0.8,0.5,0.2,0",
                  batch_size="1,4", repeats=3, hf_temperatures="0.8,0", hf_repeats=1)
QUICK_BENCH = dict(num_prompts=4, max_new_tokens=24, temperatures="0.8,0",
                   batch_size="1,2", repeats=2, hf_temperatures="0", hf_repeats=2)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m infer.demo", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny model, few steps, few prompts (smoke test, ~3 min)")
    ap.add_argument("--ablation", action="store_true",
                    help="also train and benchmark L = 2, 6, 8 (the paper's L ablation)")
    ap.add_argument("--artifacts", default="artifacts", help="where every artifact is cached")
    ap.add_argument("--out-dir", help="benchmark outputs (default ARTIFACTS/<demo>/results)")
    ap.add_argument("--config", default=DEMO_CONFIG, help="train.base / train.lookahead config")
    ap.add_argument("--num-prompts", type=int)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--temperatures")
    ap.add_argument("--batch-size")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--hf-temperatures")
    ap.add_argument("--hf-repeats", type=int)
    ap.add_argument("--hf-baselines", action=argparse.BooleanOptionalAction, default=True,
                    help="also time transformers generate / prompt lookup (needs torch)")
    ap.add_argument("bench_args", nargs="*", help="extra infer.bench flags (after --)")
    return ap


def _step(title: str, program: str, argv: list[str]):
    """Print the command, then run ``program``'s main(argv) here; exit on failure."""
    print(f"\n== {title}\n$ python -m {program} {shlex.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    if program == "train.base":
        from train import base as mod
    elif program == "train.lookahead":
        from train import lookahead as mod
    else:
        from infer import bench as mod
    rc = mod.main(argv)
    if isinstance(rc, int) and rc != 0:
        raise SystemExit(f"{program} stopped with exit status {rc}; re-run the demo to resume")
    print(f"== {title}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rc


def lookahead_done(out: str) -> bool:
    from pass_jax.lookahead import TENSOR_FILE
    return os.path.isfile(os.path.join(out, TENSOR_FILE))


def summary(result: dict) -> str:
    """One paragraph against issue 5's goals (batch 1, main L, T=0.2 when benchmarked)."""
    s, rows = result["settings"], result["cells"]
    L0, Ts = s["main_L"], s["temperatures"]
    T = 0.2 if 0.2 in Ts else Ts[0]
    pick = lambda m: next((r for r in rows if r["batch_size"] == 1 and r["temperature"] == T
                           and r["method"] == m and r["L"] == L0 and "error" not in r), None)
    parts = []
    for m, label in (("pass-fused", "PaSS fused"), ("pass", "PaSS"), ("unk", "[UNK]")):
        r = pick(m)
        if r:
            parts.append(f"{label} {r['speedup_vs_ar']:.2f}x ({r['tokens_per_call']:.2f} "
                         f"tokens/call, acceptance {r.get('acceptance_per_position')})")
    greedy = result.get("greedy_identical_to_ar", {})
    ok = all(greedy.values()) if greedy else None
    return (f"Batch 1, L={L0}, T={T:g}: " + "; ".join(parts)
            + (f". Greedy outputs identical to autoregressive: {'all' if ok else 'NOT all'}."
               if ok is not None else "."))


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    name = "demo-quick" if args.quick else "demo"
    art = args.artifacts
    root = os.path.join(art, name)
    data_dir = os.path.join(art, "tfds")
    base_dir = os.path.join(root, "base")
    out_dir = args.out_dir or os.path.join(root, "results")
    Ls = [2, 4, 6, 8] if args.ablation else [4]

    base_argv = ["--config", args.config, "--out", base_dir, f"data_dir={data_dir}",
                 "data=stdlib"] + (QUICK_BASE if args.quick else [])
    from train.base import is_complete
    if is_complete(base_dir):
        print(f"== base model: cached ({base_dir})", file=sys.stderr)
    else:
        _step("corpus, tokenizer and base model", "train.base", base_argv)

    la_dirs = []
    for L in Ls:
        la_dir = os.path.join(root, "lookahead", f"L{L}")
        la_dirs.append(la_dir)
        if lookahead_done(la_dir):
            print(f"== look-ahead L={L}: cached ({la_dir})", file=sys.stderr)
            continue
        _step(f"look-ahead embeddings L={L}", "train.lookahead",
              ["--config", args.config, "--model", base_dir, "--data", "stdlib",
               "--data-dir", data_dir, "--num-lookahead", str(L), "--out", la_dir]
              + (QUICK_LA if args.quick else []))

    sizes = dict(QUICK_BENCH if args.quick else FULL_BENCH)
    for k in sizes:
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    bench_argv = [
        "--model", base_dir, "--lookahead", ",".join(la_dirs), "--data", "stdlib",
        "--data-dir", data_dir, "--out-dir", out_dir,
        "--num-prompts", str(sizes["num_prompts"]), "--prompt-tokens", "32",
        "--max-new-tokens", str(sizes["max_new_tokens"]),
        "--temperatures", sizes["temperatures"], "--top-k", "10",
        "--methods", "ar,unk,pass,pass-fused", "--batch-size", sizes["batch_size"],
        "--repeats", str(sizes["repeats"]), "--main-lookahead", "4",
        "--hf-baselines" if args.hf_baselines else "--no-hf-baselines",
        "--hf-temperatures", sizes["hf_temperatures"], "--hf-repeats", str(sizes["hf_repeats"]),
        "--title", f"infer.demo{' --quick' if args.quick else ''}"
                   f"{' --ablation' if args.ablation else ''}: the embedded default "
                   "(stdlib code), model trained by train.base, LA by train.lookahead",
    ] + list(args.bench_args)
    result = _step("benchmark", "infer.bench", bench_argv)
    print("\n" + summary(result))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; results in {out_dir}")
    return result


if __name__ == "__main__":
    main()
