"""Seconds per decoding-loop iteration of each method on the device at hand: what ``auto``
chooses layouts by.

``time_iterations`` times methods (a few loop iterations in one jitted ``fori_loop``, after a
warm-up), their programs compiled first, concurrently; ``iteration_seconds`` times one.
``iteration_costs`` times each method once per process and setting (model,
batch, cache size and dtype, layer form, L, device), and, given a ``cost_file``, keeps the table
on disk too: a later process on the same machine and software reads it instead of compiling and
timing every candidate again (on a 2-core CPU that is minutes for SmolLM2-135M, on an H200
about 10 s a candidate). A cache size with no table of its own borrows the nearest one within a
factor ``NEAR`` (2) instead of timing again. The file is JSON, one entry per setting, written
atomically; a corrupt or foreign file is reported and replaced, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from tqdm import tqdm

from . import compiled
from .cache import resolve_cache_dtype
from .config import ModelConfig, SamplerConfig
from .decode import (
    DecodeSpec,
    batch_bucket,
    bucket,
    decode_precision,
    generate_fixed,
    required_cache_len,
    round_cache_len,
    run_steps,
    switch_schedule,
)
from .layout import Schedule, make_schedule
from .model import is_stacked
from .user_cache import cache_root

FILE_FORMAT = "pass_jax iteration costs"
FILE_VERSION = 1
STEPS = 8  # timed loop iterations per repeat
REPEATS = 5  # timed rounds (``iteration_costs``)


def default_cost_file() -> Path:
    """Where the programs keep the table: ``iteration-costs.json`` under
    ``user_cache.cache_root()`` (``$PASS_JAX_CACHE``, else ``$XDG_CACHE_HOME/pass_jax``, else
    ``~/.cache/pass_jax``)."""
    return cache_root() / "iteration-costs.json"


def timing_slots(prompt_len: int, schedule: Schedule, steps: int = STEPS) -> int:
    """Cache slots ``time_iterations`` needs: the padded prompt, 8 generated tokens, the most
    ``steps`` iterations can commit and one iteration's scratch."""
    return required_cache_len(bucket(prompt_len), 8 + steps * schedule.step_emits, schedule)


def _schedule(method: str, la_LxD) -> Schedule:
    """``method``'s schedule with the L of ``la_LxD`` (none for autoregressive decoding)."""
    return make_schedule(method, 0 if method == "ar" else int(np.shape(la_LxD)[0]))


def _timing_args(cfg: ModelConfig, method: str, la_LxD, start, steps: int):
    """``run_steps``'s spec and arguments for timing ``method`` from ``start`` (the state a
    short autoregressive generation left): its schedule switched in, its rows active again."""
    la = None if method == "ar" else la_LxD
    schedule = _schedule(method, la_LxD)
    N = steps * schedule.step_emits  # at most the tokens the timed steps commit
    state = switch_schedule(start, schedule)
    spec = DecodeSpec(cfg, schedule, SamplerConfig(), N, decode_precision(cfg, SamplerConfig()))
    B = state.y_B.shape[0]
    live = state.replace(
        out_BxN=jnp.zeros((B, N), jnp.int32),
        n_B=jnp.zeros((B,), jnp.int32),
        done_B=jnp.zeros((B,), bool),
    )
    la = jnp.zeros((0, cfg.d_model), cfg.param_dtype) if la is None else la
    return spec, la, live


def _run(program, params, la_LxD, live) -> float:
    """Seconds of one run of a compiled ``run_steps``, on a fresh copy of ``live`` (donated:
    the cache is updated in place)."""
    state = jax.block_until_ready(jax.tree.map(jnp.copy, live))
    t0 = time.perf_counter()
    jax.block_until_ready(program(params, la_LxD, state))
    return time.perf_counter() - t0


def time_iterations(
    cfg: ModelConfig,
    params,
    la_LxD,
    slots: dict[str, int],
    prompts: list[list[int]],
    repeats: int,
    steps: int = STEPS,
    cache_dtype=None,
    threads: int | None = None,
    desc: str = "compiling and timing layouts",
) -> dict[str, float]:
    """Seconds per loop iteration of each method of ``slots`` (method -> cache slots) for the
    batch ``prompts`` (padded to its batch bucket; every row active): ``steps`` iterations in
    one jitted ``fori_loop`` (``decode.run_steps``), on the state a short greedy
    autoregressive generation (8 tokens) left, switched to the method's schedule and its rows
    made active again: the median of its timed runs. That generation is the same program for every
    method (compiled once per cache size), and the drafts it leaves empty: an iteration's cost
    does not depend on what it accepts (static shapes).

    Every method's program is compiled first, in ``threads`` threads
    (``compiled.compile_all``), and run once as a warm-up; then ``repeats`` rounds run every
    method once. ``auto`` compares the ratios of these costs, and timing one method's runs
    after another's would put a slow spell of the machine on one method alone (on this 2-core
    VM the ratios spread a third to a half less in rounds: ``results/smollm2/auto-sim``). A
    progress bar (``desc``) shows every step. ``cache_dtype``: as in ``generation.generate``."""
    starts, jobs = {}, {}
    for m, n in slots.items():
        need = timing_slots(max(map(len, prompts)), _schedule(m, la_LxD), steps)
        if n < need:
            raise ValueError(
                f"max_len {n} is too small to time {steps} {m} steps "
                f"after the prompt ({need} slots needed)"
            )
        if n not in starts:
            starts[n] = generate_fixed(
                cfg,
                params,
                prompts,
                max_new_tokens=8,
                eos_ids=(),
                method="ar",
                max_len=n,
                return_state=True,
                cache_dtype=cache_dtype,
            )[1]
        jobs[m] = _timing_args(cfg, m, la_LxD, starts[n], steps)
    # minutes for SmolLM2-135M on a 2-core CPU; compiling dominates on a GPU
    rounds = max(repeats, 1)
    with tqdm(
        total=(2 + rounds) * len(jobs),  # compiling, a warm-up and the rounds' runs
        desc=desc,
        unit="step",
        leave=False,
        dynamic_ncols=True,
        disable=not jobs,
    ) as bar:
        compiled.compile_all(
            [
                (run_steps, (spec,), {"n": steps}, (params, la, live))
                for spec, la, live in jobs.values()
            ],
            threads,
            done=lambda: bar.update(),
        )
        programs = {}
        for m, (spec, la, live) in jobs.items():  # warm-up
            bar.set_postfix_str(m)
            programs[m] = compiled.executable(run_steps, (spec,), {"n": steps}, params, la, live)[0]
            _run(programs[m], params, la, live)
            bar.update()
        runs = {m: [] for m in jobs}
        for _ in range(rounds):  # a slow spell of the machine weighs on every method alike
            for m, (_, la, live) in jobs.items():
                bar.set_postfix_str(m)
                runs[m].append(_run(programs[m], params, la, live))
                bar.update()
    return {m: float(np.median(r)) / steps for m, r in runs.items()}


def iteration_seconds(
    cfg: ModelConfig,
    params,
    method: str,
    la_LxD,
    prompts: list[list[int]],
    repeats: int,
    max_len: int | None = None,
    steps: int = STEPS,
    cache_dtype=None,
) -> float:
    """``time_iterations`` for one method; ``max_len``: cache slots (default: just enough,
    rounded up to 128)."""
    if max_len is None:
        need = timing_slots(max(map(len, prompts)), _schedule(method, la_LxD), steps)
        max_len = round_cache_len(need)
    return time_iterations(
        cfg, params, la_LxD, {method: max_len}, prompts, repeats, steps, cache_dtype
    )[method]


def setting(
    cfg: ModelConfig, params, L: int, batch: int, max_len: int, cache_dtype, repeats: int
) -> dict:
    """What an iteration's cost depends on besides the method, JSON-able: the model's
    architecture, batch bucket, cache slots and dtype, layer form, L, the timing's steps and
    repeats, the device, the machine and the JAX version."""
    device = jax.devices()[0]
    return {
        "model": hashlib.sha256(repr(cfg).encode()).hexdigest()[:16],
        "batch": batch_bucket(batch),
        "max_len": int(max_len),
        "cache_dtype": str(resolve_cache_dtype(cfg, cache_dtype)),
        "stacked": bool(is_stacked(params)),
        "L": int(L),
        "steps": STEPS,
        "repeats": int(repeats),
        "device": f"{device.platform}:{device.device_kind}",
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "jax": f"{jax.__version__} jaxlib {jaxlib.__version__}",
    }


def _entry_id(what: dict) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def read_table(path) -> dict:
    """The entries of the cost file at ``path`` ({} when it does not exist). A file that is not
    one (corrupt JSON, another format or version) is reported with a warning and ignored: the
    costs are timed again and the next write replaces it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(
            f"ignoring the iteration-cost file {path}: not readable JSON ({e})", stacklevel=3
        )
        return {}
    if (
        not isinstance(data, dict)
        or data.get("format") != FILE_FORMAT
        or data.get("version") != FILE_VERSION
        or not isinstance(data.get("entries"), dict)
    ):
        warnings.warn(
            f"ignoring the iteration-cost file {path}: not a {FILE_FORMAT!r} file of "
            f"version {FILE_VERSION}",
            stacklevel=3,
        )
        return {}
    return data["entries"]


def write_table(path, entries: dict) -> None:
    """Write the cost file atomically (a temporary file in the same folder, then renamed): an
    interrupted write leaves the old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(
        {"format": FILE_FORMAT, "version": FILE_VERSION, "entries": entries}, indent=1
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _seconds(entries: dict, what: dict) -> dict:
    """The file's seconds per method for the setting ``what`` ({} if it has none)."""
    entry = entries.get(_entry_id(what))
    if not isinstance(entry, dict) or entry.get("setting") != what:
        return {}
    seconds = entry.get("seconds")
    return seconds if isinstance(seconds, dict) else {}


# this process's timings: the setting without its cache size -> cache size -> method -> seconds
_COSTS: dict[tuple, dict[int, dict[str, float]]] = {}

# A table timed at a cache size within this factor of another stands in for it, since timing
# every candidate again takes minutes (on a 2-core CPU) and prompts of different lengths fall
# in different sizes. An iteration's cost grows with the cache size (attention reads every
# slot): little while the KV cache is small next to the weights (SmolLM2-135M at 256 slots:
# 12 MB against 540 MB), more for long contexts; ``auto``'s measured segments, kept per cache
# size, correct what is left.
NEAR = 2.0


def _family(what: dict) -> tuple:
    """The setting without its cache size: what a table at another size must share."""
    return tuple(sorted((k, v) for k, v in what.items() if k != "max_len"))


def _file_tables(entries: dict, what: dict) -> dict[int, dict[str, float]]:
    """The file's positive seconds per method for ``what``'s setting, per cache size (entries
    without a positive whole ``max_len`` are skipped)."""
    out = {}
    for entry in entries.values():
        other = entry.get("setting") if isinstance(entry, dict) else None
        if not isinstance(other, dict) or _family(other) != _family(what):
            continue
        size = other.get("max_len")
        if type(size) is not int or size < 1:
            continue
        seconds = _seconds(entries, other)  # ({} unless filed under its own id)
        good = {m: float(s) for m, s in seconds.items() if isinstance(s, (int, float)) and s > 0}
        if good:
            out[size] = good
    return out


def _nearest(tables: dict[int, dict[str, float]], size: int, methods, near: float):
    """The cache size nearest ``size`` by ratio (within a factor ``near``, not ``size``
    itself) whose table has every one of ``methods``; None if there is none."""
    sizes = [
        s
        for s, t in tables.items()
        if s != size and max(s, size) <= near * min(s, size) and all(m in t for m in methods)
    ]
    return min(sizes, key=lambda s: (max(s, size) / min(s, size), s), default=None)


def iteration_costs(
    cfg: ModelConfig,
    params,
    la_LxD,
    methods: Sequence[str],
    prompts: list[list[int]],
    max_len: int,
    repeats: int = REPEATS,
    cache_dtype=None,
    cost_file=None,
    retime: bool = False,
    near: float = NEAR,
) -> tuple[dict[str, float], str]:
    """Seconds per loop iteration of each method at this batch size, cache size and cache dtype
    on the default device (``time_iterations``), timed once per process; with ``cost_file``
    (a path) read from and added to that file too, so a later process skips the timing.

    The costs of a cache size come from the first of: this process's table for that size, the
    file's, and, for the methods neither has, the table of the nearest cache size within a
    factor ``near`` that has them all, this process's and then the file's (``NEAR``; 1: never);
    what is still missing is timed. ``retime``: do not read the file and borrow no other
    size's table; time each method again (once per process) and overwrite what the file held.
    Returns the costs and where they came from: ``process`` (timed earlier in this process),
    ``file``, ``timed``, ``process@SIZE`` or ``file@SIZE`` (another cache size's table), or
    several joined by ``+``."""
    L = int(np.shape(la_LxD)[0])
    what = setting(cfg, params, L, len(prompts), max_len, cache_dtype, repeats)
    size = int(max_len)
    tables = _COSTS.setdefault(_family(what), {})
    here = tables.setdefault(size, {})
    out = {m: here[m] for m in methods if m in here}
    sources = {"process"} if out else set()
    use_file = cost_file is not None and len(out) < len(methods) and not retime
    stored = _file_tables(read_table(cost_file), what) if use_file else {}
    for m in methods:
        if m not in out and m in stored.get(size, {}):
            out[m] = here[m] = stored[size][m]
            sources.add("file")
    missing = [m for m in methods if m not in out]
    for source, others in (("process", tables), ("file", stored)):
        other = _nearest(others, size, missing, near) if missing and not retime else None
        if other is not None:
            out.update({m: others[other][m] for m in missing})
            sources.add(f"{source}@{other}")
            missing = []
    if missing:
        slots = {
            m: max(
                max_len, round_cache_len(timing_slots(max(map(len, prompts)), _schedule(m, la_LxD)))
            )
            for m in missing
        }
        here.update(
            time_iterations(
                cfg,
                params,
                la_LxD,
                slots,
                prompts,
                repeats,
                cache_dtype=cache_dtype,
                desc="auto: compiling and timing its candidate layouts once",
            )
        )
        out.update({m: here[m] for m in missing})
        sources.add("timed")
    if cost_file is not None and missing:
        entries = read_table(cost_file)  # another process may have added entries meanwhile
        seconds = {**_seconds(entries, what), **here}
        entries[_entry_id(what)] = {"setting": what, "seconds": seconds}
        write_table(cost_file, entries)
    return {m: out[m] for m in methods}, "+".join(sorted(sources))
