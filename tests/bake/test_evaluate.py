"""The bake's language-preference measure: each continuation scored alone, one row through the model, gives the
numbers the batched scorer reports."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "eval"))
from eval_fixtures import build_model_dir

from fournil.bake.evaluate import language_preference
from fournil.corpus import iter_sample
from fournil.lm.hf import load_model
from fournil.tokenizer.bpe import Tokenizer


@torch.no_grad()
def bits_alone(model, tokenizer, prompt: str, continuation: str) -> float:
    prompt_ids = tokenizer.encode(prompt, bos=True)
    ids = tokenizer.encode(prompt + continuation, bos=True)
    start = len(prompt_ids) - 1 if ids[: len(prompt_ids)] == prompt_ids else len(prompt_ids) - 2
    logits = model(torch.tensor([ids[:-1]]))[0].float()
    nats = F.cross_entropy(logits[start:], torch.tensor(ids[start + 1:]), reduction="sum").item()
    return nats / math.log(2) / len(continuation.encode())


def test_language_preference_equals_each_continuation_scored_alone(tmp_path):
    directory = build_model_dir(tmp_path / "model")
    model, tokenizer = load_model(directory).eval(), Tokenizer.load(directory)
    pairs = [p for p in iter_sample("parallel") if p.get("split") == "test"][:12]
    pairs.insert(3, {"fr": "Trop court.", "en": "Too short."})  # fewer than six words: skipped
    got = language_preference(model, tokenizer, pairs, limit=8)
    used, wins, bits = 0, {"fr": 0, "en": 0}, {}
    for pair in pairs:
        if used == 8 or len(pair["fr"].split()) < 6 or len(pair["en"].split()) < 6:
            continue
        used += 1
        halves = {}
        for language in ("fr", "en"):
            words = pair[language].split()
            halves[language] = (" ".join(words[: len(words) // 2]), " " + " ".join(words[len(words) // 2:]))
        for c, p in (("fr", "en"), ("en", "fr")):
            same = bits_alone(model, tokenizer, halves[c][0], halves[c][1])
            switched = bits_alone(model, tokenizer, halves[p][0], halves[c][1])
            wins[c] += same < switched
            bits[f"{c}_after_{c}"] = bits.get(f"{c}_after_{c}", 0) + same / 8
            bits[f"{c}_after_{p}"] = bits.get(f"{c}_after_{p}", 0) + switched / 8
    assert got["pairs"] == used == 8
    assert got["fr_prefers_fr_prompt"] == wins["fr"] / 8 and got["en_prefers_en_prompt"] == wins["en"] / 8
    assert got["bits_per_byte"] == pytest.approx(bits, abs=1e-4)
    assert list(got["bits_per_byte"]) == ["fr_after_fr", "fr_after_en", "en_after_fr", "en_after_en"]
