"""Training-step throughput: fournil's loop vs transformers' LlamaForCausalLM + torch AdamW, and MFU.

Same config (croissant-40m), weights, batch, dtype (float32) and threads, in one process. Ours is the train
stage's own step (accumulate_gradients + clip_and_step, fused AdamW, blocks compiled as `train.compile: true`
does); the anchor is the plain transformers recipe (labels=…, loss.backward(), clip, AdamW). They alternate for
several rounds after warm-up (ours includes torch.compile's one-off compilation in warm-up only).
MFU = tokens/s × training FLOPs per token ÷ this CPU's measured float32 matmul peak.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fournil.lm.hf import to_hf_config
from fournil.lm.info import flops_per_token
from fournil.lm.llama import Llama
from fournil.recipe import load_recipe
from fournil.train.flops import measure_peak_flops
from fournil.train.loop import accumulate_gradients, clip_and_step, make_optimizer
from fournil.train.parallel import World, parallelize

PRESET, BATCH, SEQ_LEN, ROUNDS = "croissant-40m", 8, 256, 5


def run() -> list[dict]:
    torch.set_num_threads(int(os.environ.get("FOURNIL_BENCH_THREADS", min(2, os.cpu_count() or 1))))
    torch.manual_seed(0)
    recipe = load_recipe(PRESET)
    config = recipe.model
    ours = Llama(config)
    theirs = LlamaForCausalLM(LlamaConfig(**to_hf_config(config))).train()
    theirs.load_state_dict(ours.state_dict())
    ours = parallelize(ours, World(), "fsdp", activation_checkpointing=False, compile=True).train()
    our_opt = make_optimizer(ours, recipe.train)
    their_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(0, config.vocab_size, (BATCH, SEQ_LEN + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def our_step():
        accumulate_gradients(ours, [(inputs, targets)], 1, contextlib.nullcontext(), torch.device("cpu"))
        clip_and_step(ours, our_opt, 1.0)

    def their_step():
        theirs(inputs, labels=inputs).loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        their_opt.step()
        their_opt.zero_grad(set_to_none=True)

    def tokens_per_s(step) -> float:
        start = time.perf_counter()
        step()
        return inputs.numel() / (time.perf_counter() - start)

    our_step(), our_step(), their_step()  # compile, allocator and kernel warm-up
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(tokens_per_s(our_step))
        b.append(tokens_per_s(their_step))
    peak = measure_peak_flops(2.0)
    flops = flops_per_token(config, SEQ_LEN)["training"]
    name = f"train step {PRESET} b{BATCH}×{SEQ_LEN} fp32"
    return [
        {"name": name, "ours": statistics.median(a), "anchor": statistics.median(b), "unit": "tok/s"},
        {"name": f"MFU {PRESET} (peak {peak / 1e9:.0f} GFLOP/s)", "ours": 100 * statistics.median(a) * flops / peak,
         "anchor": 100 * statistics.median(b) * flops / peak, "unit": "%"},
    ]
