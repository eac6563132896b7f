"""Side-by-side report of several results directories: a Markdown table, parity lines and one PNG.

Parity (CroissantLLM's point: a *truly bilingual* model) is read two ways: the mean of the French and of the English
tasks' primary scores (accuracy-like metrics only), and the translation directions en→fr vs fr→en (chrF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fournil import artifacts
from fournil.console import UsageError

LOWER_IS_BETTER = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def load_results(directory: str | Path) -> dict[str, dict[str, Any]]:
    """{task: result} of one results directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such results directory")
    results = {}
    for path in sorted(directory.glob("*.json")):
        if path.name == artifacts.MANIFEST:
            continue
        data = artifacts.read_json(path)
        if isinstance(data, dict) and "task" in data and "metrics" in data:
            results[data["task"]] = data
    if not results:
        raise UsageError(f"{directory}: no task results (run `fournil eval run … --out {directory}` first)")
    return results


def parity(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Mean FR and EN primary scores (fractions, perplexities left out) and the two translation chrF scores."""
    by_lang: dict[str, list[float]] = {"fr": [], "en": []}
    for r in results.values():
        if r["kind"] in ("mc", "gen") and r["primary"] in r["metrics"]:
            by_lang[r["language"]].append(r["metrics"][r["primary"]])
    mean = {lang: sum(v) / len(v) if v else None for lang, v in by_lang.items()}
    chrf = {d: results.get(f"translation_{d}", {}).get("metrics", {}).get("chrf") for d in ("en_fr", "fr_en")}
    return {"fr": mean["fr"], "en": mean["en"], "chrf_en_fr": chrf["en_fr"], "chrf_fr_en": chrf["fr_en"]}


def _fmt(value: float | None, metric: str = "") -> str:
    if value is None:
        return "–"
    if metric in ("bleu", "chrf") or metric in LOWER_IS_BETTER:
        return f"{value:.2f}"
    return f"{100 * value:.1f}"


def markdown(runs: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One row per (task, metric), one column per run; fractions shown as percentages."""
    names = list(runs)
    tasks = list(dict.fromkeys(t for r in runs.values() for t in r))
    lines = ["# fournil eval report", "", "| task | metric | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * len(names)]
    for task in tasks:
        metrics = list(dict.fromkeys(m for r in runs.values() if task in r for m in r[task]["metrics"]))
        for metric in metrics:
            cells = [_fmt(runs[n].get(task, {}).get("metrics", {}).get(metric), metric) for n in names]
            arrow = " ↓" if metric in LOWER_IS_BETTER else ""
            lines.append(f"| {task} | {metric}{arrow} | " + " | ".join(cells) + " |")
    lines += ["", "## FR / EN parity", "", "| run | FR mean | EN mean | FR − EN | chrF en→fr | chrF fr→en |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        p = parity(runs[name])
        gap = None if p["fr"] is None or p["en"] is None else p["fr"] - p["en"]
        lines.append(f"| {name} | {_fmt(p['fr'])} | {_fmt(p['en'])} | {_fmt(gap)} | "
                     f"{_fmt(p['chrf_en_fr'], 'chrf')} | {_fmt(p['chrf_fr_en'], 'chrf')} |")
    signatures = {r["signature"]["chrf"] for run in runs.values() for r in run.values() if "signature" in r}
    signatures |= {r["signature"]["bleu"] for run in runs.values() for r in run.values() if "signature" in r}
    if signatures:
        lines += ["", "sacrebleu signatures: " + "; ".join(f"`{s}`" for s in sorted(signatures))]
    lines += ["", "Percentages are lm-eval's fractions × 100; ↓ lower is better."]
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict[str, dict[str, Any]]], path: str | Path) -> Path:
    """Grouped bars of each task's primary score (fractions), one colour per run, and the parity pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    tasks = [t for t in dict.fromkeys(t for r in runs.values() for t in r)
             if any(t in r and r[t]["kind"] in ("mc", "gen") for r in runs.values())]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(8, 0.6 * len(tasks) * max(1, len(names)) + 4), 4.5),
                                 gridspec_kw={"width_ratios": [max(1, len(tasks)), 2]})
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [100 * runs[name][t]["metrics"].get(runs[name][t]["primary"], 0) if t in runs[name] else 0
                  for t in tasks]
        ax.bar([x + i * width for x in range(len(tasks))], values, width, label=name)
        p = parity(runs[name])
        bx.bar([j + i * width for j in range(2)], [100 * (p["fr"] or 0), 100 * (p["en"] or 0)], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(tasks))])
    ax.set_xticklabels([t.removeprefix("french_bench_") for t in tasks], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("primary score (%)")
    ax.set_title("tasks")
    ax.legend(fontsize=8)
    bx.set_xticks([0.4 - width / 2, 1.4 - width / 2])
    bx.set_xticklabels(["FR mean", "EN mean"])
    bx.set_title("FR / EN parity")
    return artifacts.write_png(fig, path, dpi=110)


def write_report(directories: list[str | Path], out: str | Path, names: list[str] | None = None) -> Path:
    """REPORT.md and report.png in `out` comparing the results directories (labelled by folder name)."""
    labels = names or [Path(d).name for d in directories]
    if len(set(labels)) != len(labels):
        labels = [str(d) for d in directories]
    runs = {label: load_results(d) for label, d in zip(labels, directories, strict=True)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_text(out / "REPORT.md", markdown(runs) + "\n![scores](report.png)\n")
    plot(runs, out / "report.png")
    return out / "REPORT.md"
