"""How much memory a model needs per device, for serving and for look-ahead training.

``memory_plan`` counts, for a mesh shape, the bytes each device holds: parameters by the same
partition rules the real arrays are sharded with (``sharding.PARAM_RULES``), the KV cache by
``cache.cache_specs``, the LA training state and an estimate of the training activations.
``choose_mesh`` finds the smallest mesh that fits a device, ``memory_plan_table`` renders the
table of ``docs/scaling.md`` (``python -m pass_jax.memory_plan``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from . import xla_memory
from .cache import cache_bytes_per_token, cache_specs
from .config import ModelConfig
from .model import abstract_params
from .program_config import ArgumentParser, run_cli
from .sharding import AXES, BATCH_AXES, make_mesh, param_specs, spec_shards
from .sharding import mesh_shape as mesh_shape_of

GiB = 1024**3
DEVICES = {  # name -> (memory bytes per device, description)
    "tpu-v4": (32 * GiB, "TPU v4 (32 GiB HBM)"),
    "tpu-v5e": (16 * GiB, "TPU v5e (16 GiB HBM)"),
    "tpu-v5p": (95 * 10**9, "TPU v5p (95 GB HBM)"),
    "h100": (80 * GiB, "H100 (80 GiB HBM3)"),
}
USABLE_FRACTION = 0.9  # leave room for XLA scratch, fragmentation, the runtime
# Bytes per attention score while one layer's backward pass runs: float32 scores, probabilities
# and their gradient, and the bfloat16 probabilities (XLA:TPU's buffer assignment of the
# Llama-3-8B LA step holds all four at once; docs/scaling.md).
BACKWARD_SCORE_BYTES = 14


def memory_plan(
    cfg: ModelConfig,
    mesh_shape,
    batch: int,
    max_len: int,
    dtype="bfloat16",
    num_lookahead: int = 4,
    device: str | int = "tpu-v4",
    *,
    train_batch: int = 8,
    train_seq_len: int = 2048,
    num_groups: int = 1,
    remat: bool = False,
) -> dict[str, Any]:
    """Per-device memory of serving (params + KV cache) and of LA training, by the same rules
    the real arrays are sharded with.

    Args:
      mesh_shape: ``{'data','fsdp','tensor'}`` sizes (dict or ``"data=..,fsdp=..,tensor=.."``).
      batch, max_len: decoding batch rows and cache slots per row.
      dtype: params, activations and cache dtype. LA params and Adam moments are float32.
      device: a key of ``DEVICES`` or a memory size in bytes.
      train_batch, train_seq_len, num_groups: the LA training batch (paper: batch 8).
      remat: estimate activations with each layer rematerialised (``train.lookahead --remat
        layer``: ``nn.remat`` on the scanned block, saving only the layer inputs).

    Returns a dict of byte counts: ``params_total``, ``params_per_device`` (exact, from the
    partition rules), ``kv_per_token`` (all layers, K and V), ``kv_per_device``,
    ``serve_per_device``, ``la_state`` (LA params + grads + Adam m, v), ``train_activations``
    (an estimate, see below), ``train_per_device``, ``device_bytes``, ``usable_bytes`` and
    ``fits_serve`` / ``fits_train`` / ``fits`` (both); also ``mesh``, ``devices``, ``remat`` and
    ``sizes`` (the batch and length arguments), what it planned for.

    Activation estimate for the LA step: the gradient reaches the LA inputs through every
    layer, so the backward pass keeps, per layer and token, about ``10 D + 3 F`` values in
    ``dtype`` (norm inputs, q/k/v, attention output, residuals, MLP gate/up/product) plus the
    float32 attention probabilities ``H x T`` (no flash attention); with ``remat`` only the
    ``D`` layer inputs per layer plus the working set of one layer's backward pass: its values
    as above, but ``BACKWARD_SCORE_BYTES`` per attention score. The head keeps float32 logits
    and their softmax for ``2 M L`` rows. Token dims split over ``data x fsdp`` (a device holds
    at least one row: sequences are not split), ``F``, heads and vocab over ``tensor``.
    ``xla_memory`` compiles the step and reads XLA's own figures (``docs/scaling.md``).
    """
    ms = {a: int(mesh_shape_of(mesh_shape).get(a, 1)) for a in AXES}
    if any(s < 1 for s in ms.values()):
        raise ValueError(f"memory_plan needs explicit mesh sizes, got {ms}")
    if isinstance(device, str):
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
        dev_bytes = DEVICES[device][0]
    else:
        dev_bytes = int(device)
    isz = jnp.dtype(dtype).itemsize
    cfg = cfg.replace(param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(dtype).name)
    abstract = abstract_params(cfg)
    specs = param_specs(abstract, ms)
    params_total = params_dev = 0
    for leaf, spec in zip(
        jax.tree.leaves(abstract), jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    ):
        n = math.prod(leaf.shape) * isz
        params_total += n
        params_dev += n // spec_shards(spec, ms)
    kv_token = cache_bytes_per_token(cfg, dtype)
    kv_dev = kv_token * batch * max_len // spec_shards(cache_specs(cfg, ms, batch).k, ms)

    L, D, F, H, I = num_lookahead, cfg.d_model, cfg.ffn_dim, cfg.n_heads, cfg.n_layers
    la_state = 4 * L * D * 4  # float32 params, grads, Adam m and v (replicated)
    T = train_seq_len + num_groups * L
    bshards = math.prod(ms[a] for a in BATCH_AXES)
    rows = -(-train_batch // bshards)  # rows per device (ceil)
    tp = ms["tensor"]
    # bytes per token of one layer's values, its attention scores at score_bytes each
    layer_tok = lambda score_bytes: (
        10 * D * isz + 3 * (-(-F // tp)) * isz + score_bytes * (-(-H // tp)) * T
    )
    if remat:
        acts = rows * T * (I * D * isz + layer_tok(BACKWARD_SCORE_BYTES))
    else:
        acts = rows * T * I * layer_tok(4)
    acts += rows * 2 * num_groups * L * (-(-cfg.vocab_size // tp)) * 8
    serve = params_dev + kv_dev
    train = params_dev + la_state + acts
    usable = int(dev_bytes * USABLE_FRACTION)
    return {
        "mesh": dict(ms),
        "devices": math.prod(ms.values()),
        "params_total": params_total,
        "params_per_device": params_dev,
        "kv_per_token": kv_token,
        "kv_per_device": kv_dev,
        "serve_per_device": serve,
        "la_state": la_state,
        "train_activations": acts,
        "train_per_device": train,
        "remat": remat,
        "sizes": {
            "batch": batch,
            "max_len": max_len,
            "num_lookahead": num_lookahead,
            "train_batch": train_batch,
            "train_seq_len": train_seq_len,
            "num_groups": num_groups,
        },
        "device_bytes": dev_bytes,
        "usable_bytes": usable,
        "fits_serve": serve <= usable,
        "fits_train": train <= usable,
        "fits": serve <= usable and train <= usable,
    }


def choose_mesh(
    cfg: ModelConfig,
    device: str,
    *,
    batch: int,
    max_len: int,
    dtype="bfloat16",
    num_lookahead: int = 4,
    max_devices: int = 512,
    need: str = "fits",
    **plan_kw,
) -> dict[str, int] | None:
    """The smallest mesh for which ``memory_plan(...)[need]`` holds (``'fits'``: serving and LA
    training; ``'fits_serve'``; ``'fits_train'``): 1, 2, 4, ... devices, tensor parallelism up
    to 8 (one host / one ICI ring) and the kv-head count, the rest ``fsdp``. None if none."""
    n = 1
    while n <= max_devices:
        t = 1
        while t * 2 <= min(n, 8) and cfg.n_kv_heads % (t * 2) == 0:
            t *= 2
        ms = {"data": 1, "fsdp": n // t, "tensor": t}
        if memory_plan(cfg, ms, batch, max_len, dtype, num_lookahead, device, **plan_kw)[need]:
            return ms
        n *= 2
    return None


def _gib(n: int, digits: int = 1) -> str:
    return f"{n / GiB:.{digits}f}"


def memory_plan_table(
    models: Mapping[str, ModelConfig] | None = None,
    devices: Sequence[str] = ("tpu-v4", "tpu-v5e", "h100"),
    *,
    batch: int = 8,
    max_len: int = 2048,
    dtype="bfloat16",
    num_lookahead: int = 4,
    train_batch: int = 8,
    train_seq_len: int = 2048,
) -> str:
    """Markdown tables of :func:`memory_plan` for each model on each device.

    Serving: the smallest mesh that holds params + KV cache. LA training: the smallest mesh for
    the model as it is (no rematerialisation) and, since that is activation-bound, the smallest
    with per-layer remat.
    """
    models = models or {
        "LLaMA-7B": ModelConfig.llama_7b(),
        "Llama-3-8B": ModelConfig.llama3_8b(),
        "LLaMA-2-70B": ModelConfig.llama2_70b(),
    }
    common = {
        "batch": batch,
        "max_len": max_len,
        "dtype": dtype,
        "num_lookahead": num_lookahead,
        "train_batch": train_batch,
        "train_seq_len": train_seq_len,
    }
    mesh_s = lambda m: "none fits" if m is None else f"({m['data']}, {m['fsdp']}, {m['tensor']})"
    nd = lambda m: "-" if m is None else str(math.prod(m.values()))
    dt = jnp.dtype(dtype).name
    lines = [
        (
            f"Serving: batch {batch} x {max_len} cache slots, {dt} weights and KV cache. "
            f"LA training: batch {train_batch} x {train_seq_len} tokens, L = {num_lookahead}, "
            f"{dt} base model, float32 LA params and Adam moments. "
            f"{100 * USABLE_FRACTION:.0f}% of device memory counted as usable. Meshes are "
            f"(data, fsdp, tensor); sizes in GiB per device unless stated."
        ),
        "",
        (
            "| model | device | params (total) | KV / token | serving mesh | devices | params/dev "
            "| KV/dev | serve/dev | LA state | training mesh (no remat) | devices | act/dev "
            "| train/dev | training mesh (remat) | devices | act/dev | train/dev |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cfg in models.items():
        for dev in devices:
            serve_m = choose_mesh(cfg, dev, need="fits_serve", **common)
            train_m = choose_mesh(cfg, dev, need="fits_train", **common)
            remat_m = choose_mesh(cfg, dev, need="fits_train", remat=True, **common)
            any_m = serve_m or train_m or remat_m or {"data": 1, "fsdp": 1, "tensor": 1}

            def plan(m, cfg=cfg, dev=dev, **k):
                return memory_plan(
                    cfg,
                    m,
                    batch,
                    max_len,
                    dtype,
                    num_lookahead,
                    dev,
                    train_batch=train_batch,
                    train_seq_len=train_seq_len,
                    **k,
                )

            base = plan(any_m)
            cells = [
                name,
                DEVICES[dev][1],
                f"{base['params_total'] / 1e9:.1f} GB",
                f"{base['kv_per_token'] // 1024} KiB",
                mesh_s(serve_m),
                nd(serve_m),
            ]
            if serve_m is None:
                cells += ["-"] * 3
            else:
                r = plan(serve_m)
                cells += [
                    _gib(r["params_per_device"]),
                    _gib(r["kv_per_device"]),
                    _gib(r["serve_per_device"]),
                ]
            cells.append(f"{base['la_state'] // 1024} KiB")
            for m, remat in ((train_m, False), (remat_m, True)):
                cells += [mesh_s(m), nd(m)]
                if m is None:
                    cells += ["-", "-"]
                else:
                    r = plan(m, remat=remat)
                    cells += [_gib(r["train_activations"]), _gib(r["train_per_device"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


XLA_MODELS = {  # --model name -> (label, config): the models of docs/scaling.md's XLA check
    "llama3-8b": ("Llama-3-8B", ModelConfig.llama3_8b()),
    "llama2-70b": ("Llama-2-70B", ModelConfig.llama2_70b()),
    "llama-7b": ("LLaMA-7B", ModelConfig.llama_7b()),
}
XLA_PROGRAMS = {"train": "fits_train", "decode": "fits_serve"}  # program -> what its mesh needs


def xla_cases(
    models: Mapping[str, ModelConfig],
    device: str,
    mesh=None,
    *,
    batch: int = 8,
    max_len: int = 2048,
    num_lookahead: int = 4,
    train_batch: int = 8,
    train_seq_len: int = 2048,
) -> list[tuple[str, ModelConfig, str, dict[str, Any] | None]]:
    """``(label, cfg, program, plan)`` for each model and program of ``XLA_PROGRAMS``
    (``train``: the LA step with per-layer remat; ``decode``): :func:`memory_plan` (in the
    model's dtype) on ``mesh`` (axis sizes), or else on the smallest mesh that
    :func:`choose_mesh` finds for ``device``; plan None when none fits."""
    kw = {
        "batch": batch,
        "max_len": max_len,
        "num_lookahead": num_lookahead,
        "train_batch": train_batch,
        "train_seq_len": train_seq_len,
        "remat": True,
    }
    cases = []
    for label, cfg in models.items():
        for program, need in XLA_PROGRAMS.items():
            ms = (
                mesh_shape_of(mesh)
                if mesh
                else choose_mesh(cfg, device, dtype=cfg.dtype, need=need, **kw)
            )
            plan = (
                None if ms is None else memory_plan(cfg, ms, dtype=cfg.dtype, device=device, **kw)
            )
            cases.append((label, cfg, program, plan))
    return cases


def xla_check_table(
    cases, target: str, device: str, *, prompt_len: int = 128, method: str = "pass-fused"
) -> str:
    """A Markdown table setting each of :func:`xla_cases`' plans beside XLA's own figures
    (``xla_memory``) for the same program, mesh and sizes, compiled for ``target``
    (``xla_memory.TARGETS``; decoding with ``prompt_len``-token prompts and ``method``). Per
    device: the plan's weights (+ LA state for training, + KV cache for decoding) against XLA's
    arguments, its training activations against XLA's temp, its total against XLA's
    (``XlaMemory.total``), and whether each fits ``USABLE_FRACTION`` of ``device``."""
    usable = int(DEVICES[device][0] * USABLE_FRACTION)
    sizes = next((plan["sizes"] for *_, plan in cases if plan), None)
    lines = [
        f"Per device, GiB. Compiled for {target} ({xla_memory.target_description(target)}); "
        f"meshes (data, fsdp, tensor) for {DEVICES[device][1]}; fits: the total within "
        f"{100 * USABLE_FRACTION:.0f}% of it."
        + (
            ""
            if sizes is None
            else f" LA training: batch {sizes['train_batch']} x {sizes['train_seq_len']} tokens, "
            f"L = {sizes['num_lookahead']}, per-layer remat. Decoding ({method}, greedy): batch "
            f"{sizes['batch']}, {prompt_len}-token prompts, a KV cache of {sizes['max_len']} "
            "slots. Plan inputs: weights + LA state (training) or + KV cache (decoding); the "
            "plan counts no decoding temp."
        ),
        "",
        "| model | program | mesh | devices | plan: inputs | XLA: arguments | plan: activations "
        "| XLA: temp | plan: total | XLA: total | XLA - plan | fits: plan / XLA | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fits = lambda n: "yes" if n <= usable else "no"
    for label, cfg, program, plan in cases:
        title = "LA train (remat)" if program == "train" else f"decode ({method})"
        if plan is None:
            lines.append(f"| {label} | {title} | none fits |" + " - |" * 10)
            continue
        ms, sz = plan["mesh"], plan["sizes"]
        mesh = make_mesh(ms, devices=xla_memory.compile_devices(target, plan["devices"]))
        if program == "train":
            x = xla_memory.la_train_memory(
                cfg,
                mesh,
                batch=sz["train_batch"],
                seq_len=sz["train_seq_len"],
                num_lookahead=sz["num_lookahead"],
                num_groups=sz["num_groups"],
                remat="layer" if plan["remat"] else "none",
            )
            inputs = plan["params_per_device"] + plan["la_state"]
            acts, total = _gib(plan["train_activations"], 2), plan["train_per_device"]
        else:
            x = xla_memory.decode_memory(
                cfg,
                mesh,
                batch=sz["batch"],
                max_len=sz["max_len"],
                prompt_len=prompt_len,
                num_lookahead=sz["num_lookahead"],
                method=method,
            )
            inputs, acts, total = plan["serve_per_device"], "-", plan["serve_per_device"]
        cells = [
            label,
            title,
            f"({ms['data']}, {ms['fsdp']}, {ms['tensor']})",
            str(plan["devices"]),
            _gib(inputs, 2),
            _gib(x.argument, 2),
            acts,
            _gib(x.temp, 2),
            _gib(total, 2),
            _gib(x.total, 2),
            f"{(x.total - total) / GiB:+.2f} ({100 * (x.total - total) / total:+.0f}%)",
            f"{fits(total)} / {fits(x.total)}",
            f"{x.compile_s:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pass_jax.memory_plan``: the plan's table (``docs/scaling.md``); with
    ``--xla TARGET`` the plan beside XLA's figures for the LA train step and decoding."""
    parser = ArgumentParser(prog="python -m pass_jax.memory_plan", description=main.__doc__)
    parser.add_argument(
        "--xla",
        choices=xla_memory.TARGETS,
        help="compile the LA train step and the decoding loop for each model's mesh on this "
        "target (cpu: simulated devices; tpu-*: a TPU slice, ahead of time, needs libtpu) and "
        "set XLA's per-device memory beside the plan's",
    )
    parser.add_argument(
        "--device",
        choices=list(DEVICES),
        help="whose memory the meshes are chosen for (default: the --xla TPU, else tpu-v5e)",
    )
    parser.add_argument(
        "--model",
        action="append",
        choices=list(XLA_MODELS),
        help="model to check (repeatable; default llama3-8b and llama2-70b)",
    )
    parser.add_argument(
        "--mesh",
        help="data=..,fsdp=..,tensor=.. for every case (default: the "
        "smallest that the plan fits on --device)",
    )
    parser.add_argument("--prompt-len", type=int, default=128, help="decoding prompt tokens")
    args = parser.parse_args(argv)
    if args.xla is None:
        print(memory_plan_table())
        return
    device = args.device or (args.xla if args.xla in DEVICES else "tpu-v5e")
    models = dict(XLA_MODELS[m] for m in args.model or ["llama3-8b", "llama2-70b"])
    cases = xla_cases(models, device, args.mesh)
    jax.config.update("jax_platforms", "cpu")  # compile only; a TPU target is a topology
    if args.xla == "cpu":  # simulated devices: set before JAX's first use
        jax.config.update("jax_num_cpu_devices", max(p["devices"] for *_, p in cases if p))
    print(xla_check_table(cases, args.xla, device, prompt_len=args.prompt_len))


if __name__ == "__main__":
    sys.exit(run_cli(main))
