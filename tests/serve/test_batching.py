"""Continuous batching in-process: requests that join and leave a running batch give exactly the text they give
alone through `Engine` (greedy and seeded sampling), slots are reused, cancelled requests free their row."""

from __future__ import annotations

import pytest

from fournil.lm.generate import Engine
from fournil.lm.sampling import SamplingConfig
from fournil.serve.batching import Request, Scheduler

PROMPTS = ["The capital of France is", "Bonjour", "Il était une fois, dans un pays lointain, une princesse qui",
           "1, 2, 3,", "Hello, my name is", "Paris"]


@pytest.fixture(scope="module")
def engine(tiny_dir):
    return Engine.load(tiny_dir)


class Sink:
    """Collects one request's events as the server would."""

    def __init__(self):
        self.text, self.done = "", None

    def __call__(self, event):
        if event[0] == "delta":
            self.text += event[1]
        elif event[0] == "done":
            self.done = event[1:]
        else:
            raise AssertionError(event)


def submit(scheduler, engine, prompt, sampling):
    sink = Sink()
    request = Request(engine.tokenizer.encode(prompt), sampling, sink)
    scheduler.submit(request)
    return request, sink


def run_until_idle(scheduler, limit=10_000):
    for _ in range(limit):
        scheduler.step()
        if not scheduler.active and not scheduler.waiting and scheduler.inbox.empty():
            return
    raise AssertionError("scheduler did not drain")


def test_staggered_requests_equal_engine_alone(engine):
    scheduler = Scheduler(engine.model, engine.tokenizer, slots=4, context=128)
    configs = [SamplingConfig(max_tokens=8 + 2 * i, ignore_eos=True) for i in range(len(PROMPTS))]
    configs[2] = SamplingConfig(max_tokens=14, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)
    configs[4] = SamplingConfig(max_tokens=12, repetition_penalty=1.3, top_k=20, temperature=0.7, seed=3,
                                ignore_eos=True)
    sinks = []
    for i, (prompt, sampling) in enumerate(zip(PROMPTS, configs, strict=True)):
        sinks.append(submit(scheduler, engine, prompt, sampling)[1])
        for _ in range(i + 1):  # later requests join a batch that is mid-decode, more slots than free
            scheduler.step()
    assert scheduler.peak_batch == 4  # the batch really was shared, and capped by the slots
    run_until_idle(scheduler)
    for prompt, sampling, sink in zip(PROMPTS, configs, sinks, strict=True):
        alone = engine.complete([prompt], sampling)[0]
        assert sink.text == alone.text
        assert sink.done == ("length", len(engine.tokenizer.encode(prompt)), sampling.max_tokens)


def test_stop_string_and_context_limit(engine):
    scheduler = Scheduler(engine.model, engine.tokenizer, slots=2, context=32)
    free = engine.complete(["Bonjour"], SamplingConfig(max_tokens=10, ignore_eos=True))[0].text
    stop = free[3:6]
    _, stopped = submit(scheduler, engine, "Bonjour", SamplingConfig(max_tokens=10, stop=(stop,), ignore_eos=True))
    _, long = submit(scheduler, engine, "Bonjour", SamplingConfig(max_tokens=100, ignore_eos=True))
    run_until_idle(scheduler)
    assert stopped.done[0] == "stop" and stopped.text == free[:free.find(stop)]
    prompt_len = len(engine.tokenizer.encode("Bonjour"))
    assert long.done == ("length", prompt_len, 32 - prompt_len)  # cut by the context, not max_tokens


def test_cancel_frees_slot_and_prompt_checks(engine):
    scheduler = Scheduler(engine.model, engine.tokenizer, slots=1, context=64)
    first, first_sink = submit(scheduler, engine, "Bonjour", SamplingConfig(max_tokens=50, ignore_eos=True))
    _, second_sink = submit(scheduler, engine, "Hello", SamplingConfig(max_tokens=3, ignore_eos=True))
    scheduler.step()
    scheduler.step()
    assert scheduler.active == [first] and len(scheduler.waiting) == 1  # one slot: the second one waits
    first.cancelled = True
    run_until_idle(scheduler)
    assert first_sink.done is None and second_sink.done[0] == "length" and scheduler.cancelled == 1
    with pytest.raises(ValueError, match="does not fit"):
        scheduler.submit(Request(list(range(64)), SamplingConfig(), Sink()))
    with pytest.raises(ValueError, match="max_tokens"):
        scheduler.submit(Request([1, 2], SamplingConfig(max_tokens=0), Sink()))


def test_thread_serves_concurrent_requests(engine):
    scheduler = Scheduler(engine.model, engine.tokenizer, slots=8, context=128)
    scheduler.start()
    try:
        sinks = []
        for prompt in PROMPTS:
            sink = Sink()
            sinks.append(sink)
            scheduler.submit(Request(engine.tokenizer.encode(prompt), SamplingConfig(max_tokens=8), sink))
    finally:
        scheduler.stop(timeout=60)
    assert not scheduler._thread.is_alive()  # stop finished the queued work, then the thread ended
    for prompt, sink in zip(PROMPTS, sinks, strict=True):
        assert sink.text == engine.complete([prompt], SamplingConfig(max_tokens=8))[0].text


def test_overflowing_temperature_is_greedy(engine):
    """1e-300 is a valid temperature but overflows the scaled logits: the limit behaviour (argmax), not a crash."""
    scheduler = Scheduler(engine.model, engine.tokenizer, slots=2, context=64)
    _, tiny_t = submit(scheduler, engine, "Bonjour", SamplingConfig(max_tokens=6, temperature=1e-300, seed=1,
                                                                   ignore_eos=True))
    _, greedy = submit(scheduler, engine, "Bonjour", SamplingConfig(max_tokens=6, ignore_eos=True))
    run_until_idle(scheduler)
    assert tiny_t.done[0] == "length" and tiny_t.text == greedy.text


@pytest.mark.slow
def test_real_model_in_a_changing_batch_equals_engine(smol_engine):
    """SmolLM2-135M chat replies, requests joining mid-decode: the same greedy text as `Engine` alone."""
    questions = ["What is the capital of France?", "Quelle est la capitale de l'Italie ?", "Say hello."]
    sampling = SamplingConfig(max_tokens=16)
    scheduler = Scheduler(smol_engine.model, smol_engine.tokenizer, slots=4, context=256)
    sinks = []
    for question in questions:
        sink = Sink()
        ids = smol_engine.tokenizer.chat([{"role": "user", "content": question}])
        scheduler.submit(Request(ids, sampling, sink))
        sinks.append(sink)
        for _ in range(3):
            scheduler.step()
    run_until_idle(scheduler)
    assert scheduler.peak_batch == 3
    for question, sink in zip(questions, sinks, strict=True):
        assert sink.text == smol_engine.complete([question], sampling, chat=True)[0].text
        assert sink.text.strip()  # a real model says something


def test_int8_rows_decode_through_the_fused_step_as_one_operator_at_a_time(tiny_dir, tmp_path, monkeypatch):
    """The server's decode step for an int8 model is the fused one (each row its own cache row and column, lengths
    differing and changing as requests come and go), with the tokens of the same model one operator at a time."""
    from fournil.infer.quantize import quantize
    from fournil.lm import kernels
    from fournil.lm.backends import choose

    if not kernels.available():
        pytest.skip("fournil's kernels need x86-64 AVX2 and a compiler")
    int8 = Engine.load(quantize(tiny_dir, tmp_path / "int8", 8))
    texts, calls = {}, []
    decoder = choose(int8.model, "fused")  # the one every Scheduler of this model gets
    rows = decoder.rows
    monkeypatch.setattr(decoder, "rows", lambda *args: calls.append(len(args[0])) or rows(*args))
    for fused in (True, False):
        scheduler = Scheduler(int8.model, int8.tokenizer, slots=3, context=96, backend="auto" if fused else "eager")
        assert scheduler.backend.name == ("fused" if fused else "eager")
        calls.clear()
        sinks = []
        for i, prompt in enumerate(PROMPTS):
            sinks.append(submit(scheduler, int8, prompt, SamplingConfig(max_tokens=6 + 3 * i, ignore_eos=True))[1])
            scheduler.step()
        run_until_idle(scheduler)
        assert scheduler.peak_batch == 3 and (len(calls) == scheduler.steps if fused else not calls)
        assert not fused or max(calls) == 3
        texts[fused] = [s.text for s in sinks]
    assert texts[True] == texts[False]
    assert all(texts[True])
