"""The inference programs' typed configs (infer.config): flags and an optional YAML --config
(the flags win), comma lists as tuples, the flag checks in __post_init__, the same defaults as
the flags had. No model is loaded here (tests/test_cli_generate.py runs one from a YAML)."""

import numpy as np
import pytest
import yaml

from infer import bench, demo, generate
from infer.config import BenchConfig, DemoConfig, GenerateConfig, comma_list, load
from pass_jax import program_config


def _yaml(tmp_path, values: dict) -> str:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _generate_config(*argv) -> GenerateConfig:
    return load(GenerateConfig, generate.parse_args([str(a) for a in argv]))


def _bench_config(*argv) -> BenchConfig:
    return load(BenchConfig, bench.build_parser().parse_args([str(a) for a in argv]))


def test_defaults_are_the_flags_defaults():
    g = _generate_config("--model", "m", "--prompt", "p")
    assert (g.method, g.max_new_tokens, g.temperature, g.top_k, g.top_p, g.seed) == (
        "ar",
        64,
        0.0,
        0,
        1.0,
        0,
    )
    assert (g.add_special_tokens, g.json, g.layers, g.precision, g.dtype, g.cache_dtype) == (
        True,
        False,
        "auto",
        "auto",
        "float32",
        "auto",
    )
    assert (
        _generate_config("--model", "m", "--prompt", "p", "--lookahead", "la").method
        == "pass-fused"
    )
    b = _bench_config("--model", "m")
    assert b.temperatures == (0.8, 0.5, 0.2, 0.0) and b.batch_size == (1,) and b.repeats == 3
    assert b.methods == ("ar", "unk", "pass", "pass-fused") and b.hf_baselines is True
    assert (b.out_dir, b.max_len, b.rm_batch_size) == ("results", (256, 4096), (1, 8))


def test_comma_lists_are_tuples():
    b = _bench_config(
        "--model",
        "m",
        "--batch-size",
        "1,4",
        "--temperatures",
        "0,0.8",
        "--methods",
        "ar, pass-fused",
        "--depths",
        "2,3",
        "--hf-temperatures",
        "0",
    )
    assert b.batch_size == (1, 4) and b.temperatures == (0.0, 0.8)
    assert b.methods == ("ar", "pass-fused") and b.depths == (2, 3)
    assert b.hf_temperatures == (0.0,)
    assert _generate_config(
        "--model", "m", "--prompt", "p", "--auto-methods", "ar,tree-2x1,"
    ).auto_methods == ("ar", "tree-2x1")
    assert comma_list(" a, ,b ") == ["a", "b"]


def test_yaml_config_is_read_and_flags_win(tmp_path):
    path = _yaml(
        tmp_path,
        {
            "model": "m",
            "batch_size": [1, 2],
            "temperatures": [0, 0.5],
            "repeats": 5,
            "hf_baselines": True,
            "title": "from yaml",
        },
    )
    b = _bench_config("--config", path, "--repeats", "2", "--no-hf-baselines")
    assert b.model == "m" and b.batch_size == (1, 2) and b.title == "from yaml"
    assert b.temperatures == (0.0, 0.5) and all(isinstance(T, float) for T in b.temperatures)
    assert b.repeats == 2 and b.hf_baselines is False  # the flags given win

    path = _yaml(
        tmp_path,
        {
            "model": "m",
            "prompt": "def f(",
            "max_new_tokens": 8,
            "json": True,
            "add_special_tokens": False,
        },
    )
    g = _generate_config("--config", path, "--max-new-tokens", 3)
    assert (g.model, g.prompt, g.max_new_tokens, g.json, g.add_special_tokens) == (
        "m",
        "def f(",
        3,
        True,
        False,
    )


def test_required_flags_only_without_a_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        generate.parse_args(["--model", "m"])
    assert e.value.code == 2 and "required: --prompt" in capsys.readouterr().err
    path = _yaml(tmp_path, {"prompt": "x"})
    with pytest.raises(SystemExit, match="error: the config is missing model"):
        generate.main(["--config", path])


@pytest.mark.parametrize(
    "program, values, message",
    [
        ("bench", {"batch_sise": [1]}, "unknown config key 'batch_sise'; did you mean batch_size?"),
        ("bench", {"repeats": "many"}, "config key 'repeats' must be int, got 'many'"),
        ("bench", {"batch_size": 4}, "config key 'batch_size' must be list, got 4"),
        (
            "bench",
            {"temperatures": [0, "hot"]},
            "config key 'temperatures[1]' must be float or int",
        ),
        ("bench", {"repeats": 0}, "--repeats must be >= 1, got 0"),
        ("bench", {"batch_size": [1, 0]}, "--batch-size must be >= 1, got 1,0"),
        ("bench", {"dtype": "float16"}, "--dtype must be one of float32, bfloat16, got 'float16'"),
        (
            "generate",
            {"max_new_tokenz": 3},
            "unknown config key 'max_new_tokenz'; did you mean max_new_tokens?",
        ),
        ("generate", {"top_k": 1.5}, "config key 'top_k' must be int, got 1.5"),
        ("generate", {"max_new_tokens": 0}, "--max-new-tokens must be >= 1, got 0"),
        ("generate", {"method": "fast"}, "--method: invalid choice: 'fast'"),
        ("generate", {"method": "ar", "lookahead": "la"}, "--method ar uses no look-ahead"),
        ("generate", {"layers": "rolled"}, "--layers must be one of auto, per-layer, scanned"),
        (
            "generate",
            {"cache_dtype": "int8"},
            "--cache-dtype must be one of auto, float32, bfloat16, got 'int8'",
        ),
        ("bench", {"cache_dtype": "fp8"}, "--cache-dtype must be one of auto, float32, bfloat16"),
        # checked before the model loads, even where greedy decoding would ignore them
        ("generate", {"top_k": -1}, "--top-k must be >= 0 (0: off), got -1"),
        ("bench", {"top_p": 3.0}, "--top-p must be in (0, 1] (1: off), got 3.0"),
        ("generate", {"temperature": -0.5}, "--temperature must be >= 0 (0: greedy)"),
        ("generate", {"auto_methods": ["ar", "fast"]}, "--auto-methods: 'fast' is no candidate"),
        ("bench", {"auto_methods": ["auto"]}, "--auto-methods: 'auto' is no candidate"),
        ("generate", {"method": "unk", "lookahead": "la"}, "--method unk uses no trained"),
        ("generate", {"method": "unk"}, "--method unk needs --num-lookahead L"),
        ("generate", {"method": "pass"}, "--method pass needs --lookahead DIR"),
        ("bench", {"methods": ["ar", "pass"]}, "methods pass / pass-fused / tree-.. need"),
        ("bench", {"lookahead": "no-such-export"}, "--lookahead no-such-export: no such dir"),
        ("bench", {"methods": ["ar"], "data": "nothing:here"}, "unknown data spec"),
    ],
)
def test_bad_yaml_values_are_errors_naming_the_key(tmp_path, program, values, message):
    """Before any work: the model path does not exist, so a later failure would name it."""
    values = {"model": str(tmp_path / "no-model"), **values}
    argv = (
        ["--config", _yaml(tmp_path, values), "--prompt", "x"]
        if program == "generate"
        else ["--config", _yaml(tmp_path, values), "--out-dir", str(tmp_path / "out")]
    )
    main = generate.main if program == "generate" else bench.main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert str(e.value).startswith("error: " + message), e.value


def test_cache_dtype_flag_reaches_every_runner_and_the_report(monkeypatch, capsys):
    """``--cache-dtype``: auto (the compute dtype) by default; a value off its choices is
    argparse's error; bench hands it to every runner of ours, records it in the settings, and
    its report names it when it is not the compute dtype. (generate: test_cli_generate.)"""
    from infer.bench_report import _cache_note

    assert _generate_config("--model", "m", "--prompt", "p").cache_dtype == "auto"
    assert _bench_config("--model", "m").cache_dtype == "auto"
    with pytest.raises(SystemExit) as e:
        generate.parse_args(["--model", "m", "--prompt", "p", "--cache-dtype", "fp8"])
    assert e.value.code == 2
    assert "--cache-dtype: invalid choice: 'fp8'" in capsys.readouterr().err

    config = _bench_config("--model", "m", "--cache-dtype", "bfloat16")
    seen = []
    monkeypatch.setattr(bench, "ours_runner", lambda *a, **kw: seen.append(kw["cache_dtype"]))
    las = {2: ("la", np.zeros((2, 32), np.float32))}  # an export of L = 2 (its dir, its array)
    bench.our_variants(config, None, None, None, ["ar", "pass-fused"], las, [2])
    assert seen == ["bfloat16", "bfloat16"]
    assert bench._settings(config, 1, ["ar"], [], None, None)["cache_dtype"] == "bfloat16"
    assert _cache_note({"cache_dtype": "bfloat16"}, "float32") == ", KV cache bfloat16"
    assert _cache_note({"cache_dtype": "auto"}, "float32") == ""
    assert _cache_note({}, "bfloat16") == ""  # results written before the flag


def test_a_config_that_is_no_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SystemExit, match="is not a mapping of keys"):
        bench.main(["--config", str(path)])
    with pytest.raises(SystemExit, match="error: config file .*missing.yaml: no such file"):
        bench.main(["--config", str(tmp_path / "missing.yaml")])


def test_a_config_file_that_is_not_yaml_or_no_file(tmp_path):
    """One ``error:`` line naming the file, not a traceback, in every program."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: [1, 2\n")
    for main in (generate.main, bench.main):
        with pytest.raises(SystemExit, match=r"error: config file .*bad.yaml is not valid YAML"):
            main(["--config", str(bad)])
    with pytest.raises(SystemExit, match=r"error: config file .*: Is a directory"):
        generate.main(["--config", str(tmp_path)])
    with pytest.raises(ValueError, match=r"override 'a=\[1': the value is not valid YAML"):
        program_config.apply_overrides({}, ["a=[1"])


@pytest.mark.parametrize(
    "program",
    [
        "infer.generate",
        "infer.bench",
        "infer.demo",
        "train.base",
        "train.lookahead",
        "pass_jax.memory_plan",
    ],
)
def test_every_program_gives_a_bad_flag_one_error_line(program, capsys):
    """An unknown flag (or the required ones missing first), in every program: argparse's
    error on one line, naming --help, status 2."""
    import importlib

    module = importlib.import_module(program)
    with pytest.raises(SystemExit) as e:
        module.main(["--no-such-flag"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ") and err.rstrip().endswith(" --help)"), err


def test_a_bad_command_line_is_one_error_line(capsys):
    """argparse's errors, as every program's other bad input: one line, status 2."""
    with pytest.raises(SystemExit) as e:
        generate.parse_args(["--model", "m", "--prompt", "p", "--method", "fast"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: argument --method: invalid choice: 'fast'")
    assert err.rstrip().endswith("(see python -m infer.generate --help)")
    with pytest.raises(SystemExit) as e:
        bench.build_parser().parse_args(["--batch-size", "1,x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--batch-size" in err


def test_a_missing_lookahead_export_fails_before_the_model_loads(tmp_path):
    """The model (a GGUF file, which would be converted first) does not exist either: the
    export is named first, by both programs."""
    argv = ["--model", str(tmp_path / "no-model.gguf"), "--lookahead", str(tmp_path / "no-la")]
    with pytest.raises(SystemExit, match="error: no look-ahead export in .*no-la"):
        generate.main([*argv, "--prompt", "x"])
    out = ["--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="error: --lookahead .*no-la: no such directory"):
        bench.main([*argv, *out])


def test_candidate_layouts_are_accepted_and_sampling_flags_checked_only_where_read():
    methods = ("ar", "pass", "pass-fused", "tree-2x2x1x1", "tree-1+ctx3", "ctx-3")
    g = _generate_config("--model", "m", "--prompt", "p", "--auto-methods", ",".join(methods))
    assert g.auto_methods == methods
    # --from-json and --random-model sample nothing: their settings are not checked
    assert _bench_config("--from-json", "r.json", "--top-p", "0").top_p == 0
    with pytest.raises(ValueError, match="--top-p must be in"):
        _bench_config("--model", "m", "--top-p", "0")


def test_the_demo_checks_the_flags_it_hands_on_before_any_work(tmp_path):
    """``infer.demo -- FLAGS``: infer.bench's flags, checked before the pipeline's training."""
    out = ["--artifacts", str(tmp_path / "artifacts")]
    with pytest.raises(SystemExit, match=r"does not take \['--bogus'\]"):
        demo.main(["--quick", *out, "--", "--bogus"])
    with pytest.raises(SystemExit, match="error: config file .*nope.yaml: no such file"):
        demo.main(["--quick", *out, "--config", str(tmp_path / "nope.yaml")])
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    with pytest.raises(SystemExit, match="list.yaml is not a mapping of keys"):
        demo.main(["--quick", *out, "--config", str(listing)])
    assert not (tmp_path / "artifacts").exists()


def test_bench_sizes_are_checked_only_for_a_benchmark():
    """--random-model and --from-json read few of the protocol's sizes (as before configs)."""
    assert _bench_config("--random-model", "tiny", "--repeats", "0").repeats == 0
    assert _bench_config("--from-json", "r.json", "--batch-size", "0").batch_size == (0,)
    with pytest.raises(ValueError, match="--repeats must be >= 1"):
        _bench_config("--model", "m", "--repeats", "0")


def _demo_config(*argv) -> DemoConfig:
    args = demo.build_parser().parse_args([str(a) for a in argv])
    return program_config.from_dict(DemoConfig, program_config.flag_values(args, DemoConfig))


def test_demo_config_from_flags():
    """infer.demo reads its flags into DemoConfig: the defaults it had, the benchmark sizes left
    to the demo unless given, extra bench flags as a tuple, the flag checks."""
    d = _demo_config()
    assert (d.artifacts, d.la_steps, d.hf_baselines, d.tiny_model, d.bench_args) == (
        "artifacts",
        40,
        True,
        False,
        (),
    )
    assert d.num_prompts is None and d.temperatures is None
    d = _demo_config("--quick", "--la-steps", 0, "--no-hf-baselines", "--", "--call-tokens", "1,5")
    assert (d.tiny_model, d.la_steps, d.hf_baselines) == (True, 0, False)
    assert d.bench_args == ("--call-tokens", "1,5")
    with pytest.raises(ValueError, match="--ablation is for the tiny model"):
        _demo_config("--ablation")
    with pytest.raises(ValueError, match="--la-steps must be >= 0"):
        _demo_config("--la-steps", -1)
    with pytest.raises(SystemExit, match="--ablation is for the tiny model"):
        demo.main(["--ablation"])
