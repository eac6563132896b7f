"""MFU's denominator on a GPU: the datasheet table, looked up by the names torch.cuda.get_device_name reports."""

import pytest

from fournil.train.flops import GPUS, find_gpu, gpu_peak

# Names as CUDA (and ROCm) report them → the table entry they must land on.
NAMES = [
    ("NVIDIA H100 80GB HBM3", "H100"),  # SXM5
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA GH200 480GB", "GH200"),
    ("NVIDIA A100-SXM4-40GB", "A100"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100-PCIE-40GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", "L40"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA A10", "A10"),
    ("NVIDIA A40", "A40"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("Tesla V100-SXM2-16GB", "V100"),
    ("Tesla V100-SXM2-32GB", "V100"),
    ("Tesla V100-PCIE-32GB", "V100 PCIe"),
    ("Tesla V100S-PCIE-32GB", "V100S"),
    ("Tesla T4", "T4"),
    ("AMD Instinct MI300X", "MI300X"),
]

# Names that share a word with an entry but are another chip, a slice of one, or absent: no peak, not a wrong one.
UNKNOWN = [
    "NVIDIA GeForce RTX 4090 Laptop GPU",  # AD103, not AD102
    "NVIDIA GeForce RTX 4090 D",  # fewer SMs
    "NVIDIA A100-SXM4-80GB MIG 1g.10gb",  # a seventh of the GPU
    "Tesla V100-SXM3-32GB",  # DGX-2's faster-clocked V100
    "NVIDIA H800",
    "NVIDIA B200",
    "NVIDIA GeForce RTX 3090",
    "",
]


@pytest.mark.parametrize(("name", "key"), NAMES)
def test_device_names_find_their_entry(name, key):
    gpu = find_gpu(name)
    assert gpu is not None and gpu.key == key


@pytest.mark.parametrize("name", UNKNOWN)
def test_other_chips_are_unknown(name):
    assert find_gpu(name) is None


def test_every_key_names_its_own_entry_and_only_it():
    """The keys are what `plan.gpu` accepts and what the logs print: each must find itself, unambiguously."""
    assert len({g.key for g in GPUS}) == len(GPUS)
    for gpu in GPUS:
        assert find_gpu(gpu.key) is gpu


def test_peaks_are_dense_not_sparse():
    """A sparse figure copied by mistake doubles one column. Since Ampere, NVIDIA's tensor cores run bf16 at the
    float16 rate and TF32 at half of it; float32 without tensor cores is far below either."""
    for gpu in GPUS:
        if gpu.bf16 is not None:
            assert gpu.bf16 == gpu.fp16, gpu.key
        if gpu.tf32 is not None:
            assert gpu.tf32 == pytest.approx(gpu.fp16 / 2, rel=0.01), gpu.key
        assert gpu.fp32 < gpu.fp16 / 1.5, gpu.key
    h100 = find_gpu("NVIDIA H100 80GB HBM3")
    assert (h100.bf16, h100.tf32, h100.fp32) == (989.5e12, 494.5e12, 67e12)  # datasheet: 1,979* / 989* / 67
    a100 = find_gpu("NVIDIA A100-SXM4-80GB")
    assert (a100.bf16, a100.tf32, a100.fp32) == (312e12, 156e12, 19.5e12)


def test_the_peak_follows_the_dtype_the_matmuls_run_in():
    name = "NVIDIA H100 80GB HBM3"
    assert gpu_peak(name, "bfloat16").flops == 989.5e12
    assert gpu_peak(name, "tf32").flops == 494.5e12
    assert gpu_peak(name, "float32").flops == 67e12
    assert gpu_peak(name, "bfloat16").source.startswith("table: H100 bfloat16 dense, from the NVIDIA H100 datasheet")
    # no TF32 on Volta: allow_tf32 changes nothing, the matmuls run in float32
    assert gpu_peak("Tesla V100-SXM2-16GB", "tf32").flops == 15.7e12


def test_no_peak_rather_than_a_wrong_one():
    unknown = gpu_peak("NVIDIA B200", "bfloat16")
    assert unknown.flops is None
    assert "'NVIDIA B200'" in unknown.source and "train.peak_flops" in unknown.source
    no_bf16 = gpu_peak("Tesla V100-SXM2-16GB", "bfloat16")
    assert no_bf16.flops is None and "V100 has no bfloat16 tensor cores" in no_bf16.source


def test_train_peak_flops_overrides_the_table():
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA B200"):
        peak = gpu_peak(name, "bfloat16", override=2.25e15)
        assert (peak.flops, peak.source) == (2.25e15, "train.peak_flops")
