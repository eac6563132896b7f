"""fournil's Llama must compute exactly what transformers' LlamaForCausalLM computes on the same weights."""

from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fournil.lm.config import ModelConfig
from fournil.lm.hf import load_model, save_model, to_hf_config
from fournil.lm.llama import KVCache, Llama

MHA = ModelConfig(dim=64, n_layers=2, n_heads=4, ffn_dim=176, vocab_size=97, max_seq_len=128, rope_theta=500.0)
GQA = replace(MHA, n_heads=8, n_kv_heads=2, norm_eps=1e-6)
TIED = replace(MHA, tie_embeddings=True)


def hf_twin(model: Llama) -> LlamaForCausalLM:
    """A transformers model built from our config.json with our weights loaded strictly."""
    twin = LlamaForCausalLM(LlamaConfig(**to_hf_config(model.config))).eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin


@pytest.mark.parametrize("config", [MHA, GQA, TIED], ids=["mha", "gqa", "tied"])
@pytest.mark.parametrize("seq_len", [1, 7, 64])
@torch.no_grad()
def test_logits_equal_transformers(config, seq_len):
    model = Llama(config).eval()
    tokens = torch.randint(0, config.vocab_size, (3, seq_len))
    torch.testing.assert_close(model(tokens), hf_twin(model)(tokens).logits, atol=1e-5, rtol=0)


def test_state_dict_keys_and_shapes_equal_transformers():
    for config in (MHA, GQA):
        ours = {k: tuple(v.shape) for k, v in Llama(config).state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in LlamaForCausalLM(LlamaConfig(**to_hf_config(config))).state_dict().items()}
        assert ours == theirs


@pytest.mark.parametrize("config", [MHA, GQA, TIED], ids=["mha", "gqa", "tied"])
@torch.no_grad()
def test_save_then_transformers_loads_identical(tmp_path, config):
    """ours → directory → AutoModelForCausalLM (no remote code): same logits."""
    from transformers import AutoModelForCausalLM

    model = Llama(config).eval()
    save_model(model, tmp_path)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, trust_remote_code=False).eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    tokens = torch.randint(0, config.vocab_size, (2, 33))
    torch.testing.assert_close(model(tokens), theirs(tokens).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", [MHA, GQA, TIED], ids=["mha", "gqa", "tied"])
@torch.no_grad()
def test_transformers_save_then_we_load_identical(tmp_path, config):
    """transformers' save_pretrained → our load_model: same logits, config read back exactly."""
    theirs = LlamaForCausalLM(LlamaConfig(**to_hf_config(config))).eval()
    theirs.save_pretrained(tmp_path)
    ours = load_model(tmp_path).eval()
    assert ours.config == config
    tokens = torch.randint(0, config.vocab_size, (2, 40))
    torch.testing.assert_close(ours(tokens), theirs(tokens).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", [MHA, GQA], ids=["mha", "gqa"])
@torch.no_grad()
def test_kv_cache_decoding_equals_full_forward(config):
    """Prefill 10 tokens then decode 6 one at a time: each step's logits equal the full-sequence forward."""
    model = Llama(config).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 16))
    full = model(tokens)
    cache = KVCache(config, batch_size=2, max_len=32, dtype=torch.float32)
    steps = [model(tokens[:, :10], cache=cache)]
    steps += [model(tokens[:, i : i + 1], cache=cache) for i in range(10, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 16


@torch.no_grad()
def test_left_padded_batch_equals_transformers_and_unpadded():
    """Batched prompts of different lengths with left padding: real positions match transformers and solo runs."""
    model = Llama(GQA).eval()
    a = torch.randint(0, GQA.vocab_size, (1, 12))
    b = torch.randint(0, GQA.vocab_size, (1, 7))
    tokens = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 12, [0] * 5 + [1] * 7])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ours = model(tokens, attention_mask=mask, position_ids=positions)
    theirs = hf_twin(model)(tokens, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1, 5:], theirs[1, 5:], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1, 5:], model(b)[0], atol=1e-5, rtol=0)


@torch.no_grad()
def test_bfloat16_close_to_transformers():
    model = Llama(MHA).eval()
    twin = hf_twin(model)
    model, twin = model.to(torch.bfloat16), twin.to(torch.bfloat16)
    tokens = torch.randint(0, MHA.vocab_size, (2, 24))
    torch.testing.assert_close(model(tokens).float(), twin(tokens).logits.float(), atol=2e-2, rtol=0)


def test_backward_gradients_equal_transformers():
    model = Llama(GQA)
    twin = hf_twin(model).train()
    tokens = torch.randint(0, GQA.vocab_size, (2, 20))
    loss_ours = torch.nn.functional.cross_entropy(model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    loss_theirs = twin(tokens, labels=tokens).loss
    torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-6, rtol=0)
    loss_ours.backward()
    loss_theirs.backward()
    theirs = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-6, rtol=1e-4, msg=name)
