"""Forward+backward training throughput of fournil's Llama vs transformers' LlamaForCausalLM (eager).

Same config (the croissant-10m preset), same weights, batch, dtype and threads, in one process; the two models
alternate for several rounds and the median tokens/s of each is reported.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from fournil.lm.hf import to_hf_config
from fournil.lm.llama import Llama
from fournil.recipe import load_recipe

BATCH, SEQ_LEN, ROUNDS, STEPS = 8, 256, 7, 3


def _ours_step(model, tokens):
    # next-token targets with the last position ignored: the same loss transformers computes for labels=tokens
    targets = F.pad(tokens[:, 1:], (0, 1), value=-100)
    F.cross_entropy(model(tokens).flatten(0, 1).float(), targets.flatten(), ignore_index=-100).backward()


def _theirs_step(model, tokens):
    model(tokens, labels=tokens).loss.backward()


def _tokens_per_second(step, model, tokens) -> float:
    start = time.perf_counter()
    for _ in range(STEPS):
        step(model, tokens)
        model.zero_grad(set_to_none=True)
    return STEPS * tokens.numel() / (time.perf_counter() - start)


def run() -> list[dict]:
    torch.set_num_threads(int(os.environ.get("FOURNIL_BENCH_THREADS", min(2, os.cpu_count() or 1))))
    torch.manual_seed(0)
    config = load_recipe("croissant-10m").model
    ours = Llama(config).train()
    theirs = LlamaForCausalLM(LlamaConfig(**to_hf_config(config))).train()
    theirs.config._attn_implementation = "sdpa"
    theirs.load_state_dict(ours.state_dict())
    tokens = torch.randint(0, config.vocab_size, (BATCH, SEQ_LEN))
    _ours_step(ours, tokens), _theirs_step(theirs, tokens)  # warm-up (allocator, kernels)
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(_tokens_per_second(_ours_step, ours, tokens))
        b.append(_tokens_per_second(_theirs_step, theirs, tokens))
    return [{
        "name": f"model fwd+bwd {config.dim}d×{config.n_layers}L b{BATCH}×{SEQ_LEN} fp32",
        "ours": statistics.median(a),
        "anchor": statistics.median(b),
        "unit": "tok/s",
    }]
