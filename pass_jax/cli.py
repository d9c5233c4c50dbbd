"""Command-line pieces every program shares: the ``--mesh``, multi-host and ``--compile-cache``
flags, and loading the ``--model`` a program runs on (onto the mesh when one is asked for)."""

from __future__ import annotations

import argparse
import os

from jax.sharding import Mesh

from .hf import load_hf
from .sharding import make_mesh, maybe_initialize_distributed
from .user_cache import use_compile_cache

MESH_ENV = "PASS_JAX_MESH"


def add_mesh_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--mesh``, the multi-host flags (``--coordinator``, ``--num-processes``,
    ``--process-id``) and ``--compile-cache`` to a program's parser; :func:`load_model_for_args`
    reads them."""
    g = parser.add_argument_group("devices")
    g.add_argument(
        "--mesh",
        default=os.environ.get(MESH_ENV),
        help="device mesh, e.g. data=2,fsdp=1,tensor=4 (-1 = the rest; default "
        f"fsdp=-1, or ${MESH_ENV})",
    )
    g.add_argument(
        "--coordinator",
        default=None,
        help="multi-host: host:port of process 0 (or 'auto' on TPU pods / SLURM); "
        "default $JAX_COORDINATOR_ADDRESS",
    )
    g.add_argument(
        "--compile-cache",
        metavar="DIR|none",
        help="keep compiled XLA programs in DIR, so the next run loads them instead of "
        "compiling again (default: $PASS_JAX_COMPILE_CACHE, else $JAX_COMPILATION_CACHE_DIR, "
        "else $PASS_JAX_CACHE/xla, else ~/.cache/pass_jax/xla); none: compile in every run",
    )
    g.add_argument("--num-processes", type=int, default=None, help="multi-host: process count")
    g.add_argument("--process-id", type=int, default=None, help="multi-host: this process")
    g.add_argument(
        "--init-timeout",
        type=int,
        default=300,
        help="multi-host: seconds to wait for every process to join (default 300)",
    )
    return parser


def mesh_from_args(args: argparse.Namespace) -> Mesh:
    """Initialise multi-host JAX if configured, then build the ``--mesh`` mesh."""
    maybe_initialize_distributed(
        getattr(args, "coordinator", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
        getattr(args, "init_timeout", 300),
    )
    return make_mesh(getattr(args, "mesh", None))


def load_model_for_args(
    args: argparse.Namespace, model_dir, dtype: str = "float32", stacked: bool = True
):
    """``(mesh, cfg, params)`` for a program: with ``--mesh`` (or multi-host flags) the weights
    go straight into their shards on that mesh; otherwise ``mesh`` is None and the weights
    go to the default device. ``stacked=False``: per-layer params (decoding). First points
    JAX's compilation cache where ``--compile-cache`` says (``user_cache.use_compile_cache``)."""
    use_compile_cache(getattr(args, "compile_cache", None))
    multi_host = args.coordinator or args.num_processes is not None or args.process_id is not None
    mesh = mesh_from_args(args) if args.mesh or multi_host else None
    return mesh, *load_hf(model_dir, dtype=dtype, stacked=stacked, mesh=mesh)
