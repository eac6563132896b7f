"""The bake's eval step: per-language bits per byte, language preference, FrenchBench fixtures, translation.

Language preference is the bake's check that a bilingual model continues in the language it is addressed in,
measured, not eyeballed. For each held-out EN–FR pair, the second half of the French side is scored twice: after
the first half in French and after the same first half in English (same content, other language); likewise for
English. The same text scored after two prompts leaves length and byte counts out of the comparison: a model that
tracks the language finds each continuation cheaper (fewer bits per byte) after a prompt in its own language.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from fournil import artifacts
from fournil.lm.score import Scorer, bits_per_byte

log = logging.getLogger(__name__)


def continuation_bits_per_byte(model, tokenizer, requests: list[tuple[str, str]]) -> list[float]:
    """−log2 p(continuation | prompt) ÷ UTF-8 bytes of the continuation, for each (prompt, continuation)."""
    pairs = []
    for prompt, continuation in requests:
        prompt_ids, ids = tokenizer.encode(prompt, bos=True), tokenizer.encode(prompt + continuation, bos=True)
        # where the prompt's last token merges with the continuation, scoring starts after the token before it
        start = len(prompt_ids) - (1 if ids[: len(prompt_ids)] == prompt_ids else 2)
        pairs.append((ids[: start + 1], ids[start + 1 :]))
    scores = Scorer(model).loglikelihood(pairs)
    return [bits_per_byte(-ll, max(1, len(c.encode()))) for (ll, _), (_, c) in zip(scores, requests, strict=True)]


def language_preference(model, tokenizer, pairs: list[dict], limit: int = 100) -> dict:
    """Per continuation language: the share of pairs where it is cheaper after a prompt in its own language, and
    the mean bits per byte of continuations (rows) after prompts (columns) of each language."""
    keys = [(c, p) for c in ("fr", "en") for p in ("fr", "en")]  # (continuation, prompt) languages
    requests = []
    for pair in pairs:
        if len(requests) == len(keys) * limit:
            break
        words = {language: pair[language].split() for language in ("fr", "en")}
        if min(map(len, words.values())) >= 6:
            halves = {lang: (" ".join(w[:len(w) // 2]), " " + " ".join(w[len(w) // 2:])) for lang, w in words.items()}
            requests += [(halves[p][0], halves[c][1]) for c, p in keys]
    if not requests:
        return {"pairs": 0}
    scores = continuation_bits_per_byte(model, tokenizer, requests)
    rows = [dict(zip(keys, scores[i:i + len(keys)], strict=True)) for i in range(0, len(scores), len(keys))]
    share = {c: sum(r[(c, c)] < r[(c, o)] for r in rows) / len(rows) for c, o in (("fr", "en"), ("en", "fr"))}
    return {"pairs": len(rows), "fr_prefers_fr_prompt": share["fr"], "en_prefers_en_prompt": share["en"],
            "bits_per_byte": {f"{c}_after_{p}": round(sum(r[(c, p)] for r in rows) / len(rows), 4) for c, p in keys}}


FIXTURES = Path(__file__).parents[1] / "eval" / "fixtures"  # small FrenchBench-schema sets shipped with fournil


def benchmark_tasks(recipe, model_dir: Path, out: Path) -> dict[str, dict]:
    """recipe.eval's tasks (FrenchBench, translation…) through `fournil eval`.

    The data comes from recipe.eval.data when that directory exists. Otherwise FrenchBench tasks read the fixtures
    fournil ships (their scores show the pipeline works, not how good a model is) and translation reads the
    embedded sample's 500 held-out pairs, which neither the tokenizer nor any training step has seen.
    """
    from fournil.eval.runner import run
    from fournil.eval.tasks import resolve_tasks

    e = recipe.eval
    data = Path(e.data)
    fixtures = not data.is_dir()
    if fixtures:
        data = out.parent / "data"
        if not data.is_dir():
            tmp = out.parent / ".tmp-data"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(FIXTURES, tmp, ignore=lambda folder, names: ["translation"] if folder == str(FIXTURES)
                            else [])
            tmp.rename(data)
    rows = run(model_dir, resolve_tasks(e.tasks), data, out, num_fewshot=e.num_fewshot, limit=e.limit, seed=e.seed,
               batch_size=e.batch_size, batch_tokens=e.batch_tokens, max_gen_tokens=e.max_gen_tokens, chat=e.chat)
    return {row["task"]: {"language": row["language"], "n": row["n"],
                          "fixture": fixtures and not row["task"].startswith("translation"),
                          **{k: v for k, v in row["metrics"].items() if isinstance(v, int | float)}}
            for row in rows}


def evaluate_bake(recipe, out: Path) -> dict:
    """Everything the report shows about the final model, written to OUT/eval/results.json."""
    from fournil.corpus import iter_sample
    from fournil.corpus.shards import Shards
    from fournil.lm.hf import load_model
    from fournil.tokenizer.bpe import Tokenizer
    from fournil.train.loop import validation_bpb

    model_dir = out / "sft" / "model"
    model = load_model(model_dir).eval()
    tokenizer = Tokenizer.load(out / "tokenizer")
    results: dict = {"model": str(model_dir)}
    shards = Shards(out / "shards")
    t = recipe.train
    results["bits_per_byte"] = {
        "pretrained": validation_bpb(load_model(out / "pretrain" / "model").eval(), shards, t.eval_tokens, t.seq_len,
                                     t.micro_batch_size),
        "fine_tuned": validation_bpb(model, shards, t.eval_tokens, t.seq_len, t.micro_batch_size),
    }
    test_pairs = [p for p in iter_sample("parallel") if p.get("split") == "test"]
    results["language_preference"] = language_preference(model, tokenizer, test_pairs)
    log.info("language preference: %s", results["language_preference"])
    results["tasks"] = benchmark_tasks(recipe, model_dir, out / "eval" / "tasks")
    (out / "eval").mkdir(parents=True, exist_ok=True)
    artifacts.write_json(out / "eval" / "results.json", results)
    artifacts.write_manifest(out / "eval", producer="fournil.bake.evaluate", model=str(model_dir))
    return json.loads(json.dumps(results))
