"""Our tokenizer (Metaspace, byte fallback, special tokens) under the engine's windowed StreamDecoder: its text is
exactly what decoding all the ids at once gives, and real text streams exactly, characters split across byte
tokens included."""

from __future__ import annotations

import random

from fournil.lm.prompt import PromptTokenizer, StreamDecoder


def test_streamed_text_equals_the_whole_decode(tok_dir):
    tok = PromptTokenizer.load(tok_dir)
    texts = ["Le croissant 🥐 est doré, n'est-ce pas ? « Oui » — répond-il.\n\n  def f(x):\n\treturn x**2",
             "   leading spaces, 1234 digits, ünïcödé and 日本語 text"]
    rng = random.Random(0)
    sequences = [tok.encode(t, special=False) for t in texts]
    end = tok.encode(" fin", special=False)  # random ids, then plain text: nothing left unfinished at the end
    sequences += [[rng.randrange(tok.vocab_size) for _ in range(200)] + end for _ in range(20)]
    for n, ids in enumerate(sequences):
        decoder = StreamDecoder(tok)
        streamed = "".join(decoder.push(i) for i in ids) + decoder.flush()
        assert decoder.text == tok.decode(ids), ids
        if n < len(texts):  # real text streams exactly; random byte tokens may turn what was shown into U+FFFD
            assert streamed == decoder.text
