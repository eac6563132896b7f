"""The engine's packed, batched scoring and cached greedy decoding equal the plain one-row-at-a-time computation."""

import json

import pytest
import torch
import torch.nn.functional as F

from fournil.console import UsageError
from fournil.lm import kernels


def plain_loglikelihood(engine, context: str, continuation: str) -> tuple[float, bool]:
    """One unpadded row through the model, lm-eval's way: ctx + cont, score the continuation's tokens."""
    ctx, cont = engine.encode_pair(context, continuation)
    row = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = F.log_softmax(engine.model(row)[0].float(), dim=-1)
    targets = torch.tensor(cont)
    picked = logprobs[len(ctx) - 1:len(ctx) - 1 + len(cont)]
    return picked.gather(1, targets[:, None]).sum().item(), bool((picked.argmax(-1) == targets).all())


def plain_greedy(engine, prompt: str, max_tokens: int) -> list[int]:
    ids = engine.encode(prompt)
    out = []
    for _ in range(max_tokens):
        with torch.no_grad():
            token = int(engine.model(torch.tensor([ids + out]))[0, -1].argmax())
        if token == engine.eos_id:
            break
        out.append(token)
    return out


REQUESTS = [
    ("Question: Quelle planète est la plus proche du Soleil ?\nRéponse:", " Mercure"),
    ("Question: Quelle planète est la plus proche du Soleil ?\nRéponse:", " Vénus"),
    ("Question: Quelle planète est la plus proche du Soleil ?\nRéponse:", " la planète Mars, sans doute"),
    ("La phrase suivante est correcte grammaticalement:\n", " Les enfants jouent."),  # trailing space moves
    ("Le chat ", "dort"),
    ("Bonjour", " tout le monde, comment allez-vous aujourd'hui ?"),
    ("Il était une fois un roi qui vivait dans un grand château au bord de la mer. " * 3, " Fin"),  # two passes
    ("Il était une fois un roi qui vivait dans un grand château au bord de la mer. " * 3, "."),  # one-token body
]


def test_packed_batched_loglikelihood_equals_plain_rows(engine):
    got = engine.loglikelihood(REQUESTS)
    for (context, continuation), (ll, greedy) in zip(REQUESTS, got, strict=True):
        want_ll, want_greedy = plain_loglikelihood(engine, context, continuation)
        assert ll == pytest.approx(want_ll, abs=1e-3), (context, continuation)
        assert greedy == want_greedy


def test_shared_context_is_computed_once(engine):
    """Three choices of one question: one row, the context once, then the three continuations after it."""
    shapes = []
    hook = engine.model.model.embed_tokens.register_forward_hook(
        lambda module, args, output: shapes.append(tuple(args[0].shape)))
    try:
        engine.loglikelihood(REQUESTS[:3])
    finally:
        hook.remove()
    ctx, _ = engine.encode_pair(*REQUESTS[0])
    inputs = sum(len(engine.encode_pair(*r)[1]) - 1 for r in REQUESTS[:3])  # a last token is never an input
    assert shapes == [(1, len(ctx) + inputs)]


def test_a_few_shot_prefix_shared_by_documents_is_computed_once(engine):
    """first_n few-shot prompts: every document starts with the same examples; they are prefilled once and each
    document's rest and choices run after them, with the same scores as separate rows."""
    shots = "".join(f"Question: Combien font {i} et {i} ?\nRéponse: {2 * i}\n\n" for i in range(1, 6))
    questions = ["Quelle est la capitale de la France ?", "Qui a écrit Les Misérables ?", "Combien font 3 et 4 ?"]
    requests = [(shots + f"Question: {q}\nRéponse:", c) for q in questions for c in (" Paris", " Victor Hugo", " 7")]
    requests.append(("Bonjour, je m'appelle", " Marie"))  # shares nothing: scored in the same pass as usual
    shapes = []
    hook = engine.model.model.embed_tokens.register_forward_hook(
        lambda module, args, output: shapes.append(tuple(args[0].shape)))
    try:
        got = engine.loglikelihood(requests)
    finally:
        hook.remove()
    for (context, continuation), (ll, greedy) in zip(requests, got, strict=True):
        want_ll, want_greedy = plain_loglikelihood(engine, context, continuation)
        assert ll == pytest.approx(want_ll, abs=1e-3), (context, continuation)
        assert greedy == want_greedy
    contexts = [engine.encode_pair(*r)[0] for r in requests[::3][:3]]
    common = next(i for i in range(len(contexts[0])) if len({tuple(c[:i + 1]) for c in contexts}) > 1)
    assert common > 40
    assert shapes[0][0] == 1 and shapes[1] == (1, common) and shapes[2][0] == 3  # the lone one, prefix, 3 rows
    assert len(shapes) == 3


def test_empty_context_is_scored_after_the_prefix_token(engine):
    (ll, _), = engine.loglikelihood([("", "Bonjour")])
    tokens = engine.encode("Bonjour")
    row = torch.tensor([[engine.prefix_id, *tokens]])
    with torch.no_grad():
        logprobs = F.log_softmax(engine.model(row)[0].float(), dim=-1)
    want = sum(logprobs[i, t].item() for i, t in enumerate(tokens))
    assert ll == pytest.approx(want, abs=1e-3)


def test_rolling_windows_cover_every_token_once(engine, monkeypatch):
    text = "Le train part dans dix minutes, merci beaucoup pour votre aide et à bientôt."
    tokens = engine.encode(text)
    monkeypatch.setattr(engine, "max_length", 8)
    (total,) = engine.loglikelihood_rolling([text])
    want, previous = 0.0, engine.prefix_id
    for start in range(0, len(tokens), 8):
        block = tokens[start:start + 8]
        row = torch.tensor([[previous, *block[:-1]]])
        with torch.no_grad():
            logprobs = F.log_softmax(engine.model(row)[0].float(), dim=-1)
        want += sum(logprobs[i, t].item() for i, t in enumerate(block))
        previous = block[-1]
    assert len(tokens) > 16  # at least three windows
    assert total == pytest.approx(want, abs=1e-3)


def test_batched_cached_greedy_equals_plain_argmax_loop(engine):
    prompts = ["Le chat dort sur", "Bonjour, je voudrais réserver une table pour deux personnes ce soir", "Paris"]
    got = engine.generate(prompts, until=("\u2603",), max_tokens=12, batch_size=3)  # a stop that never occurs
    for prompt, text in zip(prompts, got, strict=True):
        want = engine.tokenizer.decode(plain_greedy(engine, prompt, 12), skip_special_tokens=True)
        assert text == want


@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_generation_on_the_fixtures_is_the_text_of_the_plain_loop(model_dir, backend):
    """Every backend's incremental decoding gives the text the plain loop gives: each token from the whole
    sequence, all its ids decoded by transformers at every step, cut at the first stop sequence."""
    from eval_fixtures import DATA

    from fournil.eval.engine import Engine, cut

    engine = Engine(model_dir, device="cpu", backend=backend)
    assert engine.backend.name == ("eager" if backend == "eager" else "fused" if kernels.built() else "eager")
    rows = [json.loads(line) for line in (DATA / "french_bench_fquadv2" / "valid.jsonl").read_text().splitlines()]
    prompts = [f"{r['context']}\nQuestion: {r['question']}\nRéponse:" for r in rows]
    for until in (("\u2603",), ("\n", "e")):
        got = engine.generate(prompts, until=until, max_tokens=10, batch_size=2)
        want = [cut(engine.tokenizer.decode(plain_greedy(engine, p, 10), skip_special_tokens=True), until)
                for p in prompts]
        assert got == want


def test_generation_is_bounded_and_cut_at_stop_sequences(engine):
    (free,) = engine.generate(["Le chat"], until=("\u2603",), max_tokens=5)
    assert len(plain_greedy(engine, "Le chat", 5)) == 5  # this random model never stops by itself
    assert free == engine.tokenizer.decode(plain_greedy(engine, "Le chat", 5), skip_special_tokens=True)
    stop = free[1:3]
    (cut,) = engine.generate(["Le chat"], until=(stop,), max_tokens=5)
    assert stop not in cut and free.startswith(cut)
    with pytest.raises(UsageError, match="max tokens"):
        engine.generate(["x"], max_tokens=0)


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(model_dir, tmp_path):
    from fournil.eval.engine import Engine

    bad = tmp_path / "bad"
    bad.mkdir()
    for path in model_dir.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    config = json.loads((bad / "config.json").read_text())
    config["vocab_size"] = 300
    (bad / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    state = {k: (v[:300] if v.shape[0] == 600 else v) for k, v in load_file(bad / "model.safetensors").items()}
    save_file(state, bad / "model.safetensors")
    with pytest.raises(UsageError, match=r"tokenizer has 600 tokens but config\.json says vocab_size=300"):
        Engine(bad, device="cpu")


def test_one_token_choices_after_a_long_context(engine):
    """Two-pass layout with nothing to run after the context: every score comes from the context's last state."""
    context = "Le conseil municipal a voté mardi la rénovation de la piscine du quartier. " * 2 + "Réponse:"
    requests = [(context, c) for c in (" a", " b", ".")]
    assert all(len(engine.encode_pair(*r)[1]) == 1 for r in requests)
    for (ctx, cont), (ll, greedy) in zip(requests, engine.loglikelihood(requests), strict=True):
        want_ll, want_greedy = plain_loglikelihood(engine, ctx, cont)
        assert ll == pytest.approx(want_ll, abs=1e-3) and greedy == want_greedy


def test_chat_mode_asks_through_the_template_and_stops_at_the_end_of_turn(engine):
    """Translation for a fine-tuned chat model: the instruction fournil's SFT teaches, as one ChatML user turn."""
    from fournil.eval.runner import chat_instruction
    from fournil.eval.tasks import TASKS

    message = chat_instruction(TASKS["translation_en_fr"], {"en": "The cat sleeps.", "fr": "Le chat dort."})
    assert message == "Translate this text into French:\nThe cat sleeps."
    (ids,) = engine.chat_prompts([message])
    bos = engine.tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1  # the template's BOS, not a second one
    text = engine.tokenizer.decode(ids)
    assert text.endswith("<|im_start|>user\nTranslate this text into French:\nThe cat sleeps.<|im_end|>\n"
                         "<|im_start|>assistant\n")
    (reply,) = engine.generate([message], until=("\u2603",), max_tokens=6, chat=True)
    assert "<|im_end|>" not in reply


def test_a_chat_translation_run_takes_no_shots_and_is_not_mistaken_for_a_few_shot_one(engine, tmp_path):
    from eval_fixtures import DATA

    from fournil.eval.runner import evaluate
    from fournil.eval.tasks import TASKS

    task = TASKS["translation_en_fr"]
    few = evaluate(engine, task, DATA, tmp_path, limit=2, max_gen_tokens=4)
    chat = evaluate(engine, task, DATA, tmp_path, limit=2, max_gen_tokens=4, chat=True)
    assert few["num_fewshot"] == 5 and not few["chat"]
    assert chat["num_fewshot"] == 0 and chat["chat"] and chat["key"] != few["key"]


def test_short_groups_share_a_row_and_score_as_alone(engine):
    """Documents of very different lengths: the short ones share rows as wide as the long one, masked apart."""
    requests = [("Il était une fois", " un roi qui vivait dans un grand château au bord de la mer, et puis"),
                ("Le chat ", "dort"), ("Le chien ", "aboie"), ("Bonjour", " Marie"), ("Oui", " non")]
    rows = []
    hook = engine.model.model.embed_tokens.register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        got = engine.loglikelihood(requests)
    finally:
        hook.remove()
    assert rows == [2], rows  # one pass: the long document's row and one row of the four short ones
    for (context, continuation), (ll, greedy) in zip(requests, got, strict=True):
        want_ll, want_greedy = plain_loglikelihood(engine, context, continuation)
        assert ll == pytest.approx(want_ll, abs=1e-3), (context, continuation)
        assert greedy == want_greedy
