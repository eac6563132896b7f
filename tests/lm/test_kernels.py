"""fournil's C++ decode kernels against plain PyTorch: the int8 matrix-vector product (several matrices in one
call, row counts that are not multiples of the block, inputs wider than one integer accumulation chunk, bf16
inputs, batches), one-query attention under a mask with holes, and the fallback when the kernels are off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fournil.infer.quantize import quantize_int8
from fournil.lm import kernels
from fournil.lm.quantized import Int8Linear

pytestmark = pytest.mark.skipif(not kernels.available(), reason="fournil's kernels need x86-64 AVX2 and a compiler")


def _reference(x: torch.Tensor, qs: list[torch.Tensor], scales: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([F.linear(x.double(), q.double()) * s.double() for q, s in zip(qs, scales, strict=True)], -1)


@pytest.mark.parametrize(("rows", "width", "outs"), [
    (1, 576, [576, 192, 192]),  # q/k/v of SmolLM2 in one call
    (1, 1536, [576]),
    (3, 64, [7, 13]),  # blocks of 4 rows with a tail, two matrices
    (32, 128, [9]),  # the most rows the kernel takes
    (2, 8192 + 16, [5]),  # wider than one int32 accumulation chunk (4096)
])
def test_int8_linear_matches_the_float_product(rows, width, outs):
    torch.manual_seed(rows * width)
    pairs = [quantize_int8(torch.randn(n, width)) for n in outs]
    qs, scales = [q for q, _ in pairs], [s for _, s in pairs]
    x = torch.randn(rows, width) * 3
    x[0, 5] = 40.0  # an outlier sets the activation scale: small values must survive it
    got = kernels.int8_linear(x, qs, scales)
    ref = _reference(x, qs, scales)
    assert got.shape == (rows, sum(outs)) and got.dtype == torch.float32
    # int16 activations (absmax / 16383 per row) lose less than rounding them to bf16 would
    error = (got.double() - ref).abs().max()
    bf16_error = (_reference(x.bfloat16().float(), qs, scales) - ref).abs().max()
    assert error < bf16_error and error / ref.abs().max() < 5e-4, (error, bf16_error)


def test_int8_linear_keeps_leading_dims_and_bfloat16():
    q, s = quantize_int8(torch.randn(40, 96))
    x = torch.randn(2, 1, 96, dtype=torch.bfloat16)
    got = kernels.int8_linear(x, [q], [s])
    assert got.shape == (2, 1, 40) and got.dtype == torch.bfloat16
    ref = _reference(x.float(), [q], [s])
    assert torch.allclose(got.double(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


def test_int8_linear_refuses_what_it_cannot_do():
    q, s = quantize_int8(torch.randn(8, 40))
    with pytest.raises(RuntimeError, match="multiple of 16"):
        kernels.int8_linear(torch.randn(1, 40), [q], [s])
    q, s = quantize_int8(torch.randn(8, 64))
    with pytest.raises(RuntimeError, match="at most 32 rows"):
        kernels.int8_linear(torch.randn(33, 64), [q], [s])
    with pytest.raises(RuntimeError, match="scale 0 needs 8"):
        kernels.int8_linear(torch.randn(1, 64), [q], [s[:4]])


def test_int8_module_takes_the_kernel_for_decode_rows_and_torch_for_a_prefill(monkeypatch):
    q, s = quantize_int8(torch.randn(24, 64))
    layer = Int8Linear(q, s)
    calls = []
    original = kernels.int8_linear
    monkeypatch.setattr(kernels, "int8_linear", lambda *a: calls.append(a[0].shape) or original(*a))
    decode, prefill = torch.randn(1, 1, 64), torch.randn(1, 40, 64)
    torch_path = F.linear(decode, q.float()) * s
    assert torch.allclose(layer(decode), torch_path, atol=1e-3 * torch_path.abs().max().item())
    assert layer(prefill).shape == (1, 40, 24)
    assert calls == [(1, 1, 64)]  # the 40-row prefill went through torch


# 24: the dot product's scalar tail; 20 and 136: the weighted sum's scalar path (not 8 lanes at a time, or too wide)
@pytest.mark.parametrize("head_dim", [64, 24, 20, 136])
def test_decode_attention_matches_softmax_attention_under_a_mask(head_dim):
    torch.manual_seed(head_dim)
    B, H, Hkv, S = 2, 6, 2, 40
    q = torch.randn(B, H, head_dim)
    k, v = torch.randn(B, Hkv, S, head_dim), torch.randn(B, Hkv, S, head_dim)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[0, :25] = True
    mask[1, 10:31] = True  # left padding, then filled positions, then the unused rest of the cache
    mask[1, 33::2] = True  # and scattered ones (the kernel packs the positions set)
    got = kernels.decode_attention(q, k, v, mask, head_dim ** -0.5)
    groups = H // Hkv
    kk, vv = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = torch.einsum("bhd,bhsd->bhs", q, kk) * head_dim ** -0.5
    ref = torch.einsum("bhs,bhsd->bhd", scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1), vv)
    assert torch.allclose(got, ref, atol=1e-5)
    k[0, :, 30:] = float("nan")  # positions outside the mask are never read
    assert torch.isfinite(kernels.decode_attention(q, k, v, mask, head_dim ** -0.5)).all()


def test_attention_softmax_holds_for_scores_far_apart():
    """The softmax's vectorised exponential: scores 100s apart (weights that underflow to 0 beside one near 1), and
    runs of masked-in positions that are and are not multiples of its 8 lanes."""
    torch.manual_seed(7)
    D = 64
    for S in (7, 8, 19, 64):
        q = torch.randn(1, 3, D) * 12  # scores up to ~±100 after scaling
        k, v = torch.randn(1, 1, S, D), torch.randn(1, 1, S, D)
        mask = torch.ones(1, S, dtype=torch.bool)
        got = kernels.decode_attention(q, k, v, mask, D ** -0.5)
        scores = torch.einsum("bhd,bsd->bhs", q.double(), k[:, 0].double()) * D ** -0.5
        ref = torch.einsum("bhs,bsd->bhd", scores.softmax(-1), v[:, 0].double())
        assert torch.allclose(got.double(), ref, atol=1e-5), S


_PRODUCTS = """
import sys, torch
from fournil.lm import kernels
from fournil.infer.quantize import quantize_int8
assert kernels.available()
torch.manual_seed(3)
pairs = [quantize_int8(torch.randn(n, 8192 + 48)) for n in (576, 7)]
x = torch.randn(5, 8192 + 48) * 3
qs, scales = [q for q, _ in pairs], [s for _, s in pairs]
rows = torch.cat([kernels.int8_linear(x[i:i + 1], qs, scales) for i in range(5)])  # one at a time
torch.save((kernels.int8_linear(x, qs, scales), rows), sys.argv[1])  # rows in pairs, the odd one alone
"""


def test_avx512_vnni_and_avx2_products_are_the_same_numbers(tmp_path):
    """Where the CPU has AVX-512 VNNI the int8 product takes vpdpwssd; its integer sums are exact, so the results
    must equal the AVX2 path's bit for bit (FOURNIL_KERNELS_VNNI=0 forces that one; both read once per process).
    So must several rows taken two at a time (a prompt's) and the same rows one by one (decoding's)."""
    import os
    import subprocess
    import sys

    outs = {}
    for vnni in ("1", "0"):
        out = tmp_path / f"vnni{vnni}.pt"
        env = {**os.environ, "FOURNIL_KERNELS_VNNI": vnni}
        subprocess.run([sys.executable, "-c", _PRODUCTS, str(out)], check=True, env=env, timeout=300)
        outs[vnni], rows = torch.load(out, weights_only=True)
        assert torch.equal(outs[vnni], rows), vnni
    assert outs["1"].shape == (5, 583) and torch.isfinite(outs["1"]).all()
    assert torch.equal(outs["1"], outs["0"])


@pytest.mark.parametrize("width", [1, 7, 8, 9, 49152, 49155])
def test_argmax_gives_torch_s_index_on_ties_nan_and_infinities(width):
    """Greedy decoding's pick: any other index on a tie would change the generated text."""
    torch.manual_seed(width)
    cases = [torch.randn(3, width), torch.ones(3, width), torch.full((2, width), float("-inf")),
             torch.randint(-2, 3, (4, width)).float()]  # many ties
    nan, inf = torch.randn(3, width), torch.randn(3, width)
    nan[1, width // 2] = float("nan")
    nan[2, -1] = float("nan")
    inf[0, width // 3] = float("inf")
    inf[1, -1] = 100.0
    for x in [*cases, nan, inf, torch.randn(1, width)]:
        assert torch.equal(kernels.argmax(x), x.argmax(-1)), x
    other = torch.randn(2, width, dtype=torch.float64)  # not float32: torch's own argmax
    assert torch.equal(kernels.argmax(other), other.argmax(-1))


def test_an_edit_to_any_kernel_source_or_header_builds_anew(tmp_path, monkeypatch):
    """The library's name hashes every source and header: one edited without a new name would load a stale build.
    And where they lie: torch's builder rebuilds a name loaded from other paths, so two checkouts sharing one
    would rebuild it in turn."""
    import shutil

    for copy in ("a", "b"):
        shutil.copytree(kernels.CSRC, tmp_path / copy / "csrc")
    named = {}
    for copy in ("a", "b"):
        monkeypatch.setattr(kernels, "CSRC", tmp_path / copy / "csrc")
        named[copy] = kernels.library_name("k", sorted(kernels.CSRC.glob("*.cpp")))
    assert named["a"] != named["b"]
    csrc = tmp_path / "a" / "csrc"
    monkeypatch.setattr(kernels, "CSRC", csrc)
    names = {kernels.library_name("k", sorted(csrc.glob("*.cpp")))}
    files = sorted(csrc.iterdir())
    for path in files:
        assert path.suffix in (".cpp", ".h"), path
        path.write_text(path.read_text() + "\n// edited\n")
        names.add(kernels.library_name("k", sorted(csrc.glob("*.cpp"))))
    (csrc / "new.cpp").write_text("// a new source\n")
    names.add(kernels.library_name("k", sorted(csrc.glob("*.cpp"))))
    assert len(names) == len(files) + 2  # each edit, and the new source, gave a name of its own


def test_the_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("FOURNIL_KERNELS", "0")
    assert kernels._load() is False


def test_a_lock_left_by_a_killed_build_is_removed_and_a_young_one_waited_for(tmp_path, monkeypatch):
    import os
    import threading
    import time

    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - kernels.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    kernels._clear_stale_lock(lock)  # stale: removed at once
    assert not lock.exists()
    lock.touch()  # young: another build holds it and removes it when done
    threading.Timer(1.5, lock.unlink).start()
    start = time.monotonic()
    kernels._clear_stale_lock(lock)
    assert not lock.exists() and time.monotonic() - start >= 1.0
