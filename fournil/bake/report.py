"""OUT/REPORT.md: every number of a bake and its charts, assembled from the artifacts the steps wrote."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import fournil
from fournil import artifacts


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _mfu(record: dict) -> str:
    """MFU with where its denominator came from (datasheet table, train.peak_flops, measured CPU), or why none."""
    source = f" (peak: {record['peak_source']})" if record.get("peak_source") else ""
    return "MFU not reported" + source if record.get("mfu") is None else f"MFU {100 * record['mfu']:.1f} %{source}"


def _image(out: Path, path: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(out).as_posix()})\n" if path.is_file() else ""


def write_report(recipe, out: Path) -> Path:
    from fournil.corpus.report import write_report as corpus_report
    from fournil.train.plot import plot_run

    lines = [f"# Bake report: {recipe.name}", "",
             f"{recipe.description}  ", f"fournil {fournil.__version__}, "
             f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}", ""]
    from fournil.bake.pipeline import MARKERS, STEPS

    seconds = {name: (_json(out / MARKERS / f"{name}.json") or {}).get("seconds") for name in STEPS}
    lines += ["| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {'–' if s is None else s} |" for name, s in seconds.items()]
    lines += [f"| **total** | **{sum(s for s in seconds.values() if s is not None):.1f}** |", ""]
    lines += _abilities(out)

    lines += ["## 1. Corpus", ""]
    if (out / "corpus").is_dir():
        corpus_report(out / "corpus", out / "shards" if (out / "shards").is_dir() else None)
        lines.append("Datasheet: [corpus/DATASHEET.md](corpus/DATASHEET.md)\n")
        for png in sorted((out / "corpus").glob("*.png")):
            lines.append(_image(out, png, png.stem))
    index = _json(out / "shards" / "index.json")
    if index:
        lines += ["| category | documents | tokens |", "|---|---|---|"]
        lines += [f"| {c} | {v['documents']:,} | {v['tokens']:,} |" for c, v in sorted(index["categories"].items())]
        lines += ["", "Held-out validation: " + ", ".join(f"{k} {v['tokens']:,} tokens"
                                                      for k, v in sorted(index["validation"].items())), ""]

    lines += ["## 2. Tokenizer", ""]
    fertility = _json(out / "tokenizer" / "fertility.json") or []
    if fertility:
        lines += ["Fertility on the held-out EN–FR test pairs (never trained on):", "",
                  "| tokenizer | vocab | FR tokens/word | EN tokens/word | FR/EN |", "|---|---|---|---|---|"]
        for row in fertility:
            langs = row.get("languages", row)
            fr, en = langs.get("fr", {}), langs.get("en", {})
            lines.append(f"| {row.get('name', '?')} | {row.get('vocab_size', '–')} | "
                         f"{fr.get('tokens_per_word', float('nan')):.3f} | {en.get('tokens_per_word', float('nan')):.3f}"
                         f" | {row.get('fr_en_ratio', float('nan')):.3f} |")
        lines += ["", _image(out, out / "tokenizer" / "fertility.png", "fertility")]

    for title, run in (("## 3. Pretraining", out / "pretrain"), ("## 4. Supervised fine-tuning", out / "sft")):
        lines += [title, ""]
        records = _metrics(run)
        steps_logged = [r for r in records if "loss" in r]
        if steps_logged:
            plot_run(run)
            last = steps_logged[-1]
            lines += [f"{last['step']} steps, final training loss {last['loss']:.3f} nats/token, "
                      f"{last['tokens_per_s']:,.0f} tokens/s, " + _mfu(last) + ".", ""]
            for record in [r for r in records if "val_bpb" in r or "val_loss" in r][-1:]:
                values = record.get("val_bpb") or record.get("val_loss")
                unit = "bits/byte" if "val_bpb" in record else "nats/token (answers)"
                lines += ["Validation " + unit + ": " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(values.items())),
                          ""]
            lines += [_image(out, run / "plots" / "loss.png", "loss"),
                      _image(out, run / "plots" / "throughput.png", "throughput")]

    lines += ["## 5. Evaluation", ""]
    results = _json(out / "eval" / "results.json") or {}
    bpb = results.get("bits_per_byte", {})
    if bpb:
        languages = sorted({k for v in bpb.values() for k in v})
        lines += ["Bits per byte on held-out text (lower is better):", "",
                  "| model | " + " | ".join(languages) + " |", "|---" * (len(languages) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{v.get(k, float('nan')):.3f}" for k in languages) + " |"
                  for name, v in bpb.items()] + [""]
    preference = results.get("language_preference")
    if preference and preference.get("pairs"):
        b = preference["bits_per_byte"]
        lines += [f"Language preference on {preference['pairs']} held-out pairs: the second half of each pair, "
                  "scored after its first half in the same language and in the other one (bits per byte):", "",
                  "| continuation | after a French prompt | after an English prompt | cheaper after its own |",
                  "|---|---|---|---|",
                  f"| French | {b['fr_after_fr']:.3f} | {b['fr_after_en']:.3f} | "
                  f"{100 * preference['fr_prefers_fr_prompt']:.0f} % |",
                  f"| English | {b['en_after_fr']:.3f} | {b['en_after_en']:.3f} | "
                  f"{100 * preference['en_prefers_en_prompt']:.0f} % |", ""]
    if bpb or (preference and preference.get("pairs")):
        lines.append(_image(out, _plot_languages(bpb, preference, out / "eval" / "languages.png"), "languages"))
    tasks = results.get("tasks", {})
    for fixture, title in ((False, "Scores on held-out data:"),
                           (True, "Fixture smoke checks: a handful of questions shipped with fournil to show the "
                                  "evaluation runs end to end; n is far too small for these to be benchmark "
                                  "results:")):
        rows = {task: scores for task, scores in sorted(tasks.items()) if bool(scores.get("fixture")) == fixture}
        if rows:
            lines += [title, ""]
            lines += [f"- {task} (n = {scores.get('n', '?')}): " + ", ".join(
                f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float)) for task, scores in rows.items()]
            lines.append("")
    if (out / "eval" / "tasks" / artifacts.MANIFEST).is_file():
        from fournil.eval.report import write_report as eval_report

        eval_report([out / "eval" / "tasks"], out / "eval", names=[recipe.name])
        lines += ["", _image(out, out / "eval" / "report.png", "task scores")]
    lines += ["", "## 6. Export", ""]
    for name in ("model", "model-q8_0.gguf"):
        path = out / name
        if path.exists():
            size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
            lines.append(f"- `{name}` ({size / 1e6:.1f} MB)")
    lines += ["", "Load it with `transformers.AutoModelForCausalLM.from_pretrained('model')`, chat with "
              "`fournil chat model`, or run the GGUF in llama.cpp.", ""]
    report = out / "REPORT.md"
    artifacts.write_text(report, "\n".join(lines))
    return report


def _abilities(out: Path) -> list[str]:
    """What the baked model can and cannot do, in plain words, from the numbers the bake measured."""
    results = _json(out / "eval" / "results.json") or {}
    can, cannot = [], []
    preference = results.get("language_preference") or {}
    if preference.get("pairs"):
        fr, en = preference["fr_prefers_fr_prompt"], preference["en_prefers_en_prompt"]
        sentence = (f"French text after a French prompt and English after an English one ({100 * fr:.0f} % and "
                    f"{100 * en:.0f} % of {preference['pairs']} held-out pairs)")
        (can if min(fr, en) >= 0.95 else cannot).append(("continue " if min(fr, en) >= 0.95 else
                                                         "reliably continue ") + sentence)
    tasks = results.get("tasks", {})
    for name, label in (("translation_en_fr", "English → French"), ("translation_fr_en", "French → English")):
        if name in tasks and "bleu" in tasks[name]:
            bleu = tasks[name]["bleu"]
            (can if bleu >= 10 else cannot).append(f"translate {label} (BLEU {bleu:.1f} on {tasks[name]['n']} "
                                                   "held-out pairs; 10 is the bar for a usable gist)")
    if any(scores.get("fixture") for scores in tasks.values()):
        cannot.append("be ranked on FrenchBench: its task rows are fixture smoke checks, not benchmark results")
    trained = [r for r in _metrics(out / "pretrain") if "tokens" in r]
    if trained:
        cannot.append(f"answer questions or follow instructions reliably: it saw {trained[-1]['tokens']:,} "
                      "pretraining tokens, a tiny fraction of what a useful assistant needs")
    lines = []
    if can or cannot:
        lines += ["**What this model can do:** " + ("; ".join(can) if can else "nothing measured passed its bar") + ".",
                  "", "**What it cannot do:** " + ("; ".join(cannot) if cannot else "nothing measured failed") + ".",
                  ""]
    return lines


def _metrics(run: Path) -> list[dict]:
    from fournil.train.plot import read_metrics

    return read_metrics(run) if (run / "metrics.jsonl").is_file() else []


def _plot_languages(bpb: dict, preference: dict | None, path: Path) -> Path:
    """Bits per byte per language before/after fine-tuning, and each language's continuation after each prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    languages = sorted({k for v in bpb.values() for k in v})
    width = 0.8 / max(1, len(bpb))
    for i, (name, values) in enumerate(bpb.items()):
        left.bar([j + i * width for j in range(len(languages))], [values.get(k, 0) for k in languages], width,
                 label=name.replace("_", " "))
    left.set_xticks([j + width * (len(bpb) - 1) / 2 for j in range(len(languages))], languages)
    left.set(title="held-out bits per byte (lower is better)")
    if bpb:
        left.legend()
    if preference and preference.get("pairs"):
        b = preference["bits_per_byte"]
        for i, prompt in enumerate(("fr", "en")):
            right.bar([j + i * 0.4 for j in range(2)], [b[f"fr_after_{prompt}"], b[f"en_after_{prompt}"]], 0.4,
                      label=f"after a {'French' if prompt == 'fr' else 'English'} prompt")
        right.set_xticks([0.2, 1.2], ["French continuation", "English continuation"])
        low = min(b.values())
        right.set_ylim(low * 0.95, max(b.values()) * 1.02)
        right.set(title=f"language preference ({preference['pairs']} held-out pairs), bits/byte")
        right.legend()
    return artifacts.write_png(fig, path, dpi=110)
