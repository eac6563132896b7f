"""fournil's own CPU decode kernels (csrc/, built as one library): an int8 matrix-vector product (matvec.cpp),
one-query attention (attention.cpp), and a whole decode step with greedy decoding's argmax (decode_step.cpp, used
by fournil.lm.fused); the headers hold what they share.

Why: at batch 1 decoding is bound by how fast the weights stream from memory, and ATen's and inductor's int8
weight-only kernels read them at about half the speed the machine can (benchmarks/RESULTS.md). They are x86-64
AVX2 C++, compiled with the C++ compiler torch's own `torch.compile` needs, once per machine (cached
under torch's extensions directory), by the first `available()` call; `available(build=False)` and `built()` never
compile, for callers to whom a build would cost more than it saves (fournil.lm.backends.choose).

Everything falls back to plain PyTorch when they cannot be used: another CPU, no compiler, CUDA tensors, or
FOURNIL_KERNELS=0. `available()` says which, and logs why once. On a CPU with AVX-512 VNNI the int8 products
multiply-add with vpdpwssd (the same integer sums, so the same numbers); FOURNIL_KERNELS_VNNI=0 keeps them on AVX2.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
MAX_ROWS = 32  # int8_linear serves decode steps (a server's batch too); longer prefills use torch's GEMM
STALE_LOCK_S = 300  # a build lock this old belongs to a killed build (a live one takes well under a minute)
_available: bool | None = None


def available(build: bool = True) -> bool:
    """Build (first call on this machine) and load the kernels; False, with the reason logged, if they cannot.
    build=False loads them only where that runs no compiler (`built()`), and is False otherwise without deciding
    anything: a later call may still build them."""
    global _available
    if _available is None:
        if not build and not built():
            return False
        _available = _load()
    return _available


def built() -> bool:
    """Whether the kernels are loaded, or built on this machine and ready to load: a finished library of these
    sources with no build in progress beside it. A cheap check (greedy decoding asks it every token): the sources
    are hashed once per process, then it looks for two files."""
    if _available is not None:
        return _available
    paths = _library_paths()
    return paths is not None and paths[0].exists() and not paths[1].exists()


@functools.cache
def _library_paths() -> tuple[Path, Path] | None:
    """The kernels' finished library and build lock for these sources; None where torch's extension directory
    cannot be made."""
    name = library_name("fournil_kernels", _sources())
    try:
        build = _build_directory(name)
    except OSError:
        return None
    return build / f"{name}.so", build / "lock"


def _sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


def _load() -> bool:
    if os.environ.get("FOURNIL_KERNELS", "1") == "0":
        log.info("fournil kernels off (FOURNIL_KERNELS=0)")
        return False
    if platform.machine().lower() not in ("x86_64", "amd64") or \
            torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        log.info("fournil kernels need an x86-64 CPU with AVX2; using PyTorch's")
        return False
    try:
        load_library("fournil_kernels", _sources(), "fournil's CPU kernels")
    except Exception as exc:  # no compiler, no ninja, a read-only cache: plain PyTorch still works
        log.warning("fournil kernels unavailable (%s); using PyTorch's", str(exc).splitlines()[0][:200])
        return False
    _register_fakes()
    return True


def load_library(prefix: str, sources: list[Path], what: str) -> None:
    """Build (once per machine) and load C++ operator sources that may include csrc/'s headers; raises if the
    build fails. The library's name hashes every source and header, so that an edit to any of them builds anew
    instead of loading a stale build."""
    from torch.utils import cpp_extension

    name = library_name(prefix, sources)
    try:
        build = _build_directory(name)
        if not (build / f"{name}.so").exists():
            log.warning("building %s (once per machine, under a minute)", what)
        _clear_stale_lock(build / "lock")
    except OSError:
        pass
    cpp_extension.load(name=name, sources=[str(p) for p in sources], extra_include_paths=[str(CSRC)],
                       is_python_module=False, verbose=False,
                       extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"])


def _build_directory(name: str) -> Path:
    """Where torch's builder builds the library `name` (TORCH_EXTENSIONS_DIR or torch's cache); OSError where it
    cannot make it."""
    from torch.utils import cpp_extension

    return Path(cpp_extension._get_build_directory(name, verbose=False))


def library_name(prefix: str, sources: list[Path]) -> str:
    """`prefix` and a hash of the sources and of every header in csrc/: their paths and contents. Paths too,
    because torch's builder rebuilds whenever the same name is loaded from sources somewhere else: two
    checkouts sharing one name would rebuild it in turn, each waiting for the other's lock."""
    digest = hashlib.sha256()
    for path in [*sources, *sorted(CSRC.glob("*.h"))]:
        digest.update(str(path.resolve()).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{prefix}_{digest.hexdigest()[:12]}"


def _clear_stale_lock(lock: Path) -> None:
    """torch's builder waits, without end, for its lock file to go; a build killed midway leaves it behind.
    Wait while it is young (another process is building), then remove it."""
    if lock.exists():
        log.warning("waiting for another fournil kernel build, or for its lock %s to go stale", lock)
    while lock.exists() and time.time() - lock.stat().st_mtime < STALE_LOCK_S:
        time.sleep(1)
    lock.unlink(missing_ok=True)


def _register_fakes() -> None:
    """Shapes for torch.compile's tracing (the kernels themselves only run on real tensors)."""

    @torch.library.register_fake("fournil::int8_linear")
    def _(x, qs, scales):
        return x.new_empty((*x.shape[:-1], sum(q.shape[0] for q in qs)))

    @torch.library.register_fake("fournil::decode_attention")
    def _(q, k, v, mask, scale):
        return torch.empty_like(q)

    @torch.library.register_fake("fournil::argmax_rows")
    def _(x):
        return x.new_empty(x.shape[:1], dtype=torch.long)


def int8_linear(x: torch.Tensor, qs: list[torch.Tensor], scales: list[torch.Tensor]) -> torch.Tensor:
    """cat([x · qᵢᵀ · scaleᵢ]) over matrices sharing the input x (…, K), ≤ MAX_ROWS rows; `available()` first."""
    return torch.ops.fournil.int8_linear(x, qs, scales)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale over the masked-in positions)·v for one query per row; `available()` first.
    q (B, H, D), k/v (B, Hkv, S, D), mask (B, S) bool → (B, H, D)."""
    return torch.ops.fournil.decode_attention(q, k, v, mask, scale)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits.argmax(-1) of (M, V) logits, the same index on ties and NaN, much faster on a CPU float32 row (one
    token's greedy pick); torch's own for anything else."""
    # never worth building the kernels for by itself: with them not built yet, torch's argmax
    if logits.dim() == 2 and logits.dtype == torch.float32 and logits.device.type == "cpu" and available(build=False):
        return torch.ops.fournil.argmax_rows(logits.contiguous())
    return logits.argmax(-1)
