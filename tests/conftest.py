"""Test setup: 8 simulated CPU devices (for the sharding tests), float32 matmuls, tmp fixtures.

XLA compiles without its backend (LLVM) optimisations: the tests' programs are tiny, so compiling
them is most of the suite's time (measured on a 2-core VM: test_decode + test_sampling 277 s ->
206 s). Results do not depend on it; the programs the benchmark times are compiled normally."""

import gc
import os
import tempfile

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the programs' files of auto's call costs: one fresh folder per test process, not ~/.cache
os.environ["PASS_JAX_CACHE"] = tempfile.mkdtemp(prefix="pass_jax_cache_")
# and no compiled programs kept on disk, unless a test asks (--compile-cache DIR): writing them
# slows the suite down
os.environ["PASS_JAX_COMPILE_CACHE"] = "none"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test file. XLA:CPU maps memory for each program
    it keeps, and one process running the whole suite would otherwise pass the kernel's limit
    of memory maps per process (vm.max_map_count, 65530 by default): test_decode and
    test_sampling alone hold 39k."""
    yield
    jax.clear_caches()
    auto.forget()  # its statistics and the programs compiled ahead (pass_jax.compiled)
    gc.collect()


@pytest.fixture
def restore_compile_cache():
    """The programs point JAX's persistent compilation cache somewhere for the rest of the
    process (``--compile-cache``): put JAX's settings back after the test."""
    from jax.experimental.compilation_cache import compilation_cache

    names = (
        "jax_compilation_cache_dir",
        "jax_enable_compilation_cache",
        "jax_persistent_cache_min_compile_time_secs",
    )
    before = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


SP_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, hello there",
    "I love pizza and pasta",
    "def add(a, b): return a + b",
] * 10


@pytest.fixture(scope="session")
def sp_tokenizer():
    """A tiny LLaMA-style tokenizer: SentencePiece-like BPE (Metaspace pre-tokenizer and
    decoder, so decoding a continuation alone drops its leading space) that adds <s> in front
    by default, as LLaMA's does. Ids: <unk> 0, <s> 1, </s> 2."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        SP_TEXTS,
        trainers.BpeTrainer(
            vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
        ),
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


# ------------------------------------------------------------------ the shared tiny model
# Test files import these (``from conftest import TINY, tiny_params``): a module constant such
# as a file's CFG cannot come from a fixture. A file that needs other values derives its config
# with ``TINY.replace(...)``.

import functools  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402

import pass_jax.auto as auto  # noqa: E402
from pass_jax.config import ModelConfig  # noqa: E402
from pass_jax.model import forward, init_params  # noqa: E402

TINY = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)

# ``forward`` jitted once for every test file (the config is static): compilations are shared
jit_forward = jax.jit(forward, static_argnums=0)


@functools.cache
def _params(cfg: ModelConfig, seed: int):
    return init_params(cfg, jax.random.PRNGKey(seed))


def tiny_params(cfg: ModelConfig = TINY, seed: int = 0):
    """``init_params(cfg, PRNGKey(seed))``, computed once per session; each call returns its own
    dicts (the arrays are shared, and immutable), so a caller may edit its copy."""
    return jax.tree.map(lambda x: x, _params(cfg, seed))


def fake_timing(cost, timed: list | None = None):
    """A stand-in for ``iteration_cost.time_iterations``: ``cost(method, slots)`` seconds per
    loop iteration for each method asked (``slots``: its cache size), nothing compiled or run;
    the methods asked are added to ``timed`` if given."""

    def fake(cfg, params, la_LxD, slots, *args, **kw):
        if timed is not None:
            timed.extend(slots)
        return {m: cost(m, n) for m, n in slots.items()}

    return fake


def random_la(cfg: ModelConfig, L: int, seed: int, scale: float = 1.0):
    """Random look-ahead embeddings ``[L, d_model]``: ``scale * normal(PRNGKey(seed))``."""
    return scale * jax.random.normal(jax.random.PRNGKey(seed), (L, cfg.d_model))


@pytest.fixture(scope="session")
def tiny_model():
    """``(TINY, tiny_params(TINY, 0))``."""
    return TINY, tiny_params()


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """``tiny_hf_dir(cfg=TINY, seed=0, dst=None) -> dir``: ``save_hf(cfg, tiny_params(cfg,
    seed))``, written once per session per (cfg, seed) and shared; with ``dst``, a copy at
    ``dst`` (for a test that edits the files)."""
    from pass_jax.hf import save_hf

    made = {}

    def get(cfg: ModelConfig = TINY, seed: int = 0, dst=None):
        if (cfg, seed) not in made:
            made[cfg, seed] = save_hf(
                cfg, _params(cfg, seed), tmp_path_factory.mktemp("tiny_hf") / "m"
            )
        return made[cfg, seed] if dst is None else shutil.copytree(made[cfg, seed], dst)

    return get


@pytest.fixture(scope="session")
def sp_model_dir(tmp_path_factory, sp_tokenizer):
    """A Hugging Face directory of a random 1-layer LLaMA (TINY's widths) saved with
    ``sp_tokenizer`` (BOS 1 added by default, EOS 2), written once per session: read it, do not
    edit it."""
    from pass_jax.hf import save_hf

    cfg = TINY.replace(vocab_size=len(sp_tokenizer), n_layers=1, bos_token_id=1, eos_token_ids=(2,))
    dst = tmp_path_factory.mktemp("sp_model") / "model"
    return save_hf(cfg, _params(cfg, 0), dst, tokenizer=sp_tokenizer)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a multi-process coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
