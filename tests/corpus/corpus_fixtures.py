"""Hand-made FR/EN fixtures and a small source tree (from the embedded sample) with planted problems."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from fournil.corpus import iter_sample

FR_GOOD = (
    "La boulangerie du village ouvre ses portes à six heures du matin. Le boulanger prépare la pâte pendant la "
    "nuit, et l’odeur du pain chaud se répand dans toute la rue. Les habitants viennent chercher leur baguette "
    "avant de partir au travail, tandis que les enfants préfèrent les croissants.\n"
    "« C’est un métier difficile », dit-il, « mais je ne voudrais pas en changer. » Il explique qu’il faut "
    "beaucoup de patience pour obtenir une croûte dorée et une mie légère. Chaque jour, il vend plus de trois "
    "cents pains, et le samedi, la file d’attente s’allonge jusqu’à la place de l’église."
)
EN_GOOD = (
    "The village bakery opens its doors at six in the morning. The baker prepares the dough during the night, "
    "and the smell of warm bread spreads along the whole street. People come to pick up their loaf before going "
    "to work, while the children prefer the croissants.\n"
    "\"It is a hard trade,\" he says, \"but I would not change it for anything.\" He explains that it takes a lot "
    "of patience to get a golden crust and a light crumb. Every day he sells more than three hundred loaves, and "
    "on Saturdays the queue stretches all the way to the church square."
)
CODE_GOOD = (
    "import os\n\n\ndef list_files(root):\n    out = []\n    for name in os.listdir(root):\n"
    "        path = os.path.join(root, name)\n        if os.path.isfile(path):\n            out.append(path)\n"
    "    return out\n"
)


def sample_records(category: str, n: int, skip: int = 0) -> list[dict]:
    return list(itertools.islice(iter_sample(category), skip, skip + n))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def near_duplicate(text: str) -> str:
    """The same document with a few words changed: MinHash must still see it as a duplicate."""
    words = text.split(" ")
    for i in range(7, len(words), 97):
        words[i] = words[i].upper() + "x"
    return " ".join(words)


def build_tree(root: Path) -> dict:
    """A source tree with FR/EN/code/parallel files, planted duplicates, a misrouted document and an eval set.

    Returns what was planted, so tests can check each is caught.
    """
    fr = [r for r in sample_records("fr", 400) if 1500 < len(r["text"]) < 6000][:40]
    en = [r for r in sample_records("en", 400) if 1500 < len(r["text"]) < 6000][:40]
    for i in range(4):
        write_jsonl(root / "fr" / f"part{i}.jsonl", fr[i::4])
        write_jsonl(root / "en" / f"part{i}.jsonl", en[i::4])
    near = [near_duplicate(r["text"]) for r in fr[:6] + en[:6]]
    exact = [r["text"].replace(". ", " . ").replace(",", " ,") for r in fr[6:9]]  # same words, other spacing
    write_jsonl(root / "fr" / "dups.jsonl", [{"text": t} for t in near[:6] + exact])
    write_jsonl(root / "en" / "dups.jsonl", [{"text": t} for t in near[6:]] + [{"text": FR_GOOD * 2}])
    write_jsonl(root / "code" / "code.jsonl", sample_records("code", 12))
    pairs = sample_records("parallel", 200, skip=1000)
    write_jsonl(root / "parallel" / "pairs.jsonl", pairs)
    (root / "parallel" / "ui.tsv").write_text("fr\ten\nOuvrir le fichier\tOpen the file\nFermer\tClose\nFermer\tClose\n",
                                               encoding="utf-8")
    contaminated = fr[10]["text"]
    needle = " ".join(contaminated.split()[20:40])
    write_jsonl(root / "eval" / "bench.jsonl", [{"question": needle, "answer": "oui"}])
    (root / "corpus.yaml").write_text(
        "sources:\n"
        "  fr-web: {path: fr, category: fr, licence: GPL-2.0}\n"
        "  en-web: {path: en, category: en}\n"
        "  code: {path: code, category: code}\n"
        "  pairs: {path: parallel, category: parallel}\n"
        "eval_sets: {bench: eval/bench.jsonl}\n"
        "mix: {fr: 0.45, en: 0.45, code: 0.05, parallel: 0.05}\n",
        encoding="utf-8",
    )
    return {"fr": fr, "en": en, "near": near, "exact": exact, "contaminated": contaminated, "misrouted": FR_GOOD * 2}


def tiny_tokenizer(directory: Path, texts: list[str]) -> Path:
    """A small byte-level BPE tokenizer.json with </s>, trained here: pack reads only the artifact."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory
