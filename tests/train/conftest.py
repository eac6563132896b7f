"""A tiny synthetic corpus packed into shards, and a tiny recipe, so training tests take seconds."""

import numpy as np
import pytest

from fournil.corpus.shards import ShardWriter
from fournil.recipe import load_recipe

VOCAB = 2048  # croissant-1m's vocabulary
TINY = {
    "train.seq_len": 32, "train.batch_tokens": 256, "train.micro_batch_size": 4, "train.steps": 12,
    "train.warmup_steps": 2, "train.lr": 1e-2, "train.log_interval": 1, "train.eval_interval": 6,
    "train.checkpoint_interval": 3, "train.eval_tokens": 512, "train.peak_flops": 1e9, "train.keep_checkpoints": 2,
}


def markov_document(rng: np.random.Generator, low: int, high: int, length: int) -> np.ndarray:
    """Tokens that mostly step +1 through [low, high): learnable structure, so losses fall quickly."""
    tokens = [int(rng.integers(low, high))]
    for _ in range(length - 1):
        nxt = tokens[-1] + 1 if rng.random() < 0.8 else int(rng.integers(low, high))
        tokens.append(low + (nxt - low) % (high - low))
    return np.array(tokens)


def write_shards(directory, seed: int = 0, documents: int = 120, seq_len: int = 32, vocab: int = VOCAB,
                 tokenizer_sha256: str = ""):
    rng = np.random.default_rng(seed)
    writer = ShardWriter(directory, seq_len=seq_len, vocab_size=vocab, eos_id=2, tokens_per_shard=2000,
                         tokenizer_sha256=tokenizer_sha256)
    ranges = {"fr": (100, 130), "en": (130, 160), "code": (160, 190)}
    for i in range(documents):
        category = ("fr", "en", "code")[i % 3]
        doc = markov_document(rng, *ranges[category], int(rng.integers(20, 120)))
        writer.add(doc, category, n_bytes=4 * len(doc))
    for language in ("fr", "en"):
        docs = [markov_document(rng, *ranges[language], 100) for _ in range(6)]
        writer.add_validation(language, [(d, 4 * len(d)) for d in docs])
    writer.close()
    return directory


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture
def tiny_recipe():
    return load_recipe("croissant-1m", overrides=TINY)
