"""Where the programs keep what they reuse between runs (``pass_jax.user_cache``)."""

from pathlib import Path

import pytest

import infer.generate as generate_cli
from pass_jax import iteration_cost, user_cache


def test_one_root_for_every_cache(monkeypatch, tmp_path):
    for name in (
        "PASS_JAX_CACHE",
        "XDG_CACHE_HOME",
        "JAX_COMPILATION_CACHE_DIR",
        "PASS_JAX_COMPILE_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache.cache_root() == Path(tmp_path / "home" / ".cache" / "pass_jax")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert user_cache.cache_root() == tmp_path / "x" / "pass_jax"
    monkeypatch.setenv("PASS_JAX_CACHE", str(tmp_path / "c"))
    root = tmp_path / "c"
    assert user_cache.cache_root() == root
    # the compiled programs, auto's call costs and converted GGUF files share it
    assert user_cache.compile_cache_dir(None) == str(root / "xla")
    assert iteration_cost.default_cost_file() == root / "iteration-costs.json"
    assert generate_cli.auto_cost_file(None) == root / "iteration-costs.json"


def test_the_compile_cache_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("PASS_JAX_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("PASS_JAX_COMPILE_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert user_cache.compile_cache_dir("none") is None
    assert user_cache.compile_cache_dir("None") is None
    assert user_cache.compile_cache_dir("rel/dir") == str(tmp_path / "rel" / "dir")
    assert user_cache.compile_cache_dir(None) == str(tmp_path / "c" / "xla")
    # JAX's own variable is honoured when no directory is given
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert user_cache.compile_cache_dir(None) == str(tmp_path / "jax")
    assert user_cache.compile_cache_dir("none") is None
    # ours comes before it: a directory, or none; a flag's value before both
    monkeypatch.setenv("PASS_JAX_COMPILE_CACHE", "ours")
    assert user_cache.compile_cache_dir(None) == str(tmp_path / "ours")
    assert user_cache.compile_cache_dir("given") == str(tmp_path / "given")
    monkeypatch.setenv("PASS_JAX_COMPILE_CACHE", "none")
    assert user_cache.compile_cache_dir(None) is None
    assert user_cache.compile_cache_dir("given") == str(tmp_path / "given")


def test_a_directory_that_cannot_be_written(monkeypatch, tmp_path, restore_compile_cache):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.delenv("PASS_JAX_COMPILE_CACHE", raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    with pytest.raises(ValueError, match="--compile-cache .*file/xla"):
        user_cache.use_compile_cache(str(blocker / "xla"))
    monkeypatch.setenv("PASS_JAX_CACHE", str(blocker))  # the default: run on, keep nothing
    with pytest.warns(UserWarning, match="compiled programs are not kept"):
        assert user_cache.use_compile_cache(None) is None
    assert user_cache.use_compile_cache(str(tmp_path / "ok")) == str(tmp_path / "ok")
    assert (tmp_path / "ok").is_dir()
