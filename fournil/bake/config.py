"""What `fournil bake --plan` needs beyond the stages' own sections. Pure data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fournil.train.flops import GPUS

# Dense half-precision tensor-core peaks per GPU (bf16; float16 where there is no bf16), the table training's MFU uses.
GPU_PEAK_FLOPS = {gpu.key: gpu.bf16 or gpu.fp16 for gpu in GPUS}


# Slurm's time limit formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]
SLURM_TIME = re.compile(r"(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|INFINITE|UNLIMITED)")
DEFAULT_TIME = "20:00:00"  # a common cap of GPU clusters' queues; pretraining and SFT requeue themselves near it


@dataclass(kw_only=True)
class SlurmConfig:
    """`fournil bake --plan --emit`: how the bake's jobs are asked of Slurm (GPU counts come from the plan)."""

    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    sbatch_args: list[str] = field(default_factory=list)  # more sbatch options for every job, e.g. --qos=normal
    cpus_per_task: int = 8  # CPUs of each process: a job of a data step, or one training rank
    cpu_nodes: int = 1  # training without GPUs (plan.gpus: 0): nodes …
    cpu_tasks_per_node: int = 1  # … and processes (torchrun ranks, gloo) per node
    sft_nodes: int = 1  # fine-tuning is far smaller than pretraining: it runs on this many of the same nodes
    time: dict[str, str] = field(default_factory=dict)  # step → time limit; steps not named get DEFAULT_TIME

    def check(self) -> list[tuple[str, str]]:
        from fournil.bake.pipeline import STEPS

        problems = [(key, f"must be >= 1, got {getattr(self, key)}")
                    for key in ("cpus_per_task", "cpu_nodes", "cpu_tasks_per_node", "sft_nodes")
                    if getattr(self, key) < 1]
        for step, limit in self.time.items():
            if step not in STEPS:
                problems.append((f"time.{step}", f"not a step of the bake; choose among: {', '.join(STEPS)}"))
            elif not SLURM_TIME.fullmatch(str(limit)):
                problems.append((f"time.{step}", f"{limit!r} is not a Slurm time limit (minutes, HH:MM:SS or "
                                                 "D-HH:MM:SS)"))
        problems += [(f"sbatch_args[{i}]", f"{arg!r} is not an sbatch option (like --qos=normal)")
                     for i, arg in enumerate(self.sbatch_args) if not sbatch_option(arg)]
        problems += [(key, f"{getattr(self, key)!r} is not a Slurm {key} name") for key in ("partition", "account")
                     if getattr(self, key) is not None and not slurm_name(getattr(self, key))]
        return problems


def slurm_name(value: str) -> bool:
    return re.fullmatch(r"[\w.@+-]+", value) is not None


def sbatch_option(arg: str) -> bool:
    """An sbatch option spelled as one word (`--qos=normal`, `-q normal` is two words and is refused)."""
    return arg.startswith("-") and len(arg) > 1 and not any(c.isspace() for c in arg.split("=")[0])


@dataclass(kw_only=True)
class PlanConfig:
    # Unique tokens available per category before mixing; defaults are CroissantLLM's corpus (arXiv 2402.00786).
    available_tokens: dict[str, float] = field(default_factory=lambda: {
        "en": 655.64e9, "fr": 303.51e9, "code": 141.43e9, "parallel": 35.78e9})
    gpu: str = "A100"
    gpus: int = 240  # CroissantLLM trained on 240 A100s; 0: train on CPU nodes (slurm.cpu_nodes)
    gpus_per_node: int = 8
    mfu: float = 0.4  # model FLOPs utilisation to plan with
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.gpu not in GPU_PEAK_FLOPS:
            problems.append(("gpu", f"{self.gpu!r} is not known; choose one of: {', '.join(GPU_PEAK_FLOPS)}"))
        if not 0 < self.mfu <= 1:
            problems.append(("mfu", f"must be in (0, 1], got {self.mfu}"))
        if self.gpus_per_node < 1:
            problems.append(("gpus_per_node", f"must be >= 1, got {self.gpus_per_node}"))
        elif self.gpus < 0 or self.gpus % self.gpus_per_node:
            problems.append(("gpus", f"{self.gpus} GPUs must fill whole nodes of {self.gpus_per_node} (0: CPU nodes)"))
        elif self.slurm.sft_nodes > self.nodes:
            problems.append(("slurm.sft_nodes", f"{self.slurm.sft_nodes} exceeds the {self.nodes} training node(s)"))
        for name, value in self.available_tokens.items():
            if value < 0:
                problems.append((f"available_tokens.{name}", f"must be >= 0, got {value}"))
        return problems

    @property
    def nodes(self) -> int:
        """Nodes of the pretraining job."""
        return self.gpus // self.gpus_per_node if self.gpus else self.slurm.cpu_nodes

    @property
    def ranks_per_node(self) -> int:
        """Training processes per node: one per GPU, or slurm.cpu_tasks_per_node on CPU nodes."""
        return self.gpus_per_node if self.gpus else self.slurm.cpu_tasks_per_node


@dataclass(kw_only=True)
class Rung:
    """One model of a scaling ladder: its shape (the rest of the model section is shared)."""

    name: str
    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    lr: float | None = None  # None: the recipe's train.lr

    def check(self) -> list[tuple[str, str]]:
        problems = [(k, f"must be > 0, got {getattr(self, k)}") for k in ("dim", "n_layers", "n_heads", "ffn_dim")
                    if getattr(self, k) <= 0]
        if not problems and self.dim % self.n_heads:
            problems.append(("n_heads", f"{self.n_heads} does not divide dim={self.dim}"))
        if self.lr is not None and self.lr <= 0:
            problems.append(("lr", f"must be > 0 or null, got {self.lr}"))
        return problems


@dataclass(kw_only=True)
class LadderConfig:
    """`fournil scaling run`: small models trained on the same shards, fitted as loss vs compute."""

    rungs: list[Rung]
    tokens_per_param: float = 20.0  # Hoffmann et al. 2022's compute-optimal ratio sets each rung's steps
    max_steps: int = 0  # cap on any rung's steps (a CPU smoke ladder); 0 = none
    evals: int = 4  # validations per rung (the curves in scaling.png)
    extrapolate: dict[str, float] = field(default_factory=dict)  # name → training FLOPs to predict bits/byte at

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if len(self.rungs) < 2:
            problems.append(("rungs", f"a ladder needs at least 2 rungs to fit, got {len(self.rungs)}"))
        names = [r.name for r in self.rungs]
        if len(set(names)) != len(names):
            problems.append(("rungs", f"rung names must be unique, got {names}"))
        if self.tokens_per_param <= 0:
            problems.append(("tokens_per_param", f"must be > 0, got {self.tokens_per_param}"))
        if self.max_steps < 0 or self.evals < 1:
            problems.append(("max_steps" if self.max_steps < 0 else "evals", "must be >= 0 (max_steps) / >= 1 (evals)"))
        for name, flops in self.extrapolate.items():
            if flops <= 0:
                problems.append((f"extrapolate.{name}", f"training FLOPs must be > 0, got {flops}"))
        return problems
