"""The demo bake's wall time per step, against the first-run budget: `make demo` should bake in ≤ 10 minutes on
a 2-core machine of the slowest kind we meet (AMD EPYC Zen1).

No other toolkit bakes the same chain, so the anchor of each row is that step's share of the 600 s budget (its
usual share of the bake, `fournil.bake.pipeline.SHARE`); ratio > 1 means the step ran within its share. Rows are
seconds inverted to "bakes per hour" so that, as for every benchmark here, higher is better. Set FOURNIL_BENCH_OUT
to keep the baked directory (else a temporary one is used and removed).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from fournil.bake.pipeline import MARKERS, SHARE, STEPS

BUDGET_S = 600.0
ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def run() -> list[dict]:
    keep = os.environ.get("FOURNIL_BENCH_OUT")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(keep) if keep else Path(scratch) / "demo"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        load_before = os.getloadavg()
        subprocess.run([sys.executable, "-m", "fournil", "bake", str(ROOT / "recipes" / "demo.yaml"), "--out",
                        str(out), "--force", "corpus", "-q"], check=True, env=env)
        markers = {name: json.loads((out / MARKERS / f"{name}.json").read_text()) for name in STEPS}
    seconds = {name: m["seconds"] for name, m in markers.items()}
    # the load says how much of the machine the bake had; CPU seconds what each step cost whatever the load
    print(f"# demo bake on {_cpu()}, {os.cpu_count()} cores, load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after", file=sys.stderr)
    for name, m in markers.items():
        print(f"#   {name:<10} {m['seconds']:>7.1f} s wall {m.get('cpu_seconds', float('nan')):>7.1f} s CPU",
              file=sys.stderr)
    rows = [{"name": f"bake demo {name} (bakes/h)", "ours": 3600 / max(s, 0.1),
             "anchor": 3600 / (SHARE[name] * BUDGET_S), "unit": "bakes/h"} for name, s in seconds.items()]
    total = sum(seconds.values())
    rows.append({"name": f"bake demo total {total:.0f} s (bakes/h)", "ours": 3600 / total, "anchor": 3600 / BUDGET_S,
                 "unit": "bakes/h"})
    return rows
