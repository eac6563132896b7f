"""Supervised fine-tuning: answers-only loss, translation instructions, and a real fine-tuning run."""

import json
from pathlib import Path

import pytest
import torch

from fournil.console import UsageError
from fournil.recipe import load_recipe
from fournil.train.sft import (
    CONTINUE,
    IGNORE,
    SFTDataset,
    continuation_conversations,
    encode_conversation,
    finetune,
    translation_conversations,
)

TOKENIZER_DATA = Path(__file__).parents[1] / "tokenizer" / "data"
CHAT = [{"role": "user", "content": "Bonjour, comment vas-tu ?"}, {"role": "assistant", "content": "Très bien, merci !"}]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from fournil.tokenizer.config import TokenizerConfig
    from fournil.tokenizer.export import save
    from fournil.tokenizer.train import train

    inputs = {"fr": [TOKENIZER_DATA / "fr.txt"], "en": [TOKENIZER_DATA / "en.txt"]}
    tok, _ = train(TokenizerConfig(vocab_size=2048, weights={"fr": 1.0, "en": 1.0}), inputs)
    return save(tok, tmp_path_factory.mktemp("tok"), sentencepiece=False)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from fournil.tokenizer.bpe import Tokenizer

    return Tokenizer.load(tokenizer_dir)


def test_only_the_answer_and_its_end_marker_are_learned(tokenizer):
    ids, learn = encode_conversation(CHAT, tokenizer)
    assert ids[0] == tokenizer.bos_id and not learn[0]
    learned_text = tokenizer.decode([i for i, keep in zip(ids, learn, strict=True) if keep])
    assert learned_text.strip() == "Très bien, merci !<|im_end|>"
    assert ids.count(tokenizer.im_start_id) == 2 and ids.count(tokenizer.im_end_id) == 2
    assert learn[ids.index(tokenizer.im_end_id, ids.index(tokenizer.im_end_id) + 1)]  # the answer's <|im_end|>


def test_collate_masks_prompt_and_padding(tokenizer):
    dataset = SFTDataset([CHAT, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]],
                         tokenizer, seq_len=64)
    inputs, targets = dataset.collate([0, 1])
    assert inputs.shape == targets.shape and inputs.shape[1] == len(dataset.examples[0][0]) - 1
    short = len(dataset.examples[1][0]) - 1
    assert (inputs[1, short:] == tokenizer.pad_id).all() and (targets[1, short:] == IGNORE).all()
    ids, learn = dataset.examples[0]
    expected = torch.tensor([i if keep else IGNORE for i, keep in zip(ids[1:], learn[1:], strict=True)])
    assert torch.equal(targets[0], expected)


def test_long_examples_are_truncated_or_skipped_and_counted(tokenizer):
    long_prompt = [{"role": "user", "content": "mot " * 400}, {"role": "assistant", "content": "oui"}]
    dataset = SFTDataset([CHAT, long_prompt], tokenizer, seq_len=64)
    assert len(dataset) == 1 and dataset.skipped == 1 and dataset.truncated == 1


def test_translation_instructions_go_both_ways():
    pairs = [{"en": f"house {i}", "fr": f"maison {i}"} for i in range(200)]
    conversations = translation_conversations(pairs, seed=0)
    answers = [c[1]["content"] for c in conversations]
    to_french = sum(a.startswith("maison") for a in answers)
    assert 70 < to_french < 130  # both directions, randomised per pair
    assert all(c[0]["content"].endswith(p["en"] if c[1]["content"] == p["fr"] else p["fr"])
               for c, p in zip(conversations, pairs, strict=True))
    assert translation_conversations(pairs, seed=0) == conversations


def test_continuations_answer_in_the_language_asked():
    pairs = [{"en": f"the house number {i} is on the hill", "fr": f"la maison numéro {i} est sur la colline"}
             for i in range(200)] + [{"en": "too short", "fr": "trop court"}]
    conversations = continuation_conversations(pairs, seed=0)
    assert len(conversations) == 200  # a side under six words is no task
    french = 0
    for (user, assistant), pair in zip(conversations, pairs, strict=False):
        language = "fr" if user["content"].startswith("Continue ce texte") else "en"
        french += language == "fr"
        head = user["content"].removeprefix(CONTINUE[language].format(text=""))
        assert f"{head} {assistant['content']}" == pair[language]  # the answer is the rest, same language
    assert 70 < french < 130
    assert continuation_conversations(pairs, seed=0) == conversations


def test_finetune_learns_the_answers(tokenizer_dir, tokenizer, tmp_path):
    """A real fine-tuning run: validation loss on answers falls, the model dir carries tokenizer and template."""
    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama

    recipe = load_recipe("croissant-1m", overrides={
        "model.vocab_size": tokenizer.vocab_size, "tokenizer.vocab_size": tokenizer.vocab_size, "sft.lr": 3e-3, "sft.warmup_steps": 2, "sft.steps": 30, "sft.seq_len": 64, "sft.batch_tokens": 512,
        "sft.micro_batch_size": 4, "sft.log_interval": 5, "sft.eval_interval": 10, "sft.checkpoint_interval": 15,
        "sft.peak_flops": 1e9})
    base = tmp_path / "base"
    save_model(Llama(recipe.model), base)
    chat = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Combien font {i} et {i} ?"},
                          {"role": "assistant", "content": f"{i} et {i} font {2 * i}."}]} for i in range(40)]
    chat.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"en": f"the red house {i}", "fr": f"la maison rouge {i}", "split": s})
                               for i, s in zip(range(60), ["train"] * 55 + ["test"] * 5, strict=True)))
    summary = finetune(recipe, tokenizer_dir, base, tmp_path / "run", chat=[chat], pairs=[pairs])
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"]["answers"] for r in records if "val_loss" in r]
    assert len(val) == 3 and val[-1] < 0.6 * val[0]
    assert summary.steps == 30
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors", "fournil.json"):
        assert (tmp_path / "run/model" / name).is_file()


def test_finetune_refuses_a_tokenizer_of_another_size(tokenizer_dir, tmp_path):
    from fournil.lm.config import ModelConfig
    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama

    save_model(Llama(ModelConfig(dim=64, n_layers=1, n_heads=4, ffn_dim=176, vocab_size=500)), tmp_path / "m")
    recipe = load_recipe("croissant-1m", overrides={"sft.seq_len": 64, "sft.batch_tokens": 256})
    with pytest.raises(UsageError, match=r"has \d+ tokens but .* embeds only 500"):
        finetune(recipe, tokenizer_dir, tmp_path / "m", tmp_path / "run", chat=[])


def test_bad_chat_lines_name_file_and_line(tokenizer_dir, tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"messages": [CHAT[0]]}) + "\n")
    from fournil.train.sft import read_conversations

    with pytest.raises(UsageError, match=r"chat.jsonl:2: the last message must be the assistant's"):
        read_conversations(chat)
    chat.write_text("{oops\n")
    with pytest.raises(UsageError, match=r"chat.jsonl:1: not valid JSON"):
        read_conversations(chat)


def _sft_recipe(vocab: int, **extra):
    return load_recipe("croissant-1m", overrides={
        "model.vocab_size": vocab, "tokenizer.vocab_size": vocab, "sft.warmup_steps": 1, "sft.steps": 4,
        "sft.seq_len": 32, "sft.batch_tokens": 256, "sft.micro_batch_size": 4, "sft.log_interval": 1,
        "sft.eval_interval": 0, "sft.checkpoint_interval": 0, "sft.peak_flops": 1e9, **extra})


def _chat_file(path: Path, n: int = 40) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Et {i} ?"}, {"role": "assistant", "content": f"{i}."}]}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    return path


def test_a_resumable_finetune_without_a_checkpoint_starts_from_the_given_model(tokenizer_dir, tokenizer, tmp_path):
    """`--resume` before any checkpoint exists (the bake always resumes) must still load --init-from: the
    regression was a fine-tune from random weights."""
    from fournil.lm.hf import load_model, save_model
    from fournil.lm.llama import Llama

    recipe = _sft_recipe(tokenizer.vocab_size, **{"sft.lr": 1e-9})
    torch.manual_seed(7)
    save_model(Llama(recipe.model), tmp_path / "base")
    finetune(recipe, tokenizer_dir, tmp_path / "base", tmp_path / "run", chat=[_chat_file(tmp_path / "c.jsonl")],
             resume=True, max_steps=1)
    base, tuned = load_model(tmp_path / "base").state_dict(), load_model(tmp_path / "run/checkpoints/step-000001/model")
    for name, weight in tuned.state_dict().items():
        assert torch.allclose(weight, base[name], atol=1e-6), name


def test_replay_mixes_pretraining_windows_learned_on_every_token(tokenizer_dir, tmp_path):
    """sft.replay = 0.5: as many shard windows as conversations, all tokens learned; validation stays on chats."""
    from fournil.tokenizer.bpe import Tokenizer
    from tests.train.conftest import write_shards

    shards = write_shards(tmp_path / "shards", seq_len=32)
    dataset = SFTDataset([CHAT] * 10, Tokenizer.load(tokenizer_dir), seq_len=32)
    assert dataset.add_replay(shards, 10, seq_len=32, seed=0) == 10
    replayed = dataset.examples[10:]
    assert all(len(ids) == 33 and learn == [False] + [True] * 32 for ids, learn in replayed)
    assert len({tuple(ids) for ids, _ in replayed}) == 10  # distinct windows
    with pytest.raises(UsageError, match=r"sft.replay = 0.5 needs the pretraining shards"):
        finetune(_sft_recipe(2048, **{"sft.replay": 0.5}), tokenizer_dir, tmp_path / "m", tmp_path / "run",
                 chat=[_chat_file(tmp_path / "c.jsonl")])
