"""Training programs and checkpoints: base pretraining writes a loadable model, look-ahead training
end to end (--json), exact resume after SIGTERM, Ctrl-C, interrupted saves, clear errors on bad
input found before any work.

Everything is tiny (configs/tiny.yaml, a random d=32 model, a dozen stdlib files as the corpus).
Most runs call the programs' ``main`` in-process (one import and one compilation cache for the
module); the CLI and the kill -9 checks run as subprocesses, since that is the real path.
"""

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import free_port
from safetensors.numpy import load_file, save_file

from pass_jax import checkpoint, data, hf, losses, program_config, tokenizer
from pass_jax.config import ModelConfig
from pass_jax.lookahead import HEADER_KEY, load_lookahead, lookahead_metadata, model_fingerprint
from pass_jax.model import forward, init_params
from pass_jax.program_config import run_cli
from train import base, lookahead

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """`files:` spec of a dozen stdlib modules copied to a temporary directory."""
    d = tmp_path_factory.mktemp("corpus")
    stdlib = sysconfig.get_paths()["stdlib"]
    sources = sorted(glob.glob(os.path.join(stdlib, "json", "*.py")))
    sources += sorted(glob.glob(os.path.join(stdlib, "email", "*.py")))[:10]
    for i, path in enumerate(sources):
        shutil.copy(path, d / f"m{i}.py")
    return f"files:{d}/*.py"


def _corpus_texts(corpus: str) -> list[str]:
    """The texts of the `corpus` fixture's files."""
    return [open(p).read() for p in sorted(glob.glob(corpus[len("files:") :]))]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, corpus):
    """A random tiny LLaMA-style model with a BPE tokenizer trained on the corpus, as a HF dir."""
    d = tmp_path_factory.mktemp("model")
    tok = tokenizer.train_bpe(_corpus_texts(corpus), 300, d / "tokenizer")
    cfg = ModelConfig(
        vocab_size=len(tok),
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=64,
        max_position=128,
        bos_token_id=tok.bos_token_id,
        eos_token_ids=(tok.eos_token_id,),
        pad_token_id=tok.pad_token_id,
        unk_token_id=tok.unk_token_id,
    )
    hf.save_hf(cfg, init_params(cfg, jax.random.PRNGKey(0)), d / "model", tokenizer=tok)
    return str(d / "model")


def la_args(model, data, out, *extra):
    return [
        "--model",
        model,
        "--data",
        data,
        "--num-lookahead",
        "2",
        "--out",
        str(out),
        "--config",
        TINY,
        "--steps",
        "8",
        *extra,
    ]


def signalling(make_step, signum, times=1, at_call=3):
    """``make_step`` (e.g. ``losses.make_la_train_step``) whose steps send ``signum`` to this
    process ``times`` times on call ``at_call``, before stepping."""

    def make(*args, **kwargs):
        step, calls = make_step(*args, **kwargs), []

        def step_then_signal(*a):
            calls.append(1)
            if len(calls) == at_call:
                for _ in range(times):
                    os.kill(os.getpid(), signum)
            return step(*a)

        return step_then_signal

    return make


@contextlib.contextmanager
def read_only(path):
    """Makes directory ``path`` (created if missing) unwritable for this process, root included
    (root writes through permission bits, not through the immutable attribute)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        undo = lambda: path.chmod(0o755)
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        pytest.skip("running as root where chattr +i is unavailable: no read-only directory")
    try:
        yield path
    finally:
        undo()


# ----------------------------------------------------------------------------- base model


def test_base_training_writes_loadable_model(tmp_path, corpus, capsys):
    out = tmp_path / "base"
    argv = ["--config", TINY, "--out", str(out), f"data={corpus}", "train.steps=6"]
    assert base.main(argv) == 0
    cfg, params = hf.load_hf(out)
    assert cfg.vocab_size == 300 and cfg.eos_token_ids == (2,)
    assert len(hf.load_tokenizer(out)) == cfg.vocab_size
    metrics = json.loads((out / base.METRICS_FILE).read_text())
    assert metrics["steps"] == 6 and metrics["tokens_per_s"] > 0
    assert np.isfinite(metrics["heldout_loss"]) and np.isfinite(metrics["unigram_loss"])
    assert [h["step"] for h in metrics["heldout_history"]] == [4, 6]
    assert sorted(os.listdir(tmp_path / "base.train" / "checkpoints")) == ["4", "6"]
    capsys.readouterr()
    assert base.main(argv) == 0  # cached: says so, does not retrain
    assert "already a complete model directory" in capsys.readouterr().err

    # model deleted, config changed: the checkpoints' settings are compared first (orbax would
    # fail to restore the other shapes), before any work
    shutil.rmtree(out)
    assert run_cli(lambda: base.main([*argv, "model.n_layers=1"])) == 2
    assert capsys.readouterr().err == (
        f"error: the checkpoints in {tmp_path}/base.train/checkpoints were made with other "
        f"settings (model.n_layers: 2 -> 1); delete {tmp_path}/base.train or use another --out\n"
    )


def test_failed_base_run_removes_the_work_dir_it_made(tmp_path, corpus, capsys):
    """A run failing before its first checkpoint (here: after the tokenizer is trained) leaves no
    ``<out>.train`` behind; one it did not make (an earlier run's) is kept."""
    argv = ["--config", TINY, "--out", str(tmp_path / "m"), f"data={corpus}", "train.seq_len=1000"]
    assert run_cli(lambda: base.main(argv)) == 2
    assert "larger than the model's maximum 128" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []
    (tmp_path / "m.train").mkdir()
    (tmp_path / "m.train" / "earlier").write_text("")
    assert run_cli(lambda: base.main(argv)) == 2
    assert (tmp_path / "m.train" / "earlier").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=5", "unknown config key 'train.stepz'; did you mean train.steps?"),
        ("trian.steps=5", "unknown config key 'trian'; did you mean train?"),
        ("train.steps=abc", "config key 'train.steps' must be int, got 'abc'"),
        ("train.steps=true", "config key 'train.steps' must be int, got True"),
        ("model.tie_embeddings=1", "config key 'model.tie_embeddings' must be bool, got 1"),
        ("model=4", "config key 'model' must be a section of keys, got 4"),
    ],
)
def test_base_config_typos_and_wrong_types_are_errors_before_any_work(
    tmp_path, corpus, capsys, override, message
):
    argv = ["--config", TINY, "--out", str(tmp_path / "m"), f"data={corpus}", override]
    assert run_cli(lambda: base.main(argv)) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert sorted(os.listdir(tmp_path)) == []


def test_base_overrides_may_come_before_and_after_options():
    args = base._parse(["data=stdlib", "--out", "m", "train.steps=5"])
    assert args.out == "m" and args.overrides == ["data=stdlib", "train.steps=5"]


@dataclasses.dataclass(frozen=True)
class _Train:
    lr: float
    steps: int = 1


@dataclasses.dataclass(frozen=True)
class _Config:
    train: _Train


def test_check_types_reads_floats_written_as_yaml_strings():
    conf = program_config.from_dict(_Config, {"train": {"lr": "1e-3", "steps": 5}})
    assert conf == _Config(train=_Train(lr=1e-3, steps=5))
    with pytest.raises(ValueError, match="'train.lr' must be float or int, got 'fast'"):
        program_config.from_dict(_Config, {"train": {"lr": "fast"}})


# ------------------------------------------------------------- look-ahead CLI, SIGTERM, resume


def test_lookahead_cli_json_then_sigterm_and_exact_resume(
    tiny_model, corpus, tmp_path, monkeypatch, capsys
):
    """The CLI (subprocess) trains N steps and prints its metrics as JSON; in-process, a run
    that gets SIGTERM after step 3 saves a checkpoint and exits 143, and re-running it resumes
    to N with LA params bit-identical to the straight run's."""
    straight = tmp_path / "straight"
    proc = subprocess.run(
        [sys.executable, "-m", "train.lookahead", *la_args(tiny_model, corpus, straight, "--json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    for key in ("acceptance", "acceptance_init"):
        assert set(metrics[key]) == {"greedy", "sampled"}
        assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in metrics[key].values())
    assert metrics["steps"] == 8 and metrics["tokens_per_s"] > 0
    s = metrics["settings"]  # throughput in model FLOPs; no known peak for a CPU, so no MFU
    cfg, _ = hf.load_hf(tiny_model)
    assert metrics["model_flops_per_step"] == losses.la_step_flops(
        cfg, s["batch_size"], s["seq_len"], s["groups"], 2
    )
    assert metrics["model_tflops_per_s_per_device"] == pytest.approx(
        metrics["model_flops_per_step"] * metrics["steps_per_s"] / jax.device_count() / 1e12
    )
    assert metrics["mfu"] is None
    assert np.isfinite(metrics["loss"])
    assert os.path.isdir(metrics["checkpoint"]) and metrics["checkpoint"].endswith("/8")
    cfg, params = hf.load_hf(tiny_model)
    assert load_lookahead(str(straight), cfg, params).shape == (2, cfg.d_model)
    unk = hf.load_tokenizer(tiny_model).unk_token_id
    assert json.loads((straight / "lookahead.json").read_text())["init_token_id"] == unk
    evals = [json.loads(line) for line in (straight / lookahead.EVAL_FILE).read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 4, 8]
    assert evals[0]["sampled"] == metrics["acceptance_init"]["sampled"]

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(
        losses, "make_la_train_step", signalling(losses.make_la_train_step, signal.SIGTERM)
    )
    capsys.readouterr()
    assert lookahead.main(la_args(tiny_model, corpus, resumed)) == 128 + signal.SIGTERM
    stopped = capsys.readouterr()
    assert "SIGTERM at step 3: checkpoint saved" in stopped.err and stopped.out == ""
    assert sorted(os.listdir(resumed / "checkpoints")) == ["3"]
    assert not (resumed / "lookahead.safetensors").exists()
    monkeypatch.undo()

    capsys.readouterr()
    assert lookahead.main(la_args(tiny_model, corpus, resumed)) == 0
    assert "resuming from step 3" in capsys.readouterr().err
    straight_LxD = load_file(straight / "lookahead.safetensors")["lookahead"]
    resumed_LxD = load_file(resumed / "lookahead.safetensors")["lookahead"]
    assert straight_LxD.tobytes() == resumed_LxD.tobytes()
    evals_resumed = (resumed / lookahead.EVAL_FILE).read_text()
    assert evals_resumed == (straight / lookahead.EVAL_FILE).read_text()

    capsys.readouterr()  # a finished run re-run with the same settings only reports
    assert lookahead.main(la_args(tiny_model, corpus, resumed, "--json")) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 8


@pytest.fixture
def python_sigint():
    """SIGINT handled by Python's own handler during the test (as in a terminal), even when the
    suite runs where SIGINT is ignored (started in the background by a non-interactive shell,
    ``nohup``): the handler Ctrl-C handling saves and restores."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


@pytest.mark.parametrize("times", [1, 2])
def test_ctrl_c_saves_a_checkpoint_and_exits_130_a_second_aborts(
    tiny_model, corpus, tmp_path, monkeypatch, capsys, times, python_sigint
):
    """Ctrl-C (SIGINT) at step 3 saves that step like SIGTERM and exits 130 with a one-line
    message; a second Ctrl-C before the save aborts at once (no checkpoint), also exit 130."""
    monkeypatch.setattr(
        losses, "make_la_train_step", signalling(losses.make_la_train_step, signal.SIGINT, times)
    )
    out = tmp_path / "out"
    try:
        code = run_cli(lambda: lookahead.main(la_args(tiny_model, corpus, out)))
    except KeyboardInterrupt:  # SIGINT left to Python: nothing saved
        code = "KeyboardInterrupt"
    assert code == 130
    err = capsys.readouterr().err
    if times == 1:
        assert (
            "lookahead: SIGINT at step 3: checkpoint saved; re-run the same command to resume\n"
        ) in err
        assert sorted(os.listdir(out / "checkpoints")) == ["3"]
    else:
        assert err.endswith("\ninterrupted\n")
        assert os.listdir(out / "checkpoints") == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_with_several_processes_signals_go_to_jax_preemption_service(monkeypatch, python_sigint):
    """With several processes, ``Preemption`` leaves SIGTERM to JAX's handler (it tells every
    process), turns Ctrl-C into a SIGTERM to itself, and stops only at the shared sync point
    (none here: no JAX preemption service in one process), not on its own flag."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    seen = []
    jax_handler = lambda signum, frame: seen.append(signum)  # stands for JAX's C++ handler
    previous = signal.signal(signal.SIGTERM, jax_handler)
    try:
        with checkpoint.Preemption((signal.SIGTERM, signal.SIGINT)) as preemption:
            assert signal.getsignal(signal.SIGTERM) is jax_handler
            os.kill(os.getpid(), signal.SIGINT)
            assert seen == [signal.SIGTERM] and preemption.signum == signal.SIGINT
            assert not preemption.should_stop(1)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_resume_with_other_settings_is_refused_before_restoring(
    tiny_model, corpus, tmp_path, capsys
):
    """Another -L into the same --out: the saved settings are compared before orbax is asked to
    restore a state of other shapes."""
    out = tmp_path / "out"
    assert lookahead.main(la_args(tiny_model, corpus, out, "--steps", "2")) == 0
    argv = la_args(tiny_model, corpus, out, "--steps", "2")
    argv[argv.index("--num-lookahead") + 1] = "3"
    capsys.readouterr()
    assert run_cli(lambda: lookahead.main(argv)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: the checkpoints in {out}/checkpoints were made with other settings "
        "(num_lookahead: 2 -> 3); use another --out"
    )


def test_settings_a_checkpoint_predates_count_as_their_defaults(
    tiny_model, corpus, tmp_path, capsys
):
    """A checkpoint and an export made before --targets and --eval-new-tokens existed (their
    saved settings lack both) agree with a run at those settings' defaults: the same command
    finds the export done, and without it resumes from the checkpoint; a non-default value is
    refused, naming the default the checkpoint ran with."""
    out = tmp_path / "out"
    argv = la_args(tiny_model, corpus, out, "--steps", "2")
    assert lookahead.main(argv) == 0
    meta_file = out / "checkpoints" / "2" / "meta" / "metadata"
    with open(meta_file) as f:
        meta = json.load(f)
    for key in ("targets", "eval_new_tokens"):
        del meta["resume_key"][key]
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    export = out / "lookahead.safetensors"
    header = lookahead_metadata(str(out))
    for key in ("targets", "eval_new_tokens"):
        del header["metrics"]["settings"][key]
    save_file(load_file(export), export, metadata={HEADER_KEY: json.dumps(header)})
    capsys.readouterr()

    assert lookahead.main(argv) == 0
    assert "already holds this run's export" in capsys.readouterr().err
    export.unlink()
    assert lookahead.main(argv) == 0
    assert f"resuming from step 2 ({out}/checkpoints)" in capsys.readouterr().err
    assert lookahead_metadata(str(out))["metrics"]["settings"]["targets"] == "all"

    assert run_cli(lambda: lookahead.main([*argv, "--targets", "greedy"])) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: the checkpoints in {out}/checkpoints were made with other settings "
        "(targets: 'all' -> 'greedy'); use another --out"
    )


def test_lookahead_training_on_a_mesh_matches_one_device(tiny_model, corpus, tmp_path):
    """--mesh (8 simulated devices): base params sharded, batch split, LA replicated; the
    trained LA embeddings equal the single-device run's (float32, tolerance 1e-5), with
    per-layer rematerialisation too (--remat layer); the held-out estimate on the model's own
    greedy continuations (--eval-new-tokens, generated on the mesh) is the same."""
    own_text = ("--eval-new-tokens", "12", "--temperature", "0")
    for name, extra in (
        ("one", own_text),
        ("mesh", ("--mesh", "data=2,fsdp=2,tensor=2", *own_text)),
        ("remat", ("--mesh", "data=2,fsdp=2,tensor=2", "--remat", "layer")),
    ):
        args = la_args(tiny_model, corpus, tmp_path / name, *extra)
        args[args.index("--steps") + 1] = "4"
        assert lookahead.main(args) == 0
    one = load_file(tmp_path / "one" / "lookahead.safetensors")["lookahead"]
    meshed = load_file(tmp_path / "mesh" / "lookahead.safetensors")["lookahead"]
    np.testing.assert_allclose(meshed, one, rtol=1e-5, atol=1e-5)
    evals = [(tmp_path / n / lookahead.EVAL_FILE).read_text().splitlines() for n in ("one", "mesh")]
    for record_one, record_mesh in zip(*evals, strict=True):
        record_one, record_mesh = json.loads(record_one), json.loads(record_mesh)
        assert record_one["greedy"] == record_mesh["greedy"]
        assert record_one["ce"] == pytest.approx(record_mesh["ce"], abs=1e-4)
    remat = load_file(tmp_path / "remat" / "lookahead.safetensors")["lookahead"]
    np.testing.assert_allclose(remat, one, rtol=1e-5, atol=1e-5)
    assert not np.allclose(one[0], one[1])  # trained: the rows left their common unk init


def test_estimate_on_the_models_own_continuations(tiny_model, corpus, tmp_path):
    """--eval-new-tokens N: each held-out row keeps its first X - N tokens, the rest is the
    model's greedy continuation (at temperature 0 every generated token is the argmax after
    its prefix), LA groups sit only where the next token and both targets are generated, and
    the run (trained with --targets greedy) records its estimate from there."""
    X, N, L = 32, 12, 2
    args = la_args(tiny_model, corpus, tmp_path / "out", "--eval-new-tokens", str(N))
    args += ["--temperature", "0", "--targets", "greedy", "--json"]
    parsed = lookahead._parse(args)
    config = lookahead.load_config(parsed)
    model = lookahead.load_model(config, parsed)
    _, eval_set = lookahead._texts(config, data.parse_spec(corpus), model)
    heldout = data.text_source(data.parse_spec(corpus), "heldout", None)
    rows = data.token_batches(
        heldout, model.tok, X, 4, 0, shuffle=False, shard_index=0, shard_count=1
    )
    assert len(eval_set) == 2
    for (tokens_BxX, ins_BxM), batch in zip(eval_set, rows):
        tokens_BxX, ins_BxM = np.asarray(tokens_BxX), np.asarray(ins_BxM)
        np.testing.assert_array_equal(tokens_BxX[:, : X - N], batch["tokens"][:, : X - N])
        assert not np.array_equal(tokens_BxX[:, X - N :], batch["tokens"][:, X - N :])
        logits_BxXxV = model_logits(model, tokens_BxX)
        np.testing.assert_array_equal(
            tokens_BxX[:, X - N :], np.argmax(logits_BxXxV[:, X - N - 1 : -1], -1)
        )
        assert ins_BxM.shape == (4, 4)  # eval_groups 4 of the N - L = 10 possible points
        assert ins_BxM.min() >= X - N - 1 and ins_BxM.max() <= X - 2 - L
    assert lookahead.main(args) == 0
    evals = [
        json.loads(x) for x in (tmp_path / "out" / lookahead.EVAL_FILE).read_text().splitlines()
    ]
    est = lookahead.heldout_estimate(
        model.cfg, model.params, load_lookahead(str(tmp_path / "out"), model.cfg), eval_set, 0.0, 10
    )
    assert evals[-1]["greedy"] == est["greedy"] and evals[-1]["sampled"] == est["greedy"]
    settings = lookahead_metadata(str(tmp_path / "out"))["metrics"]["settings"]
    assert settings["targets"] == "greedy" and settings["eval_new_tokens"] == N


def model_logits(model, tokens_BxX):
    """The frozen model's logits for ``tokens_BxX`` (no look-ahead tokens)."""
    B, X = tokens_BxX.shape
    positions_BxX = jnp.broadcast_to(jnp.arange(X, dtype=jnp.int32), (B, X))
    logits_BxXxV, _ = forward(model.cfg, model.params, jnp.asarray(tokens_BxX), positions_BxX)
    return np.asarray(logits_BxXxV)


# ----------------------------------------------------------------------------- two processes

# The look-ahead program run by each of two processes: every JSON argument is one run's argv
# and whether its second step sends this process SIGTERM (as a preempted VM gets it; the steps
# after it slowed down so that JAX's preemption service, which polls for the signal every second,
# has time to agree a step with the other process). A 2-row shuffle window, so the processes'
# data positions part after one step (with the default 256-row window, after 128).
TWO_PROCESS_RUNS = textwrap.dedent("""
    import functools, json, os, signal, sys, time
    from pass_jax import data, losses
    from pass_jax.program_config import run_cli
    from train import lookahead

    data.token_batches = functools.partial(data.token_batches, shuffle_window=2)
    make_step = losses.make_la_train_step

    def signalling(*args, **kwargs):
        step, calls = make_step(*args, **kwargs), []

        def step_then_signal(*a):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            if len(calls) >= 2:
                time.sleep(0.5)
            return step(*a)

        return step_then_signal

    for arg in sys.argv[1:]:
        argv, sigterm = json.loads(arg)
        losses.make_la_train_step = signalling if sigterm else make_step
        code = run_cli(lambda: lookahead.main(argv))
        if code:
            sys.exit(code)
""")


def _two_processes(*runs) -> list[tuple[int, str]]:
    """Runs ``TWO_PROCESS_RUNS`` in processes 0 and 1 (CPU devices, gloo collectives, this
    checkout's code); ``runs``: ``(argv_of, sigterm)`` pairs, ``argv_of(i, coordinator)``
    the program's arguments in process i. Their exit codes and stderr."""
    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        pytest.skip("this jaxlib has no CPU collectives option (gloo)")
    coordinator = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        # 2 devices a process; quicker, less optimised compilation (same in every run)
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "PYTHONPATH": REPO,
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                TWO_PROCESS_RUNS,
                *(json.dumps([argv_of(i, coordinator), sigterm]) for argv_of, sigterm in runs),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, err) for p, err in zip(procs, errs)]


def test_two_processes_stop_together_on_sigterm_and_resume_exactly(tiny_model, corpus, tmp_path):
    """Two processes on localhost, mesh fsdp=2 x tensor=2 spanning both (the embedding split
    over them), on a corpus of short documents: a straight run; a run both get SIGTERM during,
    which both stop after the same step, each saving its own data position (in its own shard);
    fresh processes resume it and end bit-identical to the straight run (LA embeddings, losses,
    evaluations). The export records the fingerprint one process computes; only process 0
    writes it and the evaluation log."""
    lines = [line for text in _corpus_texts(corpus) for line in text.splitlines() if line.strip()]
    docs = tmp_path / "docs"
    docs.mkdir()
    for k in range(64):  # 2 to 8 lines each: a process's packing state moves every step
        (docs / f"d{k}.py").write_text("\n".join(lines[9 * k : 9 * k + 2 + k % 7]))
    spec = f"files:{docs}/*.py"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def program(out):
        return lambda i, coordinator: la_args(
            tiny_model,
            spec,
            out,
            *("--mesh", "data=1,fsdp=2,tensor=2", "--coordinator", coordinator),
            *("--num-processes", "2", "--process-id", str(i)),
        )

    runs = _two_processes((program(straight), False), (program(resumed), True))
    assert [code for code, _ in runs] == [128 + signal.SIGTERM] * 2, runs[0][1][-3000:]
    stops = {re.search(r"SIGTERM at step (\d+): checkpoint saved", err)[1] for _, err in runs}
    assert len(stops) == 1, stops  # the same step on both
    stop = int(stops.pop())
    saved = sorted(int(name) for name in os.listdir(resumed / "checkpoints") if name.isdigit())
    assert 2 <= stop < 8 and saved[-1] == stop, saved
    # each process's position: `stop` batches of 2 rows (tiny.yaml: batch 4, seq_len 32, seed 0)
    # into its own shard of the documents
    data_dir = resumed / "checkpoints" / str(stop) / checkpoint.DATA
    texts, tok = data.text_source(spec, "train"), hf.load_tokenizer(tiny_model)
    positions = []
    for i in range(2):
        it = data.token_batches(
            texts, tok, 32, 2, 0, shard_index=i, shard_count=2, shuffle_window=2
        )
        for _ in range(stop):
            next(it)
        positions.append(data.iterator_state(it))
        assert (data_dir / f"process_{i}-of-2.json").read_text() == positions[i]
    assert positions[0] != positions[1]

    runs = _two_processes((program(resumed), False))
    for code, err in runs:
        assert code == 0, err[-3000:]
        assert f"resuming from step {stop}" in err
    straight_LxD, resumed_LxD = (
        load_file(out / "lookahead.safetensors")["lookahead"] for out in (straight, resumed)
    )
    assert straight_LxD.tobytes() == resumed_LxD.tobytes()
    evals = (straight / lookahead.EVAL_FILE).read_text()
    assert [json.loads(line)["step"] for line in evals.splitlines()] == [0, 4, 8]
    assert (resumed / lookahead.EVAL_FILE).read_text() == evals
    exports = [json.loads((out / "lookahead.json").read_text()) for out in (straight, resumed)]
    for key in ("loss", "train_ce", "heldout_ce", "acceptance"):
        assert exports[0]["metrics"][key] == exports[1]["metrics"][key], key
    fingerprint = model_fingerprint(*hf.load_hf(tiny_model))["embedding_sha256"]
    assert exports[0]["model"]["embedding_sha256"] == fingerprint


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_keeps_last_n(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(0), "rng": jax.random.PRNGKey(1)}
    mngr = checkpoint.manager(str(tmp_path), save_every=2, keep=2)
    for step in range(1, 8):
        state = {**state, "w": state["w"] + 1, "step": jnp.int32(step)}
        checkpoint.save(
            mngr, step, state, data_state=f'{{"pos": {step}}}', meta={"step": step}, force=step == 7
        )
    assert mngr.all_steps() == [6, 7]
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = checkpoint.abstract_like(
        jax.eval_shape(lambda: state), jax.tree.map(lambda _: sharding, state)
    )
    restored = checkpoint.restore(mngr, target, step=6)
    assert restored.step == 6 and restored.data_state == '{"pos": 6}'
    assert [p.name for p in (tmp_path / "6" / checkpoint.DATA).glob("process_*")] == [
        "process_0-of-1.json"
    ]
    assert restored.meta == {"step": 6}
    np.testing.assert_array_equal(restored.state["w"], np.arange(6.0).reshape(2, 3) + 6)
    assert restored.state["w"].sharding == sharding
    assert checkpoint.restore(mngr, state).step == 7
    mngr.close()


def test_a_checkpoint_resumes_only_with_the_process_count_that_saved_it(tmp_path):
    """Each process saves its own data position; a checkpoint saved by two processes (made
    here by renaming a one-process save's file) is refused by one, naming both counts."""
    mngr = checkpoint.manager(str(tmp_path), save_every=1)
    checkpoint.save(mngr, 1, {"w": jnp.zeros(3)}, data_state='{"pos": 1}')
    data_dir = tmp_path / "1" / checkpoint.DATA
    os.rename(data_dir / "process_0-of-1.json", data_dir / "process_0-of-2.json")
    (data_dir / "process_1-of-2.json").write_text('{"pos": 1}')
    with pytest.raises(ValueError) as e:
        checkpoint.restore(mngr, {"w": jnp.zeros(3)})
    assert str(e.value) == (
        f"checkpoint {tmp_path}/1 was saved by 2 processes, this run has 1: each process's "
        "place in its shard of the data resumes only with the process count that saved it"
    )
    mngr.close()


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from pass_jax import checkpoint

    mngr = checkpoint.manager(sys.argv[1], save_every=1)
    for step in (1, 2):
        checkpoint.save(mngr, step, {"w": jnp.full((64, 64), float(step))}, data_state="{}")
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def killed_before_rename(self):
        if self.get_final().name.isdigit():  # the step directory: every item is written
            os.kill(os.getpid(), signal.SIGKILL)
        return await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = killed_before_rename
    checkpoint.save(mngr, 3, {"w": jnp.full((64, 64), 3.0)}, data_state="{}")
    print("not killed")
""")


def test_killed_save_keeps_last_good_checkpoint(tmp_path):
    """kill -9 at the worst moment of a save (all written, not yet renamed into place)."""
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith("3.")]
    assert leftovers, os.listdir(tmp_path)  # the unfinalized temporary directory
    (tmp_path / "9.orbax-checkpoint-tmp-12345").mkdir()  # and a hand-made one
    mngr = checkpoint.manager(str(tmp_path), save_every=1)
    assert checkpoint.latest_step(mngr) == 2
    restored = checkpoint.restore(mngr, {"w": jnp.zeros((64, 64))})
    assert restored.step == 2 and float(restored.state["w"][0, 0]) == 2.0
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # temporary directories cleaned up
    mngr.close()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--data": "bogus:spec"}, "unknown data spec"),
        ({"--data": "files:{tmp}/nothing/*.txt"}, "empty corpus"),
        ({"--seq-len": "1000"}, "larger than the model's maximum"),
        ({"--model": "{tmp}"}, "no config.json"),
        ({"--num-lookahead": "0"}, "--num-lookahead must be >= 1"),
        ({"--eval-new-tokens": "2"}, "--eval-new-tokens 2 leaves no insertion point for L=2"),
        ({"--eval-new-tokens": "32"}, "less than --seq-len 32"),
    ],
)
def test_lookahead_bad_input_is_a_clear_error(
    tiny_model, corpus, tmp_path, capsys, change, message
):
    argv = la_args(tiny_model, corpus, tmp_path / "out")
    for flag, value in change.items():
        if flag not in argv:
            argv += [flag, ""]
        argv[argv.index(flag) + 1] = value.format(tmp=tmp_path)
    assert run_cli(lambda: lookahead.main(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_a_batch_the_processes_cannot_share_equally_is_a_clear_error(
    tiny_model, corpus, tmp_path, capsys, monkeypatch
):
    """--batch-size is the rows of a step in all; two processes (pretended) cannot split 5."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    argv = la_args(tiny_model, corpus, tmp_path / "out", "--batch-size", "5")
    assert run_cli(lambda: lookahead.main(argv)) == 2
    assert capsys.readouterr().err == (
        "error: --batch-size 5 (rows per step, in all) is not divisible by the 2 processes, "
        "which read equal shares of it\n"
    )


def test_base_bad_data_spec_is_a_clear_error(tmp_path, capsys):
    argv = ["--config", TINY, "--out", str(tmp_path / "m"), "data=nope"]
    assert run_cli(lambda: base.main(argv)) == 2
    assert "unknown data spec 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "program, case, message",
    [
        ("lookahead", "out is a file", "--out {out} is a file, not a directory"),
        ("lookahead", "read-only parent", "--out {out}: {parent} is not writable"),
        (
            "lookahead",
            "read-only checkpoints",
            "the checkpoint directory {out}/checkpoints is not writable",
        ),
        (
            "lookahead",
            "--seed 9223372036854775808",
            "--seed must be an integer from 0 to 2147483647, got 9223372036854775808",
        ),
        ("lookahead", "--seed -1", "--seed must be an integer from 0 to 2147483647, got -1"),
        ("base", "out is a file", "the output directory {out} is a file, not a directory"),
        ("base", "read-only parent", "the output directory {out}: {parent} is not writable"),
        ("base", "train.seed=-1", "train.seed must be an integer from 0 to 2147483647, got -1"),
    ],
)
def test_unwritable_outputs_and_bad_seeds_are_errors_before_any_work(
    corpus, tmp_path, capsys, program, case, message
):
    """Found up front, not after training at the first save. The look-ahead runs name a model
    that does not exist (the check must come before loading it); base prints nothing else."""
    parent = tmp_path / "parent"
    parent.mkdir()
    out, extra = parent / "out", []
    with contextlib.ExitStack() as stack:
        if case == "out is a file":
            out.write_text("")
        elif case == "read-only parent":
            stack.enter_context(read_only(parent))
        elif case == "read-only checkpoints":
            stack.enter_context(read_only(out / "checkpoints"))
        else:
            extra = case.split()  # '--seed N' or 'train.seed=N'
        if program == "lookahead":
            argv = la_args(str(tmp_path / "no-model"), corpus, out, *extra)
            code = run_cli(lambda: lookahead.main(argv))
        else:
            argv = ["--config", TINY, "--out", str(out), f"data={corpus}", *extra]
            code = run_cli(lambda: base.main(argv))
    assert code == 2
    assert capsys.readouterr().err == f"error: {message.format(out=out, parent=parent)}\n"
