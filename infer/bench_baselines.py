"""transformers (PyTorch) baselines of ``infer.bench``: the same model directory in
``AutoModelForCausalLM`` (``load_hf_torch``), its ``generate`` as a runner (``hf_runner``:
greedy or sampling, prompt-lookup decoding when asked) and the benchmark's two baseline variants
(``hf_variants``). torch (a test dependency only) is imported when a baseline is loaded, so a
run without baselines never needs it.
"""

from __future__ import annotations

import time

import jax
import transformers

from infer.bench_methods import Run, Variant, batches
from infer.config import BenchConfig


def load_hf_torch(model_dir, dtype: str, threads: int | None):
    """The same model dir in transformers, eval mode, on the GPU when JAX runs on one (and
    PyTorch sees it), else on the CPU with ``threads`` threads: both sides on one kind of
    device."""
    import torch

    torch.set_num_threads(threads or 1)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32 if dtype == "float32" else torch.bfloat16
    ).eval()
    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        model = model.to("cuda")
    return model


def hf_runner(model, pad_id: int | None, prompt_lookup: int, stop_at_eos: bool):
    """A runner of transformers ``generate`` (prompt lookup when ``prompt_lookup`` > 0)."""
    import torch

    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def run(prompts, B, sampler, seed, max_new_tokens):
        out = Run(tokens=[], wall=0.0)
        for i, chunk in enumerate(batches(prompts, B)):
            P = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), P), pad_id or 0, dtype=torch.long)
            mask = torch.zeros((len(chunk), P), dtype=torch.long)
            for r, p in enumerate(chunk):  # left padding
                ids[r, P - len(p) :] = torch.tensor(p)
                mask[r, P - len(p) :] = 1
            kw = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id)
            if not stop_at_eos:  # no EOS stopping (min_new_tokens would mask EOS logits instead)
                kw["eos_token_id"] = None
            if sampler.greedy:
                kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
            else:
                kw.update(
                    do_sample=True,
                    temperature=sampler.temperature,
                    top_k=sampler.top_k or None,
                    top_p=sampler.top_p,
                )
            if prompt_lookup:
                kw["prompt_lookup_num_tokens"] = prompt_lookup
            torch.manual_seed(seed + i)
            ids, mask = ids.to(model.device), mask.to(model.device)
            sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                gen = model.generate(ids, attention_mask=mask, **kw)
            sync()
            out.wall += time.perf_counter() - t0
            out.tokens += [g[P:].tolist() for g in gen]
        return out

    return run


def hf_variants(config: BenchConfig, cfg, threads: int | None) -> list[Variant]:
    """``hf-generate`` (every batch size) and ``hf-prompt-lookup`` (batch 1) of ``--model``, at
    ``--hf-temperatures`` (default: all); ImportError when torch or transformers is missing."""
    model = load_hf_torch(config.model, config.dtype, threads)
    pad = (
        cfg.pad_token_id
        if cfg.pad_token_id is not None
        else (cfg.eos_token_ids[0] if cfg.eos_token_ids else 0)
    )
    temperatures = tuple(config.hf_temperatures) if config.hf_temperatures else None
    return [
        Variant(
            "hf-generate",
            "hf-generate",
            None,
            hf_runner(model, pad, 0, config.stop_at_eos),
            temperatures=temperatures,
        ),
        Variant(
            "hf-prompt-lookup",
            "hf-prompt-lookup",
            None,
            hf_runner(model, pad, config.prompt_lookup_tokens, config.stop_at_eos),
            batch_sizes=(1,),
            temperatures=temperatures,
        ),
    ]
