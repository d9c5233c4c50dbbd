"""The generate CLI end to end on a tiny model directory with a real tokenizer."""
import json
import subprocess
import sys

import jax
import pytest

import infer.generate as generate_cli
from pass_jax.config import ModelConfig
from pass_jax.hf import save_hf
from pass_jax.lookahead import init_lookahead, model_fingerprint, save_lookahead
from pass_jax.model import init_params
from pass_jax.tokenizer import train_bpe

TEXT = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 0\n    y: int = 0\n",
        "for i in range(10):\n    print(i * i)\n"] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = train_bpe(TEXT, 300, root / "tok")
    cfg = ModelConfig(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      ffn_dim=64, unk_token_id=tok.unk_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_ids=(tok.eos_token_id,), pad_token_id=tok.pad_token_id)
    params = init_params(cfg, jax.random.PRNGKey(0))
    save_hf(cfg, params, root / "model", tokenizer=tok)
    la = init_lookahead(cfg, params, 3) + 0.01
    save_lookahead(str(root / "la"), la, cfg, model_fingerprint(cfg, params))
    other = init_params(cfg.replace(d_model=16, n_heads=2, n_kv_heads=1), jax.random.PRNGKey(1))
    save_lookahead(str(root / "la_other"), init_lookahead(cfg.replace(d_model=16), other, 3),
                   cfg.replace(d_model=16), model_fingerprint(cfg.replace(d_model=16), other))
    return root


def _run(*args):
    """The real command line, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "infer.generate", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _main(*args) -> dict:
    """The same program in-process (shares compilations): its JSON result."""
    return generate_cli.main([str(a) for a in args])


def _error(*args) -> str:
    """The message the program exits with."""
    with pytest.raises(SystemExit) as e:
        _main(*args)
    return str(e.value.code)


def test_methods_agree_greedy_and_json_has_stats(model_dir, capsys):
    outs = {}
    for method, extra in [("ar", []), ("pass-fused", ["--lookahead", model_dir / "la"]),
                          ("unk", ["--num-lookahead", 2]),
                          ("tree-2x2", ["--lookahead", model_dir / "la"]),
                          ("auto", ["--lookahead", model_dir / "la", "--auto-methods",
                                    "ar,tree-1x1,tree-2"])]:
        _main("--model", model_dir / "model", "--method", method, "--prompt", "def add(",
              "--max-new-tokens", 10, "--json", *extra)
        outs[method] = json.loads(capsys.readouterr().out)
        stats = outs[method]["stats"]
        assert {"forward_calls", "tokens_per_call", "acceptance_per_position",
                "wall_time_s"} <= set(stats)
    assert outs["ar"]["token_ids"] == outs["pass-fused"]["token_ids"] == outs["unk"]["token_ids"]
    assert outs["tree-2x2"]["token_ids"] == outs["auto"]["token_ids"] == outs["ar"]["token_ids"]
    chosen = outs["auto"]["stats"]["auto"]
    assert set(chosen["ms_per_iteration"]) == {"ar", "tree-1x1", "tree-2"}
    assert chosen["chosen_segments"][0] == "tree-1x1"  # the widest candidate measures first
    assert outs["tree-2x2"]["stats"]["method"] == "tree-2x2"
    assert len(outs["tree-2x2"]["stats"]["acceptance_per_position_and_rank"]) == 2
    assert len(outs["pass-fused"]["stats"]["acceptance_per_position"]) == 3
    assert isinstance(outs["ar"]["text"], str)


def test_streams_text_without_json(model_dir):
    r = _run("--model", model_dir / "model", "--prompt", "for i in", "--max-new-tokens", 8,
             "--temperature", 0.8, "--top-k", 5, "--seed", 3)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("for i in") and "forward calls" in r.stderr


def test_mesh_flag_gives_the_same_tokens(model_dir):
    """8 simulated devices (tests/conftest.py)."""
    common = ("--model", model_dir / "model", "--prompt", "class", "--max-new-tokens", 8,
              "--method", "pass-fused", "--lookahead", model_dir / "la", "--json")
    plain = _main(*common)
    meshed = _main(*common, "--mesh", "data=2,fsdp=2,tensor=2")
    assert plain["token_ids"] == meshed["token_ids"]


@pytest.mark.parametrize("args,message", [
    (["--method", "pass"], "needs --lookahead"),
    (["--method", "unk"], "needs --num-lookahead"),
    (["--method", "pass", "--lookahead", "LA_OTHER"], "d_model"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--max-new-tokens", "5000", "--max-len", "64"], "cache too small"),
    (["--method", "tree-2x2x2x2", "--lookahead", "LA"], "needs at least 4 look-ahead tokens"),
])
def test_bad_flags_give_clear_errors(model_dir, args, message):
    args = [str(model_dir / "la_other") if a == "LA_OTHER" else
            str(model_dir / "la") if a == "LA" else a for a in args]
    assert message in _error("--model", model_dir / "model", "--prompt", "x", *args)


def test_not_a_model_dir(tmp_path):
    assert "config.json" in _error("--model", tmp_path, "--prompt", "x")
