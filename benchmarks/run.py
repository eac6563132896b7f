"""Run benchmarks side by side with their anchors and print one line each: name, ours, anchor, ratio.

Usage: python benchmarks/run.py [NAME_SUBSTRING ...] [--json]
Each `benchmarks/bench_*.py` exposes `run() -> list[dict]` with keys name, ours, anchor, unit (higher is better,
e.g. tokens/s). Ours and the anchor run in the same process, interleaved, so machine noise hits both alike.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    wanted = [a for a in argv if not a.startswith("--")]
    results = []
    for path in sorted(HERE.glob("bench_*.py")):
        if wanted and not any(w in path.stem for w in wanted):
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for row in module.run():
            row["ratio"] = row["ours"] / row["anchor"]
            results.append(row)
            if not as_json:
                print(f"{row['name']:<48} ours {row['ours']:>12,.1f}  anchor {row['anchor']:>12,.1f} {row['unit']:<10}"
                      f" ratio {row['ratio']:.2f}x", flush=True)
    if as_json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
