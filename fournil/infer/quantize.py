"""Weight-only quantisation our engine runs directly: int8 per output channel, or 4-bit in groups along the input.

int8: w ≈ q·s with one scale per row (s = max|w_row| / 127, symmetric), so y = (x·qᵀ)·s — the scale comes after
the matmul. 4-bit: each group of `group_size` inputs keeps a scale and a minimum (asymmetric, 16 levels, as
GGUF's Q4_1), two nibbles per byte. The blocks' linear layers are quantised, and with int8 lm_head too (a
fifth of a small model's bytes, read on every token: llama.cpp's q8_0 quantises it as well; with tied embeddings
the lookup table stays in floating point, of which one row is read per token). Norms, embeddings and the 4-bit
lm_head stay in floating point (the most sensitive parts). The directory keeps the HF layout plus
`quantization_config` in config.json; transformers cannot load it, our `Engine` can.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fournil import artifacts
from fournil.console import UsageError
from fournil.infer import kernels
from fournil.lm.hf import (
    check_finite,
    check_size,
    check_state_dict,
    check_weights,
    read_config,
    read_state_dict,
    to_hf_config,
    weight_files,
)
from fournil.lm.llama import Llama

log = logging.getLogger(__name__)
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
            # the whole matrix to float (SmolLM2's lm_head at one row: 1.5 ms against 76 ms)
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


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (w.float().abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, inp = w.shape
    groups = w.float().reshape(out, inp // group_size, group_size)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-12)
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8).reshape(out, inp)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed, scale, low


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out = packed.shape[0]
    q = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(out, -1, group_size).to(dtype)
    return (q * scale[..., None].to(dtype) + minimum[..., None].to(dtype)).reshape(out, -1)


def _quantizable(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith(SUFFIXES)


def quantize_state(state: dict[str, torch.Tensor], bits: int, group_size: int) -> dict[str, torch.Tensor]:
    """HF state dict → quantised state dict (new keys `<linear>.weight_scale`, `.weight_min`)."""
    out = {}
    for name, w in state.items():
        if not _quantizable(name):
            out[name] = w
            continue
        base = name.removesuffix(".weight")
        if bits == 8:
            out[name], out[f"{base}.weight_scale"] = quantize_int8(w)
        else:
            if w.shape[1] % group_size:
                raise UsageError(f"{name}: input size {w.shape[1]} is not a multiple of --group-size {group_size}")
            out[name], out[f"{base}.weight_scale"], out[f"{base}.weight_min"] = quantize_int4(w, group_size)
    return out


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
    checked and left out), so that `hf.check_size` and `hf.check_state_dict` judge a quantised directory's
    config.json exactly as they judge a float one."""
    view, problems = {}, []
    stored = torch.int8 if bits == 8 else torch.uint8
    for name, tensor in state.items():
        if name.endswith((".weight_scale", ".weight_min")):
            continue
        if not (_quantizable(name) or (int8_head and name == "lm_head.weight")):
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
    check_size(config, view, str(directory))
    with torch.device("meta"):
        model = Llama(config)
    check_state_dict(model, view, str(directory))
    check_finite(state, str(directory))
    if bits == 8:
        kernels.available()  # build the int8 kernel now (once per machine), not in the middle of a traced step
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not (_quantizable(f"{name}.weight") or
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


def sample_text(max_chars: int = 6000) -> str:
    """Half English, half French from the embedded sample corpus: the default text for the perplexity report."""
    from fournil.corpus import iter_sample

    parts = []
    for lang in ("en", "fr"):
        text = ""
        for record in iter_sample(lang):
            text += record["text"] + "\n\n"
            if len(text) >= max_chars // 2:
                break
        parts.append(text[: max_chars // 2])
    return "".join(parts)


def quantize(source: str | Path, out: str | Path, bits: int, group_size: int = 32) -> Path:
    """Write a quantised copy of a model directory (tokenizer files copied, manifest last)."""
    import shutil

    from safetensors.torch import save_file

    source, out = Path(source), Path(out)
    if bits not in (4, 8):
        raise UsageError(f"--bits {bits}: choose 8 (int8 per channel) or 4 (4-bit group-wise)")
    if bits == 4 and group_size <= 0:
        raise UsageError(f"--group-size must be > 0, got {group_size}")
    if source.resolve() == out.resolve():
        raise UsageError("source and output are the same directory")
    if is_quantized(source):
        raise UsageError(f"{source}: already quantised; quantise the floating-point model instead")
    config = read_config(source)
    weight_files(source)  # refuse pickles / missing weights before anything is written
    state = read_state_dict(source, torch.float32)
    check_weights(config, state, str(source))  # what loading it would refuse, refused before anything is written
    head = state.pop("lm_head.weight", None)
    if head is None:  # tied (and stored once)
        head = state["model.embed_tokens.weight"]
    state = quantize_state(state, bits, group_size)
    if bits == 8:  # lm_head as its own int8 matrix, even when tied to the embeddings
        state["lm_head.weight"], state["lm_head.weight_scale"] = quantize_int8(head)
    elif not config.tie_embeddings:
        state["lm_head.weight"] = head
    state = {k: v.contiguous() for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    artifacts.mark_incomplete(out, "fournil.infer.quantize")
    for extra in source.iterdir():
        if extra.is_file() and (extra.name.startswith(("tokenizer", "special_tokens")) or
                                extra.name in ("chat_template.jinja", "generation_config.json")):
            with artifacts.atomic_path(out / extra.name) as tmp:
                shutil.copyfile(extra, tmp)
    with artifacts.atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    hf = to_hf_config(config)
    hf["quantization_config"] = {"quant_method": METHOD, "bits": bits,
                                 **({"group_size": group_size} if bits == 4 else {"lm_head": True})}
    artifacts.write_json(out / "config.json", hf)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    artifacts.write_manifest(out, "fournil.infer.quantize", quantized_from=str(source), bits=bits,
                             group_size=group_size if bits == 4 else None, weight_bytes=nbytes)
    return out


def report(source: str | Path, quantized: str | Path, text: str, window: int = 512) -> dict[str, Any]:
    """Perplexity of both models on the same tokens (windows of `window`); the change in percent."""
    from fournil.infer.prompt import PromptTokenizer
    from fournil.lm.hf import load_model
    from fournil.lm.score import Scorer

    ids = PromptTokenizer.load(source).encode(text)
    base, quant = (math.exp(-Scorer(model, max_length=window).rolling([ids])[0] / (len(ids) - 1))
                   for model in (load_model(source, dtype=torch.float32).eval(), load_quantized(quantized)))
    return {"tokens": len(ids), "perplexity_fp32": base, "perplexity_quantized": quant,
            "change_percent": 100 * (quant / base - 1)}
