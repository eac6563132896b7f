"""`fournil bake --plan` on the paper-scale recipe, against figures computed by hand."""

import json

import pytest

from fournil.bake.plan import plan
from fournil.cli import main
from fournil.recipe import load_recipe


def test_croissant_plan_matches_hand_computed_figures():
    result = plan(load_recipe("croissant-1.3b"))
    tokens = 190_000 * 15_728_640  # steps × batch tokens
    assert result["tokens"] == tokens == 2_988_441_600_000
    # matmul parameters: attention 402,653,184 + MLP 811,597,824 + lm_head 65,536,000
    forward = 2 * 1_279_787_008 + 4 * 24 * 2048 * 2048
    assert result["flops"] == pytest.approx(3 * forward * tokens)  # 2.656e22
    assert result["gpu_hours"] == pytest.approx(3 * forward * tokens / (312e12 * 0.4) / 3600)  # ≈ 59,111
    assert 59_000 < result["gpu_hours"] < 59_200
    fr = result["categories"]["fr"]
    assert fr["share"] == pytest.approx(655.64 / (2 * 655.64 + 141.43 + 35.78), abs=1e-4)  # FR:EN 1:1
    assert fr["epochs"] == pytest.approx(fr["tokens"] / 303.51e9) and fr["over_cap"]  # French is upsampled ×4.3
    assert result["categories"]["en"]["tokens"] == pytest.approx(fr["tokens"])
    assert result["disk_bytes"]["shards"] == 2 * tokens  # uint16 tokens
    assert result["disk_bytes"]["checkpoint"] == 16 * 1_345_423_360
    assert result["global_batch"]["sequences"] == 7680 and result["global_batch"]["accumulation_steps"] == 4
    assert "sbatch --nodes=30" in result["commands"]["slurm"]


def test_plan_cli_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bake", "croissant-1.3b", "--plan", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpu"]["count"] == 240
    assert not (tmp_path / "out").exists()
