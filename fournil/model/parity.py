"""Proof that a model directory means the same thing to fournil and to transformers."""

from __future__ import annotations

from pathlib import Path

import torch

from fournil.lm.hf import load_model


@torch.no_grad()
def compare_with_transformers(directory: str | Path, seq_len: int = 32, batch_size: int = 2, seed: int = 0) -> dict:
    """Run the same random tokens through both implementations in float32; report the largest logit gap."""
    from transformers import AutoModelForCausalLM

    ours = load_model(directory, dtype="float32").eval()
    theirs = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, trust_remote_code=False).eval()
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, ours.config.vocab_size, (batch_size, seq_len), generator=generator)
    a = ours(tokens)
    b = theirs(tokens).logits
    return {
        "transformers_class": type(theirs).__name__,
        "parameters": ours.num_params(),
        "tokens": batch_size * seq_len,
        "max_abs_diff": float((a - b).abs().max()),
        "same_argmax": bool((a.argmax(-1) == b.argmax(-1)).all()),
    }
