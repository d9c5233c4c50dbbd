"""Look-ahead (LA) parameters: initialisation, fingerprinting, and safetensors export/import.

The LA parameters are one plain array ``la_LxD`` (L look-ahead embeddings of size d_model), kept
apart from the base model's params: the base model stays frozen and only ``la_LxD`` trains.

An export is a directory with two files:

* ``lookahead.safetensors``: the tensor ``lookahead`` ``[L, D]``, and in the safetensors header
  (key ``pass_jax``) the metadata as a JSON string; this file alone is authoritative.
* ``lookahead.json``: the same metadata, for people and tools: ``num_lookahead``, ``d_model``,
  ``vocab_size``, ``dtype``, the base ``model`` fingerprint (see :func:`model_fingerprint`),
  ``init_token_id`` and any ``metrics`` passed at save time.

Writes are atomic: both files are staged in a temporary directory inside the export directory and
moved into place with ``os.replace``; the tensor file (the commit point) goes first, so a crash
leaves either the previous export or the new one, never a half-written tensor file. Other files in
the export directory (checkpoints, logs) are left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from .config import ModelConfig
from .sharding import to_host

TENSOR_FILE = "lookahead.safetensors"
META_FILE = "lookahead.json"
TENSOR_KEY = "lookahead"
HEADER_KEY = "pass_jax"
FORMAT_VERSION = 1


def default_init_token(cfg: ModelConfig) -> int:
    """The token whose embedding initialises every LA row when none is given.

    The tokenizer's unk token (as the paper does); models without one fall back to the pad token,
    then the BOS token, then token id 0.
    """
    for tok in (cfg.unk_token_id, cfg.pad_token_id, cfg.bos_token_id):
        if tok is not None:
            return int(tok)
    return 0


INIT_FORMS = ("mean", "unk", "zeros", "token:ID")


def parse_init(init: str) -> str | int:
    """An LA initialisation spec: ``'mean'`` (the mean token embedding), ``'unk'`` (the unk
    token's embedding, the paper's choice), ``'zeros'``, or ``'token:ID'`` (that token's
    embedding; returned as the int ID). Raises ValueError naming the accepted forms."""
    if init in ("mean", "unk", "zeros"):
        return init
    kind, _, rest = init.partition(":")
    if kind == "token" and rest.strip().lstrip("-").isdigit():
        return int(rest)
    raise ValueError(f"unknown look-ahead init {init!r}; expected one of {', '.join(INIT_FORMS)}")


def init_lookahead(
    cfg: ModelConfig,
    base_params,
    num_lookahead: int,
    token_id: int | None = None,
    dtype=None,
    init: str | int | None = None,
    unk_token_id: int | None = None,
):
    """``la_LxD``: every one of the ``num_lookahead`` rows starts from the same vector.

    ``init`` (see :func:`parse_init`): ``'mean'`` the mean of the token embedding table,
    ``'zeros'``, ``'unk'`` the embedding of ``unk_token_id`` (default :func:`default_init_token`:
    unk, else pad, else BOS, else 0), or a token id. Without ``init``, ``token_id`` (default: as
    ``'unk'``) picks the token, so ``init_lookahead(cfg, params, L)`` is the paper's [UNK]
    initialisation. ``dtype`` defaults to the dtype of the base embedding matrix (pass float32
    to train a bfloat16 model's LA embeddings in full precision).
    """
    if num_lookahead < 1:
        raise ValueError(f"num_lookahead must be >= 1, got {num_lookahead}")
    table_VxD = jnp.asarray(base_params["embed"]["embedding"])
    init = parse_init(init) if isinstance(init, str) else init
    if init == "mean":
        row_D = table_VxD.astype(jnp.float32).mean(axis=0)
    elif init == "zeros":
        row_D = jnp.zeros(table_VxD.shape[1], jnp.float32)
    else:
        if isinstance(init, int):
            tok = init
        elif token_id is not None and init is None:
            tok = int(token_id)
        else:
            tok = default_init_token(cfg) if unk_token_id is None else int(unk_token_id)
        if not 0 <= tok < cfg.vocab_size:
            raise ValueError(f"init token id {tok} is outside the vocabulary [0, {cfg.vocab_size})")
        row_D = table_VxD[tok]
    row_D = row_D.astype(table_VxD.dtype if dtype is None else dtype)
    return jnp.tile(row_D[None, :], (num_lookahead, 1))


def model_fingerprint(cfg: ModelConfig, base_params) -> dict[str, Any]:
    """Identity of a base model: architecture fields and a hash of its token embeddings.

    The hash is the SHA-256 of the embedding matrix rounded to bfloat16, so the same model held
    in float32 or bfloat16 has the same fingerprint, while a different (or retrained) model does
    not. A matrix sharded over several processes is gathered whole first, so every process
    computes the same fingerprint, the one a single process computes.
    """
    emb_VxD = to_host(base_params["embed"]["embedding"]).astype(ml_dtypes.bfloat16)
    return {
        "model_type": cfg.model_type,
        "family": cfg.family,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "vocab_size": cfg.vocab_size,
        "embedding_sha256": hashlib.sha256(np.ascontiguousarray(emb_VxD).tobytes()).hexdigest(),
    }


def _to_json(x):
    """JSON fallback for metric values: arrays (numpy or jax) and numpy scalars."""
    if hasattr(x, "__array__"):
        return np.asarray(x).tolist()
    raise TypeError(f"metric value {x!r} of type {type(x).__name__} is not JSON-serialisable")


def save_lookahead(
    out_dir: str,
    la_LxD,
    cfg: ModelConfig,
    base_identity: dict[str, Any],
    *,
    init_token_id: int | None = None,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Export ``la_LxD`` to ``out_dir`` (created if needed) atomically; returns ``out_dir``.

    ``base_identity`` is the base model's :func:`model_fingerprint` (extra JSON-serialisable keys,
    e.g. the model path, are kept). ``metrics`` (JSON values, numpy or jax arrays) are recorded
    for reference.
    """
    la = np.asarray(la_LxD)
    if la.ndim != 2 or la.shape[0] < 1:
        raise ValueError(f"la_LxD must have shape [L >= 1, d_model], got {la.shape}")
    if la.shape[1] != cfg.d_model:
        raise ValueError(f"la_LxD has d_model={la.shape[1]}, the model has d_model={cfg.d_model}")
    meta = {
        "format_version": FORMAT_VERSION,
        "num_lookahead": int(la.shape[0]),
        "d_model": int(la.shape[1]),
        "vocab_size": cfg.vocab_size,
        "dtype": str(la.dtype),
        "model": dict(base_identity),
        "init_token_id": init_token_id,
        "metrics": metrics or {},
    }
    text = json.dumps(meta, indent=2, sort_keys=True, default=_to_json)
    os.makedirs(out_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".lookahead-tmp-", dir=out_dir)
    try:
        save_file(
            {TENSOR_KEY: np.ascontiguousarray(la)},
            os.path.join(stage, TENSOR_FILE),
            metadata={HEADER_KEY: text},
        )
        with open(os.path.join(stage, META_FILE), "w") as f:
            f.write(text + "\n")
        for name in (TENSOR_FILE, META_FILE):
            with open(os.path.join(stage, name), "rb") as f:
                os.fsync(f.fileno())
            os.replace(os.path.join(stage, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out_dir


def lookahead_metadata(la_dir: str) -> dict[str, Any]:
    """The metadata stored in an export's tensor-file header (see the module docstring)."""
    path = os.path.join(la_dir, TENSOR_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no look-ahead export in {la_dir!r}: {TENSOR_FILE} is missing")
    try:
        with safe_open(path, framework="numpy") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"look-ahead file {path} is corrupt or not a safetensors file: {e}") from e
    if HEADER_KEY not in header:
        raise ValueError(
            f"look-ahead file {path} has no {HEADER_KEY!r} metadata; "
            "it was not written by save_lookahead"
        )
    try:
        return json.loads(header[HEADER_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"look-ahead file {path} has corrupt metadata: {e}") from e


def recorded_acceptance(la_dir: str) -> dict[str, list[float]] | None:
    """The held-out acceptance estimate per LA position an export recorded at training
    (``{'greedy': [L], 'sampled': [L]}``; ``train.lookahead`` writes it), or None."""
    acc = lookahead_metadata(la_dir).get("metrics", {}).get("acceptance")
    return acc if isinstance(acc, dict) and "greedy" in acc and "sampled" in acc else None


def load_lookahead(
    la_dir: str, cfg: ModelConfig, base_params=None, num_lookahead: int | None = None
):
    """Load ``la_LxD`` from an export, checking that it belongs to this model.

    Checks d_model, vocab_size, model type and depth (when recorded) against ``cfg``, the tensor
    shape against the metadata, ``num_lookahead`` when given, and the embedding hash when
    ``base_params`` is given.
    Any mismatch raises ValueError naming what differs; a missing or corrupt export raises
    FileNotFoundError / ValueError. The array keeps its saved dtype, or takes the base embedding
    dtype when ``base_params`` is given.
    """
    meta = lookahead_metadata(la_dir)
    path = os.path.join(la_dir, TENSOR_FILE)
    try:
        la = load_file(path)[TENSOR_KEY]
    except (SafetensorError, OSError, KeyError) as e:
        raise ValueError(f"look-ahead file {path} is corrupt: {e!r}") from e
    what = f"lookahead in {la_dir}"
    model = meta.get("model", {})
    expected = {
        "d_model": cfg.d_model,
        "vocab_size": cfg.vocab_size,
        "n_layers": cfg.n_layers,
        "model_type": cfg.model_type,
    }
    for key, ours in expected.items():
        theirs = meta.get(key, model.get(key))
        if theirs is not None and theirs != ours:
            raise ValueError(
                f"{what} was trained for a model with {key}={theirs}, this model has {key}={ours}"
            )
    if la.shape != (meta["num_lookahead"], meta["d_model"]):
        raise ValueError(
            f"{what} is corrupt: tensor shape {la.shape} does not match its metadata "
            f"(L={meta['num_lookahead']}, d_model={meta['d_model']})"
        )
    if num_lookahead is not None and la.shape[0] != num_lookahead:
        raise ValueError(f"{what} has num_lookahead={la.shape[0]}, {num_lookahead} were asked for")
    dtype = la.dtype
    if base_params is not None:
        ours = model_fingerprint(cfg, base_params)["embedding_sha256"]
        theirs = model.get("embedding_sha256")
        if theirs != ours:
            raise ValueError(
                f"{what} was trained for a model with a different token embedding "
                f"(embedding_sha256 {str(theirs)[:12]}.., this model has "
                f"{ours[:12]}..): same architecture, different weights"
            )
        dtype = base_params["embed"]["embedding"].dtype
    return jnp.asarray(la, dtype=dtype)
