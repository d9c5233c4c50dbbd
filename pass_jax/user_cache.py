"""Where the programs keep what they reuse between runs, under one root: GGUF files converted
to Hugging Face directories (``gguf/``), ``--method auto``'s timed call costs
(``iteration-costs.json``) and compiled XLA programs (``xla/``, JAX's persistent compilation
cache)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

CACHE_ENV = "PASS_JAX_CACHE"
COMPILE_CACHE_ENV = "PASS_JAX_COMPILE_CACHE"  # the default of --compile-cache: DIR or none
JAX_COMPILE_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"  # JAX's own variable, honoured next


def cache_root() -> Path:
    """``$PASS_JAX_CACHE``, else ``$XDG_CACHE_HOME/pass_jax`` (default ``~/.cache/pass_jax``)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "pass_jax"


def compile_cache_dir(setting: str | None) -> str | None:
    """The directory ``--compile-cache`` names: ``setting`` itself, or None for ``none``. The
    default (None): ``$PASS_JAX_COMPILE_CACHE`` (a directory or ``none``), else
    ``$JAX_COMPILATION_CACHE_DIR``, else ``cache_root()/xla``."""
    setting = setting or os.environ.get(COMPILE_CACHE_ENV)
    if setting:
        return None if setting.lower() == "none" else os.path.abspath(setting)
    return os.environ.get(JAX_COMPILE_CACHE_ENV) or str(cache_root() / "xla")


def use_compile_cache(setting: str | None) -> str | None:
    """Point JAX's persistent compilation cache at ``compile_cache_dir(setting)`` (or turn it off
    for ``none``) for the rest of the process, and return the directory. A later process then
    loads the programs it compiled instead of compiling them again; JAX keeps only programs that
    took at least ``jax_persistent_cache_min_compile_time_secs`` (1 s) to compile. Like every
    compilation cache, the directory is trusted: it must not be writable by anyone else. A
    directory that cannot be created or written is a ``ValueError`` when asked for, and a
    warning (nothing kept) when it is the default."""
    requested = setting or os.environ.get(COMPILE_CACHE_ENV)  # a flag's value, or ours
    path = compile_cache_dir(requested)
    if path is not None:
        try:
            os.makedirs(path, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "not writable")
        except OSError as e:
            if requested:  # asked for: bad input
                raise ValueError(f"--compile-cache {path}: {e.strerror or e}") from None
            warnings.warn(
                f"compiled programs are not kept: {path}: {e.strerror or e}", stacklevel=2
            )
            path = None
    jax.config.update("jax_enable_compilation_cache", path is not None)
    compilation_cache.set_cache_dir(path)
    compilation_cache.reset_cache()  # JAX reads the setting once, at its first compile
    return path


__all__ = ["CACHE_ENV", "COMPILE_CACHE_ENV", "cache_root", "compile_cache_dir", "use_compile_cache"]
