"""Test setup: 8 simulated CPU devices (for the sharding tests), float32 matmuls, tmp fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

SP_TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world, hello there",
            "I love pizza and pasta", "def add(a, b): return a + b"] * 10


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
    tok.train_from_iterator(SP_TEXTS, trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                bos_token="<s>", eos_token="</s>")
