"""`fournil scaling`: the power-law fit against known laws, ladder recipes, and a real tiny ladder end to end."""

import json
import math

import numpy as np
import pytest

from fournil.bake.scaling import PowerLaw, fit_power_law, rung_recipe
from fournil.cli import main
from fournil.console import UsageError
from fournil.lm.info import param_counts
from fournil.recipe import load_recipe, parse_recipe


def test_the_fit_recovers_a_known_law_exactly():
    law = PowerLaw(E=0.8, A=40.0, alpha=0.15, r2=1.0)
    compute = np.logspace(12, 18, 6)
    fit = fit_power_law(compute, law(compute))
    assert pytest.approx(0.8, rel=1e-5) == fit.E
    assert pytest.approx(40.0, rel=1e-4) == fit.A
    assert fit.alpha == pytest.approx(0.15, rel=1e-5)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)


def test_the_fit_tolerates_noise_and_finds_the_floor():
    rng = np.random.default_rng(0)
    law = PowerLaw(E=1.2, A=300.0, alpha=0.3, r2=1.0)
    compute = np.logspace(13, 19, 12)
    fit = fit_power_law(compute, law(compute) * np.exp(rng.normal(0, 0.002, 12)))
    assert pytest.approx(1.2, abs=0.05) == fit.E  # A and α trade off under noise; the curve itself does not
    assert np.allclose(fit(np.logspace(13, 20, 8)), law(np.logspace(13, 20, 8)), rtol=0.01)
    assert fit.r2 > 0.95  # the noise is a large part of log L's small variance near the floor


def test_two_points_give_a_pure_power_law():
    fit = fit_power_law([1e15, 1e17], [4.0, 2.0])  # halves per 100× compute: α = log10(2)/2
    assert fit.E == 0.0
    assert fit.alpha == pytest.approx(math.log10(2) / 2)
    assert fit(1e16) == pytest.approx(2 * math.sqrt(2))
    assert fit.compute_for(2.0) == pytest.approx(1e17)


@pytest.mark.parametrize(("compute", "loss", "message"), [
    ([1e15], [3.0], "at least 2"),
    ([1e15, -1.0], [3.0, 2.0], "positive"),
    ([1e15, 1e15], [3.0, 2.0], "same compute"),
    ([1e15, 1e16], [3.0, float("nan")], "finite"),
])
def test_bad_points_are_refused(compute, loss, message):
    with pytest.raises(UsageError, match=message):
        fit_power_law(compute, loss)


def test_the_ladder_recipe_trains_each_rung_for_20_tokens_per_parameter():
    recipe = load_recipe("scaling-ladder")
    assert [r.name for r in recipe.ladder.rungs] == ["croissant-1m", "croissant-10m", "croissant-40m",
                                                     "croissant-100m"]
    rung = rung_recipe(recipe, recipe.ladder.rungs[1])
    params = param_counts(rung.model).total
    assert params == 10_522_880  # croissant-10m's shape with the ladder's 8k vocabulary
    assert rung.train.steps == math.ceil(20 * params / 16384) == 12_846
    assert rung.train.lr == 2.0e-3 and rung.model.dim == 256 and rung.model.n_kv_heads == 4
    assert rung.train.eval_interval == 12_846 // 5


def test_a_ladder_with_one_rung_is_refused_with_its_location():
    text = """name: x
model: {dim: 64, n_layers: 2, n_heads: 4, ffn_dim: 128, vocab_size: 32000}
ladder:
  rungs:
    - {name: a, dim: 64, n_layers: 2, n_heads: 3, ffn_dim: 128}
"""
    with pytest.raises(UsageError) as error:
        parse_recipe(text, "ladder.yaml")
    assert "ladder.rungs" in str(error.value) and "at least 2 rungs" in str(error.value)
    assert "ladder.rungs[0].n_heads" in str(error.value) and "does not divide" in str(error.value)


LADDER = """\
name: tiny-ladder
corpus:
  sources:
{sources}
tokenizer: {{vocab_size: 600, weights: {{fr: 1.0, en: 1.0, code: 0.25, parallel: 0.5}}}}
model: {{dim: 32, n_layers: 1, n_heads: 2, ffn_dim: 96, vocab_size: 600, max_seq_len: 128}}
train: {{lr: 3.0e-3, warmup_steps: 2, seq_len: 64, batch_tokens: 512, micro_batch_size: 8, eval_tokens: 2048,
        log_interval: 5, peak_flops: 1.0e9}}
ladder:
  tokens_per_param: 2
  max_steps: 30
  evals: 3
  rungs:
    - {{name: a, dim: 16, n_layers: 1, n_heads: 2, ffn_dim: 48}}
    - {{name: b, dim: 32, n_layers: 2, n_heads: 2, ffn_dim: 96}}
    - {{name: c, dim: 64, n_layers: 2, n_heads: 4, ffn_dim: 192}}
  extrapolate: {{next: 1.0e13}}
"""


@pytest.mark.slow
def test_a_tiny_ladder_runs_fits_and_refits(sample_sources, tmp_path, capsys, assert_chart):
    recipe = tmp_path / "ladder.yaml"
    recipe.write_text(LADDER.format(sources=sample_sources))
    out = tmp_path / "out"
    assert main(["scaling", "run", str(recipe), "--out", str(out), "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    points = result["points"]
    assert [p["run"].rsplit("/", 1)[-1] for p in points] == ["a", "b", "c"]
    flops = [p["flops"] for p in points]
    assert flops == sorted(flops) and all(len(p["curve"]) == 3 for p in points)
    a = points[0]  # 30 steps (capped) × 512 tokens, FLOPs from the model's own count at seq 64
    assert a["tokens"] == 30 * 512
    from fournil.lm.hf import read_config
    from fournil.lm.info import flops_per_token

    a_config = read_config(out / "rungs" / "a" / "model")
    assert a["flops"] == 30 * 512 * flops_per_token(a_config, 64)["training"]  # the run's seq_len, not the context
    bpb = [p["mean_bits_per_byte"] for p in points]
    assert bpb[2] < bpb[0]  # more compute, lower loss, even this small
    fit = result["fit"]
    assert fit["alpha"] > 0 and "next" in result["predictions"]
    assert_chart(out / "scaling.png")
    # refitting the finished runs gives the same law; the shared data steps were bake steps, skipped next time
    refit = tmp_path / "refit"
    assert main(["scaling", "fit", *(str(out / "rungs" / n) for n in "abc"), "--out", str(refit), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fit"] == pytest.approx(fit)
    assert json.loads((out / ".bake" / "shards.json").read_text())["outputs"]
