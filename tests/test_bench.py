"""Benchmark and demo: the quick demo end to end, and the benchmark's helpers."""

import json

import jax
import pytest

from infer import bench, bench_methods, bench_summary, demo


def test_quick_demo_end_to_end(tmp_path):
    """corpus -> tokenizer -> base model -> LA (L=4) -> benchmark, in a fresh artifacts dir;
    then a second run reuses every artifact and goes straight to the benchmark."""
    art = tmp_path / "artifacts"
    out = tmp_path / "results"
    result = demo.main(["--quick", "--artifacts", str(art), "--out-dir", str(out)])

    s = result["settings"]
    assert s["L"] == [4] and s["main_L"] == 4
    rows = [r for r in result["cells"] if "error" not in r]
    cells = {(r["temperature"], r["batch_size"], r["method"], r["L"]) for r in rows}
    for T in s["temperatures"]:
        for B in s["batch_sizes"]:
            assert (T, B, "ar", None) in cells
            for m in ("unk", "pass", "pass-fused"):
                assert (T, B, m, 4) in cells, (T, B, m)
    for r in rows:
        assert r["median_s"] > 0 and r["tokens_per_s"] > 0 and len(r["wall_s"]) == s["repeats"]
        if r["method"] in ("pass", "pass-fused", "unk"):
            assert len(r["acceptance_per_position"]) == 4
            assert r["tokens_per_call"] >= 1.0
        if r["method"] in ("ar", "pass", "pass-fused", "unk"):
            # the decomposition the table prints: speedup = tokens per call / call cost vs AR
            ar = next(
                a
                for a in rows
                if a["method"] == "ar"
                and a["temperature"] == r["temperature"]
                and a["batch_size"] == r["batch_size"]
            )
            assert r["ms_per_forward_call"] > 0
            assert r["tokens_per_call"] / r["call_cost_vs_ar"] * ar["new_tokens"] / r[
                "new_tokens"
            ] == pytest.approx(r["speedup_vs_ar"] * ar["tokens_per_call"])
        if r["temperature"] == 0 and r["method"] in ("unk", "pass", "pass-fused"):
            assert r["greedy_identical_to_ar"] is True, r
        assert 0.0 <= r["ast_parse_share"] <= 1.0 and 0.0 <= r["ast_parse_share_toplevel"] <= 1.0
    assert set(result["greedy_identical_to_ar"]) == {"unk@L4", "pass@L4", "pass-fused@L4"}
    assert all(result["greedy_identical_to_ar"].values())

    with open(out / "bench.json") as f:
        on_disk = json.load(f)
    assert len(on_disk["cells"]) == len(result["cells"])
    assert on_disk["machine"]["cpu"] and on_disk["machine"]["jax_device_kind"]
    md = (out / "bench.md").read_text()
    assert md.startswith("**infer.demo --quick") and "Machine:" in md
    assert "| PaSS fused (L=4) |" in md and "| autoregressive |" in md
    for png in ("speedup_vs_temperature.png", "time_vs_L.png"):
        assert (out / png).stat().st_size > 1000

    # cached: the second run trains nothing (the base model and LA export are untouched)
    base = art / "demo-quick" / "base" / "model.safetensors"
    la = art / "demo-quick" / "lookahead" / "L4" / "lookahead.safetensors"
    stamps = (base.stat().st_mtime_ns, la.stat().st_mtime_ns)
    again = demo.main(
        [
            "--quick",
            "--artifacts",
            str(art),
            "--out-dir",
            str(tmp_path / "again"),
            "--temperatures",
            "0",
            "--batch-size",
            "2",
            "--repeats",
            "1",
            "--no-hf-baselines",
            "--",
            "--mesh",
            "data=2,fsdp=2,tensor=2",
            "--methods",
            "ar,pass-fused,tree-2x2",
        ]
    )
    assert (base.stat().st_mtime_ns, la.stat().st_mtime_ns) == stamps
    assert (tmp_path / "again" / "bench.json").exists()
    # the benchmark on a device mesh (8 simulated devices), a draft tree too: still lossless
    assert set(again["greedy_identical_to_ar"]) == {"pass-fused@L4", "tree-2x2@L4"}
    assert all(again["greedy_identical_to_ar"].values())
    tree = next(r for r in again["cells"] if r["method"] == "tree-2x2")
    assert tree["layout"] == "2x2, 21" and tree["tokens_per_call"] >= 1.0
    md = (tmp_path / "again" / "bench.md").read_text()
    assert "| PaSS tree 2x2 | 4 | 2x2, 21 | greedy |" in md

    # --ablation: trains L = 2, 6, 8 next to the cached L = 4 and benchmarks all four (the fused
    # chain only: the other methods' cells are checked above)
    abl = demo.main(
        [
            "--quick",
            "--ablation",
            "--artifacts",
            str(art),
            "--out-dir",
            str(tmp_path / "ablation"),
            "--temperatures",
            "0",
            "--batch-size",
            "1",
            "--repeats",
            "1",
            "--no-hf-baselines",
            "--",
            "--methods",
            "ar,pass-fused",
        ]
    )
    assert la.stat().st_mtime_ns == stamps[1]
    assert abl["settings"]["L"] == [2, 4, 6, 8]
    assert set(abl["greedy_identical_to_ar"]) == {f"pass-fused@L{L}" for L in (2, 4, 6, 8)}
    assert all(abl["greedy_identical_to_ar"].values())
    for L in (2, 6, 8):
        row = next(r for r in abl["cells"] if r["method"] == "pass-fused" and r["L"] == L)
        assert len(row["acceptance_per_position"]) == L
    md = (tmp_path / "ablation" / "bench.md").read_text()
    assert "### L ablation" in md and "| PaSS fused | 8 |" in md
    assert (tmp_path / "ablation" / "time_vs_L.png").stat().st_size > 1000


def _corpus(tmp_path, n=40):
    """A few small Python files; the path hash puts a couple of them in the held-out split."""
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(n):
        (d / f"mod{i}.py").write_text(
            f'"""Module {i}."""\nimport os\n\n\ndef f{i}(x):\n    return x + {i}\n\n\n'
            f"class C{i}:\n    def m(self):\n        return f{i}(1)\n\n\nVALUE = {i}\n"
        )
    return d


def test_make_prompts_more_than_documents(tmp_path):
    from pass_jax import data, tokenizer

    d = _corpus(tmp_path)
    spec = f"files:{d}/*.py"
    texts = data.text_source(spec, "train")
    tok = tokenizer.train_bpe((texts[i] for i in range(len(texts))), 300, tmp_path / "tok")
    n_docs = len(data.text_source(spec, "heldout"))
    prompts, origin = bench.make_prompts(tok, spec, None, n_docs + 3, 8, seed=0)
    assert len(prompts) == n_docs + 3
    assert all(len(p) == 8 for p in prompts)
    assert len({tuple(p) for p in prompts}) == len(prompts)
    assert origin["from_document_start"] == n_docs and origin["from_top_level_lines"] == 3
    for p in prompts[n_docs:]:  # extra prompts start at a top-level line
        assert not tok.decode(p)[0].isspace()


def test_parses_drops_the_incomplete_last_line():
    assert bench_summary.parses("x = 1\ny = (2 +")
    assert bench_summary.parses("def f():\n    return 1\n")
    assert not bench_summary.parses("def f(:\n    pass\n")
    text = "import os\n\ndef f(x):\n    return x\n\nclass A:\n    def g(self):\n        if x"
    assert not bench_summary.parses(text) and bench_summary.parses_toplevel(text)
    # no top-level line after it
    assert not bench_summary.parses_toplevel(text, start=len(text) - 3)


def test_speedup_interval_resamples_repeats_in_pairs():
    """The speedup's 95% interval resamples repeat r of both methods together: walls that
    drift together (a machine slowing down) give no spread, a steady 2x ratio gives exactly
    2x, and noisy walls give an interval around the medians' ratio."""
    drift = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    assert bench_summary.speedup_interval(drift, drift) == [1.0, 1.0]  # unpaired would spread
    assert bench_summary.speedup_interval([2 * w for w in drift], drift) == [2.0, 2.0]
    ar = [3.8, 3.6, 4.5, 3.7, 3.6, 4.2, 3.9, 3.5, 4.0]
    auto = [3.9, 3.7, 3.8, 4.1, 5.2, 5.8, 3.9, 3.9, 3.9]
    low, high = bench_summary.speedup_interval(ar, auto)
    point = bench_summary.median(ar) / bench_summary.median(auto)
    assert low < point < high and high - low > 0.02
    assert [low, high] == [0.75, 1.0263]  # the 2.5th and 97.5th percentiles, seeded
    assert bench_summary.speedup_interval(ar[:4], auto[:4]) is None  # too few to resample
    assert bench_summary.speedup_interval(ar, auto[:5]) is None  # a baseline timed less often


def test_speedup_cell_shows_the_interval():
    """The report's speedup cells carry the interval where a row has one (older results and
    ``ar`` itself have none)."""
    from infer.bench_report import _time_cell

    row = {"s_per_call": 3.934, "speedup_vs_ar": 0.965, "speedup_ci95": [0.93, 1.004]}
    assert _time_cell(row) == "3.934 (0.96x, 0.93-1.00)"
    assert _time_cell({"s_per_call": 3.796, "speedup_vs_ar": 1.0}) == "3.796 (1.00x)"


def test_find_lookaheads_directory_of_exports(tmp_path):
    from pass_jax.config import ModelConfig
    from pass_jax.lookahead import init_lookahead, model_fingerprint, save_lookahead
    from pass_jax.model import init_params

    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64)
    params = init_params(cfg, jax.random.PRNGKey(0))
    for L in (2, 4):
        save_lookahead(
            str(tmp_path / "la" / f"L{L}"),
            init_lookahead(cfg, params, L),
            cfg,
            model_fingerprint(cfg, params),
        )
    las = bench.load_lookaheads(str(tmp_path / "la"), cfg, params)
    assert list(las) == [2, 4]
    one = bench.load_lookaheads(str(tmp_path / "la" / "L4"), cfg, params)
    assert list(one) == [4]
    both = bench.load_lookaheads(f"{tmp_path / 'la' / 'L2'},{tmp_path / 'la' / 'L4'}", cfg, params)
    assert list(both) == [2, 4]
    with pytest.raises(ValueError, match="two look-ahead exports with L=2"):
        bench.load_lookaheads(f"{tmp_path / 'la' / 'L2'},{tmp_path / 'la' / 'L2'}", cfg, params)
    with pytest.raises(FileNotFoundError):
        bench.load_lookaheads(str(tmp_path / "missing"), cfg, params)
    # --depths: the first L' rows of the deepest export, unless an export of that L exists
    cut = bench.load_lookaheads(str(tmp_path / "la"), cfg, params, depths=[1, 2, 3])
    assert list(cut) == [1, 2, 3, 4]
    assert cut[2][0] == las[2][0] and cut[3][0] == cut[1][0] == las[4][0]
    assert (cut[3][1] == las[4][1][:3]).all() and cut[1][1].shape == (1, 32)
    with pytest.raises(ValueError, match="--depths 5: the deepest look-ahead export has L=4"):
        bench.load_lookaheads(str(tmp_path / "la"), cfg, params, depths=[5])


def test_method_labels():
    """Tables name a chain tree as the fused chain of its depth, other trees by their shape."""
    assert bench_methods.label("tree-1") == "PaSS fused, depth 1"
    assert bench_methods.label("tree-1x1x1") == "PaSS fused, depth 3"
    assert bench_methods.label("tree-2x1") == "PaSS tree 2x1"
    assert bench_methods.label("tree-1+ctx2") == "PaSS tree 1+ctx2"
    assert bench_methods.label("ctx-3") == "context drafts 3 (prompt lookup)"
    assert bench_methods.label("pass-fused") == "PaSS fused"


def test_machine_line_names_the_machine():
    info = bench.machine_info()
    line = bench.machine_line(info)
    assert info["cpu"] in line and "cores" in line and info["jax_device_kind"] in line
    assert "jax " in line and "transformers " in line


def test_random_model_report(tmp_path):
    """The autoregressive report of ``--random-model`` on a tiny random LLaMA: ours vs
    transformers on the same weights (identical greedy tokens), per-step time, and the cost of
    one call per decoding method. A 300-token prompt (padded to 512) needs more than the default
    512 slots for the fused steps: the call costs get a larger cache instead of failing."""
    out = tmp_path / "ar.json"
    result = bench.main(
        [
            "--random-model",
            "tiny",
            "--max-new-tokens",
            "16",
            "--repeats",
            "1",
            "--prompt-tokens",
            "300",
            "--max-len",
            "1024",
            "--rm-batch-size",
            "2",
            "--call-cost-methods",
            "ar,pass,pass-fused,tree-2x1",
            "--json",
            str(out),
        ]
    )
    r = result["tokens_per_s"]["2"]
    assert r["greedy_identical"] is True and r["ours"] > 0 and r["transformers"] > 0
    assert result["step_ms"]["1024"] > 0 and result["step_ms_scanned"]["1024"] > 0
    # 512 prompt + 8 + 8 fused steps x 5 committed tokens + 25 scratch, rounded up
    assert result["call_slots"] == 640
    assert set(result["call_ms"]) == {"ar", "pass", "pass-fused", "tree-2x1"}
    assert all(ms > 0 for ms in result["call_ms"].values())
    md = (tmp_path / "ar.md").read_text()
    assert "| PaSS fused | 1x1x1x1, 25 |" in md and "vs autoregressive" in md
    assert "| PaSS tree 2x1 | 2x1, 15 |" in md and "| PaSS | 1x1x1x1, 2 calls: 5 + 5 |" in md
    assert json.loads(out.read_text())["call_ms"] == result["call_ms"]


def test_prompts_get_the_tokenizers_special_tokens(tmp_path, monkeypatch, sp_model_dir):
    """With a LLaMA-style tokenizer every prompt is BOS + --prompt-tokens text tokens (as
    ``tokenizer(text)`` starts); --no-special-tokens leaves the text tokens alone."""
    seen = []
    ours_runner = bench.ours_runner

    def recording_runner(*args, **kwargs):
        run = ours_runner(*args, **kwargs)
        return lambda prompts, *rest: seen.append(prompts) or run(prompts, *rest)

    monkeypatch.setattr(bench, "ours_runner", recording_runner)
    spec = f"files:{_corpus(tmp_path)}/*.py"
    common = [
        "--model",
        str(sp_model_dir),
        "--methods",
        "ar",
        "--no-hf-baselines",
        "--temperatures",
        "0",
        "--repeats",
        "1",
        "--num-prompts",
        "1",
        "--prompt-tokens",
        "8",
        "--max-new-tokens",
        "4",
        "--data",
        spec,
        "--no-plots",
        "--quiet",
    ]
    result = bench.main(common + ["--out-dir", str(tmp_path / "a")])
    assert result["settings"]["add_special_tokens"] is True
    with_bos = seen[-1]
    assert len(with_bos) == 1 and len(with_bos[0]) == 9 and with_bos[0][0] == 1

    result = bench.main(common + ["--out-dir", str(tmp_path / "b"), "--no-special-tokens"])
    assert result["settings"]["add_special_tokens"] is False
    assert seen[-1] == [p[1:] for p in with_bos]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--batch-size", "1,0"], "--batch-size must be >= 1, got 1,0"),
        (["--num-prompts", "0"], "--num-prompts must be >= 1, got 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        (["--temperatures", "0,-1"], "--temperatures must be >= 0"),
        (["--depths", "0"], "--depths must be >= 1"),
        (["--out-dir", "{file}"], "output folder {file} is an existing file"),
        (["--json", "{dir}"], "--json {dir} is a directory; give a file name"),
    ],
)
def test_bench_bad_flags_fail_before_any_work(tmp_path, flags, message):
    """Each bad flag is one ``error:`` line before the model is even looked at (the model path
    does not exist, so any later failure would name it instead)."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    fill = {"file": str(tmp_path / "a-file"), "dir": str(tmp_path / "a-dir")}
    flags = [f.format(**fill) for f in flags]
    argv = ["--model", str(tmp_path / "no-model"), "--out-dir", str(tmp_path / "out")] + flags
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert str(e.value).startswith("error: " + message.format(**fill)), e.value


def test_bench_from_json_errors(tmp_path):
    with pytest.raises(SystemExit, match=r"error: --from-json .*missing.json: no such file"):
        bench.main(["--from-json", str(tmp_path / "missing.json"), "--out-dir", str(tmp_path)])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"error: --from-json .*bad.json: not a results JSON"):
        bench.main(["--from-json", str(tmp_path / "bad.json"), "--out-dir", str(tmp_path)])
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(SystemExit, match=r"not a results JSON of infer.bench \(missing settings"):
        bench.main(["--from-json", str(tmp_path / "other.json"), "--out-dir", str(tmp_path)])


def test_bench_interrupted_keeps_the_cells_measured(tmp_path, monkeypatch, sp_model_dir):
    """An interruption in the second cell (T = 0.8) leaves a JSON with the first cell, marked
    incomplete, which --from-json renders."""
    ours_runner = bench.ours_runner

    def interrupted_at_sampling(*args, **kwargs):
        run = ours_runner(*args, **kwargs)

        def go(prompts, B, sampler, *rest):
            if sampler.temperature > 0:
                raise KeyboardInterrupt
            return run(prompts, B, sampler, *rest)

        return go

    monkeypatch.setattr(bench, "ours_runner", interrupted_at_sampling)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        bench.main(
            [
                "--model",
                str(sp_model_dir),
                "--methods",
                "ar",
                "--no-hf-baselines",
                "--temperatures",
                "0,0.8",
                "--repeats",
                "1",
                "--num-prompts",
                "1",
                "--prompt-tokens",
                "8",
                "--max-new-tokens",
                "4",
                "--no-plots",
                "--quiet",
                "--data",
                f"files:{_corpus(tmp_path)}/*.py",
                "--out-dir",
                str(out),
            ]
        )
    saved = json.loads((out / "bench.json").read_text())
    assert saved["complete"] is False
    assert [(r["temperature"], r["method"]) for r in saved["cells"]] == [(0.0, "ar")]
    assert saved["cells"][0]["median_s"] > 0 and "_tokens" not in saved["cells"][0]
    bench.main(["--from-json", str(out / "bench.json"), "--out-dir", str(out), "--no-plots"])
    assert "**Incomplete run** (interrupted)" in (out / "bench.md").read_text()


def test_bench_trees_and_auto(tmp_path):
    """A tiny random model: a draft tree, context drafts and auto as benchmark methods
    (greedy, lossless), with the tree shape, the tokens of a call and auto's choices in the
    JSON and the table."""
    from pass_jax import data, tokenizer
    from pass_jax.config import ModelConfig
    from pass_jax.hf import save_hf
    from pass_jax.lookahead import init_lookahead, model_fingerprint, save_lookahead
    from pass_jax.model import init_params

    spec = f"files:{_corpus(tmp_path)}/*.py"
    texts = data.text_source(spec, "train")
    tok = tokenizer.train_bpe((texts[i] for i in range(len(texts))), 300, tmp_path / "tok")
    cfg = ModelConfig(
        vocab_size=len(tok),
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=64,
        bos_token_id=tok.bos_token_id,
        eos_token_ids=(tok.eos_token_id,),
        pad_token_id=tok.pad_token_id,
        unk_token_id=tok.unk_token_id,
    )
    params = init_params(cfg, jax.random.PRNGKey(0))
    save_hf(cfg, params, tmp_path / "model", tokenizer=tok)
    save_lookahead(
        str(tmp_path / "la"),
        init_lookahead(cfg, params, 2) + 0.01,
        cfg,
        model_fingerprint(cfg, params),
    )
    result = bench.main(
        [
            "--model",
            str(tmp_path / "model"),
            "--lookahead",
            str(tmp_path / "la"),
            "--data",
            spec,
            "--num-prompts",
            "2",
            "--prompt-tokens",
            "8",
            "--max-new-tokens",
            "12",
            "--temperatures",
            "0",
            "--repeats",
            "5",
            "--methods",
            "ar,tree-2x1,ctx-3,auto",
            "--auto-methods",
            "ar,tree-1,tree-2x1",
            "--call-tokens",
            "1,5,64",
            "--no-hf-baselines",
            "--no-plots",
            "--quiet",
            "--out-dir",
            str(tmp_path / "out"),
        ]
    )
    assert result["greedy_identical_to_ar"] == {
        "tree-2x1@L2": True,
        "ctx-3": True,  # context drafts alone: no look-ahead, one variant whatever the L
        "auto@L2": True,
    }
    rows = {r["method"]: r for r in result["cells"]}
    assert rows["tree-2x1"]["layout"] == "2x1, 15" and rows["ar"]["layout"] == "-, 1"
    assert rows["ctx-3"]["layout"] == "ctx3, 4" and rows["ctx-3"]["L"] is None
    assert len(rows["ctx-3"]["acceptance_per_position"]) == 3
    # (the warm-up's statistics carry over: the timed runs choose by them)
    assert set(rows["auto"]["auto_token_share"]) <= {"ar", "tree-1", "tree-2x1"}
    assert abs(sum(rows["auto"]["auto_token_share"].values()) - 1) < 1e-3
    choice = rows["auto"]["auto_choice"]  # what it judged by: every candidate's cost and tokens
    assert set(choice["ms_per_iteration"]) == {"ar", "tree-1", "tree-2x1"}
    assert min(choice["ms_per_iteration"].values()) > 0
    assert set(choice["ms_per_iteration_from"].split("+")) <= {"timed", "file", "process"}
    assert choice["expected_tokens_per_iteration"]["ar"] == 1.0
    assert choice["expected_tokens_per_iteration"]["tree-2x1"] > 1.0
    md = (tmp_path / "out" / "bench.md").read_text()
    assert set(choice["judged_tokens_per_s"]) == set(choice["ms_per_iteration"])
    assert "auto, greedy, batch 1, at the end of its last call: each candidate's speed" in md
    warm = rows["auto"]  # what its warm-up spent on the call costs and on compiling, reported
    assert warm["auto_warmup_timing_s"] >= 0 and warm["auto_warmup_compile_s"] >= 0
    assert (
        f"Its warm-up spent {warm['auto_warmup_timing_s']:.1f} s getting the candidates' costs "
        f"and {warm['auto_warmup_compile_s']:.1f} s compiling its segment programs." in md
    )
    assert f"ar 1.00x (1.00 tokens, {choice['ms_per_iteration']['ar']:.2f} ms)" in md
    assert (
        "| PaSS tree 2x1 | 2 | 2x1, 15 | greedy |" in md
        and f"| PaSS auto | 2 | {rows['auto']['layout']} | greedy |" in md
    )
    assert "| context drafts 3 (prompt lookup) | - | ctx3, 4 | greedy |" in md
    for m in ("tree-2x1", "ctx-3", "auto"):  # 5 repeats: each speedup has its interval
        low, high = rows[m]["speedup_ci95"]
        assert 0 < low <= high
        assert f"({rows[m]['speedup_vs_ar']:.2f}x, {low:.2f}-{high:.2f}) |" in md
    assert rows["ar"].get("speedup_ci95") is None
    assert "its 95% interval, from resampling the interleaved repeats in pairs" in md
    cost = result["call_ms_by_tokens"]  # the cost of a call against the tokens in it
    assert cost["context"] == 8 and list(cost["ms"]) == ["1"]  # 8 prompt tokens (no BOS here)
    assert list(cost["ms"]["1"]) == ["1", "5", "64"] and min(cost["ms"]["1"].values()) > 0
    assert "### Cost of one forward call vs the tokens in it (after 8 cached tokens" in md
    assert "| 1 | " + f"{cost['ms']['1']['1']:.2f} (1.00x) |" in md
