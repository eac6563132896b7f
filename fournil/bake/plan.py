"""`fournil bake RECIPE --plan`: what a bake at this scale costs, computed from the recipe alone.

Tokens per category = steps × batch_tokens × the mix share; upsampling = that ÷ the unique tokens available.
Compute = training FLOPs per token (PaLM convention, see fournil/lm/info.py) × tokens; GPU-hours =
compute ÷ (peak × MFU). Disk: packed shards store every trained token (upsampled repeats included) at 2 bytes
(vocabularies up to 65 536), a checkpoint holds float32 weights + AdamW state (DCP) + a float32 HF copy.
"""

from __future__ import annotations

import math
from typing import Any

from fournil.bake.config import GPU_PEAK_FLOPS
from fournil.console import print_table
from fournil.corpus.shards import token_dtype
from fournil.lm.info import flops_per_token, human, param_counts


def plan(recipe) -> dict[str, Any]:
    t, p = recipe.train, recipe.plan
    tokens = t.steps * t.batch_tokens
    mix = recipe.corpus.mix
    total_share = sum(mix.values())
    categories = {}
    for name, share in sorted(mix.items()):
        budget = tokens * share / total_share
        available = p.available_tokens.get(name, 0.0)
        epochs = budget / available if available else math.inf
        categories[name] = {"share": share / total_share, "tokens": budget, "available": available,
                            "epochs": epochs, "over_cap": epochs > recipe.corpus.max_epochs}
    n = param_counts(recipe.model).total
    flops = flops_per_token(recipe.model, t.seq_len)["training"] * tokens
    peak = GPU_PEAK_FLOPS[p.gpu]
    gpu_hours = flops / (peak * p.mfu) / 3600  # on CPU nodes (gpus: 0), what the same work costs on plan.gpu
    nodes, ranks = p.nodes, p.nodes * p.ranks_per_node
    checkpoint_bytes = n * (4 + 8) + n * 4  # DCP (fp32 weights + AdamW moments) + HF float32 copy
    micro = t.micro_batch_size
    sequences = t.batch_tokens // t.seq_len
    accumulation = sequences / (ranks * micro)
    command = (f"sbatch {' '.join(training_resources(p))} scripts/slurm/train.sbatch "
               f"{recipe.name} SHARDS_DIR RUN_DIR")
    return {
        "recipe": recipe.name,
        "parameters": n,
        "tokens": tokens,
        "categories": categories,
        "steps": t.steps,
        "global_batch": {"tokens": t.batch_tokens, "sequences": sequences, "seq_len": t.seq_len,
                         "micro_batch_per_gpu": micro, "accumulation_steps": accumulation},
        "flops": flops,
        "gpu": {"type": p.gpu, "count": p.gpus, "nodes": nodes, "peak_flops": peak, "mfu": p.mfu},
        "training_ranks": ranks,
        "gpu_hours": gpu_hours,
        "wall_clock_days": gpu_hours / p.gpus / 24 if p.gpus else None,
        "disk_bytes": {"shards": tokens * token_dtype(recipe.model.vocab_size).itemsize,
                       "checkpoint": checkpoint_bytes, "checkpoints_kept": checkpoint_bytes * t.keep_checkpoints},
        "commands": {
            "slurm": command,
            "torchrun_per_node": f"torchrun --nnodes={nodes} --nproc-per-node={p.ranks_per_node} "
                                 f"--rdzv-backend=c10d --rdzv-endpoint=HEAD_NODE:29500 -m fournil train pretrain "
                                 f"{recipe.name} --shards SHARDS_DIR --out RUN_DIR --resume",
        },
    }


def training_resources(p, nodes: int | None = None) -> list[str]:
    """sbatch options of a training job of plan `p` on `nodes` nodes (default: the pretraining's), for
    scripts/slurm/train.sbatch: one torchrun per node with every GPU of it, or slurm.cpu_tasks_per_node
    processes per CPU node; each process gets slurm.cpus_per_task CPUs. No GPU is asked on CPU nodes, whose
    clusters refuse a GPU request outright."""
    nodes = p.nodes if nodes is None else nodes
    cpus = p.slurm.cpus_per_task
    if p.gpus:  # the job has one task per node: its CPUs are shared by that node's GPU processes
        return [f"--nodes={nodes}", f"--gpus-per-node={p.gpus_per_node}", f"--cpus-per-task={cpus * p.gpus_per_node}"]
    return [f"--nodes={nodes}", f"--ntasks-per-node={p.slurm.cpu_tasks_per_node}", f"--cpus-per-task={cpus}"]


def print_plan(result: dict[str, Any]) -> None:
    rows = [("parameters", f"{result['parameters']:,} ({human(result['parameters'])})"),
            ("training tokens", human(result["tokens"]))]
    for name, c in result["categories"].items():
        warn = "  ⚠ over the repeat cap" if c["over_cap"] else ""
        rows.append((f"  {name}", f"{human(c['tokens'])} ({100 * c['share']:.1f} %) from {human(c['available'])} "
                                  f"unique → {c['epochs']:.2f} epochs{warn}"))
    b = result["global_batch"]
    g = result["gpu"]
    rows += [
        ("steps × global batch", f"{result['steps']:,} × {b['tokens']:,} tokens ({b['sequences']:,} × {b['seq_len']})"),
        ("per GPU" if g["count"] else "per process",
         f"micro-batch {b['micro_batch_per_gpu']}, {b['accumulation_steps']:.2f} accumulation steps"),
        ("compute", f"{result['flops']:.3e} FLOPs"),
        (f"{g['count']} × {g['type']} at {100 * g['mfu']:.0f} % MFU",
         f"{result['gpu_hours']:,.0f} GPU-hours, {result['wall_clock_days']:.1f} days on {g['nodes']} nodes")
        if g["count"] else
        ("training on CPU nodes", f"{g['nodes']} node(s), {result['training_ranks']} process(es); the same work: "
                                  f"{result['gpu_hours']:,.1f} {g['type']}-hours at {100 * g['mfu']:.0f} % MFU"),
        ("disk: shards", human(result["disk_bytes"]["shards"], "B")),
        ("disk: one checkpoint / kept", f"{human(result['disk_bytes']['checkpoint'], 'B')} / "
                                        f"{human(result['disk_bytes']['checkpoints_kept'], 'B')}"),
        ("launch (Slurm)", result["commands"]["slurm"]),
        ("launch (torchrun per node)", result["commands"]["torchrun_per_node"]),
    ]
    print_table(f"bake plan: {result['recipe']}", rows)
