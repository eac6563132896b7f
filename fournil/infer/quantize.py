"""`fournil quantize`: a weight-only quantised copy of a model directory, int8 per output channel or 4-bit in groups
along the input (the formats: fournil.lm.quantized, which loads and runs them). The blocks' linear layers are
quantised, and with int8 lm_head too (read on every token; llama.cpp's q8_0 quantises it as well); norms,
embeddings and a 4-bit lm_head stay in floating point (the most sensitive parts). The directory keeps the HF
layout plus `quantization_config` in config.json; transformers cannot load it.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from fournil import artifacts
from fournil.console import UsageError
from fournil.lm.hf import check_weights, read_config, read_state_dict, to_hf_config, weight_files
from fournil.lm.quantized import METHOD, is_quantized, load_quantized, quantizable

log = logging.getLogger(__name__)


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


def quantize_state(state: dict[str, torch.Tensor], bits: int, group_size: int) -> dict[str, torch.Tensor]:
    """HF state dict → quantised state dict (new keys `<linear>.weight_scale`, `.weight_min`)."""
    out = {}
    for name, w in state.items():
        if not quantizable(name):
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
    from fournil.lm.hf import load_model
    from fournil.lm.prompt import PromptTokenizer
    from fournil.lm.score import Scorer

    ids = PromptTokenizer.load(source).encode(text)
    base, quant = (math.exp(-Scorer(model, max_length=window).rolling([ids])[0] / (len(ids) - 1))
                   for model in (load_model(source, dtype=torch.float32).eval(), load_quantized(quantized)))
    return {"tokens": len(ids), "perplexity_fp32": base, "perplexity_quantized": quant,
            "change_percent": 100 * (quant / base - 1)}
