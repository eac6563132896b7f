"""The fused int8 decode step (fournil.lm.fused) against the same int8 model run one operator at a time:
logits step by step (a batch with left padding, grouped-query heads), tokens on SmolLM2, the same numbers with one
thread or two, what it refuses, and which models and batches it leaves to the other paths."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fournil.console import UsageError
from fournil.infer.quantize import quantize
from fournil.lm import kernels
from fournil.lm.backends import MaskedState, choose
from fournil.lm.fused import FusedDecoder
from fournil.lm.generate import Engine, decode_steps
from fournil.lm.llama import KVCache
from fournil.lm.quantized import load_quantized
from fournil.lm.sampling import SamplingConfig

pytestmark = pytest.mark.skipif(not kernels.available(), reason="fournil's kernels need x86-64 AVX2 and a compiler")


@pytest.fixture(scope="module")
def tiny_int8(tiny_dir, tmp_path_factory):
    return quantize(tiny_dir, tmp_path_factory.mktemp("fused") / "int8", 8)


def _steps(model, step, prompts: list[list[int]], n: int) -> list[torch.Tensor]:
    """Feed left-padded prompts then `n` fixed tokens one position at a time; the logits of every step.
    step=None runs the model eagerly (one operator at a time) on the same cache layout."""
    B, width = len(prompts), max(len(p) for p in prompts)
    S = width + n
    cache = KVCache(model.config, B, S, torch.float32)
    key_mask = torch.zeros((B, 1, 1, S), dtype=torch.bool)
    filled = [0] * B
    out = []
    for col in range(S):
        ids, positions = [], []
        for row, p in enumerate(prompts):
            pad = width - len(p)
            real = col >= pad
            ids.append(p[col - pad] if real and col < width else (7 * col + row) % 500 if real else 0)
            positions.append(filled[row])
            key_mask[row, 0, 0, col] = real
            filled[row] += real
        ids_t, pos_t = torch.tensor(ids)[:, None], torch.tensor(positions)[:, None]
        if step is None:
            logits = model(ids_t, position_ids=pos_t, attention_mask=key_mask[:, 0, 0, :col + 1].long(),
                           cache=cache)[:, -1].float()
        else:
            logits = step.step(ids_t, pos_t, col, key_mask, cache)
            cache.length += 1
        out.append(logits[[r for r in range(B) if key_mask[r, 0, 0, col]]])
    return out


def _load(kind: str, tiny_dir, tiny_int8):
    """The tiny model as int8 or float32, and its fused step."""
    from fournil.lm.hf import load_model

    model = load_quantized(tiny_int8) if kind == "int8" else load_model(tiny_dir, dtype="float32").eval()
    return model, choose(model, "fused")


@torch.inference_mode()
@pytest.mark.parametrize(("kind", "tolerance"), [("int8", 2e-3), ("float32", 1e-5)])
def test_fused_logits_match_the_model_one_operator_at_a_time(tiny_dir, tiny_int8, kind, tolerance):
    model, fused = _load(kind, tiny_dir, tiny_int8)
    assert isinstance(fused, FusedDecoder) and fused.kind == kind
    prompts = [[1, 504, 3205, 314], [1, 9000], [1, 42, 43, 44, 45, 46]]  # padding holes in rows 0 and 1
    got, ref = _steps(model, fused, prompts, 6), _steps(model, None, prompts, 6)
    for step, (g, r) in enumerate(zip(got, ref, strict=True)):
        # int8: both quantise activations to int16 the same way, and sums in another order move a rounding now
        # and then; float32: sums in another order only
        assert torch.allclose(g, r, rtol=0, atol=tolerance * r.abs().max().item()), (step, (g - r).abs().max())
        assert torch.equal(g.argmax(-1), r.argmax(-1))


@torch.inference_mode()
def test_one_thread_or_more_give_the_same_numbers(tiny_int8):
    """Also with more threads than CPUs (on a 2-CPU machine, 4: the step then meets at libgomp's barrier, not its
    own spinning one)."""
    import os

    model = load_quantized(tiny_int8)
    fused = choose(model, "fused")
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, len(os.sched_getaffinity(0)) + 2):
            torch.set_num_threads(n)
            # two rows, and one (whose keys each thread rotates itself: no barrier before attention)
            runs.append(_steps(model, fused, [[1, 2, 3], [4, 5]], 3) + _steps(model, fused, [[6, 7, 8, 9]], 9))
    finally:
        torch.set_num_threads(threads)
    # each output row is one thread's whole dot product, and small work is done by every thread alike
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))


@torch.inference_mode()
def test_fused_step_refuses_bad_input_with_a_message(tiny_int8):
    model = load_quantized(tiny_int8)
    fused = choose(model, "fused")
    cache = KVCache(model.config, 1, 8, torch.float32)
    mask = torch.ones((1, 1, 1, 8), dtype=torch.bool)
    one = torch.tensor([[1]])
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        fused.step(torch.tensor([[model.config.vocab_size]]), one, 0, mask, cache)
    with pytest.raises(RuntimeError, match="slot 8 outside the cache of 8"):
        fused.step(one, one, 8, mask, cache)
    with pytest.raises(RuntimeError, match="past the rotary table"):
        fused.step(one, torch.tensor([[model.config.max_seq_len]]), 0, mask, cache)
    wrong = torch.zeros(model.config.n_layers, 1, model.config.kv_heads + 1, 8, model.config.head_dim)
    with pytest.raises(RuntimeError, match="caches are"):
        fused.step(one, one, 0, mask, SimpleNamespace(keys=wrong, values=wrong))
    with pytest.raises(RuntimeError, match="caches are"):  # one layer short
        fused.step(one, one, 0, mask, SimpleNamespace(keys=cache.keys[1:], values=cache.values[1:]))


def test_auto_picks_the_fused_step_where_it_runs(tiny_dir, tiny_int8, tmp_path, monkeypatch):
    assert Engine.load(tiny_int8).backend.name == "fused"
    assert Engine.load(tiny_dir).backend.name == "fused"  # float32 too: no compile to wait for
    assert Engine.load(tiny_int8, dtype="bfloat16").backend.name == "eager"  # it computes in float32 only
    assert Engine.load(tiny_dir, dtype="bfloat16").backend.name == "eager"
    assert Engine.load(tiny_dir, dtype="bfloat16", backend="inductor").backend.name == "inductor"  # only when asked
    int4 = quantize(tiny_dir, tmp_path / "int4", 4)
    assert Engine.load(int4).backend.name == "eager"
    with pytest.raises(UsageError, match="--backend fused: it runs models whose matrices are all int8"):
        Engine.load(int4, backend="fused")
    monkeypatch.setattr(kernels, "_available", False)  # a machine without the kernels
    assert Engine.load(tiny_int8).backend.name == "eager"
    with pytest.raises(UsageError, match="--backend fused: fournil's CPU kernels did not load"):
        Engine.load(tiny_dir, backend="fused")


def test_eager_and_fused_give_the_same_greedy_tokens(tiny_dir):
    sampling = SamplingConfig(max_tokens=16, ignore_eos=True)
    prompts = ["Bonjour", "The capital of France is"]
    eager, fused = Engine.load(tiny_dir, backend="eager"), Engine.load(tiny_dir, backend="fused")
    for batch in (prompts[:1], prompts):  # batch 1 (the token call) and a left-padded batch
        assert [c.tokens for c in fused.complete(batch, sampling)] == [c.tokens for c in eager.complete(batch, sampling)]


def test_a_batch_wider_than_the_kernels_decodes_one_operator_at_a_time(tiny_int8):
    engine = Engine.load(tiny_int8)
    sampling = SamplingConfig(max_tokens=3, ignore_eos=True)
    prompts = [[1, 100 + i] for i in range(kernels.MAX_ROWS + 1)]
    assert not engine.backend.accepts(len(prompts))
    wide = [t for t, _ in decode_steps(engine.model, prompts, sampling, backend=engine.backend)]
    eager = [t for t, _ in decode_steps(engine.model, prompts, sampling)]
    assert wide == eager


@pytest.mark.slow
def test_smollm2_int8_greedy_tokens_are_those_of_the_model_one_operator_at_a_time(smol_dir, tmp_path):
    fused = Engine.load(quantize(smol_dir, tmp_path / "int8", 8))
    ops = Engine.load(tmp_path / "int8", backend="eager")
    sampling = SamplingConfig(max_tokens=24, ignore_eos=True)
    prompts = ["The capital of France is", "La recette de la pâte à crêpes :"]
    long = ("Le Québec est une province du Canada dont la seule langue officielle est le français ; sa capitale, "
            "la ville de Québec, fut fondée en 1608 par Samuel de Champlain.")
    assert len(fused.encode(long)) > fused.backend.prefill_tokens  # this one gets the eager prefill
    # batch 1: the prompt prefilled in one fused call (up to 32 tokens), then fused steps
    for prompt in ["Bonjour", *prompts, long]:
        assert fused.complete([prompt], sampling)[0].tokens == ops.complete([prompt], sampling)[0].tokens
    # a left-padded batch of two: an eager prefill, then fused steps
    assert [c.tokens for c in fused.complete(prompts, sampling)] == [c.tokens for c in ops.complete(prompts, sampling)]


def test_int8_matrices_move_to_one_aligned_copy_with_the_same_numbers(tiny_int8):
    from fournil.lm.fused import HUGE_PAGE, move_to_huge_pages

    model = load_quantized(tiny_int8)
    linears = [model.model.layers[0].self_attn.q_proj, model.model.layers[0].mlp.down_proj, model.lm_head]
    before = [lin.weight.clone() for lin in linears]
    move_to_huge_pages(model, linears)
    assert all(torch.equal(lin.weight, w) for lin, w in zip(linears, before, strict=True))
    assert linears[0].weight.data_ptr() % HUGE_PAGE == 0  # whole huge pages from the first matrix on
    storage = {lin.weight.untyped_storage().data_ptr() for lin in linears}
    assert len(storage) == 1  # one copy, in the order a step reads them
    assert linears[1].weight.data_ptr() == linears[0].weight.data_ptr() + linears[0].weight.numel()


@torch.inference_mode()
@pytest.mark.parametrize(("kind", "length"), [("int8", 5), ("int8", kernels.MAX_ROWS + 8), ("float32", 9)])
def test_a_prompt_prefilled_in_one_call_leaves_the_logits_and_cache_of_the_model(tiny_dir, tiny_int8, kind, length):
    model, fused = _load(kind, tiny_dir, tiny_int8)  # 32 + 8: two calls, the second after the first
    ids = torch.tensor([[(31 * i + 5) % 4000 for i in range(length)]])
    positions = torch.arange(length)[None]
    S = length + 4
    cache, ref_cache = KVCache(model.config, 1, S, torch.float32), KVCache(model.config, 1, S, torch.float32)
    key_mask = torch.zeros((1, 1, 1, S), dtype=torch.bool)
    got = fused.prefill(ids, positions, key_mask, cache)
    ref = model(ids, cache=ref_cache)[:, -1].float()
    assert got.shape == (1, model.config.vocab_size) and cache.length == length
    assert key_mask[0, 0, 0, :length].all() and not key_mask[0, 0, 0, length:].any()
    assert torch.allclose(got, ref, rtol=0, atol=2e-3 * ref.abs().max().item()), (got - ref).abs().max()
    for k, ref_k in zip(cache.k, ref_cache.k, strict=True):  # keys stored causally, rotated at their positions
        assert torch.allclose(k, ref_k, rtol=0, atol=2e-3 * ref_k.abs().max().item())


@torch.inference_mode()
def test_two_rows_may_not_store_keys_in_one_cache_cell(tiny_int8):
    model = load_quantized(tiny_int8)
    fused = choose(model, "fused")
    cache = KVCache(model.config, 1, 8, torch.float32)
    two = torch.tensor([1, 2])
    with pytest.raises(RuntimeError, match="rows 0 and 1 would store their keys in the same cache cell"):
        torch.ops.fournil.decode_step(fused.plan, two, two, torch.zeros(2, dtype=torch.long),
                                           torch.tensor([3, 3]), torch.ones((2, 8), dtype=torch.bool),
                                           cache.keys, cache.values, False)
    with pytest.raises(RuntimeError, match="cache row 1 outside the batch of 1"):
        torch.ops.fournil.decode_step(fused.plan, two, two, torch.tensor([0, 1]), torch.tensor([0, 1]),
                                           torch.ones((2, 8), dtype=torch.bool), cache.keys, cache.values, False)


@torch.inference_mode()
def test_a_tied_float_head_stays_tied_to_the_embeddings_when_moved():
    from fournil.lm.config import ModelConfig
    from fournil.lm.llama import Llama

    torch.manual_seed(0)
    config = ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=256,
                         max_seq_len=64, init_std=0.1, tie_embeddings=True)
    model = Llama(config).eval()
    before = model.lm_head.weight.clone()
    fused = choose(model, "fused")
    assert fused.kind == "float32"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight, before)
    got = _steps(model, fused, [[1, 2, 3]], 2)
    ref = _steps(model, None, [[1, 2, 3]], 2)
    assert all(torch.allclose(g, r, rtol=0, atol=1e-5 * r.abs().max().item()) for g, r in zip(got, ref, strict=True))


@torch.inference_mode()
def test_a_token_step_with_plain_integers_is_decode_step_and_its_argmax(tiny_int8):
    model = load_quantized(tiny_int8)
    fused = choose(model, "fused")
    S = 8
    caches = [KVCache(model.config, 1, S, torch.float32) for _ in range(2)]
    masks = [torch.zeros((1, 1, 1, S), dtype=torch.bool) for _ in range(2)]
    logits = torch.empty(1, model.config.vocab_size)
    for slot, token in enumerate([5, 17, 300, 2]):
        masks[0][0, 0, 0, slot] = True
        ref = fused.step(torch.tensor([[token]]), torch.tensor([[slot]]), slot, masks[0], caches[0])
        picked = fused.token(token, slot, slot, masks[1], caches[1], logits)
        assert torch.equal(masks[1], masks[0])  # the step sets its own column
        assert torch.equal(logits, ref) and picked == int(ref.argmax())
        assert torch.equal(caches[1].keys, caches[0].keys) and torch.equal(caches[1].values, caches[0].values)
    with pytest.raises(RuntimeError, match="slot 8 outside the cache of 8"):
        fused.token(1, 0, S, masks[1], caches[1], logits)
    with pytest.raises(RuntimeError, match="a cache of one row"):
        fused.token(1, 0, 0, masks[1], KVCache(model.config, 2, S, torch.float32), logits)
    with pytest.raises(RuntimeError, match="logits of"):
        fused.token(1, 0, 0, masks[1], caches[1], torch.empty(1, 3))


class _NotFused:
    """The fused backend without its batch-1 `token` call: every step through `step`."""

    def __init__(self, fused):
        self.fused, self.prefill_tokens, self.accepts = fused, fused.prefill_tokens, fused.accepts
        self.step, self.prefill = fused.step, fused.prefill

    def start(self, ids, mask, max_len):
        return MaskedState(self, self.fused.model, ids, mask, max_len)


@pytest.mark.parametrize("sampling", [
    SamplingConfig(max_tokens=12, ignore_eos=True),
    SamplingConfig(max_tokens=12, ignore_eos=True, repetition_penalty=1.5),
    SamplingConfig(max_tokens=12, ignore_eos=True, temperature=0.9, top_k=40, seed=3),
], ids=["greedy", "repetition-penalty", "sampled"])
def test_batch_one_decodes_the_same_tokens_through_token_steps(tiny_int8, sampling):
    model = load_quantized(tiny_int8)
    fused = choose(model, "fused")
    prompt = [[1, 50, 60, 70]]
    got = [t for t, _ in decode_steps(model, prompt, sampling, backend=fused)]
    ref = [t for t, _ in decode_steps(model, prompt, sampling, backend=_NotFused(fused))]
    assert got == ref and len(got) == 12
