"""Every choice the training loop makes from the kind of device it runs on, in one function of the device type,
so the CUDA branch can be checked on a machine without a GPU (tests/train/test_device.py passes "cuda")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from fournil.train.flops import Peak, gpu_peak, measure_peak_flops


@dataclass(frozen=True)
class DeviceSetup:
    device_type: str
    autocast: torch.dtype | None  # matmuls under torch.autocast in this dtype; None: plain float32
    tf32: bool  # float32 matmuls on TF32 tensor cores (CUDA); weights and the loss stay float32 either way
    fused_adamw: bool  # AdamW's fused kernel where PyTorch has one that fournil runs on, else the foreach one
    backend: str  # torch.distributed backend
    device_name: str = ""  # torch.cuda.get_device_name, for the peak table
    peak_override: float = 0.0  # train.peak_flops
    measure: Callable[[], float] = field(default=measure_peak_flops, repr=False, compare=False)

    @property
    def matmul_dtype(self) -> str:
        """The dtype the model's matmuls run in, which picks the peak: "bfloat16", "tf32" or "float32"."""
        if self.autocast is not None:
            return "bfloat16"
        return "tf32" if self.tf32 else "float32"

    @cached_property
    def peak(self) -> Peak:
        """MFU's denominator per device. Lazy: on a CPU it costs a second of matmuls, which only the loop pays."""
        if self.device_type == "cuda":
            return gpu_peak(self.device_name, self.matmul_dtype, self.peak_override)
        if self.peak_override:
            return Peak(self.peak_override, "train.peak_flops")
        if self.device_type == "cpu":
            return Peak(self.measure(), "measured: this CPU's float32 matmul")
        return Peak(None, f"none: no peak is known for {self.device_type} devices, so MFU is not reported; set "
                          "train.peak_flops")


def choose(device_type: str, precision: str = "auto", device_name: str = "", peak_flops: float = 0.0,
           measure: Callable[[], float] = measure_peak_flops) -> DeviceSetup:
    """bf16 autocast on CUDA (or when train.precision asks for it), TF32 for CUDA's float32 matmuls, fused AdamW,
    NCCL on CUDA and gloo elsewhere, and the peak of this device for the dtype in use."""
    cuda = device_type == "cuda"
    bf16 = precision == "bfloat16" or (precision == "auto" and cuda)
    return DeviceSetup(device_type=device_type, autocast=torch.bfloat16 if bf16 else None, tf32=cuda,
                       fused_adamw=device_type in ("cuda", "cpu"), backend="nccl" if cuda else "gloo",
                       device_name=device_name, peak_override=peak_flops, measure=measure)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else ""
