"""The generate CLI end to end on a tiny model directory with a real tokenizer; prompt
tokenization and streamed text."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import TINY, tiny_params

import infer.generate as generate_cli
from pass_jax.decode import GenerationResult
from pass_jax.hf import save_hf
from pass_jax.lookahead import init_lookahead, model_fingerprint, save_lookahead
from pass_jax.program_config import run_cli
from pass_jax.tokenizer import train_bpe

TEXT = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    x: int = 0\n    y: int = 0\n",
    "for i in range(10):\n    print(i * i)\n",
] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = train_bpe(TEXT, 300, root / "tok")
    cfg = TINY.replace(
        vocab_size=len(tok),
        unk_token_id=tok.unk_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_ids=(tok.eos_token_id,),
        pad_token_id=tok.pad_token_id,
    )
    params = tiny_params(cfg, 0)
    save_hf(cfg, params, root / "model", tokenizer=tok)
    la = init_lookahead(cfg, params, 3) + 0.01
    save_lookahead(str(root / "la"), la, cfg, model_fingerprint(cfg, params))
    other = tiny_params(cfg.replace(d_model=16, n_heads=2, n_kv_heads=1), 1)
    save_lookahead(
        str(root / "la_other"),
        init_lookahead(cfg.replace(d_model=16), other, 3),
        cfg.replace(d_model=16),
        model_fingerprint(cfg.replace(d_model=16), other),
    )
    return root


def _run(*args):
    """The real command line, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "infer.generate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _main(*args) -> dict:
    """The same program in-process (shares compilations): its JSON result."""
    return generate_cli.main([str(a) for a in args])


def _error(*args) -> str:
    """The message the program exits with."""
    with pytest.raises(SystemExit) as e:
        _main(*args)
    return str(e.value)


def test_methods_agree_greedy_and_json_has_stats(model_dir, capsys):
    outs = {}
    for method, extra in [
        ("ar", []),
        ("pass-fused", ["--lookahead", model_dir / "la"]),
        ("unk", ["--num-lookahead", 2]),
        ("tree-2x2", ["--lookahead", model_dir / "la"]),
        ("ctx-3", []),  # context drafts alone: no look-ahead embeddings
        ("auto", ["--lookahead", model_dir / "la", "--auto-methods", "ar,tree-1x1,tree-2"]),
    ]:
        _main(
            "--model",
            model_dir / "model",
            "--method",
            method,
            "--prompt",
            "def add(",
            "--max-new-tokens",
            10,
            "--json",
            *extra,
        )
        outs[method] = json.loads(capsys.readouterr().out)
        stats = outs[method]["stats"]
        assert {
            "forward_calls",
            "tokens_per_call",
            "acceptance_per_position",
            "wall_time_s",
        } <= set(stats)
    assert outs["ar"]["token_ids"] == outs["pass-fused"]["token_ids"] == outs["unk"]["token_ids"]
    assert outs["tree-2x2"]["token_ids"] == outs["auto"]["token_ids"] == outs["ar"]["token_ids"]
    assert outs["ctx-3"]["token_ids"] == outs["ar"]["token_ids"]
    assert len(outs["ctx-3"]["stats"]["acceptance_per_position"]) == 3
    chosen = outs["auto"]["stats"]["auto"]
    assert set(chosen["ms_per_iteration"]) == {"ar", "tree-1x1", "tree-2"}
    assert chosen["chosen_segments"][0] == "tree-1x1"  # the widest candidate measures first
    assert outs["tree-2x2"]["stats"]["method"] == "tree-2x2"
    assert len(outs["tree-2x2"]["stats"]["acceptance_per_position_and_rank"]) == 2
    assert len(outs["pass-fused"]["stats"]["acceptance_per_position"]) == 3
    assert isinstance(outs["ar"]["text"], str)


def test_streams_text_without_json(model_dir):
    r = _run(
        "--model",
        model_dir / "model",
        "--prompt",
        "for i in",
        "--max-new-tokens",
        8,
        "--temperature",
        0.8,
        "--top-k",
        5,
        "--seed",
        3,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("for i in") and "forward calls" in r.stderr


def test_the_line_after_the_text_says_what_the_seconds_count():
    fixed = {"new_tokens": 8, "forward_calls": 5, "wall_time_s": 1.5}
    assert generate_cli.summary(fixed) == "8 tokens, 5 forward calls, 1.50 s incl. compilation"
    auto = {**fixed, "auto": {"compile_seconds": 2.0, "timing_seconds": 30.25}}
    assert generate_cli.summary(auto) == (
        "8 tokens, 5 forward calls, 1.50 s, besides 2.00 s compiling and 30.25 s getting the "
        "layouts' call costs"
    )


def test_mesh_flag_gives_the_same_tokens(model_dir):
    """8 simulated devices (tests/conftest.py)."""
    common = (
        "--model",
        model_dir / "model",
        "--prompt",
        "class",
        "--max-new-tokens",
        8,
        "--method",
        "pass-fused",
        "--lookahead",
        model_dir / "la",
        "--json",
    )
    plain = _main(*common)
    meshed = _main(*common, "--mesh", "data=2,fsdp=2,tensor=2")
    assert plain["token_ids"] == meshed["token_ids"]
    assert _main(*common, "--layers", "scanned")["token_ids"] == plain["token_ids"]


def test_cache_dtype_flag_reaches_generate(model_dir, monkeypatch, capsys):
    """``--cache-dtype`` is handed to ``generate`` as given (``auto``: the compute dtype);
    ``generate`` itself is faked here (test_decode decodes over a bfloat16 cache)."""
    seen = []

    def fake_generate(cfg, params, prompts, **kwargs):
        seen.append(kwargs["cache_dtype"])
        return GenerationResult(
            tokens=[[5]],
            calls=[1],
            accepted_by_rank=np.zeros((1, 0, 1), np.int32),
            verify_calls=[0],
            wall_time=0.0,
            method="ar",
        )

    monkeypatch.setattr(generate_cli, "generate", fake_generate)
    for extra in ([], ["--cache-dtype", "bfloat16"]):
        out = _main("--model", model_dir / "model", "--prompt", "x", "--json", *extra)
        assert out["token_ids"] == [5]
    capsys.readouterr()
    assert seen == ["auto", "bfloat16"]


def test_layer_form_defaults_per_backend(monkeypatch):
    """Per-layer params (a layer loop) on a CPU, scanned ones on GPU/TPU, unless asked."""
    from pass_jax import decode

    assert decode.decode_stacked() is False  # this CPU
    assert decode.decode_stacked("scanned") is True
    monkeypatch.setattr(decode.jax, "default_backend", lambda: "gpu")
    assert decode.decode_stacked() is True and decode.decode_stacked("per-layer") is False
    with pytest.raises(ValueError, match="layers must be one of"):
        decode.decode_stacked("rolled")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "pass"], "needs --lookahead"),
        (["--method", "unk"], "needs --num-lookahead"),
        (["--method", "pass", "--lookahead", "LA_OTHER"], "d_model"),
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-k", "-2"], "--top-k must be >= 0"),
        (["--max-new-tokens", "100", "--max-len", "64"], "cache too small"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        (
            ["--max-new-tokens", "3000"],
            "+ max_new_tokens (3000) = 3001 exceeds the model's maximum "
            "position (2048, max_position_embeddings); shorten the prompt or generate at most 2047",
        ),
        (
            ["--method", "pass-fused", "--num-lookahead", "1000"],
            "--num-lookahead must be in [1, 32], got 1000",
        ),
        (["--method", "tree-16x16x16", "--num-lookahead", "3"], "4369 tree nodes"),
        (["--method", "ar", "--lookahead", "LA"], "error: --method ar uses no look-ahead"),
        (["--method", "ctx-3", "--lookahead", "LA"], "error: --method ctx-3 uses no look-ahead"),
        (["--method", "unk", "--lookahead", "LA"], "uses no trained embeddings"),
        (["--method", "tree-2x2x2x2", "--lookahead", "LA"], "needs at least 4 look-ahead tokens"),
        (["--system", "Be brief."], "--system is the system turn of a --chat prompt"),
        (["--chat", "--no-special-tokens"], "--no-special-tokens does not apply with --chat"),
        (["--chat"], "chat prompts need a tokenizer with a chat template"),
    ],
)
def test_bad_flags_give_clear_errors(model_dir, args, message):
    named = {"LA_OTHER": str(model_dir / "la_other"), "LA": str(model_dir / "la")}
    args = [named.get(a, a) for a in args]
    assert message in _error("--model", model_dir / "model", "--prompt", "x", *args)


def test_yaml_config_and_flags_give_the_same_run(model_dir, tmp_path, capsys):
    """The settings from ``--config`` (here all of them, the required ones too), a flag given
    on the command line winning over the file's value: the run the flags alone make."""
    path = tmp_path / "generate.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": str(model_dir / "model"),
                "lookahead": str(model_dir / "la"),
                "method": "pass-fused",
                "prompt": "def add(",
                "max_new_tokens": 12,
                "json": True,
            }
        )
    )
    from_yaml = _main("--config", path, "--max-new-tokens", 6)
    from_flags = _main(
        "--model",
        model_dir / "model",
        "--lookahead",
        model_dir / "la",
        "--method",
        "pass-fused",
        "--prompt",
        "def add(",
        "--max-new-tokens",
        6,
        "--json",
    )
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == from_yaml
    assert from_yaml["token_ids"] == from_flags["token_ids"]
    assert from_yaml["stats"]["new_tokens"] == from_flags["stats"]["new_tokens"] <= 6


def test_not_a_model_dir(tmp_path):
    assert "config.json" in _error("--model", tmp_path, "--prompt", "x")


@pytest.mark.parametrize("program", ["generate", "bench", "demo"])
def test_bad_input_is_one_error_line_and_exit_status_2(program, tmp_path, capsys):
    """Every program, as the train programs and argparse do: ``error: ...`` on stderr, status 2
    (what ``python -m infer.PROGRAM`` exits with: its ``__main__`` is ``run_cli(main)``)."""
    import infer.bench as bench_cli
    import infer.demo as demo_cli

    main, argv, message = {
        "generate": (generate_cli.main, ["--model", tmp_path, "--prompt", "x"], "config.json"),
        "bench": (bench_cli.main, ["--model", tmp_path, "--methods", "ar,nope"], "'nope'"),
        "demo": (demo_cli.main, ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    }[program]
    assert run_cli(lambda: main([str(a) for a in argv])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err


def test_lookahead_without_method_means_pass_fused(model_dir, capsys):
    out = _main(
        "--model",
        model_dir / "model",
        "--lookahead",
        model_dir / "la",
        "--prompt",
        "def add(",
        "--max-new-tokens",
        10,
        "--json",
    )
    capsys.readouterr()
    assert out["method"] == "pass-fused"
    assert len(out["stats"]["acceptance_per_position"]) == 3
    assert out["stats"]["tokens_per_call"] > 0


# ----------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, sp_tokenizer):
    """A tiny random transformers LLaMA saved with a LLaMA-style tokenizer (adds <s>); weights
    large enough that the logits are far from ties."""
    import torch
    import transformers

    d = tmp_path_factory.mktemp("llama")
    cfg = transformers.LlamaConfig(
        vocab_size=len(sp_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1.0 + 0.1 * torch.randn(p.shape) if p.ndim == 1 else 0.1 * torch.randn(p.shape))
    model.save_pretrained(d)
    sp_tokenizer.save_pretrained(d)
    return d, model


def test_prompt_gets_the_tokenizers_special_tokens_like_transformers(
    llama_dir, sp_tokenizer, capsys
):
    """BOS in front as ``tokenizer(text)`` puts it, and then the same greedy tokens as
    transformers' ``generate``; ``--no-special-tokens`` feeds the bare text tokens."""
    import torch

    d, model = llama_dir
    text = "hello world, the quick"
    out = _main("--model", d, "--prompt", text, "--max-new-tokens", 24, "--json")
    enc = sp_tokenizer(text, return_tensors="pt")
    assert out["prompt_ids"] == enc["input_ids"][0].tolist()
    assert out["prompt_ids"][0] == sp_tokenizer.bos_token_id
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=24, do_sample=False)
    assert out["token_ids"] == ref[0, enc["input_ids"].shape[1] :].tolist()

    plain = _main(
        "--model", d, "--prompt", text, "--max-new-tokens", 4, "--json", "--no-special-tokens"
    )
    capsys.readouterr()
    assert plain["prompt_ids"] == sp_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert sp_tokenizer.bos_token_id not in plain["prompt_ids"]


def test_text_keeps_the_space_after_the_prompt(sp_tokenizer):
    """SentencePiece-style decoding of a continuation alone drops its leading space; decoded in
    the context of the prompt it is kept, in the JSON text and in the stream."""
    prompt_ids = sp_tokenizer("hello")["input_ids"]
    full_ids = sp_tokenizer("hello world, hello there")["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    new_ids = full_ids[len(prompt_ids) :]
    assert sp_tokenizer.decode(new_ids) == "world, hello there"  # the problem
    assert (
        generate_cli.continuation_text(sp_tokenizer, prompt_ids, new_ids) == " world, hello there"
    )
    out = io.StringIO()
    stream = generate_cli.TextStream(sp_tokenizer, prompt_ids, out)
    for n in range(len(new_ids) + 1):
        stream.put(new_ids[:n])
    stream.end(new_ids)
    assert out.getvalue() == " world, hello there"


@pytest.mark.parametrize(
    "prompt,continuation", [("Text:", " 日本語のテキスト"), ("def f():", " # I love 🍕 pizza\n")]
)
def test_stream_holds_back_incomplete_characters(tmp_path, prompt, continuation):
    """A byte-level tokenizer splits multi-byte characters over tokens: the stream prints no
    U+FFFD and loses nothing, token by token, called as ``generation.generate`` calls it."""
    tok = train_bpe(TEXT, 300, tmp_path / "tok")
    prompt_ids = tok(prompt)["input_ids"]
    full_ids = tok(prompt + continuation)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    new_ids = full_ids[len(prompt_ids) :]
    assert any("\ufffd" in tok.decode(new_ids[:n]) for n in range(len(new_ids)))  # split chars
    writes = []
    out = io.StringIO()
    out.write = lambda s: writes.append(s)
    stream = generate_cli.TextStream(tok, prompt_ids, out)
    out_BxN = np.asarray([new_ids + [0] * 5, [0] * (len(new_ids) + 5)])
    for n in range(len(new_ids) + 1):
        stream(out_BxN, np.asarray([n, 0]))
    assert "".join(writes) == continuation  # complete before end()
    stream.end(new_ids)
    assert "".join(writes) == continuation and not any("\ufffd" in w for w in writes)


def test_auto_keeps_its_call_costs_in_a_file(model_dir, tmp_path, monkeypatch, capsys):
    """``--method auto`` times its candidates once: a later process (the process's table
    emptied) reads them from ``--auto-costs``; ``--auto-retime`` times them again; ``none``
    keeps no file. The output stays autoregressive decoding's."""
    import pass_jax.iteration_cost as ic

    path = tmp_path / "costs.json"
    common = ["--model", model_dir / "model", "--prompt", "def add(", "--max-new-tokens", 10]
    auto = [*common, "--method", "auto", "--lookahead", model_dir / "la", "--json"]
    auto += ["--auto-methods", "ar,tree-1x1,tree-2"]

    def run(*extra) -> dict:
        monkeypatch.setattr(ic, "_COSTS", {})  # a new process
        _main(*auto, *extra)
        return json.loads(capsys.readouterr().out)

    ar = _main(*common, "--json")["token_ids"]
    capsys.readouterr()
    first = run("--auto-costs", path)
    assert first["stats"]["auto"]["ms_per_iteration_from"] == "timed"
    (entry,) = json.loads(path.read_text())["entries"].values()
    assert set(entry["seconds"]) == {"ar", "tree-1x1", "tree-2"}
    second = run("--auto-costs", path)
    assert second["stats"]["auto"]["ms_per_iteration_from"] == "file"
    assert second["stats"]["auto"]["ms_per_iteration"] == first["stats"]["auto"]["ms_per_iteration"]
    assert first["token_ids"] == second["token_ids"] == ar
    retimed = run("--auto-costs", path, "--auto-retime")
    assert retimed["stats"]["auto"]["ms_per_iteration_from"] == "timed"
    (entry,) = json.loads(path.read_text())["entries"].values()  # the new timing, kept
    assert {m: round(1e3 * s, 4) for m, s in entry["seconds"].items()} == retimed["stats"]["auto"][
        "ms_per_iteration"
    ]
    before = path.read_text()
    assert run("--auto-costs", "none")["stats"]["auto"]["ms_per_iteration_from"] == "timed"
    assert path.read_text() == before


def test_a_later_process_loads_the_programs_it_compiled(
    model_dir, tmp_path, capsys, restore_compile_cache
):
    """``--compile-cache DIR`` keeps the compiled programs: once JAX's in-memory caches are gone
    (as in a new process) the same command loads them from DIR instead of compiling; another
    DIR takes effect in the same process; ``none`` keeps nothing."""
    import jax

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # tiny programs too
    events = []

    def listen(event, **kwargs):
        if event.startswith("/jax/compilation_cache/cache_"):
            events.append(event.rsplit("/", 1)[1])

    jax.monitoring.register_event_listener(listen)
    cmd = ["--model", model_dir / "model", "--prompt", "def add(", "--max-new-tokens", 8, "--json"]

    def run(cache) -> tuple[list[int], list[str], set[str]]:
        jax.clear_caches()  # a new process
        events.clear()
        tokens = _main(*cmd, "--compile-cache", cache)["token_ids"]
        capsys.readouterr()
        found = {p.name for p in (tmp_path / "a").iterdir()} if (tmp_path / "a").is_dir() else set()
        return tokens, list(events), found

    try:
        first, ev1, files1 = run(tmp_path / "a")
        assert "cache_misses" in ev1 and "cache_hits" not in ev1 and files1
        second, ev2, files2 = run(tmp_path / "a")
        assert "cache_hits" in ev2 and "cache_misses" not in ev2  # loaded, nothing compiled anew
        assert files2 == files1 and second == first
        other, _, _ = run(tmp_path / "b")
        assert other == first and any((tmp_path / "b").iterdir())
        off, ev3, files3 = run("none")
        assert off == first and not ev3 and files3 == files1
        assert not jax.config.jax_enable_compilation_cache
    finally:
        jax.monitoring.unregister_event_listener(listen)
