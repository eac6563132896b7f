"""`fournil scaling`: bake a ladder of small models on the same data and fit validation loss against compute.

A ladder recipe is a bake recipe with a `ladder` section (recipes/scaling-ladder.yaml). `scaling run` builds the
corpus, tokenizer and shards once (the bake's own steps, so they are shared with and skipped like a bake), then
pretrains every rung for `tokens_per_param` × its parameters, and fits

    L(C) = E + A · C^(−α)        C = training FLOPs (forward + backward, attention included), L = bits per byte

to the rungs' final validation bits per byte (mean of the languages), the form of Kaplan et al. 2020 with the
irreducible term E of Hoffmann et al. 2022. Bits per byte rather than loss per token, so that ladders trained with
different tokenizers compare. `scaling fit` refits any set of finished runs.

The fit: for a fixed E the law is a straight line in log–log space, solved exactly by least squares; E is then
chosen by a bounded scalar search minimising the squared error of log L. Three points determine the three
parameters; with two, E is held at 0 (a pure power law).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from fournil import artifacts
from fournil.console import UsageError, print_json, print_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PowerLaw:
    """L(C) = E + A · C^(−α), with the fit's R² on log L."""

    E: float
    A: float
    alpha: float
    r2: float

    def __call__(self, compute: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A * np.power(compute, -self.alpha)

    def compute_for(self, loss: float) -> float:
        """FLOPs the law says reach `loss` (inf when loss ≤ E)."""
        return math.inf if loss <= self.E else (self.A / (loss - self.E)) ** (1 / self.alpha)


def _line_fit(log_c: np.ndarray, log_l: np.ndarray, E: float) -> tuple[float, float, float]:
    """For fixed E: (A, α, squared error of log L) of the straight line log(L − E) = log A − α log C."""
    y = np.log(np.exp(log_l) - E)
    slope, intercept = np.polyfit(log_c, y, 1)
    A, alpha = math.exp(intercept), float(-slope)
    predicted = np.log(E + A * np.exp(-alpha * log_c))
    return A, alpha, float(np.sum((predicted - log_l) ** 2))


def fit_power_law(compute: list[float] | np.ndarray, loss: list[float] | np.ndarray) -> PowerLaw:
    """Least-squares fit of L = E + A·C^(−α) in log space (see the module docstring)."""
    c, l_ = np.asarray(compute, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    if c.shape != l_.shape or len(c) < 2:
        raise UsageError(f"a scaling fit needs at least 2 (compute, loss) points, got {len(c)}")
    if np.any(c <= 0) or np.any(l_ <= 0) or not (np.all(np.isfinite(c)) and np.all(np.isfinite(l_))):
        raise UsageError("compute and loss must be positive and finite")
    if len(set(c.tolist())) < 2:
        raise UsageError("every point has the same compute: nothing to fit a slope to")
    log_c, log_l = np.log(c), np.log(l_)
    best_E = 0.0
    if len(c) >= 3:
        from scipy.optimize import minimize_scalar

        upper = float(l_.min()) * (1 - 1e-9)
        result = minimize_scalar(lambda E: _line_fit(log_c, log_l, E)[2], bounds=(0.0, upper), method="bounded",
                                 options={"xatol": 1e-12 * max(upper, 1.0)})
        if result.success and _line_fit(log_c, log_l, result.x)[2] < _line_fit(log_c, log_l, 0.0)[2]:
            best_E = float(result.x)
    A, alpha, sse = _line_fit(log_c, log_l, best_E)
    total = float(np.sum((log_l - log_l.mean()) ** 2))
    return PowerLaw(E=best_E, A=A, alpha=alpha, r2=1.0 - sse / total if total > 0 else 1.0)


# ---- runs → points ----

def run_point(run_dir: str | Path) -> dict:
    """One finished pretraining run as a ladder point: parameters, tokens, FLOPs, final bits per byte, and its
    validation curve (FLOPs so far, bits per byte) for the plot."""
    from fournil.lm.hf import read_config
    from fournil.lm.info import flops_per_token, param_counts
    from fournil.train.plot import read_metrics

    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"{run_dir}: no finished model (model/config.json); finish or resume the run first")
    config = read_config(model_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if r.get("val_bpb")]
    if not train or not val:
        raise UsageError(f"{run_dir}/metrics.jsonl: needs training steps and at least one validation")
    tokens_per_step = train[-1]["tokens"] / train[-1]["step"]
    seq_len = _seq_len(run_dir, config.max_seq_len)
    per_token = flops_per_token(config, seq_len)["training"]
    counts = param_counts(config)
    curve = [(r["step"] * tokens_per_step * per_token, float(np.mean(list(r["val_bpb"].values())))) for r in val]
    final = val[-1]["val_bpb"]
    tokens = train[-1]["tokens"]
    return {"run": str(run_dir), "params": counts.total, "non_embedding_params": counts.total - counts.embedding,
            "tokens": tokens, "flops": tokens * per_token, "bits_per_byte": final,
            "mean_bits_per_byte": float(np.mean(list(final.values()))), "curve": curve}


def _seq_len(run_dir: Path, default: int) -> int:
    """The training sequence length from the recipe.json every run writes, else the model's context."""
    try:
        return int(json.loads((run_dir / "recipe.json").read_text())["train"]["seq_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def fit_runs(runs: list[str | Path], out: str | Path, extrapolate: dict[str, float] | None = None) -> dict:
    """Fit the runs, write scaling.json and scaling.png into `out`; returns what scaling.json holds."""
    points = [run_point(r) for r in runs]
    law = fit_power_law([p["flops"] for p in points], [p["mean_bits_per_byte"] for p in points])
    result = {"law": "bits_per_byte = E + A * flops^(-alpha)", "fit": asdict(law), "points": points,
              "predictions": {name: {"flops": flops, "bits_per_byte": float(law(flops))}
                              for name, flops in (extrapolate or {}).items()}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(out / "scaling.json", result)
    plot_fit(points, law, out / "scaling.png")
    log.info("fit: bits/byte = %.4f + %.4g · C^-%.4f  (R² %.4f, %d runs)", law.E, law.A, law.alpha, law.r2, len(points))
    return result


def plot_fit(points: list[dict], law: PowerLaw, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for p in points:
        c, b = zip(*p["curve"], strict=True)
        ax.plot(c, b, alpha=0.5, marker=".", label=f"{Path(p['run']).name} ({p['params'] / 1e6:.1f} M)")
        ax.scatter([p["flops"]], [p["mean_bits_per_byte"]], color="black", zorder=3)
    lo = min(min(c for c, _ in p["curve"]) for p in points)
    hi = max(p["flops"] for p in points) * 10
    grid = np.logspace(math.log10(lo), math.log10(hi), 100)
    ax.plot(grid, law(grid), "k--", label=f"{law.E:.3f} + {law.A:.3g}·C^−{law.alpha:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="validation bits per byte (mean FR/EN)",
           title="scaling ladder")
    ax.legend(fontsize=8)
    return artifacts.write_png(fig, path, dpi=110)


# ---- the ladder ----

def rung_recipe(recipe, rung):
    """The recipe of one rung: the ladder's model shape and a schedule of tokens_per_param × parameters."""
    from fournil.lm.info import param_counts

    ladder = recipe.ladder
    model = replace(recipe.model, dim=rung.dim, n_layers=rung.n_layers, n_heads=rung.n_heads,
                    n_kv_heads=rung.n_heads, ffn_dim=rung.ffn_dim)
    t = recipe.train
    steps = max(2, math.ceil(ladder.tokens_per_param * param_counts(model).total / t.batch_tokens))
    if ladder.max_steps:
        steps = min(steps, ladder.max_steps)
    warmup = min(t.warmup_steps, max(1, steps // 10))
    train = replace(t, steps=steps, warmup_steps=warmup, lr=rung.lr or t.lr,
                    eval_interval=max(1, steps // ladder.evals), checkpoint_interval=steps)
    return replace(recipe, name=f"{recipe.name}-{rung.name}", model=model, train=train)


def run_ladder(recipe, out: str | Path) -> dict:
    """Shared corpus → tokenizer → shards (bake steps), every rung's pretraining (resumable), then the fit."""
    from fournil.bake.pipeline import bake
    from fournil.train.loop import train

    if recipe.ladder is None:
        raise UsageError(f"recipe {recipe.name} has no 'ladder' section (see recipes/scaling-ladder.yaml)")
    out = Path(out)
    bake(recipe, out, only="shards")
    runs = []
    for i, rung in enumerate(recipe.ladder.rungs, 1):
        r = rung_recipe(recipe, rung)
        run_dir = out / "rungs" / rung.name
        done = (run_dir / "model" / "config.json").is_file()
        log.info("[rung %d/%d] %s: %d steps%s", i, len(recipe.ladder.rungs), rung.name, r.train.steps,
                 " (finished, skipped)" if done else "")
        if not done:
            train(r, out / "shards", run_dir, resume=True)
        runs.append(run_dir)
    return fit_runs(runs, out, extrapolate=recipe.ladder.extrapolate)


EPILOG = """\
examples:
  fournil scaling run scaling-ladder --out out/ladder          (shared data, every rung, then the fit)
  fournil scaling fit out/ladder/rungs/* --out out/ladder       (refit finished runs: scaling.json + .png)
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import Stage

    stage = Stage(subparsers, common, "scaling", epilog=EPILOG, description=__doc__.split("\n\n")[0],
                  help="scaling ladder: train small models on the same data, fit loss vs compute")
    run = stage.verb("run", cmd_run)
    run.add_argument("recipe", help="recipe file or preset name with a `ladder` section")
    run.add_argument("--out", type=Path, help="output directory (default: out/<recipe name>)")
    fit = stage.verb("fit", cmd_fit)
    fit.add_argument("runs", nargs="+", type=Path, help="finished pretraining run directories (≥ 2)")
    fit.add_argument("--out", type=Path, required=True, help="directory for scaling.json and scaling.png")


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    f = result["fit"]
    rows = [[Path(p["run"]).name, f"{p['params'] / 1e6:.2f} M", f"{p['tokens']:,}", f"{p['flops']:.3g}",
             f"{p['mean_bits_per_byte']:.4f}"] for p in result["points"]]
    print_table("scaling ladder", rows, header=("run", "params", "tokens", "FLOPs", "bits/byte"))
    print(f"bits/byte = {f['E']:.4f} + {f['A']:.4g} · FLOPs^-{f['alpha']:.4f}   (R² on log L: {f['r2']:.4f})")
    for name, p in result["predictions"].items():
        print(f"  extrapolated to {name} ({p['flops']:.3g} FLOPs): {p['bits_per_byte']:.4f} bits/byte")


def cmd_run(args: argparse.Namespace) -> None:
    """bake the ladder recipe's rungs and fit them

    Build corpus, tokenizer and shards once, pretrain each rung for tokens_per_param × its parameters
    (killed runs resume), then fit and plot."""
    from fournil.bake.pipeline import MARKERS, recipe_inputs
    from fournil.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    out = args.out or Path("out") / recipe.name
    artifacts.claim_output(out, "fournil.scaling", inputs=recipe_inputs(args.recipe, recipe), resume=True,
                           signature=(MARKERS, "rungs"))
    _print(run_ladder(recipe, out), args.json)


def cmd_fit(args: argparse.Namespace) -> None:
    """fit bits per byte vs training FLOPs over finished runs

    Read each run's final model config and metrics.jsonl, fit L = E + A·C^(−α) and write scaling.json and
    scaling.png."""
    _print(fit_runs(args.runs, args.out), args.json)
