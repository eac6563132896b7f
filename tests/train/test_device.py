"""The device-dependent choices of the training loop, the CUDA branch included, checked on a CPU; bf16 autocast and
torch.compile training on a CPU against the float32 eager run."""

import json
import logging

import pytest
import torch

from fournil.recipe import load_recipe
from fournil.train.device import choose
from fournil.train.loop import train
from tests.train.conftest import TINY


def never_measure() -> float:
    raise AssertionError("a CPU matmul must never be measured for a GPU's peak")


def test_cuda_trains_in_bf16_with_tf32_fused_adamw_nccl_and_the_datasheet_peak():
    setup = choose("cuda", "auto", "NVIDIA H100 80GB HBM3", measure=never_measure)
    assert (setup.autocast, setup.tf32, setup.fused_adamw, setup.backend) == (torch.bfloat16, True, True, "nccl")
    assert setup.matmul_dtype == "bfloat16"
    assert setup.peak.flops == 989.5e12 and setup.peak.source.startswith("table: H100 bfloat16 dense")


def test_cuda_in_float32_counts_against_the_tf32_peak():
    setup = choose("cuda", "float32", "NVIDIA A100-SXM4-80GB", measure=never_measure)
    assert setup.autocast is None and setup.matmul_dtype == "tf32"
    assert setup.peak.flops == 156e12


def test_an_unknown_gpu_reports_no_mfu_and_measures_nothing():
    setup = choose("cuda", "auto", "NVIDIA B200", measure=never_measure)
    assert setup.peak.flops is None and setup.peak.source.startswith("none: GPU 'NVIDIA B200' is not in")
    overridden = choose("cuda", "auto", "NVIDIA B200", peak_flops=2.25e15, measure=never_measure)
    assert (overridden.peak.flops, overridden.peak.source) == (2.25e15, "train.peak_flops")


def test_cpu_keeps_float32_gloo_fused_adamw_and_measures_its_matmul_peak():
    setup = choose("cpu")
    assert (setup.autocast, setup.tf32, setup.fused_adamw, setup.backend) == (None, False, True, "gloo")
    assert setup.matmul_dtype == "float32"
    assert setup.peak.flops > 1e8 and setup.peak.source == "measured: this CPU's float32 matmul"
    assert choose("cpu", "bfloat16").autocast == torch.bfloat16  # train.precision asks for it
    assert choose("cpu", peak_flops=1e9, measure=never_measure).peak.source == "train.peak_flops"


def run_losses(shards_dir, run_dir, max_steps=None, **overrides) -> list[dict]:
    recipe = load_recipe("croissant-1m", overrides={**TINY, "train.eval_interval": 0, "train.checkpoint_interval": 0,
                                                    **{f"train.{k}": v for k, v in overrides.items()}})
    train(recipe, shards_dir, run_dir, max_steps=max_steps)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_bf16_autocast_follows_float32_for_20_steps(shards_dir, tmp_path, caplog):
    """bf16 keeps 8 bits of mantissa (relative error about 2⁻⁹ per product): the two runs drift apart by a few
    tenths of a percent of a ~4-nat loss over 20 steps at lr 1e-2. 0.03 nats bounds that drift at every step."""
    with caplog.at_level(logging.INFO, logger="fournil.train.loop"):
        fp32 = run_losses(shards_dir, tmp_path / "fp32", steps=20, precision="float32", peak_flops=0.0)
    bf16 = run_losses(shards_dir, tmp_path / "bf16", steps=20, precision="bfloat16")
    assert len(fp32) == len(bf16) == 20
    gaps = [abs(a["loss"] - b["loss"]) for a, b in zip(fp32, bf16, strict=True)]
    assert max(gaps) < 0.03, gaps
    assert max(gaps) > 1e-5  # bf16 did run: float32 alone would give the same losses to the last digit
    assert bf16[-1]["loss"] < bf16[0]["loss"] - 3
    # where MFU's denominator came from, in every record and in the log
    assert {r["peak_source"] for r in fp32} == {"measured: this CPU's float32 matmul"}
    assert all(r["peak_flops"] > 1e8 and r["mfu"] > 0 for r in fp32)
    assert {(r["peak_source"], r["peak_flops"]) for r in bf16} == {("train.peak_flops", 1e9)}
    assert "MFU denominator: measured: this CPU's float32 matmul" in caplog.text


@pytest.mark.slow
def test_compiled_training_matches_eager(shards_dir, tmp_path):
    """train.compile: true (torch.compile per block; its first step costs 25–40 s on a CPU) computes the eager
    losses up to float32 reassociation."""
    eager = run_losses(shards_dir, tmp_path / "eager", max_steps=4)
    compiled = run_losses(shards_dir, tmp_path / "compiled", max_steps=4, compile=True)
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], abs=1e-4)


def test_a_run_without_a_known_peak_still_plots_and_reports(shards_dir, tmp_path, assert_chart):
    """A GPU missing from the table writes "mfu": null and says why; the charts and the bake report carry on."""
    from fournil.bake.report import write_report

    run = tmp_path / "pretrain"
    run_losses(shards_dir, run, max_steps=2)
    why = "none: GPU 'NVIDIA B200' is not in fournil/train/flops.py's table, so MFU is not reported"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        if "loss" in record:  # what the loop writes on such a GPU
            record.update(mfu=None, peak_flops=None, peak_source=why)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = write_report(load_recipe("croissant-1m", overrides=TINY), tmp_path).read_text()
    assert f"MFU not reported (peak: {why})" in report
    assert_chart(run / "plots" / "throughput.png")
