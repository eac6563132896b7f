"""MFU's denominator: what the hardware could do at best, per device, in the dtype the matmuls run in.

On a GPU that is the vendor's datasheet peak for the tensor cores, *dense*: the datasheets print the 2:4-sparse
figure with a footnote, twice the dense one, and training never uses sparsity. On a CPU there is no datasheet to
trust, so the float32 matmul throughput is measured. `train.peak_flops` overrides both.

A GPU is found by the name `torch.cuda.get_device_name` reports ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB",
"Tesla V100-SXM2-16GB", ...): its words must be the entry's words plus only words that do not change the peak
(memory size, form factor). Any other word ("Laptop", "MIG 1g.10gb", "D") makes the GPU unknown: no MFU rather
than a wrong one.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

# Words a device name carries that never change the peak: vendor and brand.
_BRAND = frozenset({"nvidia", "tesla", "geforce", "amd", "instinct"})
_MEMORY = re.compile(r"^\d+gb?$")  # 80gb, 144g


@dataclass(frozen=True)
class GPU:
    """Dense peaks in FLOP/s for one device. None: no tensor-core support for that format."""

    key: str  # how the table, `plan.gpu` and the logs name it
    words: frozenset[str]  # words the device name must contain
    bf16: float | None
    fp16: float
    tf32: float | None
    fp32: float  # float32 on the vector units, no tensor cores
    source: str
    allowed: frozenset[str] = frozenset()  # further words that may appear in the name (form factor, memory kind)


def _gpu(key: str, words: str, bf16: float | None, fp16: float, tf32: float | None, fp32: float, source: str,
         allowed: str = "") -> GPU:
    return GPU(key, frozenset(words.split()), bf16, fp16, tf32, fp32, source, frozenset(allowed.split()))


GPUS: tuple[GPU, ...] = (
    # NVIDIA Ampere. The A100 datasheet gives the same peaks for SXM4 and PCIe, 40 and 80 GB.
    _gpu("A100", "a100", 312e12, 312e12, 156e12, 19.5e12, "NVIDIA A100 datasheet", "sxm sxm4 pcie"),
    _gpu("A10", "a10", 125e12, 125e12, 62.5e12, 31.2e12, "NVIDIA A10 datasheet"),
    # The A10G (AWS G5 instances) has no NVIDIA datasheet: the figures published for G5, not the A10's.
    _gpu("A10G", "a10g", 70e12, 70e12, 35e12, 35e12, "AWS G5 instance specifications"),
    _gpu("A40", "a40", 149.7e12, 149.7e12, 74.8e12, 37.4e12, "NVIDIA A40 datasheet"),
    # NVIDIA Hopper: the datasheets' sparse figures halved (H100 SXM bf16 1,979 → 989.5).
    _gpu("H100", "h100", 989.5e12, 989.5e12, 494.5e12, 67e12, "NVIDIA H100 datasheet (SXM)", "sxm sxm5 hbm3 hbm3e"),
    _gpu("H100 PCIe", "h100 pcie", 756.5e12, 756.5e12, 378e12, 51e12, "NVIDIA H100 datasheet (PCIe)"),
    _gpu("H100 NVL", "h100 nvl", 835.5e12, 835.5e12, 417.5e12, 60e12, "NVIDIA H100 datasheet (NVL)"),
    _gpu("H200", "h200", 989.5e12, 989.5e12, 494.5e12, 67e12, "NVIDIA H200 datasheet (SXM)", "sxm sxm5 hbm3e"),
    _gpu("H200 NVL", "h200 nvl", 835.5e12, 835.5e12, 417.5e12, 60e12, "NVIDIA H200 datasheet (NVL)"),
    _gpu("GH200", "gh200", 989.5e12, 989.5e12, 494.5e12, 67e12, "NVIDIA GH200 datasheet", "hbm3 hbm3e"),
    # NVIDIA Ada
    _gpu("L4", "l4", 121e12, 121e12, 60e12, 30.3e12, "NVIDIA L4 datasheet"),
    _gpu("L40", "l40", 181.05e12, 181.05e12, 90.5e12, 90.5e12, "NVIDIA L40 datasheet"),
    _gpu("L40S", "l40s", 366.5e12, 366.5e12, 183e12, 91.6e12, "NVIDIA L40S datasheet"),
    # GeForce: tensor peaks with float32 accumulation (what autocast uses), half the float16-accumulate figure.
    _gpu("RTX 4090", "rtx 4090", 165.2e12, 165.2e12, 82.6e12, 82.6e12, "NVIDIA Ada whitepaper (RTX 4090)"),
    # NVIDIA Volta and Turing: float16 tensor cores only, no bf16 and no TF32.
    _gpu("V100", "v100", None, 125e12, None, 15.7e12, "NVIDIA V100 datasheet (SXM2)", "sxm2"),
    _gpu("V100 PCIe", "v100 pcie", None, 112e12, None, 14e12, "NVIDIA V100 datasheet (PCIe)"),
    _gpu("V100S", "v100s", None, 130e12, None, 16.4e12, "NVIDIA V100S datasheet", "pcie"),
    _gpu("T4", "t4", None, 65e12, None, 8.1e12, "NVIDIA T4 datasheet"),
    # AMD, which ROCm's PyTorch reports through torch.cuda. No TF32 column: whether float32 matmuls use XF32 there
    # depends on the ROCm build, so a float32 run counts against the float32 peak.
    _gpu("MI300X", "mi300x", 1307.4e12, 1307.4e12, None, 163.4e12, "AMD Instinct MI300X datasheet", "oam"),
)


def find_gpu(name: str) -> GPU | None:
    """The table entry for a device name, or None when no entry matches it exactly (see the module docstring)."""
    words = {w for w in re.findall(r"[a-z0-9]+", name.lower()) if w not in _BRAND and not _MEMORY.match(w)}
    matches = [g for g in GPUS if g.words <= words and words - g.words <= g.allowed]
    return matches[0] if len(matches) == 1 else None


@dataclass(frozen=True)
class Peak:
    flops: float | None  # per device; None: unknown, so MFU is not reported
    source: str  # "table: …", "train.peak_flops", "measured: …" or "none: why", for the log and metrics.jsonl


def gpu_peak(name: str, dtype: str, override: float = 0.0) -> Peak:
    """The peak of the GPU called `name` for matmuls in `dtype` ("bfloat16", "tf32" or "float32")."""
    if override:
        return Peak(override, "train.peak_flops")
    gpu = find_gpu(name)
    if gpu is None:
        return Peak(None, f"none: GPU {name!r} is not in fournil/train/flops.py's table, so MFU is not reported; "
                          "set train.peak_flops to its dense peak FLOP/s for the dtype in use")
    if dtype == "tf32" and gpu.tf32 is None:  # allow_tf32 has no effect there: matmuls run in float32
        dtype = "float32"
    flops = {"bfloat16": gpu.bf16, "tf32": gpu.tf32, "float32": gpu.fp32}[dtype]
    if flops is None:
        return Peak(None, f"none: the {gpu.key} has no {dtype} tensor cores, so MFU is not reported; set "
                          "train.peak_flops, or train.precision: float32")
    return Peak(flops, f"table: {gpu.key} {dtype} dense, from the {gpu.source}")


def measure_peak_flops(seconds: float = 1.0) -> float:
    """This CPU's float32 matmul throughput (FLOP/s), the denominator of MFU on a CPU."""
    import torch

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)
