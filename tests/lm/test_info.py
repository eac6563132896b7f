"""`model info` arithmetic checked against what torch actually does."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fournil.lm.config import ModelConfig
from fournil.lm.info import (
    activation_elements_per_token,
    describe,
    flops_per_token,
    memory_bytes,
    param_counts,
)
from fournil.lm.llama import Llama
from fournil.recipe import load_recipe


def measured_activation_bytes(config: ModelConfig, batch: int, seq_len: int) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for backward (forward + loss)."""
    model = Llama(config)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    tokens = torch.randint(0, config.vocab_size, (batch, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    return sum(saved.values())


@pytest.mark.parametrize("config", [
    ModelConfig(dim=128, n_layers=4, n_heads=4, ffn_dim=384, vocab_size=2048),
    ModelConfig(dim=256, n_layers=2, n_heads=8, n_kv_heads=2, ffn_dim=704, vocab_size=500),
], ids=["mha", "gqa"])
def test_activation_estimate_within_15_percent_of_measured(config):
    estimate = memory_bytes(config, batch_size=2, seq_len=64, dtype="float32")["activations"]
    measured = measured_activation_bytes(config, 2, 64)
    assert 0.85 < estimate / measured < 1.15, (estimate, measured)


def test_checkpointing_saves_memory_for_deep_models():
    config = load_recipe("croissant-1.3b").model
    assert activation_elements_per_token(config, checkpointing=True) < 0.2 * activation_elements_per_token(config)


def test_flops_follow_6n_plus_attention():
    config = load_recipe("croissant-1.3b").model
    n = param_counts(config).matmul
    flops = flops_per_token(config, seq_len=2048)
    assert flops["forward"] == 2 * n + 4 * 24 * 2048 * 2048
    assert flops["training"] == 3 * flops["forward"]
    # CroissantLLM: ≈ 8.9 GFLOPs per training token → 3T tokens ≈ 2.7e22 FLOPs
    assert 8.5e9 < flops["training"] < 9.3e9


def test_training_flops_per_token_by_hand_and_by_pytorchs_counter():
    """MFU's numerator: 6N + 12·L·T·d (PaLM appendix B, nanoGPT's estimate_mfu), N the matmul parameters.

    By hand for croissant-1m (d 128, 4 layers, ffn 384, vocabulary 2048, untied, no GQA) at T = 128, then against
    PyTorch's FLOP counter over a real forward and backward (math attention, so QKᵀ and AV are counted as bmm)."""
    config = load_recipe("croissant-1m").model
    d, L, f, V, T = 128, 4, 384, 2048, 128
    n = L * (4 * d * d) + L * (3 * d * f) + V * d  # q k v o, gate up down, lm_head
    assert n == 1_114_112
    assert flops_per_token(config, T)["training"] == 6 * n + 12 * L * T * d == 7_471_104

    model = Llama(config)
    assert sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) == n
    tokens = torch.randint(0, V, (2, T + 1))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(tokens[:, :-1])
        forward = counter.get_total_flops()
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    assert forward == 2 * T * flops_per_token(config, T)["forward"]
    assert counter.get_total_flops() == 2 * T * flops_per_token(config, T)["training"]


def test_memory_of_croissant_in_bf16():
    config = load_recipe("croissant-1.3b").model
    memory = memory_bytes(config, batch_size=1, seq_len=2048, dtype="bfloat16")
    assert memory["weights"] == 1_345_423_360 * 2
    assert memory["optimizer"] == 1_345_423_360 * 8


def test_describe_is_json_ready():
    import json

    report = describe(load_recipe("croissant-10m").model, batch_size=4, seq_len=256)
    data = json.loads(json.dumps(report))
    assert data["parameters"]["total"] == 10_522_880
    assert data["memory"]["bytes"]["total"] == sum(v for k, v in data["memory"]["bytes"].items() if k != "total")
