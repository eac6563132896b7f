"""Run tasks on one model and write a results directory: `<task>.json` per task, per-document samples, manifest.

Resumable: every chunk of documents is appended to `samples/<task>.jsonl` as soon as it is scored, under a key
that covers the model, the task and the settings. A rerun with the same key skips finished tasks and the
documents already in the file, so a killed run continues where it stopped; a different key starts the task over.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from fournil import artifacts
from fournil.console import UsageError, progress_bar
from fournil.eval import metrics
from fournil.eval.data import read_split, split_file
from fournil.eval.tasks import Doc, Task

log = logging.getLogger(__name__)

CHUNK = 64  # documents scored between two appends to the samples file
FORMAT = 1  # bump when prompts or scoring change, so old caches are not reused


def model_fingerprint(model_dir: str | Path) -> str:
    """Config, tokenizer and weight files' names, sizes and mtimes: cheap, and changes whenever the model does."""
    directory = Path(model_dir)
    parts = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.is_file() and path.name != artifacts.MANIFEST:
            stat = path.stat()
            parts.append((path.name, stat.st_size, stat.st_mtime_ns))
    return artifacts.sha256_json(parts)


def load_documents(task: Task, data_dir: str | Path, limit: int | None) -> list[Doc]:
    """The documents a task scores (the first `limit`), processed as upstream does."""
    if task.kind == "translation":
        return _translation_docs(data_dir, task.eval_split, limit)
    docs = read_split(data_dir, task.dataset, task.eval_split, task.fields)
    if task.process:
        docs = [task.process(d) for d in docs]
    return docs[:limit] if limit else docs


def fewshot_pool(task: Task, data_dir: str | Path) -> list[Doc]:
    if task.kind == "translation":
        if split_file(data_dir, "translation", task.fewshot_split) or _text_pair(data_dir, task.fewshot_split):
            return _translation_docs(data_dir, task.fewshot_split, None)
        if not (Path(data_dir) / "translation").is_dir():
            from fournil.corpus import iter_sample

            return [{"en": r["en"], "fr": r["fr"]} for r, _ in zip(
                (r for r in iter_sample("parallel") if r["split"] == "train"), range(32), strict=False)]
        return []  # shots then come from the test split, leaving the document itself out
    if task.fewshot_split is None:
        raise UsageError(f"{task.name} takes no few-shot examples (use --num-fewshot 0)")
    docs = read_split(data_dir, task.dataset, task.fewshot_split, task.fields)
    return [task.process(d) for d in docs] if task.process else docs


def _text_pair(data_dir: str | Path, split: str) -> tuple[Path, Path] | None:
    folder = Path(data_dir) / "translation"
    en, fr = folder / f"{split}.en", folder / f"{split}.fr"
    return (en, fr) if en.is_file() and fr.is_file() else None


def _translation_docs(data_dir: str | Path, split: str, limit: int | None) -> list[Doc]:
    """Aligned sentences: `translation/<split>.en` + `<split>.fr` (one per line, FLORES/WMT/NTREX style), or
    `translation/<split>.jsonl` with {"en", "fr"}; without a translation folder, the embedded sample's test pairs."""
    folder = Path(data_dir) / "translation"
    if pair := _text_pair(data_dir, split):
        en = pair[0].read_text(encoding="utf-8").splitlines()
        fr = pair[1].read_text(encoding="utf-8").splitlines()
        if len(en) != len(fr):
            raise UsageError(f"{pair[0]} has {len(en)} lines but {pair[1]} has {len(fr)}; aligned files must match")
        docs = [{"en": e, "fr": f} for e, f in zip(en, fr, strict=True)]
        if not docs:
            raise UsageError(f"{pair[0]}: no sentences (an empty task cannot be scored)")
    elif split_file(data_dir, "translation", split):
        docs = read_split(data_dir, "translation", split, ("en", "fr"))
    elif not folder.is_dir():
        from fournil.corpus import iter_sample

        docs = [{"en": r["en"], "fr": r["fr"]} for r in iter_sample("parallel") if r["split"] == "test"]
    else:
        raise UsageError(f"missing {folder}/{split}.en + {split}.fr (aligned lines) or {folder}/{split}.jsonl")
    return docs[:limit] if limit else docs


def build_context(task: Task, doc: Doc, shots: list[Doc]) -> str:
    """description + shots (text, target delimiter, answer, blank line) + the document's text."""
    if task.kind == "translation":
        src, tgt = ("en", "fr") if task.name.endswith("en_fr") else ("fr", "en")
        names = {"en": "English", "fr": "French"}
        parts = [f"{names[src]}: {s[src]}\n{names[tgt]}: {s[tgt]}\n\n" for s in shots]
        return "".join(parts) + f"{names[src]}: {doc[src]}\n{names[tgt]}:"
    parts = [task.description]
    parts += [task.text(s) + " " + task.target_text(s) + "\n\n" for s in shots]
    return "".join(parts) + task.text(doc)


def chat_instruction(task: Task, doc: Doc) -> str:
    """The user turn that asks a chat model for a translation: the instruction fournil's fine-tuning teaches."""
    from fournil.train.sft import TRANSLATE

    src, tgt = ("en", "fr") if task.name.endswith("en_fr") else ("fr", "en")
    return TRANSLATE[(src, tgt)][0].format(text=doc[src])


def pick_shots(task: Task, doc: Doc, pool: list[Doc], n: int, rng: random.Random) -> list[Doc]:
    """lm-eval's samplers: the first n (first_n), or a seeded sample (random; one generator for the whole task,
    so the order of documents matters). Leaving the document out, the random sampler draws n + 1 and drops it."""
    if n == 0:
        return []
    candidates = [d for d in pool if d != doc] if task.exclude_self else pool
    if n > len(candidates):
        raise UsageError(f"{task.name}: {n} few-shot examples asked, {len(candidates)} available")
    if task.sampler == "first_n" or task.kind == "translation":
        return candidates[:n]
    if not task.exclude_self:
        return rng.sample(pool, n)
    shots = [d for d in rng.sample(pool, min(n + 1, len(pool))) if d != doc][:n]
    return shots if len(shots) == n else rng.sample(candidates, n)


def evaluate(engine: Any, task: Task, data_dir: str | Path, out: str | Path, *, num_fewshot: int | None = None,
             limit: int | None = None, seed: int = 1234, batch_size: int = 16,
             max_gen_tokens: int | None = None, chat: bool = False) -> dict[str, Any]:
    """Score one task and write `<out>/<task>.json`; reuses what an earlier run with the same settings left.

    `chat` asks translation tasks through the model's chat template with the instruction fournil's fine-tuning
    uses (no shots); other tasks keep their published prompts."""
    out = Path(out)
    chat = chat and task.kind == "translation"
    shots_n = task.default_fewshot if num_fewshot is None else num_fewshot
    if task.kind == "ppl" or chat:
        shots_n = 0  # perplexity is scored on the text alone; a chat model is asked, not shown examples
    key = artifacts.sha256_json({"model": model_fingerprint(engine.directory), "task": task.name, "shots": shots_n,
                                 "limit": limit, "seed": seed, "max_gen_tokens": max_gen_tokens, "format": FORMAT}
                                | ({"chat": True} if chat else {}))
    result_path = out / f"{task.name}.json"
    if result_path.is_file():
        previous = json.loads(result_path.read_text(encoding="utf-8"))
        if previous.get("key") == key:
            log.info("%s: already done (%s), skipped", task.name, result_path)
            return previous
    docs = load_documents(task, data_dir, limit)
    pool = fewshot_pool(task, data_dir) if shots_n else []
    if shots_n and not pool:  # translation without a dev split: shots from the test split
        pool = _translation_docs(data_dir, task.eval_split, None)
    available = len(pool) - int(task.exclude_self and any(p == docs[0] for p in pool))
    if num_fewshot is None and 0 < available < shots_n:  # a task default, not an explicit ask: use what there is
        log.warning("%s: only %d few-shot examples available, using them instead of %d", task.name, available,
                    shots_n)
        shots_n = available
    rng = random.Random(seed)
    contexts = [chat_instruction(task, d) if chat else build_context(task, d, pick_shots(task, d, pool, shots_n, rng))
                for d in docs]

    samples_path = out / "samples" / f"{task.name}.jsonl"
    done = _read_samples(samples_path, key)
    _rewrite_samples(samples_path, key, done)
    if done:
        log.info("%s: resuming, %d of %d documents already scored", task.name, len(done), len(docs))
    start = time.perf_counter()
    with progress_bar() as bar:
        progress = bar.add_task(task.name, total=len(docs), completed=len(done))
        todo = [i for i in range(len(docs)) if i not in done]
        for begin in range(0, len(todo), CHUNK):
            chunk = todo[begin:begin + CHUNK]
            rows = _score(engine, task, [docs[i] for i in chunk], [contexts[i] for i in chunk], batch_size,
                          max_gen_tokens or task.max_tokens, chat)
            _append_samples(samples_path, key, [{"doc": i, **row} for i, row in zip(chunk, rows, strict=True)])
            done.update({i: row for i, row in zip(chunk, rows, strict=True)})
            bar.update(progress, advance=len(chunk))
    seconds = time.perf_counter() - start
    rows = [done[i] for i in range(len(docs))]
    result = {
        "task": task.name, "kind": task.kind, "language": task.language, "primary": task.primary,
        "metrics": aggregate(task, rows), "n": len(docs), "num_fewshot": shots_n, "limit": limit, "seed": seed,
        "model": engine.name, "seconds": round(seconds, 3), "key": key, "chat": chat,
    }
    if task.kind == "translation":
        result["signature"] = result["metrics"].pop("signature")
        log.info("%s signatures: BLEU %s | chrF %s", task.name, result["signature"]["bleu"],
                 result["signature"]["chrf"])
    artifacts.write_json(result_path, result)
    return result


def _score(engine: Any, task: Task, docs: list[Doc], contexts: list[str], batch_size: int,
           max_tokens: int, chat: bool = False) -> list[dict[str, Any]]:
    """Per-document raw outcomes (log-likelihoods or generations) for one chunk."""
    if task.kind == "mc":
        requests = [(ctx, " " + choice) for doc, ctx in zip(docs, contexts, strict=True) for choice in task.choices(doc)]
        lls = engine.loglikelihood(requests)
        rows, k = [], 0
        for doc in docs:
            n = len(task.choices(doc))
            rows.append({"lls": [ll for ll, _ in lls[k:k + n]], "choices": task.choices(doc), "gold": task.target(doc)})
            k += n
        return rows
    if task.kind == "ppl":
        lls = engine.loglikelihood_rolling([task.ppl_text(d) for d in docs])
        counted = [task.ppl_counted(d) for d in docs]
        return [{"ll": ll, "words": metrics.count_words(c), "bytes": len(c.encode("utf-8"))}
                for ll, c in zip(lls, counted, strict=True)]
    outputs = engine.generate(contexts, until=task.until, max_tokens=max_tokens, batch_size=batch_size, chat=chat)
    if task.kind == "translation":
        tgt = "fr" if task.name.endswith("en_fr") else "en"
        return [{"output": o.strip(), "reference": d[tgt]} for o, d in zip(outputs, docs, strict=True)]
    return [{"output": o, "reference": task.target_text(d)} for o, d in zip(outputs, docs, strict=True)]


def aggregate(task: Task, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if task.kind == "mc":
        per_doc = [metrics.multiple_choice(r["lls"], r["choices"], r["gold"]) for r in rows]
        return {m: sum(d[m] for d in per_doc) / len(per_doc) for m in task.metrics}
    if task.kind == "ppl":
        return metrics.perplexities([r["ll"] for r in rows], [r["words"] for r in rows], [r["bytes"] for r in rows])
    preds, refs = [r["output"] for r in rows], [r["reference"] for r in rows]
    if task.kind == "translation":
        return metrics.translation_scores(preds, refs)
    scores: dict[str, Any] = {}
    for name in task.metrics:
        if name == "rouge1":
            scores[name] = metrics.rouge1(preds, refs)
        else:
            fn = getattr(metrics, name)
            scores[name] = sum(fn(p, r) for p, r in zip(preds, refs, strict=True)) / len(rows)
    return scores


def _read_samples(path: Path, key: str) -> dict[int, dict[str, Any]]:
    """Documents an earlier run with the same key finished; a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return {}
    done: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if row.pop("key", None) != key:
                return {}
            done[row.pop("doc")] = row
    return done


def _rewrite_samples(path: Path, key: str, done: dict[int, dict[str, Any]]) -> None:
    """Keep only complete rows of this key, so appends never follow a torn line or another run's rows."""
    text = "".join(json.dumps({"key": key, "doc": i, **row}, ensure_ascii=False) + "\n" for i, row in done.items())
    artifacts.write_text(path, text)


def _append_samples(path: Path, key: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"key": key, **row}, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run(model_dir: str | Path, tasks: list[Task], data_dir: str | Path, out: str | Path, *,
        num_fewshot: int | None = None, limit: int | None = None, seed: int = 1234, batch_size: int = 16,
        batch_tokens: int = 4096, max_gen_tokens: int | None = None, device: str | None = None,
        dtype: str | None = None, chat: bool = False, backend: str = "auto") -> list[dict[str, Any]]:
    """Every task on one model into the results directory `out`; the manifest is written last. `backend` runs
    generation's decode steps (fournil.lm.backends)."""
    from fournil.console import status
    from fournil.eval.engine import Engine

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.mark_incomplete(out, "fournil.eval")
    with status(f"loading {model_dir}"):
        engine = Engine(model_dir, device=device, dtype=dtype, batch_tokens=batch_tokens, backend=backend)
    results = [evaluate(engine, t, data_dir, out, num_fewshot=num_fewshot, limit=limit, seed=seed,
                        batch_size=batch_size, max_gen_tokens=max_gen_tokens, chat=chat) for t in tasks]
    artifacts.write_manifest(out, producer="fournil.eval", model=str(model_dir), data=str(data_dir),
                             tasks=[t.name for t in tasks], num_fewshot=num_fewshot, limit=limit, seed=seed)
    return results
