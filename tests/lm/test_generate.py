"""The generation engine: greedy equals transformers' generate, batches equal single prompts, sampling filters
equal transformers' logits processors, stop strings and streaming never print what they must take back."""

from __future__ import annotations

import pytest
import torch

from fournil.lm.generate import Engine, decode_steps, process_logits
from fournil.lm.hf import load_model
from fournil.lm.prompt import PromptTokenizer, StreamDecoder
from fournil.lm.sampling import SamplingConfig

PROMPTS = ["The capital of France is", "Il était une fois, dans un petit village", "def add(a, b):"]


def greedy(model, prompts, n, eos=frozenset()):
    out = [[] for _ in prompts]
    for tokens, done in decode_steps(model, prompts, SamplingConfig(max_tokens=n), eos, pad_id=2):
        for row, t in enumerate(tokens):
            if not (done[row] and out[row] and out[row][-1] in eos):
                out[row].append(t)
    return out


def hf_greedy(directory, ids, n):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return [hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                        max_new_tokens=n, do_sample=False)[0, len(p):].tolist() for p in ids]


def test_greedy_equals_transformers_generate_tiny(tiny_dir):
    tok = PromptTokenizer.load(tiny_dir)
    ids = [tok.encode(p) for p in PROMPTS]
    ours = greedy(load_model(tiny_dir).eval(), [[*p] for p in ids], 24, tok.eos_ids)
    for o, theirs in zip(ours, hf_greedy(tiny_dir, ids, 24), strict=True):
        assert o == theirs


def test_batched_equals_one_by_one_tiny(tiny_dir):
    tok = PromptTokenizer.load(tiny_dir)
    model = load_model(tiny_dir).eval()
    ids = [tok.encode(p) for p in PROMPTS]
    assert len({len(p) for p in ids}) == 3  # different lengths: left padding is exercised
    batched = greedy(model, ids, 16)
    assert batched == [greedy(model, [p], 16)[0] for p in ids]


@pytest.mark.slow
def test_greedy_equals_transformers_generate_smollm2(smol_dir, smol_engine):
    tok = smol_engine.tokenizer
    ids = [tok.encode(PROMPTS[0])]
    ours = greedy(smol_engine.model, ids, 16, tok.eos_ids)
    assert ours == hf_greedy(smol_dir, ids, 16)
    assert tok.decode(ours[0]).startswith(" Paris")


def test_sampling_filters_equal_transformers_processors():
    from transformers import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(3, 50) * 3
    seen_ids = torch.tensor([[1, 2, 3], [4, 4, 5], [0, 7, 9]])
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter(1, seen_ids, True)
    s = SamplingConfig(temperature=0.7, top_k=20, top_p=0.8, min_p=0.05, repetition_penalty=1.3)
    theirs = logits.clone()
    for proc in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(20),
                 TopPLogitsWarper(0.8), MinPLogitsWarper(0.05)):
        theirs = proc(seen_ids, theirs)
    ours = process_logits(logits, seen, s)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    kept = ~torch.isinf(ours)
    torch.testing.assert_close(ours[kept], theirs[kept])


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(tiny_dir):
    engine = Engine.load(tiny_dir)
    s = SamplingConfig(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    a = engine.complete(PROMPTS, s)
    assert [r.tokens for r in a] == [r.tokens for r in engine.complete(PROMPTS, s)]
    assert [r.tokens for r in a] != [r.tokens for r in engine.complete(PROMPTS, SamplingConfig(
        max_tokens=12, temperature=1.0, seed=8, ignore_eos=True))]
    top1 = engine.complete(PROMPTS, SamplingConfig(max_tokens=12, temperature=1.0, top_k=1, seed=1, ignore_eos=True))
    greedy_ = engine.complete(PROMPTS, SamplingConfig(max_tokens=12, ignore_eos=True))
    assert [r.tokens for r in top1] == [r.tokens for r in greedy_]
    assert all(len(r.tokens) == 12 and r.finish_reason == "length" for r in a)


def test_stream_equals_batch_and_stops_before_stop_string(tiny_dir):
    engine = Engine.load(tiny_dir)
    full = engine.complete([PROMPTS[0]], SamplingConfig(max_tokens=20, ignore_eos=True))[0].text
    assert "".join(engine.stream(PROMPTS[0], SamplingConfig(max_tokens=20, ignore_eos=True))) == full
    stop = full[5:9]
    cut = full[:full.index(stop)]
    streamed = "".join(engine.stream(PROMPTS[0], SamplingConfig(max_tokens=20, stop=(stop,), ignore_eos=True)))
    batched = engine.complete([PROMPTS[0]], SamplingConfig(max_tokens=20, stop=(stop,), ignore_eos=True))[0]
    assert streamed == cut == batched.text and batched.finish_reason == "stop"


def test_stream_decoder_holds_back_partial_utf8_and_stop_prefixes(tiny_dir):
    tok = PromptTokenizer.load(tiny_dir)
    ids = tok.encode("Un croissant 🥐 au beurre. FIN du texte", special=False)
    decoder = StreamDecoder(tok, stop=("FIN",))
    pieces = [decoder.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + decoder.flush() == "Un croissant 🥐 au beurre. "
    assert decoder.stopped


def test_sampling_config_names_every_bad_field():
    problems = dict(SamplingConfig(max_tokens=-1, temperature=-1, top_k=-2, top_p=0, min_p=1,
                                   repetition_penalty=0, stop=("",)).check())
    assert set(problems) == {"max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "stop"}


def test_stream_decoder_decodes_a_window_yet_equals_the_whole_decode(tiny_dir, monkeypatch):
    """Byte-level BPE (SmolLM2's): random ids and real text, streamed, equal one decode of all ids; and each push
    decodes a few ids, not all of them (a long generation must not slow down token by token)."""
    import random

    tok = PromptTokenizer.load(tiny_dir)
    rng = random.Random(1)
    sequences = [tok.encode("Un croissant 🥐 au beurre, « très » doré.\n  x = 1", special=False)]
    end = tok.encode(" fin", special=False)  # random ids, then plain text: nothing left unfinished at the end
    sequences += [[rng.randrange(tok.vocab_size) for _ in range(300)] + end for _ in range(10)]
    decode = tok.decode
    widths = []
    monkeypatch.setattr(tok, "decode", lambda ids: widths.append(len(ids)) or decode(ids))
    for n, ids in enumerate(sequences):
        decoder = StreamDecoder(tok)
        streamed = "".join(decoder.push(i) for i in ids) + decoder.flush()
        assert decoder.text == decode(ids)
        if n == 0:  # real text streams exactly (random bytes may turn what was shown into U+FFFD)
            assert streamed == decoder.text
    assert max(widths) < 20, max(widths)
