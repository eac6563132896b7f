"""A tiny real model directory for the eval tests: a BPE tokenizer trained on the tokenizer fixtures and a random
2-layer Llama saved with fournil's `save_model` (a shared module: `conftest` is taken by tests/)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parents[2] / "fournil" / "eval" / "fixtures"  # FrenchBench-schema fixtures (shipped: the bake uses them)
TOKENIZER_TEXTS = Path(__file__).parents[1] / "tokenizer" / "data"


def build_model_dir(out: Path, seed: int = 0) -> Path:
    import torch

    from fournil.lm.config import ModelConfig
    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama
    from fournil.tokenizer.config import TokenizerConfig
    from fournil.tokenizer.export import save
    from fournil.tokenizer.train import parse_inputs, train

    specs = [f"fr={TOKENIZER_TEXTS / 'fr.txt'}", f"en={TOKENIZER_TEXTS / 'en.txt'}"]
    tok, _ = train(TokenizerConfig(vocab_size=600, weights={"fr": 1.0, "en": 1.0}), parse_inputs(specs))
    save(tok, out, sentencepiece=False)
    torch.manual_seed(seed)
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, ffn_dim=192, vocab_size=600, max_seq_len=512,
                         init_std=0.2)  # a wide init so that choices get clearly different scores
    save_model(Llama(config), out)
    return out
