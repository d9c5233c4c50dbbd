"""The inference programs' settings: ``GenerateConfig`` (``infer.generate``) and ``BenchConfig``
(``infer.bench``), frozen dataclasses with one field per flag (named like its ``dest``: ``--max-
new-tokens`` -> ``max_new_tokens``, ``--no-special-tokens`` -> ``add_special_tokens``).

Both are read by :func:`load`: the optional YAML ``--config`` (the same keys), then the flags
given on the command line (they win), checked once against the annotations by
``pass_jax.program_config`` (unknown keys, wrong types, missing keys) and here in
``__post_init__`` (ranges, choices). Comma separated flags (``--batch-size 1,4``) are tuples
(YAML lists). The ``--mesh`` and multi-host flags are not settings: they stay in the parsed
flags (``pass_jax.cli.add_mesh_arg``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass

from pass_jax import program_config
from pass_jax.decode import LAYER_FORMS, PRECISIONS
from pass_jax.layout import MAX_LOOKAHEAD, make_schedule, method_lookahead, parse_tree
from pass_jax.program_config import ConfigT

METHODS = ("ar", "pass", "pass-fused", "unk", "auto")  # infer.generate --method (or a tree)
DTYPES = ("float32", "bfloat16")
CACHE_DTYPES = ("auto", *DTYPES)  # --cache-dtype; auto: the compute dtype (--dtype)
PROMPT_KINDS = ("code", "chat")
RANDOM_MODELS = ("125m", "tiny")


def load(cls: type[ConfigT], args: argparse.Namespace) -> ConfigT:
    """A ``cls`` config from the parsed flags: the YAML file ``args.config`` (if given), then
    every flag named like a field that was given (not None)."""
    return program_config.load(cls, args.config, args=args)


def comma_list(text: str) -> list[str]:
    """A comma separated flag as a list (blank items dropped): ``'ar, pass'`` -> [ar, pass]."""
    return [x.strip() for x in text.split(",") if x.strip()]


def method_error(text: str) -> str | None:
    """Why ``text`` is no ``infer.generate --method`` (one of METHODS, a draft tree
    ``tree-WxWx..`` with or without context chains ``+ctxM``, or context drafts ``ctx-M``),
    or None."""
    if text not in METHODS and parse_tree(text) is None:
        return (
            f"invalid choice: {text!r} (choose from {', '.join(METHODS)}, tree-WxWx.., "
            "tree-WxWx..+ctxM, ctx-M)"
        )
    return None


def check_choice(flag: str, value, choices: Iterable) -> None:
    """ValueError naming ``flag`` unless ``value`` is one of ``choices`` (a YAML value; the
    command line's are checked by argparse)."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_at_least_one(flag: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")


def _check_decode(config) -> None:
    """The choices a decoding program shares: ``--dtype``, ``--cache-dtype``, ``--layers``,
    ``--precision``."""
    check_choice("--dtype", config.dtype, DTYPES)
    check_choice("--cache-dtype", config.cache_dtype, CACHE_DTYPES)
    check_choice("--layers", config.layers, LAYER_FORMS)
    check_choice("--precision", config.precision, PRECISIONS)


def _check_sampling(config) -> None:
    """``--top-k``, ``--top-p`` (checked even where only greedy decoding runs, which ignores
    them) and ``--auto-methods``."""
    if config.top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: off), got {config.top_k}")
    if not 0.0 < config.top_p <= 1.0:
        raise ValueError(f"--top-p must be in (0, 1] (1: off), got {config.top_p}")
    for m in config.auto_methods or ():
        if method_error(m) or m in ("unk", "auto"):
            raise ValueError(
                f"--auto-methods: {m!r} is no candidate layout (ar, pass, pass-fused, "
                "tree-WxWx.., tree-WxWx..+ctxM, ctx-M)"
            )


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """``python -m infer.generate``: decode one prompt with one method."""

    model: str  # --model DIR|FILE.gguf
    lookahead: str | None = None  # trained look-ahead embeddings (train.lookahead --out)
    method: str | None = None  # METHODS or tree-WxWx..; None: pass-fused with --lookahead, else ar
    auto_methods: tuple[str, ...] | None = None  # candidates of --method auto (None: the default)
    auto_costs: str | None = None  # file of auto's call costs (None: the default; "none": off)
    auto_retime: bool = False  # time auto's call costs again
    num_lookahead: int | None = None  # L for --method unk or untrained pass runs
    prompt: str
    add_special_tokens: bool = True  # --no-special-tokens: the prompt without them
    chat: bool = False  # the prompt is a user turn in the tokenizer's chat template
    system: str | None = None  # --chat's system turn (None: the template's default)
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0
    max_len: int | None = None  # KV-cache slots (None: just enough)
    dtype: str = "float32"  # compute dtype
    cache_dtype: str = "auto"  # CACHE_DTYPES: the KV cache's dtype (auto: --dtype)
    layers: str = "auto"  # decode.LAYER_FORMS
    precision: str = "auto"  # decode.PRECISIONS
    json: bool = False  # one JSON object at the end instead of streamed text

    def __post_init__(self):
        if self.method is not None and method_error(self.method):
            raise ValueError(f"--method: {method_error(self.method)}")
        _check_decode(self)
        _check_sampling(self)
        object.__setattr__(self, "method", resolve_method(self.method, self.lookahead))
        check_at_least_one("--max-new-tokens", self.max_new_tokens)
        if self.num_lookahead is not None and not 1 <= self.num_lookahead <= MAX_LOOKAHEAD:
            raise ValueError(
                f"--num-lookahead must be in [1, {MAX_LOOKAHEAD}], got {self.num_lookahead}"
            )
        if self.method not in ("ar", "unk", "auto"):  # a tree too wide or deep for one call
            make_schedule(self.method, self.num_lookahead or MAX_LOOKAHEAD)
        if not 0.0 <= self.temperature:
            raise ValueError(f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.method == "unk":
            if self.lookahead:
                raise ValueError("--method unk uses no trained embeddings; drop --lookahead")
            if not self.num_lookahead:
                raise ValueError("--method unk needs --num-lookahead L")
        elif method_lookahead(self.method, 1) and not (self.lookahead or self.num_lookahead):
            raise ValueError(
                f"--method {self.method} needs --lookahead DIR (or --num-lookahead L "
                "for untrained, unk-initialised embeddings)"
            )
        if self.max_len is not None:
            check_at_least_one("--max-len", self.max_len)
        if self.system is not None and not self.chat:
            raise ValueError("--system is the system turn of a --chat prompt; add --chat")
        if self.chat and not self.add_special_tokens:
            raise ValueError(
                "--no-special-tokens does not apply with --chat: the chat template writes "
                "its own special tokens"
            )


def resolve_method(method: str | None, lookahead: str | None) -> str:
    """``--method``, defaulted: pass-fused when --lookahead is given, else ar. Raises
    ValueError for ``--method ar --lookahead DIR`` or ``ctx-M`` with it (the embeddings would
    go unused)."""
    if method is None:
        return "pass-fused" if lookahead else "ar"
    if method_lookahead(method, 1) == 0 and lookahead:
        raise ValueError(
            f"--method {method} uses no look-ahead embeddings; drop --lookahead or use "
            "--method pass / pass-fused"
        )
    return method


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """``python -m infer.bench``: the paper's protocol (or ``--random-model``'s AR report, or
    ``--from-json``'s re-rendering), one field per flag."""

    model: str | None = None  # required unless --random-model / --from-json
    lookahead: str = ""  # DIR[,DIR...] or a directory of per-L exports
    depths: tuple[int, ...] = ()  # also the first L' rows of the deepest export
    json: str | None = None  # the results JSON (None: OUT_DIR/bench.json)
    out_dir: str = "results"
    num_prompts: int = 16
    prompt_tokens: int = 32
    max_new_tokens: int = 128
    temperatures: tuple[float, ...] = (0.8, 0.5, 0.2, 0.0)  # 0: greedy
    top_k: int = 10  # 0: off
    top_p: float = 1.0  # 1: off
    methods: tuple[str, ...] = ("ar", "unk", "pass", "pass-fused")  # and trees tree-WxWx..
    auto_methods: tuple[str, ...] | None = None  # candidates of method auto (None: the default)
    auto_costs: str | None = None  # file of auto's call costs (None: the default; "none": off)
    auto_retime: bool = False  # time auto's call costs again
    batch_size: tuple[int, ...] = (1,)
    repeats: int = 3
    main_lookahead: int | None = None  # L of the main table (None: 4 if benchmarked, else min)
    data: str = "stdlib"  # corpus spec of the prompts (held-out split)
    prompts: str = "code"  # PROMPT_KINDS
    data_dir: str | None = None
    seed: int = 0
    dtype: str = "float32"
    cache_dtype: str = "auto"  # CACHE_DTYPES: the KV cache's dtype (auto: --dtype)
    layers: str = "auto"  # decode.LAYER_FORMS
    precision: str = "auto"  # decode.PRECISIONS
    add_special_tokens: bool = True  # --no-special-tokens
    stop_at_eos: bool = False
    hf_baselines: bool = True  # transformers generate / prompt lookup (needs torch)
    hf_temperatures: tuple[float, ...] | None = None  # None: every temperature
    hf_repeats: int | None = None  # None: --repeats
    prompt_lookup_tokens: int = 10
    call_tokens: tuple[int, ...] = ()  # also time one call of that many tokens per row
    title: str = ""
    no_plots: bool = False
    from_json: str | None = None  # no benchmark: re-render this results JSON
    quiet: bool = False  # no progress bar
    random_model: str | None = None  # RANDOM_MODELS: the random-model AR report instead
    max_len: tuple[int, ...] = (256, 4096)  # --random-model: cache sizes of the per-step time
    rm_batch_size: tuple[int, ...] = (1, 8)  # --random-model: batch sizes
    call_cost_methods: tuple[str, ...] = (
        "ar",
        "pass",
        "pass-fused",
        "tree-2x2x1x1",
        "tree-3x2x1x1",
    )  # --random-model: L = 4

    def __post_init__(self):
        _check_decode(self)
        check_choice("--prompts", self.prompts, PROMPT_KINDS)
        if self.random_model is not None:
            check_choice("--random-model", self.random_model, RANDOM_MODELS)
        if self.runs_benchmark:
            self._check_protocol()

    @property
    def runs_benchmark(self) -> bool:
        """Whether these settings run the protocol (a model, no --random-model or --from-json):
        only then are the protocol's sizes checked."""
        return bool(self.model) and not self.random_model and not self.from_json

    def _check_protocol(self) -> None:
        """ValueError naming the first flag whose value cannot work."""
        for flag, value in (
            ("--repeats", self.repeats),
            ("--num-prompts", self.num_prompts),
            ("--prompt-tokens", self.prompt_tokens),
            ("--max-new-tokens", self.max_new_tokens),
            ("--hf-repeats", 1 if self.hf_repeats is None else self.hf_repeats),
        ):
            check_at_least_one(flag, value)
        for flag, values in (
            ("--batch-size", self.batch_size),
            ("--depths", self.depths),
            ("--call-tokens", self.call_tokens),
        ):
            if any(v < 1 for v in values):
                raise ValueError(f"{flag} must be >= 1, got {','.join(map(str, values))}")
        if any(t < 0 for t in self.temperatures):
            raise ValueError(f"--temperatures must be >= 0, got {list(self.temperatures)}")
        _check_sampling(self)


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """``python -m infer.demo``: the embedded default end to end, or the tiny model's pipeline.
    Its own settings come from the flags only: ``--config`` is the YAML it hands to the
    training programs."""

    quick: bool = False  # the tiny model, few steps, few prompts (smoke test)
    tiny: bool = False  # the tiny stdlib-trained model
    ablation: bool = False  # tiny model: also L = 2, 6, 8
    artifacts: str = "artifacts"  # where every artifact is cached
    out_dir: str | None = None  # benchmark outputs (default ARTIFACTS/<demo>/results)
    config: str | None = None  # train.base / train.lookahead YAML (default: by model)
    la_steps: int = 40  # SmolLM2: steps of the demo's own look-ahead training (0: skip)
    num_prompts: int | None = None  # benchmark sizes (None: the demo's defaults)
    max_new_tokens: int | None = None
    temperatures: str | None = None
    batch_size: str | None = None
    repeats: int | None = None
    hf_temperatures: str | None = None
    hf_repeats: int | None = None
    hf_baselines: bool = True  # also time transformers generate / prompt lookup
    bench_args: tuple[str, ...] = ()  # extra infer.bench flags

    def __post_init__(self):
        if self.ablation and not self.tiny_model:
            raise ValueError("--ablation is for the tiny model: add --tiny (or --quick)")
        if self.la_steps < 0:
            raise ValueError(f"--la-steps must be >= 0, got {self.la_steps}")
        # the benchmark's sizes, checked before the minutes of setup and training that precede it
        for flag, value in [
            ("--num-prompts", self.num_prompts),
            ("--max-new-tokens", self.max_new_tokens),
            ("--repeats", self.repeats),
            ("--hf-repeats", self.hf_repeats),
        ]:
            if value is not None:
                check_at_least_one(flag, value)

    @property
    def tiny_model(self) -> bool:
        """The tiny stdlib-trained model (``--quick`` or ``--tiny``), not SmolLM2."""
        return self.quick or self.tiny
