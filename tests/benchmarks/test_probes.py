"""The infer benchmark's bandwidth probe (benchmarks/probes.cpp, built by benchmarks/bench_infer.py): a byte skipped
or read twice would make it read faster or slower than the memory it measures; the exact sum of all bytes shows
neither happened."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fournil.lm import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the probe is built as fournil's kernels are")


def _bench_infer():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_infer.py"
    spec = importlib.util.spec_from_file_location("bench_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("threads", [1, 2])
def test_read_bytes_reads_every_byte_once_whatever_the_shape(threads):
    read_bytes = _bench_infer().read_bytes
    torch.manual_seed(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n in (0, 1, 127, 4096, 576 * 4 * 10 + 17, 2**20 + 3):
            x = torch.randint(0, 256, (n,), dtype=torch.uint8)
            for row_bytes in (0, 1, 16, 100, 576, 2048, n + 1):
                assert read_bytes(x, row_bytes) == int(x.long().sum()), (n, row_bytes)
        floats = torch.randn(1000)
        assert read_bytes(floats, 64) == int(floats.view(torch.uint8).long().sum())
    finally:
        torch.set_num_threads(before)
    with pytest.raises(RuntimeError, match="row_bytes"):
        read_bytes(torch.ones(8, dtype=torch.uint8), -1)
