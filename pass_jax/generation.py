"""The one entry point for generation: ``generate(cfg, params, prompts, method=...)``.

A fixed method (``ar``, ``pass``, ``pass-fused``, a draft tree) runs one jitted loop
(``decode.generate_fixed``); ``auto`` re-chooses the layout as it goes (``auto.generate_auto``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .auto import generate_auto
from .config import ModelConfig, SamplerConfig
from .decode import GenerationResult, generate_fixed


def generate(
    cfg: ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    method: str = "ar",
    la_LxD=None,
    sampler: SamplerConfig = SamplerConfig(),
    eos_ids: Sequence[int] | None = None,
    seed: int = 0,
    max_len: int | None = None,
    stream: Callable[[np.ndarray, np.ndarray], None] | None = None,
    mesh=None,
    return_state: bool = False,
    auto_methods: Sequence[str] | None = None,
    auto_prior: Sequence[float] | None = None,
    auto_cost_file=None,
    auto_retime: bool = False,
    precision: str = "auto",
    cache_dtype=None,
) -> GenerationResult:
    """Generate continuations of token-id prompts.

    ``params`` may be stacked (``hf.load_hf``) or per layer (``hf.load_hf(..., stacked=False)``,
    ``model.unstack_layers``: a layer loop and a per-layer cache, faster on XLA:CPU).

    Args:
      method: ``ar``, ``pass`` (paper schedule), ``pass-fused``, or a fused draft tree
        ``tree-3x2x1x1`` (widths per depth, depth <= L; ``tree-1x1`` is ``pass-fused`` with
        L = 2), a tree with context drafts ``tree-8+ctx2`` (a chain of 2 tokens copied from the
        sequence under the root and every draft: ``context.py``), context drafts alone
        ``ctx-3`` (prompt-lookup decoding; no look-ahead embeddings needed), or ``auto`` (the
        layout of the best expected tokens per second on this device,
        re-chosen every 32 tokens: ``auto.generate_auto``; one device, ``stream`` called per
        segment); PaSS needs ``la_LxD`` (trained look-ahead embeddings, or
        ``lookahead.init_lookahead`` for the [UNK] baseline).
      eos_ids: ids that end a row (default: the config's ``eos_token_ids``).
      max_len: KV-cache slots (default: just enough, rounded up to a multiple of 128).
      stream: ``fn(out_BxN, n_B)`` called on the host after every loop step (the program is
        compiled once for streaming: another callable, e.g. one per request, reuses it).
      mesh: a ``jax.sharding.Mesh`` (``sharding.make_mesh``): rows are split over its batch axes
        and the cache by the partition rules; ``params`` should already be on it.
      return_state: also return the final ``DecodeState`` (``(result, state)``).
      auto_methods: the candidates of ``auto`` (default ``auto.candidates(L)``).
      auto_prior: ``auto``'s starting acceptance per depth (``auto.generate_auto``'s ``prior``).
      auto_cost_file: a file that keeps ``auto``'s timed call costs across processes (read
        instead of timing again; ``iteration_cost.iteration_costs``); None: this process only.
      auto_retime: time ``auto``'s call costs again even if the process or the file has them.
      precision: matmul precision of the decode step (``decode.decode_precision``): ``auto``
        (exact greedy decoding of float32 models), ``default`` or ``highest``.
      cache_dtype: the KV cache's dtype (``cache.resolve_cache_dtype``): None or ``"auto"``, the
        compute dtype ``cfg.dtype``; ``"bfloat16"`` under float32 compute halves the cache
        (keys and values rounded to bfloat16 when computed, attention in float32; greedy PaSS
        still equals greedy autoregressive decoding with the same cache dtype).
    """
    if method != "auto":
        return generate_fixed(
            cfg,
            params,
            prompts,
            max_new_tokens=max_new_tokens,
            method=method,
            la_LxD=la_LxD,
            sampler=sampler,
            eos_ids=eos_ids,
            seed=seed,
            max_len=max_len,
            stream=stream,
            mesh=mesh,
            return_state=return_state,
            precision=precision,
            cache_dtype=cache_dtype,
        )
    if mesh is not None or return_state:
        raise ValueError("method 'auto' runs on one device and returns no state")
    return generate_auto(
        cfg,
        params,
        prompts,
        max_new_tokens=max_new_tokens,
        la_LxD=la_LxD,
        sampler=sampler,
        eos_ids=eos_ids,
        seed=seed,
        max_len=max_len,
        methods=auto_methods,
        prior=auto_prior,
        cost_file=auto_cost_file,
        retime=auto_retime,
        stream=stream,
        precision=precision,
        cache_dtype=cache_dtype,
    )
