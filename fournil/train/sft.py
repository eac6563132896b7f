"""Supervised fine-tuning data: ChatML conversations, EN↔FR translation and same-language continuation
instructions, loss on answers only.

A conversation is rendered with the tokenizer's chat template (`<s><|im_start|>role\\ncontent<|im_end|>\\n`…) and
tokenised in one piece; character offsets then tell which tokens belong to assistant turns (their content and the
closing `<|im_end|>`), the only ones the loss sees. Examples are padded per micro-batch, on the right, so causal
attention alone keeps padding out of every real token's view.

Replay (`sft.replay`): a share of the examples are windows of the pretraining shards with the loss on every token.
A small model fine-tuned on instructions alone forgets how to write (its held-out bits per byte rise by a third in
60 steps); mixing pretraining text back in is the usual cure and costs nothing but those steps' share.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from fournil.console import UsageError
from fournil.tokenizer.bpe import Tokenizer

log = logging.getLogger(__name__)
IGNORE = -100  # cross_entropy's ignore_index: prompt and padding positions
ROLES = ("system", "user", "assistant")

# Instructions in the language the user is writing in, both directions, as CroissantLLMChat's translation data.
TRANSLATE = {
    ("en", "fr"): ("Translate this text into French:\n{text}", "Traduis ce texte en français :\n{text}"),
    ("fr", "en"): ("Traduis ce texte en anglais :\n{text}", "Translate this text into English:\n{text}"),
}
# Same-language tasks from the same pairs: without them half the French instructions a model sees are answered in
# English (translations into English), and a small chat model learns to reply in either language.
CONTINUE = {"en": "Continue this text:\n{text}", "fr": "Continue ce texte :\n{text}"}


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-empty line of a .jsonl or .jsonl.gz file; bad lines are errors."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from exc


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """`{"messages": [{"role", "content"}, …]}` per line; each must end with an assistant turn."""
    conversations = []
    for number, record in read_jsonl(path):
        messages = record.get("messages") if isinstance(record, dict) else None
        where = f"{path}:{number}"
        if not isinstance(messages, list) or not messages:
            raise UsageError(f"{where}: expected a non-empty 'messages' list")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES or \
                    not isinstance(message.get("content"), str):
                raise UsageError(f"{where}: messages[{i}] needs a role in {ROLES} and a string content")
        if messages[-1]["role"] != "assistant":
            raise UsageError(f"{where}: the last message must be the assistant's answer (nothing to learn otherwise)")
        conversations.append(messages)
    return conversations


def translation_conversations(pairs: Iterable[dict], seed: int) -> list[list[dict[str, str]]]:
    """Each EN–FR pair becomes one instruction in a random direction, with the instruction in a random language."""
    rng = random.Random(seed)
    out = []
    for pair in pairs:
        source, target = ("en", "fr") if rng.random() < 0.5 else ("fr", "en")
        prompt = rng.choice(TRANSLATE[(source, target)]).format(text=pair[source])
        out.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": pair[target]}])
    return out


def continuation_conversations(pairs: Iterable[dict], seed: int, min_words: int = 6) -> list[list[dict[str, str]]]:
    """Each pair side of `min_words` words or more, in a random language per pair, becomes an instruction to
    continue its first half; the answer is the second half, in the same language."""
    rng = random.Random(seed)
    out = []
    for pair in pairs:
        language = "fr" if rng.random() < 0.5 else "en"
        words = pair[language].split()
        if len(words) >= min_words:
            half = len(words) // 2
            out.append([{"role": "user", "content": CONTINUE[language].format(text=" ".join(words[:half]))},
                        {"role": "assistant", "content": " ".join(words[half:])}])
    return out


def encode_conversation(messages: list[dict[str, str]], tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether the loss should learn to predict it."""
    text, spans = "", []
    for message in messages:
        text += f"<|im_start|>{message['role']}\n"
        start = len(text)
        text += message["content"] + "<|im_end|>"
        if message["role"] == "assistant":
            spans.append((start, len(text)))
        text += "\n"
    encoding = tokenizer.hf.encode(text, add_special_tokens=False)
    learn = [any(s <= begin and end <= e and end > begin for s, e in spans) for begin, end in encoding.offsets]
    return [tokenizer.bos_id, *encoding.ids], [False, *learn]


class SFTDataset:
    """Tokenised conversations truncated to `seq_len + 1` tokens; `collate` pads a micro-batch."""

    def __init__(self, conversations: list[list[dict[str, str]]], tokenizer: Tokenizer, seq_len: int,
                 name: str = "sft"):
        self.directory = Path(name)  # for messages, like Shards.directory
        self.pad_id = tokenizer.pad_id
        self.examples = []
        self.truncated = self.skipped = 0  # counted and reported, never silently lost
        for messages in conversations:
            ids, learn = encode_conversation(messages, tokenizer)
            if len(ids) > seq_len + 1:
                self.truncated += 1
                ids, learn = ids[: seq_len + 1], learn[: seq_len + 1]
            if any(learn[1:]):
                self.examples.append((ids, learn))
            else:  # the answer starts beyond seq_len: nothing to learn
                self.skipped += 1
        if not self.examples:
            raise UsageError(f"{name}: no example has an answer within {seq_len} tokens")

    def __len__(self) -> int:
        return len(self.examples)

    def add_replay(self, shards_dir: str | Path, count: int, seq_len: int, seed: int) -> int:
        """Append `count` distinct pretraining windows (at most seq_len + 1 tokens, every token learned)."""
        from fournil.corpus.shards import Shards

        shards = Shards(shards_dir)
        count = min(count, len(shards))
        for i in sorted(random.Random(seed).sample(range(len(shards)), count)):
            ids = shards.sample(i)[: seq_len + 1].tolist()
            self.examples.append((ids, [False] + [True] * (len(ids) - 1)))
        return count

    def collate(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded inputs (B, T) and targets with IGNORE on prompts and padding."""
        rows = [self.examples[i] for i in indices]
        width = max(len(ids) for ids, _ in rows) - 1
        inputs = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for row, (ids, learn) in enumerate(rows):
            ids_t = torch.tensor(ids)
            inputs[row, : len(ids) - 1] = ids_t[:-1]
            keep = torch.tensor(learn[1:])
            targets[row, : len(ids) - 1] = torch.where(keep, ids_t[1:], IGNORE)
        return inputs, targets


def finetune(
    recipe,
    tokenizer_dir: str | Path,
    init_from: str | Path,
    run_dir: str | Path,
    chat: list[Path] = (),
    pairs: list[Path] = (),
    resume: bool = False,
    max_steps: int | None = None,
    replay_from: str | Path | None = None,
):
    """Fine-tune `init_from` on chat files and translation pairs with `recipe.sft`; 5 % of examples validate.

    With `sft.replay` > 0, that share of the training examples are windows of the pretraining shards in
    `replay_from` (validation stays on the conversations: it measures the fine-tuning task)."""
    from dataclasses import replace

    from fournil.lm.hf import read_config, resolve
    from fournil.train.loop import run, tokenizer_files

    t = recipe.sft
    if t is None:
        raise UsageError(f"recipe {recipe.name} has no 'sft' section (the fine-tuning schedule and batch)")
    if t.replay > 0 and replay_from is None:
        raise UsageError(f"sft.replay = {t.replay} needs the pretraining shards to replay (--replay-from DIR)")
    tokenizer = Tokenizer.load(tokenizer_dir)
    config = read_config(resolve(init_from))
    if tokenizer.vocab_size > config.vocab_size:  # a larger embedding than the vocabulary (padding) is fine
        raise UsageError(f"{tokenizer_dir} has {tokenizer.vocab_size} tokens but {init_from} embeds only "
                         f"{config.vocab_size}: fine-tune with the tokenizer the model was trained with")
    if t.seq_len > config.max_seq_len:
        raise UsageError(f"sft.seq_len {t.seq_len} exceeds the model's context {config.max_seq_len}")
    conversations = [c for path in chat for c in read_conversations(Path(path))]
    translations = []
    for path in pairs:
        records = [r for _, r in read_jsonl(Path(path)) if r.get("split", "train") == "train"]
        bad = [i for i, r in enumerate(records) if not (isinstance(r.get("en"), str) and isinstance(r.get("fr"), str))]
        if bad:
            raise UsageError(f"{path}: {len(bad)} pair(s) lack string 'en' and 'fr' fields (first: record {bad[0] + 1})")
        translations += translation_conversations(records, t.seed) + continuation_conversations(records, t.seed)
    # every chat example is kept; pair tasks only as many as the schedule can use (plus 5 % validation), so 50 k
    # pairs are not tokenised for a 60-step run
    needed = round(t.steps * (t.batch_tokens // t.seq_len) * (1 - t.replay) * 21 / 20)
    random.Random(t.seed).shuffle(translations)
    used = min(len(translations), max(0, needed - len(conversations)))
    conversations += translations[:used]
    if used < len(translations):
        log.info("sft: %d of %d translation and continuation tasks used (what %d steps consume)", used,
                 len(translations), t.steps)
    random.Random(t.seed).shuffle(conversations)
    n_val = max(1, len(conversations) // 20)
    train_set = SFTDataset(conversations[n_val:], tokenizer, t.seq_len, name="sft-train")
    val_set = SFTDataset(conversations[:n_val], tokenizer, t.seq_len, name="sft-validation")
    if t.replay > 0:
        wanted = round(len(train_set) * t.replay / (1 - t.replay))
        added = train_set.add_replay(replay_from, wanted, t.seq_len, t.seed)
        log.info("sft: %d pretraining windows replayed beside %d conversations (%.0f %%)", added,
                 len(train_set) - added, 100 * added / len(train_set))
        if added < wanted:
            log.warning("sft: replay wanted %d windows but %s holds only %d", wanted, replay_from, added)
    for name, data in (("train", train_set), ("validation", val_set)):
        if data.truncated or data.skipped:
            log.warning("sft %s: %d examples truncated to %d tokens, %d skipped (answer "
                                                "beyond the limit)", name, data.truncated, t.seq_len, data.skipped)

    @torch.no_grad()
    def validate(model: torch.nn.Module, device: torch.device) -> dict[str, dict[str, float]]:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(val_set), t.micro_batch_size):
            inputs, targets = val_set.collate(list(range(start, min(start + t.micro_batch_size, len(val_set)))))
            logits = model(inputs.to(device)).float()
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(),
                                                       ignore_index=IGNORE, reduction="sum").item()
            count += int((targets != IGNORE).sum())
        model.train(was_training)
        return {"val_loss": {"answers": total / max(count, 1)}}

    recipe = replace(recipe, model=config, tokenizer=replace(recipe.tokenizer, vocab_size=config.vocab_size))
    return run(recipe, t, train_set, validate, run_dir, resume=resume, init_from=init_from, max_steps=max_steps,
               model_files=tokenizer_files(Path(tokenizer_dir)))
