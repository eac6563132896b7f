"""A model directory quantised by `fournil quantize`, loaded to run as it is: int8 rows with one scale each, or
4-bit groups with a scale and a minimum, in place of the blocks' `nn.Linear` layers (and lm_head with int8).

int8: w ≈ q·s with one scale per row, so y = (x·qᵀ)·s, the scale after the matmul. 4-bit: each group of
`group_size` inputs keeps a scale and a minimum (16 levels, as GGUF's Q4_1), two nibbles per byte. Writing such a
directory is the infer stage's (fournil.infer.quantize); reading it is the runtime's, so every stage that loads a
model (generation, evaluation, the server) takes the fast int8 path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fournil.console import UsageError
from fournil.lm import kernels
from fournil.lm.hf import check_finite, check_weights, load_model, read_config, read_state_dict
from fournil.lm.llama import Llama

METHOD = "fournil-weight-only"
SUFFIXES = ("_proj.weight",)  # q/k/v/o and gate/up/down inside the blocks


class Int8Linear(nn.Module):
    """y = (x · qᵀ) · scale with q int8 (out, in) and one float scale per output row."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cpu and x.shape[:-1].numel() <= kernels.MAX_ROWS and x.shape[-1] % 16 == 0 and kernels.available():
            # a decode step: fournil's kernel reads the int8 weights as they are; the line below first converts
            # the whole matrix to float, which costs far more than the product at a few rows
            return kernels.int8_linear(x, [self.weight], [self.weight_scale])
        return F.linear(x, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)


class Int4Linear(nn.Module):
    """Group-wise 4-bit: w = nibble·scale + min per group of `group_size` inputs; dequantised on the fly."""

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, group_size: int):
        super().__init__()
        self.group_size = group_size
        self.register_buffer("weight", packed)  # (out, in/2) uint8: low nibble = even input, high = odd
        self.register_buffer("weight_scale", scale)  # (out, in/group)
        self.register_buffer("weight_min", minimum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, dequantize_int4(self.weight, self.weight_scale, self.weight_min, self.group_size, x.dtype))


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out = packed.shape[0]
    q = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(out, -1, group_size).to(dtype)
    return (q * scale[..., None].to(dtype) + minimum[..., None].to(dtype)).reshape(out, -1)


def quantizable(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith(SUFFIXES)


def is_quantized(directory: str | Path) -> bool:
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return (hf.get("quantization_config") or {}).get("quant_method") == METHOD


def _float_view(state: dict[str, torch.Tensor], bits: int, group_size: int | None, int8_head: bool,
               source: str) -> dict[str, torch.Tensor]:
    """The floating-point tensors a quantised state stands for, as meta tensors of their float shape (scales
    checked and left out), so that `hf.check_weights` judges a quantised directory's config.json exactly as it
    judges a float one."""
    view, problems = {}, []
    stored = torch.int8 if bits == 8 else torch.uint8
    for name, tensor in state.items():
        if name.endswith((".weight_scale", ".weight_min")):
            continue
        if not (quantizable(name) or (int8_head and name == "lm_head.weight")):
            view[name] = tensor
            continue
        if tensor.dtype != stored or tensor.dim() != 2:
            problems.append(f"{name}: expected a 2-d {stored} matrix, got {tensor.dtype} {list(tensor.shape)}")
            continue
        rows, cols = tensor.shape[0], tensor.shape[1] * (1 if bits == 8 else 2)  # 4 bits: two inputs per byte
        view[name] = torch.empty(rows, cols, device="meta")
        if bits == 4 and cols % group_size:
            problems.append(f"{name}: {cols} inputs are not a multiple of group_size {group_size}")
            continue
        base = name.removesuffix(".weight")
        extras = ({"weight_scale": (rows,)} if bits == 8 else
                  dict.fromkeys(("weight_scale", "weight_min"), (rows, cols // group_size)))
        for suffix, shape in extras.items():
            extra = state.get(f"{base}.{suffix}")
            if extra is None:
                problems.append(f"{base}.{suffix}: missing")
            elif tuple(extra.shape) != shape or not extra.is_floating_point():
                problems.append(f"{base}.{suffix}: expected a float {list(shape)}, got {extra.dtype} "
                                f"{list(extra.shape)}")
    if problems:
        shown = problems[:20] + ([f"… and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise UsageError(f"{source}: quantised tensors do not match ({len(problems)}):\n    " + "\n    ".join(shown))
    return view


def load_quantized(directory: str | Path, device: str | torch.device = "cpu") -> Llama:
    """Build the Llama with quantised linears in place of nn.Linear and load the stored tensors as they are."""
    directory = Path(directory)
    config = read_config(directory)
    hf = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    q = hf["quantization_config"]
    bits, group_size = q.get("bits"), q.get("group_size")
    if bits not in (4, 8) or (bits == 4 and (type(group_size) is not int or group_size < 1)):
        raise UsageError(f"{directory / 'config.json'}: quantization_config needs bits 4 or 8 (and a positive "
                         "group_size for 4)")
    state = read_state_dict(directory)
    int8_head = bits == 8 and q.get("lm_head") is True
    # config.json against the tensors before anything is built, as load_model does: a config claiming a million
    # layers would otherwise build a million modules
    view = _float_view(state, bits, group_size, int8_head, str(directory))
    model = check_weights(config, view, str(directory))
    check_finite(state, str(directory))  # the stored tensors: the view holds none
    if bits == 8:
        kernels.available()  # build the int8 kernel now (once per machine), not in the middle of a traced step
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not (quantizable(f"{name}.weight") or
                                                     (int8_head and name == "lm_head")):
            continue
        try:
            if bits == 8:
                new: nn.Module = Int8Linear(state.pop(f"{name}.weight"), state.pop(f"{name}.weight_scale"))
            else:
                new = Int4Linear(state.pop(f"{name}.weight"), state.pop(f"{name}.weight_scale"),
                                 state.pop(f"{name}.weight_min"), group_size)
        except KeyError as exc:
            raise UsageError(f"{directory}: quantised tensor {exc.args[0]} is missing") from exc
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    tied = config.tie_embeddings and not int8_head
    if tied:
        state.pop("lm_head.weight", None)
    _, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k, v in model.state_dict().items() if v.is_meta and not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise UsageError(f"{directory}: weights do not match config.json (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device).eval()


def load(directory: str | Path, dtype: str | None = None, device: str | torch.device = "cpu") -> Llama:
    """Any model directory fournil runs: its own, a transformers Llama, an imported GGUF, or a quantised one
    (whose int8/4-bit matrices stay as they are; `dtype` then applies to the floating-point tensors only)."""
    if not is_quantized(directory):
        return load_model(directory, dtype=dtype, device=device).eval()
    model = load_quantized(directory, device)
    return model.to(getattr(torch, dtype)) if dtype is not None else model
