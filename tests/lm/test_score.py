"""The scorer computes what one plain row per request computes, in transformers as in fournil: packing, prefix
sharing and rolling windows change the cost, not the numbers."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from fournil.lm.config import ModelConfig
from fournil.lm.hf import load_model, save_model
from fournil.lm.llama import Llama
from fournil.lm.score import Group, Scorer, bits_per_byte, pack_rows, window_nats

CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=300, max_seq_len=256,
                     init_std=0.2)  # a wide init: clearly different scores, some greedy hits among few tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("score")
    torch.manual_seed(0)
    save_model(Llama(CONFIG), directory)
    return directory


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir, dtype="float32").eval()


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, CONFIG.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


SHOTS = ids(40, 1)  # a few-shot prefix three contexts share
PAIRS = [
    (ids(12, 2), ids(3, 3)), (ids(12, 2), ids(1, 4)), (ids(12, 2), ids(7, 5)),  # one question, three choices
    *[(SHOTS + ids(5, 10 + i), ids(2, 20 + i)) for i in range(3)],  # a shared few-shot prefix
    (ids(80, 6), ids(2, 7)),  # a long context, short continuation: prefilled, then scored in a second pass
    (ids(1, 8), ids(30, 9)), (ids(3, 11), ids(1, 12)),  # short groups packed into one row
]


@torch.no_grad()
def row_scores(forward, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """One unpadded row (context + continuation) through `forward`: the continuation's log-probability."""
    logits = forward(torch.tensor([context + continuation]))[0, len(context) - 1:-1].float()
    target = torch.tensor(continuation)
    return (F.log_softmax(logits, -1).gather(1, target[:, None]).sum().item(),
            bool((logits.argmax(-1) == target).all()))


def test_loglikelihoods_equal_transformers_llama_on_the_same_weights(model, model_dir):
    theirs = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    context = ids(5, 50)
    with torch.no_grad():
        pairs = [*PAIRS, (context, [int(model(torch.tensor([context]))[0, -1].argmax())])]  # greedy by design
    got = Scorer(model, batch_tokens=64).loglikelihood(pairs)
    for (context, continuation), (ll, greedy) in zip(pairs, got, strict=True):
        want, want_greedy = row_scores(lambda x: theirs(x).logits, context, continuation)
        assert ll == pytest.approx(want, abs=1e-4) and greedy == want_greedy
    assert got[-1][1] and not got[0][1]


def test_packed_and_prefix_shared_scoring_equals_each_row_alone(model):
    passes = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: passes.append(args[0].shape))
    try:
        together = Scorer(model).loglikelihood(PAIRS)
    finally:
        hook.remove()
    alone = [Scorer(model).loglikelihood([p])[0] for p in PAIRS]
    for (ll, greedy), (want, want_greedy) in zip(together, alone, strict=True):
        assert ll == pytest.approx(want, abs=1e-5) and greedy == want_greedy
    for pair, (ll, _) in zip(PAIRS, alone, strict=True):
        assert ll == pytest.approx(row_scores(model, *pair)[0], abs=1e-4)
    # the long context, then its continuation; the question's group and the two short ones packed into two rows
    # as wide as the widest; the few-shot prefix once, then the three documents' rest and choices after it
    assert [tuple(s) for s in passes] == [(1, 80), (1, 1), (2, 30), (1, 40), (3, 6)]


def test_a_context_longer_than_the_model_is_cut_on_the_left():
    model = Llama(replace(CONFIG, max_seq_len=16)).eval()
    context, continuation = ids(40, 30), ids(4, 31)
    ((ll, greedy),) = Scorer(model).loglikelihood([(context, continuation)])
    assert (ll, greedy) == pytest.approx(row_scores(model, context[-13:], continuation), abs=1e-4)


def test_rolling_windows_equal_one_pass_when_the_text_fits(model):
    stream = ids(60, 40)
    (total,) = Scorer(model, max_length=64).rolling([stream])
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([stream]))[0, :-1], -1)
    assert total == pytest.approx(logprobs.gather(1, torch.tensor(stream[1:])[:, None]).sum().item(), abs=1e-4)


def test_rolling_windows_of_a_long_stream_equal_the_plain_forward_windows(model):
    """Three windows of 16 predicted tokens and a short last one, each seeing the token before it: the packed
    scorer and `window_nats` (what a model wrapped for training runs) agree."""
    stream = ids(55, 41)
    (total,) = Scorer(model, max_length=16).rolling([stream])
    nats, count = window_nats(model, torch.tensor(stream), 16, batch_size=2)
    assert count == 54 and -total == pytest.approx(nats, abs=1e-4)
    want = 0.0
    for start in range(0, 54, 16):
        want -= row_scores(model, [stream[start]], stream[start + 1:start + 17])[0]
    assert nats == pytest.approx(want, abs=1e-4)


def test_bits_per_byte_of_a_text_by_hand(model):
    """A byte-level tokenizer on the same model: bits per byte is the text's nats over ln 2 and its byte count."""
    text = "Le chat dort. The cat sleeps."
    stream = [256, *text.encode()]  # 256: the id the text is scored after, as a BOS
    (ll,) = Scorer(model).rolling([stream])
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([stream[:-1]]))[0], -1)
    nats = -sum(logprobs[i, t].item() for i, t in enumerate(stream[1:]))
    assert bits_per_byte(-ll, len(text.encode())) == pytest.approx(nats / math.log(2) / 29, abs=1e-5)


def test_pack_rows_fills_the_ends_of_long_rows_with_short_groups():
    widths = [3, 10, 4, 6, 3]
    rows = pack_rows([Group((i,), ()) for i in range(5)], lambda g: widths[g.context[0]])
    assert [[widths[g.context[0]] for g in row] for row in rows] == [[10], [6, 4], [3, 3]]
