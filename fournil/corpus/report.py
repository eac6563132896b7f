"""`fournil corpus report`: the datasheet of a corpus directory — DATASHEET.md, datasheet.json, datasheet.png.

The same table as CroissantLLM's data section (bytes, documents, tokens per category) for the user's own data,
plus what the pipeline did to it: rejects by reason, language-ID confusion, upsampling, length histograms.
"""

from __future__ import annotations

import json
from pathlib import Path

from fournil import artifacts
from fournil.console import UsageError
from fournil.corpus.pipeline import STATS


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


TOKENS_HINT = ("token counts need `--tokenizer DIR` (exact count of docs/) or `--shards DIR` (tokens as packed, "
               "after the mix)")


def write_report(corpus: Path, shards: Path | None = None, tokenizer: Path | None = None) -> dict:
    """Token columns come from `tokenizer` (docs/ counted exactly) and/or `shards` (the packed, mixed tokens);
    with neither, the datasheet says so instead of printing zeros."""
    corpus = Path(corpus)
    stats_path = corpus / STATS
    if not stats_path.is_file():
        raise UsageError(f"{corpus}: no {STATS} (run `fournil corpus run` first)")
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    tokens: dict[str, int] = {}
    if shards is not None:
        index_path = Path(shards) / "index.json"
        if not index_path.is_file():
            raise UsageError(f"{shards}: not a shards directory (no index.json)")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        tokens = {c: v["tokens"] for c, v in index["categories"].items()}
        stats["shards"] = {"dir": str(shards), "tokens": tokens, "validation": index.get("validation", {})}
    if tokenizer is not None:
        from fournil.corpus.pack import count_tokens

        stats["tokens"] = count_tokens(corpus, Path(tokenizer))
    if shards is None and tokenizer is None:
        stats["tokens_note"] = TOKENS_HINT
    artifacts.write_json(corpus / "datasheet.json", stats)
    artifacts.write_text(corpus / "DATASHEET.md", _markdown(stats, tokens if shards is not None else None))
    _plot(stats, corpus / "datasheet.png")
    return stats


def _count(table: dict[str, int] | None, key: str) -> str:
    return "—" if table is None else f"{table.get(key, 0):,}"


def _markdown(stats: dict, mixed: dict[str, int] | None) -> str:
    counted = stats.get("tokens")
    by_category = counted["categories"] if counted else None
    by_source = counted["sources"] if counted else None
    out = ["# Datasheet", "",
           "Produced by `fournil corpus run`; counts after cleaning, filtering and deduplication.", "",
           "## Categories", "",
           "| category | documents | MB | tokens | tokens (mixed) | share | target | input docs | rejected | "
           "input errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in stats["categories"].items():
        rejected = sum(c["rejects"].values())
        out.append(f"| {name} | {c['documents']:,} | {_mb(c['bytes'])} | {_count(by_category, name)} | "
                   f"{_count(mixed, name)} | {c['share']:.1%} | {c['target']:.1%} | {c['input_documents']:,} | "
                   f"{rejected:,} | {_count(c, 'input_errors') if 'input_errors' in c else '—'} |")
    out.append("")
    if counted:
        out.append(f"tokens: docs/ counted with `{counted['tokenizer']}` (tokenizer.json sha256 "
                   f"{counted['tokenizer_sha256'][:12]}…), held-out documents included, before mixing.")
    if mixed is not None:
        out.append(f"tokens (mixed): as packed in `{stats['shards']['dir']}` (repeats included, EOS included, "
                   "validation excluded).")
    if counted is None and mixed is None:
        out.append(f"— : {TOKENS_HINT}.")
    elif counted is None:
        out.append("— : tokens (before mixing) need `--tokenizer DIR`, an exact count of docs/.")
    elif mixed is None:
        out.append("— : mixed tokens need `--shards DIR`.")
    out += ["", "## Sources", "", "| source | category | licence | documents | MB | tokens | upsampling | rejects | "
            "input errors |", "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for name, s in stats["sources"].items():
        rejects = ", ".join(f"{k} {v}" for k, v in sorted(s["rejects"].items(), key=lambda kv: -kv[1])) or "—"
        out.append(f"| {name} | {s['category']} | {s['licence']} | {s['documents']:,} | {_mb(s['bytes'])} | "
                   f"{_count(by_source, name)} | ×{s['factor']:.2f} | {rejects} | "
                   f"{_count(s, 'input_errors') if 'input_errors' in s else '—'} |")
    out += ["", "## Language identification (category → detected)", ""]
    langs = sorted({lang for row in stats["language_confusion"].values() for lang in row})
    out += ["| category | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
    for category, row in stats["language_confusion"].items():
        out.append(f"| {category} | " + " | ".join(f"{row.get(lang, 0):,}" for lang in langs) + " |")
    errors = stats["input_errors"]
    out += ["", "## Input errors", "", "Every record read is kept, rejected with a reason, held out (`\"split\": "
            "\"test\"`) or an input error with its file and line; a file that cannot be read, or the cut tail of a "
            "stream, is one input error. Records repaired (NUL bytes removed) are kept, and listed here too.", "",
            f"{errors['total']} bad records: "
            + (", ".join(f"{k} {v}" for k, v in errors["by_kind"].items()) or "none") + "."]
    out += [f"- `{e['file']}:{e['line']}` {e['kind']}: {e['detail']}" for e in errors["first"][:5]]
    if stats["decontamination"]:
        out += ["", "## Decontamination", "", "| benchmark | eval texts | documents removed |", "|---|---:|---:|"]
        out += [f"| {k} | {v['eval_texts']:,} | {v['documents_removed']:,} |"
                for k, v in stats["decontamination"].items()]
    if stats.get("pii"):
        out += ["", "## PII replaced", "", ", ".join(f"{k.removeprefix('pii_')} {v:,}" for k, v in stats["pii"].items())]
    out += ["", "## Length histogram (documents per UTF-8 size bin)", "",
            "| bin ≥ bytes | " + " | ".join(stats["categories"]) + " |", "|---:|" + "---:|" * len(stats["categories"])]
    for i, low in enumerate(stats["length_bins"]):
        out.append(f"| {low:,} | " + " | ".join(str(c["length_histogram"][i]) for c in stats["categories"].values())
                   + " |")
    return "\n".join(out) + "\n"


def _plot(stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(stats["categories"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].bar(cats, [stats["categories"][c]["share"] for c in cats], label="mix share")
    axes[0].scatter(cats, [stats["categories"][c]["target"] for c in cats], color="red", zorder=3, label="target")
    axes[0].set_title("share of the mix")
    axes[0].legend()
    reasons: dict[str, int] = {}
    for c in stats["categories"].values():
        for k, v in c["rejects"].items():
            reasons[k] = reasons.get(k, 0) + v
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:12]
    axes[1].barh([k for k, _ in top], [v for _, v in top])
    axes[1].set_title("rejects by reason")
    labels = [f"≥{b:,}" for b in stats["length_bins"]]
    for c in cats:
        axes[2].plot(labels, stats["categories"][c]["length_histogram"], marker="o", label=c)
    axes[2].set_title("document length (bytes)")
    axes[2].tick_params(axis="x", rotation=60)
    axes[2].legend()
    artifacts.write_png(fig, path, dpi=80)
