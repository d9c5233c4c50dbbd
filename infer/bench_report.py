"""What ``infer.bench`` writes: the machine it ran on (``machine_info``, ``machine_line``), the
Markdown report (``markdown``: tables shaped like the paper's Table 1, the L ablation, details,
notes, call costs), the plots (``plots``), and the results files (``write_outputs``; the JSON
written atomically, ``read_results`` reads it back for ``--from-json``, ``check_outputs``
checks the outputs can be written before any model call). matplotlib is imported only to plot.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from importlib.metadata import version

import jax

from infer.bench_methods import HF_METHODS, color, is_hf, label, lookahead_free
from infer.config import BenchConfig
from pass_jax.auto import MARGIN
from pass_jax.compiled import usable_cores

# --------------------------------------------------------------------------- machine


def _version(name: str) -> str | None:
    try:
        return version(name)
    except Exception:
        return None


def machine_info() -> dict:
    """CPU model, core counts, load average, JAX devices and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    devices = jax.devices()
    libs = {n: _version(n) for n in ("jax", "jaxlib", "flax", "numpy", "transformers", "torch")}
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "jax_backend": jax.default_backend(),
        "jax_device_kind": devices[0].device_kind,
        "jax_devices": len(devices),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {k: v for k, v in libs.items() if v},
    }


def machine_line(info: dict) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"JAX {info['jax_backend']} device '{info['jax_device_kind']}' x{info['jax_devices']}"
        f"; load average {info['load_average'][0]} at start"
        + (f", {info['load_average_end'][0]} at end" if "load_average_end" in info else "")
        + f"; Python {info['python']}; {libs}"
    )


# --------------------------------------------------------------------------- Markdown


def _row(rows, T, B, method, L=None):
    for r in rows:
        if (
            r["temperature"] == T
            and r["batch_size"] == B
            and r["method"] == method
            and (L is None or r["L"] == L)
            and "error" not in r
        ):
            return r
    return None


def _tname(T):
    return "greedy" if T == 0 else f"T={T:g}"


def _time_cell(r: dict | None) -> str:
    if r is None:
        return "-"
    ci = r.get("speedup_ci95")  # (absent in older results, and for ar itself)
    spread = f", {ci[0]:.2f}-{ci[1]:.2f}" if ci else ""
    return f"{r['s_per_call']:.3f} ({r['speedup_vs_ar']:.2f}x{spread})"


def markdown(result: dict) -> str:
    """The report of a results JSON: what ran where, seconds per call and speedup per batch size
    (the paper's Table 1), the L ablation, details per cell, notes, the cost of a call."""
    return (
        "\n".join(
            _header(result)
            + _speedup_tables(result)
            + _ablation_table(result)
            + _details_table(result)
            + _notes(result)
            + _call_cost_table(result)
        )
        + "\n"
    )


def _cache_note(settings: dict, dtype: str) -> str:
    """``", KV cache bfloat16"`` when the cache's dtype (``--cache-dtype``) is not the compute
    dtype, else nothing."""
    cache = settings.get("cache_dtype", "auto")  # results of older versions: the compute dtype
    return "" if cache in ("auto", dtype) else f", KV cache {cache}"


def _header(result: dict) -> list[str]:
    """Title, machine, whether the run is complete, model, prompts and protocol."""
    s = result["settings"]
    out = []
    if result.get("title"):
        out.append(f"**{result['title']}**\n")
    out.append(result["machine_line"] + "\n")
    if not result.get("complete", True):
        out.append("**Incomplete run** (interrupted): only the cells measured before it stopped.\n")
    mc = result["model_config"]
    out.append(
        f"Model: {result['model_params'] / 1e6:.2f}M params (d={mc['d_model']}, "
        f"{mc['n_layers']} layers, vocab {mc['vocab_size']}, {mc['dtype']}"
        f"{_cache_note(s, mc['dtype'])}); "
        + (
            f"{s['num_prompts']} chat prompts ({'-'.join(map(str, rng))} tokens: the chat "
            f"template around an instruction from a held-out function of '{s['data']}', "
            if (rng := result["prompts"].get("prompt_tokens_range"))
            else f"{s['num_prompts']} prompts of {s['prompt_tokens']} tokens from '{s['data']}' "
        )
        + f"held-out ({result['prompts']['documents']} documents), "
        f"{s['max_new_tokens']} new tokens, "
        f"top-k {s['top_k']}, median of {s['repeats']} interleaved repeats after a warm-up"
        + (
            f" (transformers baselines: {s['hf_repeats']} repeat(s) at "
            + ", ".join(_tname(T) for T in s["hf_temperatures"])
            + ")"
            if s.get("hf_baselines") and "hf_repeats" in s
            else ""
        )
        + ".\n"
    )
    return out


def _speedup_tables(result: dict) -> list[str]:
    """Per batch size: seconds per generate call (speedup) per method and temperature, at the
    main L."""
    s, rows = result["settings"], result["cells"]
    Ts, L0, N = s["temperatures"], s["main_L"], s["max_new_tokens"]
    out = []
    for B in s["batch_sizes"]:
        out.append(
            f"\n### Seconds per generate call ({N} new tokens x {B} row{'s' * (B > 1)}), "
            f"speedup vs autoregressive (L={L0})\n"
        )
        if any(r.get("speedup_ci95") for r in rows if r.get("batch_size") == B):
            out.append(
                "In brackets: the speedup (medians' ratio) and its 95% interval, from "
                "resampling the interleaved repeats in pairs (a bootstrap).\n"
            )
        out.append("| method | " + " | ".join(_tname(T) for T in Ts) + " |")
        out.append("|---|" + "---|" * len(Ts))
        for m in s["methods"] + list(HF_METHODS):
            cells = [
                _time_cell(_row(rows, T, B, m, None if lookahead_free(m) or is_hf(m) else L0))
                for T in Ts
            ]
            if all(c == "-" for c in cells):
                continue
            name = label(m) + (f" (L={L0})" if not lookahead_free(m) and not is_hf(m) else "")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _ablation_table(result: dict) -> list[str]:
    """Seconds per call (speedup) per method, L and temperature at the first batch size (when
    more than one L ran)."""
    s, rows = result["settings"], result["cells"]
    Ts, Ls = s["temperatures"], s["L"]
    if len(Ls) <= 1:
        return []
    B = s["batch_sizes"][0]
    out = [
        f"\n### L ablation: seconds per call (speedup), batch {B}\n",
        "| method | L | " + " | ".join(_tname(T) for T in Ts) + " |",
        "|---|---|" + "---|" * len(Ts),
    ]
    for m in [m for m in s["methods"] if m != "ar"]:
        for L in Ls:
            cells = [_time_cell(_row(rows, T, B, m, L)) for T in Ts]
            if any(c != "-" for c in cells):
                out.append(f"| {label(m)} | {L} | " + " | ".join(cells) + " |")
    return out


def _details_table(result: dict) -> list[str]:
    """One line per cell: tokens/s, tokens and cost per call, acceptance, parse shares, greedy
    equality with autoregressive (or the error of a baseline that could not run)."""
    out = [
        "\n### Details: tokens/s, tokens per forward call, cost of a call, acceptance\n",
        "Speedup = tokens per call / call cost vs autoregressive: the first is draft "
        "quality, the second what a call of the layout's tokens costs on this machine "
        "(ms per call = wall time x batch / forward calls, prefill included).\n",
        "| batch | method | L | draft tree, tokens per call | temperature | tokens/s | "
        "tokens/call | ms/call (vs AR) | acceptance per position | ast parses (to last "
        "line / to last top-level line) | greedy == AR |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    return out + [_details_line(r) for r in result["cells"]]


def _details_line(r: dict) -> str:
    if "error" in r:
        return (
            f"| {r['batch_size']} | {label(r['method'])} | - | - | "
            f"{_tname(r['temperature'])} | error: {r['error'][:80]} | | | | | |"
        )
    acc = r.get("acceptance_per_position")
    g = r.get("greedy_identical_to_ar")
    return (
        f"| {r['batch_size']} | {label(r['method'])} | {r['L'] or '-'} | "
        f"{r.get('layout', '-')} | {_tname(r['temperature'])} | {r['tokens_per_s']:.1f} | "
        + (f"{r['tokens_per_call']:.2f}" if "tokens_per_call" in r else "-")
        + " | "
        + (
            f"{r['ms_per_forward_call']:.2f} ({r['call_cost_vs_ar']:.2f}x)"
            if "call_cost_vs_ar" in r
            else "-"
        )
        + " | "
        + (", ".join(f"{a:.2f}" for a in acc) if acc else "-")
        + " | "
        + (f"{r['ast_parse_share']:.0%}" if "ast_parse_share" in r else "-")
        + (f" / {r['ast_parse_share_toplevel']:.0%}" if "ast_parse_share_toplevel" in r else "")
        + " | "
        + ("-" if g is None else ("yes" if g else f"NO ({r['greedy_mismatched_rows']} rows)"))
        + " |"
    )


def _notes(result: dict) -> list[str]:
    """Greedy equality with autoregressive per method, of transformers with ours, why the
    baselines were skipped, and what ``auto`` judged by in each cell."""
    out = []
    g = result["greedy_identical_to_ar"]
    if g:
        out.append(
            "\nGreedy output identical to autoregressive: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in g.items())
            + "."
        )
    if result.get("hf_greedy_identical_to_ours"):
        out.append(
            "transformers greedy output identical to ours: "
            + ", ".join(
                f"{k} {'yes' if v else 'NO'}"
                for k, v in result["hf_greedy_identical_to_ours"].items()
            )
            + "."
        )
    if result.get("hf_note"):
        out.append("\n" + result["hf_note"])
    for r in result["cells"]:
        if r.get("auto_choice", {}).get("judged_tokens_per_s"):  # (not in older results)
            out.append(_auto_line(r))
    return out


def _auto_line(row: dict) -> str:
    """What ``auto`` judged by at the end of a cell: per candidate, its speed against
    autoregressive decoding's, its expected tokens per loop iteration and its timed
    milliseconds per iteration; and the compilation left out of its timed runs."""
    c = row["auto_choice"]
    judged, tokens, ms = (
        c["judged_tokens_per_s"],
        c["expected_tokens_per_iteration"],
        c["ms_per_iteration"],
    )
    ar = judged.get("ar")
    parts = [
        f"{m} {v / ar if ar else v:.2f}{'x' if ar else ' tokens/s'} "
        f"({tokens.get(m, 0):.2f} tokens, {ms.get(m, 0):.2f} ms)"
        for m, v in sorted(judged.items(), key=lambda kv: -kv[1])
    ]
    return (
        f"\nauto, {_tname(row['temperature'])}, batch {row['batch_size']}, at the end of its "
        "last call: each candidate's speed as judged (vs autoregressive; expected tokens per "
        "iteration at the slowest row's share in a batch, over seconds per iteration, with the "
        f"{MARGIN:.0%} margin) and its expected tokens and timed ms "
        f"({c['ms_per_iteration_from']}) per iteration: "
        + ", ".join(parts)
        + ". Compiling the layouts it ran first in the timed "
        f"runs took {row.get('auto_compile_s', 0.0):.1f} s, not counted."
        + (
            f" Its warm-up spent {row['auto_warmup_timing_s']:.1f} s getting the candidates' "
            f"costs and {row['auto_warmup_compile_s']:.1f} s compiling its segment programs."
            if "auto_warmup_timing_s" in row  # (not in older results)
            else ""
        )
    )


def _call_cost_table(result: dict) -> list[str]:
    """``--call-tokens``: milliseconds of one forward call per batch size and token count."""
    cost = result.get("call_ms_by_tokens")
    if not cost:
        return []
    Ts = list(next(iter(cost["ms"].values())))
    out = [
        f"\n### Cost of one forward call vs the tokens in it (after {cost['context']} "
        "cached tokens; ms, and x the 1-token call when measured)\n",
        "| batch | " + " | ".join(f"{T} tokens" for T in Ts) + " |",
        "|---|" + "---|" * len(Ts),
    ]
    for B, ms in cost["ms"].items():
        one = ms.get("1")
        out.append(
            f"| {B} | "
            + " | ".join(f"{ms[T]:.2f}" + (f" ({ms[T] / one:.2f}x)" if one else "") for T in Ts)
            + " |"
        )
    return out


# --------------------------------------------------------------------------- plots


def plots(result: dict, out_dir: str) -> list[str]:
    """speedup_vs_temperature.png and time_vs_L.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [
        os.path.join(out_dir, "speedup_vs_temperature.png"),
        os.path.join(out_dir, "time_vs_L.png"),
    ]
    for draw, path in zip((_speedup_plot, _time_vs_L_plot), paths):
        fig = draw(plt, result)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return paths


def _speedup_plot(plt, result: dict):
    """Speedup vs temperature at the main L, one panel per batch size."""
    s, rows = result["settings"], result["cells"]
    Ts, Bs, L0 = s["temperatures"], s["batch_sizes"], s["main_L"]
    fig, axes = plt.subplots(1, len(Bs), figsize=(5 * len(Bs), 4), squeeze=False)
    for ax, B in zip(axes[0], Bs):
        for m in s["methods"]:  # (transformers' baselines are in the tables: ~0.01-0.1x here)
            pts = [(T, _row(rows, T, B, m, None if lookahead_free(m) else L0)) for T in Ts]
            pts = [(T, r["speedup_vs_ar"]) for T, r in pts if r is not None]
            if pts:
                ax.plot(
                    *zip(*sorted(pts)),
                    marker="o",
                    color=color(m),
                    ls=":" if m == "ar" else "-",
                    label=label(m) + (f" L={L0}" if not lookahead_free(m) else ""),
                )
        ax.set_xlabel("temperature (0 = greedy)")
        ax.set_ylabel("speedup vs autoregressive (wall time)")
        ax.set_title(f"batch {B}")
        ax.legend(fontsize=7)
    fig.suptitle(result.get("title") or "PaSS speedup", fontsize=9)
    return fig


def _time_vs_L_plot(plt, result: dict):
    """Seconds per call vs L at the first batch size, one panel per temperature."""
    s, rows = result["settings"], result["cells"]
    Ts, Ls, B = s["temperatures"], s["L"], s["batch_sizes"][0]
    fig, axes = plt.subplots(1, len(Ts), figsize=(4 * len(Ts), 3.6), squeeze=False, sharey=True)
    for ax, T in zip(axes[0], Ts):
        ar = _row(rows, T, B, "ar")
        if ar:
            ax.axhline(ar["s_per_call"], color="gray", ls=":", label="autoregressive")
        for m in [m for m in s["methods"] if m != "ar"]:
            pts = [(L, _row(rows, T, B, m, L)) for L in Ls]
            pts = [(L, r["s_per_call"]) for L, r in pts if r is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color(m), label=label(m))
        ax.set_xlabel("L (look-ahead tokens)")
        ax.set_title(_tname(T))
        ax.set_xticks(Ls)
    axes[0][0].set_ylabel(f"s per call ({s['max_new_tokens']} tokens, batch {B})")
    axes[0][0].legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------- files


def json_path(config: BenchConfig) -> str:
    """Where the JSON results go: ``--json`` or ``OUT_DIR/bench.json``."""
    return config.json or os.path.join(config.out_dir, "bench.json")


def check_outputs(config: BenchConfig) -> None:
    """Creates ``--out-dir`` and the JSON's folder, or raises ValueError naming the path that
    cannot be written: before any model call, so no measurement is lost at the end."""
    path = json_path(config)
    for d in (config.out_dir, os.path.dirname(path) or "."):
        if os.path.exists(d) and not os.path.isdir(d):
            raise ValueError(f"output folder {d} is an existing file")
        os.makedirs(d, exist_ok=True)
        if not os.access(d, os.W_OK | os.X_OK):
            raise ValueError(f"output folder {d} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"--json {path} is a directory; give a file name")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"--json {path} is not writable")


def write_json(result: dict, path: str) -> None:
    """Writes ``result`` to ``path`` atomically (a temporary file renamed over it)."""
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".json", dir=os.path.dirname(path) or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


def write_outputs(result: dict, config: BenchConfig, out_stream=sys.stdout) -> None:
    """The Markdown (also written to ``out_stream``), the plots unless ``--no-plots``, then the
    JSON with the paths of all of them under ``outputs``."""
    check_outputs(config)
    json_path_ = json_path(config)
    md = markdown(result)
    md_path = os.path.join(config.out_dir, "bench.md")
    with open(md_path, "w") as f:
        f.write(md)
    result["outputs"] = {"json": json_path_, "markdown": md_path}
    if not config.no_plots:
        result["outputs"]["plots"] = plots(result, config.out_dir)
    write_json(result, json_path_)
    if out_stream is not None:
        out_stream.write(md)
        out_stream.write(
            f"\nwritten: {json_path_}, {md_path}"
            + "".join(f", {p}" for p in result["outputs"].get("plots", []))
            + "\n"
        )


def read_results(path: str) -> dict:
    """A results JSON written by this program (``--from-json``), or ValueError saying why not."""
    try:
        with open(path) as f:
            result = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--from-json {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--from-json {path}: not a results JSON ({e})") from None
    missing = [
        k
        for k in ("settings", "cells", "machine_line", "model_config")
        if not isinstance(result, dict) or k not in result
    ]
    if missing:
        raise ValueError(
            f"--from-json {path}: not a results JSON of infer.bench (missing {', '.join(missing)})"
        )
    return result
