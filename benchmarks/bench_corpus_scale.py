"""Corpus scale benchmark: `fournil corpus run` on 1× and 8× an input cut from the embedded sample, and on one
8×-sized file with 4 tasks against 1 task.

The 8× input is the 1× input and 7 copies of it with changed text, so that neither dedup collapses it: each copy
swaps every word of 4+ letters that is not a stop word for another word of the same length from the same
language's vocabulary (a seeded permutation per copy; capitals kept). Keep/drop decisions barely move (word
lengths, stop words, repetitions and lines are the same) while almost every 5-word shingle changes.

Each run is `python -m fournil corpus run` in a fresh wrapper process that reports its children's resource usage
(`RUSAGE_CHILDREN`: the largest peak RSS of any process of the run, and the CPU seconds of all of them), and
/proc's VmHWM of the process tree is polled as a cross-check; the larger peak is kept.

Rows (higher is better; the anchor is the target, so a ratio ≥ 1 meets it):
- peak RSS 1× ÷ 8×: memory must not follow the input (target ≥ 1/1.2: at most 20 % growth for 8× the input);
- MB/s per core 8× ÷ 1× (input MB per CPU second): the cost per byte stays (target ≥ 0.9);
- one 8× file (the French part), 4 tasks vs 1 task, 2 workers: wall-clock speed-up (target ≥ 1.8), of the whole
  run and of its filter stage alone (the stage that byte ranges split; the others add fixed start-up costs per
  stage and the one-task `finalise`, which merges on one core and deflates on the others whatever the task count).
Each run's stages (first task start to last task end, from datatrove's task logs) are printed on stderr.
Plus the absolute figures (MiB, MB/s per core, seconds) with the target as their anchor where one exists.

`FOURNIL_BENCH_SCALE_KB` sets the 1× size per prose language (default 1000 kB of JSON lines; code and parallel
get a quarter and a half of it).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

COPIES = 8
WORD = re.compile(r"[^\W\d_]{4,}")
# A child subreaper (prctl PR_SET_CHILD_SUBREAPER): the workers' forkserver outlives the run's main process and
# would be reparented to init, its CPU time and peak RSS lost; here it is reparented to the wrapper, waited for,
# and counted with the rest.
WRAPPER = """
import ctypes, json, os, resource, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
code = subprocess.run(sys.argv[1:]).returncode
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": code, "maxrss_kib": r.ru_maxrss, "cpu_s": r.ru_utime + r.ru_stime}))
"""


def _base_records(kb: float) -> dict[str, list[dict]]:
    from fournil.corpus import iter_sample

    share = {"fr": 1.0, "en": 1.0, "code": 0.25, "parallel": 0.5}
    out = {}
    for category, part in share.items():
        records, size = [], 0
        for record in iter_sample(category):
            if category == "parallel" and record.get("split") == "test":
                continue
            records.append({k: v for k, v in record.items() if k in ("text", "en", "fr")})
            size += len(json.dumps(records[-1], ensure_ascii=False).encode())
            if size >= kb * part * 1000:
                break
        out[category] = records
    return out


def _vocabulary(texts) -> dict[int, list[str]]:
    words = sorted({w.lower() for t in texts for w in WORD.findall(t)})
    by_length: dict[int, list[str]] = {}
    for w in words:
        by_length.setdefault(len(w), []).append(w)
    return by_length


def _substitution(vocab: dict[int, list[str]], stop: set[str], seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    table = {}
    for words in vocab.values():
        movable = [w for w in words if w not in stop]
        swapped = movable[:]
        rng.shuffle(swapped)
        table.update(zip(movable, swapped, strict=True))
    return table


def _rewrite(text: str, table: dict[str, str]) -> str:
    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = table.get(word.lower(), word)
        return new.capitalize() if word[:1].isupper() else new

    return WORD.sub(swap, text)


def _copies(base: dict[str, list[dict]], copies: int) -> dict[str, list[dict]]:
    """`copies` versions of each category's records: the originals, then rewritten ones."""
    from fournil.corpus.text import STOP_WORDS

    texts = {"fr": [r["text"] for r in base["fr"]] + [r["fr"] for r in base["parallel"]],
             "en": [r["text"] for r in base["en"]] + [r["en"] for r in base["parallel"]],
             "code": [r["text"] for r in base["code"]]}
    vocab = {lang: _vocabulary(t) for lang, t in texts.items()}
    out = {c: [] for c in base}
    for k in range(copies):
        tables = {lang: _substitution(v, set(STOP_WORDS.get(lang, ())), seed=k) if k else {}
                  for lang, v in vocab.items()}
        for category, records in base.items():
            for r in records:
                if category == "parallel":
                    out[category].append({"en": _rewrite(r["en"], tables["en"]), "fr": _rewrite(r["fr"], tables["fr"])})
                else:
                    out[category].append({"text": _rewrite(r["text"], tables[category])})
    return out


def _write(folder: Path, data: dict[str, list[dict]], categories=None) -> tuple[Path, float]:
    """One plain .jsonl file per category and a recipe; (recipe, input MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, size = ["sources:"], 0
    for category, records in data.items():
        if categories and category not in categories:
            continue
        path = folder / f"{category}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        size += path.stat().st_size
        lines.append(f"  bench-{category}: {{path: {path.name}, category: {category}}}")
    recipe = folder / "corpus.yaml"
    recipe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return recipe, size / 1e6


def _tree_hwm(pid: int) -> int:
    """The largest VmHWM (KiB) among `pid` and its descendants right now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    best, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            pass
    return best


def _run(recipe: Path, out: Path, tasks: int, workers: int = 2) -> dict:
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "fournil", "corpus", "run", str(recipe),
           "--out", str(out), "--tasks", str(tasks), "--workers", str(workers), "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    polled, done = [0], threading.Event()

    def poll() -> None:
        while not done.wait(0.2):
            polled[0] = max(polled[0], _tree_hwm(proc.pid))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    poller.join()
    usage = json.loads(stdout.strip().splitlines()[-1])
    if usage["rc"] != 0:
        raise RuntimeError(f"corpus run failed ({usage['rc']}): {' '.join(cmd)}")
    stages = json.loads((out / "work" / "stages.json").read_text())["tasks"]
    seconds = {stage: round(_stage_seconds(out, stage), 2) for stage in stages}
    return {"wall_s": wall, "cpu_s": usage["cpu_s"], "rss_mib": max(usage["maxrss_kib"], polled[0]) / 1024,
            "filter_s": seconds["filter"], "stages_s": seconds}


def _stage_seconds(out: Path, stage: str) -> float:
    """From the first task's start to the last task's end, by datatrove's task logs."""
    from datetime import datetime

    marks = {"Launching pipeline": [], "Processing done": []}
    for log in (out / "logs" / stage / "logs").glob("*.log"):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            for mark, found in marks.items():
                if mark in line:
                    found.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f"))
    return (max(marks["Processing done"]) - min(marks["Launching pipeline"])).total_seconds()


def run() -> list[dict]:
    kb = float(os.environ.get("FOURNIL_BENCH_SCALE_KB", "1000"))
    base = _base_records(kb)
    data = _copies(base, COPIES)
    one = {c: records[:len(base[c])] for c, records in data.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe1, mb1 = _write(tmp / "in1", one)
        recipe8, mb8 = _write(tmp / "in8", data)
        recipe_fr, mb_fr = _write(tmp / "in8fr", data, categories=("fr",))
        r1 = _run(recipe1, tmp / "out1", tasks=4)
        r8 = _run(recipe8, tmp / "out8", tasks=4)
        t1 = _run(recipe_fr, tmp / "outfr1", tasks=1)
        t4 = _run(recipe_fr, tmp / "outfr4", tasks=4)
    rate1, rate8 = mb1 / r1["cpu_s"], mb8 / r8["cpu_s"]
    print(f"1×: {mb1:.1f} MB, {r1}; 8×: {mb8:.1f} MB, {r8}; one file {mb_fr:.1f} MB: 1 task {t1}, 4 tasks {t4}",
          file=sys.stderr)
    rows.append({"name": "corpus run peak RSS 1× ÷ 8× input", "ours": r1["rss_mib"] / r8["rss_mib"],
                 "anchor": 1 / 1.2, "unit": "ratio"})
    rows.append({"name": "corpus run MB/s per core 8× ÷ 1× input", "ours": rate8 / rate1, "anchor": 0.9,
                 "unit": "ratio"})
    rows.append({"name": "corpus run one 8× file, 4 tasks ÷ 1 task speed", "ours": t1["wall_s"] / t4["wall_s"],
                 "anchor": 1.8, "unit": "×"})
    rows.append({"name": "  its filter stage alone, 4 tasks ÷ 1 task speed", "ours": t1["filter_s"] / t4["filter_s"],
                 "anchor": 1.8, "unit": "×"})
    for label, r, mb in (("1×", r1, mb1), ("8×", r8, mb8)):
        rows.append({"name": f"corpus run {label} input ({mb:.1f} MB), 1 ÷ peak RSS", "ours": 1024 / r["rss_mib"],
                     "anchor": 1024 / (r1["rss_mib"] * 1.2), "unit": "1/GiB"})
        rows.append({"name": f"corpus run {label} input, MB/s per core", "ours": mb / r["cpu_s"],
                     "anchor": 0.9 * rate1, "unit": "MB/s"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<52} ours {row['ours']:>8.3f}  anchor {row['anchor']:>8.3f} {row['unit']}")
