"""`fournil bake RECIPE --plan --emit DIR`: the bake as a chain of Slurm jobs and DIR/submit.sh.

Without a cluster: the jobs' sbatch lines and scripts, as bash reads them, and every bad setting refused before
anything is written. On the local cluster (scripts/cluster/slurm-local): the tiny recipe of test_bake_e2e, emitted
and submitted, bakes the same model as `fournil bake` run locally, and leaves markers a local bake takes as done.
"""

import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fournil.bake.pipeline import STEPS, bake
from fournil.bake.slurm import TRAIN_SBATCH
from fournil.cli import main
from fournil.console import UsageError
from fournil.recipe import parse_recipe
from tests.bake.test_bake_e2e import RECIPE

ROOT = Path(__file__).parents[2]
# 16 GPUs on 2 nodes: the batches must split into the ranks (pretraining 256 sequences over 16 × 8, SFT 8 over 8 × 1)
GPU_PLAN = ["--set", "plan.gpus=16", "--set", "train.batch_tokens=16384", "--set", "sft.micro_batch_size=1",
            "--set", "plan.slurm.time={pretrain: '2-00:00:00'}", "--set", "plan.slurm.sbatch_args=[--qos=high]"]
# the local cluster's node has 2 CPUs: one per job leaves the other to whatever else runs there
CPU_PLAN = ["--set", "plan.gpus=0", "--set", "plan.slurm.cpus_per_task=1"]


@pytest.fixture(scope="module")
def recipe(sample_sources, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny-bake.yaml"
    path.write_text(RECIPE.format(sources=sample_sources))
    return path


def env(**extra) -> dict:
    # one thread for the local bake and every job: float sums split over more threads round differently
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200", **extra}


def fournil(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fournil", *args], capture_output=True, text=True, env=env(),
                          timeout=300, **kwargs)


def job_lines(submit: Path) -> dict[str, list[str]]:
    """Each step's sbatch arguments as bash reads them from submit.sh's `job` function."""
    script = f'source <(sed -n "/^job() {{/,/^}}/p" {submit}); for s in {" ".join(STEPS)}; do job $s; ' \
             'printf "%s\\0" "$s" "${#JOB[@]}" "${JOB[@]}"; done'
    words = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, check=True,
                           env={"PATH": os.defpath}).stdout
    words = words.split("\0")[:-1]
    lines = {}
    while words:
        step, count = words[0], int(words[1])
        lines[step], words = words[2:2 + count], words[2 + count:]
    return lines


def test_emitted_jobs_run_each_step_with_the_plans_resources(recipe, tmp_path, monkeypatch, capsys):
    """A GPU plan emitted on a machine without Slurm's commands (nothing to check the partition against)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))
    out, emit = tmp_path / "out", tmp_path / "jobs"
    assert main(["bake", str(recipe), "--plan", "--emit", "jobs", "--out", "out", *GPU_PLAN,
                 "--partition", "gpu", "--account", "proj", "--sbatch-arg=--constraint=a100", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["commands"]["slurm"].startswith("sbatch --nodes=2 --gpus-per-node=8 --cpus-per-task=64 ")

    lines = job_lines(emit / "submit.sh")
    assert list(lines) == list(STEPS)
    assert [job["step"] for job in printed["emitted"]["jobs"]] == list(STEPS)
    cluster = ["--partition=gpu", "--account=proj", "--qos=high", "--constraint=a100", f"--chdir={tmp_path}"]
    sets = GPU_PLAN  # every job loads the recipe as the emitter did
    for n, (step, words) in enumerate(lines.items(), 1):
        assert words[0] == f"--job-name=fournil-bake-tiny-bake-{step}"
        assert f"--output={emit}/logs/{n}-{step}-%j.out" in words
        assert all(option in words for option in cluster), words
        if step in ("pretrain", "sft"):  # every rank of train.sbatch runs the bake's own step
            nodes = 2 if step == "pretrain" else 1
            assert words[1:4] == [f"--nodes={nodes}", "--gpus-per-node=8", "--cpus-per-task=64"]
            assert words[words.index(str(TRAIN_SBATCH)):] == [str(TRAIN_SBATCH), "--bake", str(recipe), str(out),
                                                             step, *sets]
        else:  # one task on one node, no GPU asked
            assert words[1:4] == ["--nodes=1", "--ntasks=1", "--cpus-per-task=8"]
            assert not any("gpu" in word for word in words[1:4])
            assert words[-1] == f"{emit}/{n}-{step}.sbatch"
            script = Path(words[-1]).read_text()
            assert script.startswith("#!/bin/bash\n") and "#SBATCH --requeue" in script
            assert script.rstrip().endswith('exec "${PYTHON:-python}" -m ' + shlex.join(
                ["fournil", "bake", str(recipe), "--out", str(out), "--only", step, *sets]))
        assert f"--time={'2-00:00:00' if step == 'pretrain' else '20:00:00'}" in words
    submit = (emit / "submit.sh").read_text()
    assert os.access(emit / "submit.sh", os.X_OK)
    # each job after the one before it, and only once every job has passed `sbatch --test-only`
    assert 'after=("--dependency=afterok:${ids[-1]}" --kill-on-invalid-dep=yes)' in submit
    assert submit.index("sbatch --test-only") < submit.index("sbatch --parsable")
    manifest = json.loads((emit / "fournil.json").read_text())
    assert manifest["producer"] == "fournil.bake.slurm" and manifest["complete"]


def test_submit_without_sbatch_says_where_to_run_it(recipe, tmp_path):
    emit = tmp_path / "jobs"
    assert fournil("bake", str(recipe), "--plan", "--emit", str(emit), "--out", str(tmp_path / "out"),
                   *CPU_PLAN).returncode == 0
    result = subprocess.run(["/bin/bash", str(emit / "submit.sh")], capture_output=True, text=True,
                            env={"PATH": str(tmp_path / "no-slurm")})
    assert result.returncode == 2
    assert "sbatch is not on PATH: run this where Slurm's commands are" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "plan.slurm.cpu_tasks_per_node=2"],
     "sft.batch_tokens: 8 sequences per step do not split into 2 ranks (1 node(s) × 2) × sft.micro_batch_size 8"),
    (["--set", "plan.gpus=8", "--set", "plan.slurm.sft_nodes=2"], "slurm.sft_nodes: 2 exceeds the 1 training node"),
    (["--set", "plan.slurm.time={pretrian: '1:00:00'}"], "plan.slurm.time.pretrian: not a step of the bake"),
    (["--set", "plan.slurm.time={pretrain: 20:00:00}"], "plan.slurm.time.pretrain: expected str, got int 72000"),
    (["--sbatch-arg=-q normal"], "--sbatch-arg '-q normal': not an sbatch option written as one word"),
    (["--partition", "gpu;rm"], "--partition 'gpu;rm': not a Slurm partition name"),
    (["--out", "EMIT/out"], "one holds the other"),
])
def test_bad_settings_fail_before_anything_is_written(recipe, tmp_path, capsys, args, message):
    emit = tmp_path / "jobs"
    args = [arg.replace("EMIT", str(emit)) for arg in args]
    code = main(["bake", str(recipe), "--plan", "--emit", str(emit), *CPU_PLAN, *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not emit.exists() and not (tmp_path / "out").exists()


def test_emit_obeys_the_output_rule_and_its_options_need_it(recipe, tmp_path, capsys):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    assert main(["bake", str(recipe), "--plan", "--emit", str(foreign), *CPU_PLAN]) == 2
    assert "is not empty and has no fournil.json" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["todo.txt"]
    assert main(["bake", str(recipe), "--emit", str(tmp_path / "jobs")]) == 2
    assert "use it with --plan" in capsys.readouterr().err
    assert main(["bake", str(recipe), "--plan", "--partition", "debug"]) == 2
    assert "describe the jobs of --emit DIR" in capsys.readouterr().err
    # emitting again into its own directory rewrites the jobs
    for _ in range(2):
        assert main(["bake", str(recipe), "--plan", "--emit", str(tmp_path / "jobs"), "--out",
                     str(tmp_path / "out"), *CPU_PLAN, "--json"]) == 0
    capsys.readouterr()


def test_under_torchrun_a_bake_runs_only_a_training_step(recipe, tmp_path, monkeypatch):
    """Every rank of train.sbatch runs `fournil bake --only pretrain|sft`: any other step would run once per rank."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    tiny = parse_recipe(recipe.read_text(), str(recipe))
    with pytest.raises(UsageError, match="--only pretrain or --only sft, without --force"):
        bake(tiny, tmp_path / "out", only="corpus")
    with pytest.raises(UsageError, match="step corpus is not done, and under torchrun only --only pretrain runs"):
        bake(tiny, tmp_path / "out", only="pretrain")
    assert not (tmp_path / "out").exists()  # rank 1 writes nothing, markers included


# --- on the local Slurm cluster -----------------------------------------------------------------------------------

def queued(ids: list[str]) -> str:
    return subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %E"], capture_output=True, text=True,
                          timeout=30).stdout


@pytest.mark.slurm
def test_submit_refuses_what_the_cluster_cannot_grant(slurm_cluster, recipe, tmp_path, capsys):
    """A GPU plan on the CPU-only local cluster: sbatch --test-only refuses the pretraining job's GPUs before any
    job is submitted. An unknown partition is refused when emitting, sinfo being at hand."""
    emit = tmp_path / "jobs"
    assert main(["bake", str(recipe), "--plan", "--emit", str(tmp_path / "nope"), *CPU_PLAN,
                 "--partition", "nope"]) == 2
    assert "--partition nope: not a partition of this Slurm cluster (sinfo lists: " in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()

    assert main(["bake", str(recipe), "--plan", "--emit", str(emit), "--out", str(tmp_path / "out"), *GPU_PLAN,
                 "--set", "plan.slurm.cpus_per_task=1", "--set", "name=tiny-bake-gpu", "--json"]) == 0
    capsys.readouterr()
    result = subprocess.run([str(emit / "submit.sh")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Slurm refuses the pretrain job: sbatch: error: Invalid generic resource (gres)" in result.stderr
    names = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, timeout=30).stdout
    assert "fournil-bake-tiny-bake-gpu" not in names and not list((emit / "logs").iterdir())


@pytest.fixture(scope="module")
def bakes(slurm_cluster, recipe, tmp_path_factory):
    """The tiny bake twice: `fournil bake` here, and its emitted jobs on the cluster, at the same time."""
    root = tmp_path_factory.mktemp("bakes")
    local = subprocess.Popen([sys.executable, "-m", "fournil", "bake", str(recipe), "--out", str(root / "local"),
                              "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    emitted = fournil("bake", str(recipe), "--plan", "--emit", str(root / "jobs"), "--out", str(root / "slurm"),
                      *CPU_PLAN, "--partition", "debug", cwd=root)
    assert emitted.returncode == 0, emitted.stderr
    submitted = subprocess.run([str(root / "jobs" / "submit.sh")], capture_output=True, text=True, env=env(),
                               timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    ids = [line.split()[1] for line in submitted.stdout.splitlines() if line.split()[:1] in ([s] for s in STEPS)]
    assert len(ids) == len(STEPS), submitted.stdout
    dependencies = queued(ids)
    try:
        deadline = time.time() + 600
        while queued(ids).strip() and time.time() < deadline:
            time.sleep(0.5)
        assert not queued(ids).strip(), f"jobs still queued after 600 s:\n{queued(ids)}"
    finally:
        for job in ids:  # only ours, and only those still queued
            if queued([job]).strip():
                subprocess.run(["scancel", job], timeout=30)
    _, stderr = local.communicate(timeout=600)
    assert local.returncode == 0, stderr[-3000:]
    return {"local": root / "local", "slurm": root / "slurm", "jobs": root / "jobs", "ids": ids,
            "submitted": submitted.stdout, "dependencies": dependencies}


def logs(bakes) -> dict[str, str]:
    return {step: next((bakes["jobs"] / "logs").glob(f"{n}-{step}-*.out")).read_text()
            for n, step in enumerate(STEPS, 1)}


@pytest.mark.slurm
@pytest.mark.slow
def test_the_emitted_bake_on_slurm_makes_the_local_bakes_model(bakes, recipe):
    """Seven jobs, each after the one before; pretraining and SFT under torchrun through train.sbatch. The same
    model, bit for bit: both ran every step with one thread (and one training process)."""
    ids = bakes["ids"]
    lines = {line.split()[0]: line for line in bakes["dependencies"].splitlines()}
    for before, job in itertools.pairwise(ids):  # those not started yet still show their dependency
        if job in lines and "PENDING" in lines[job]:
            assert f"afterok:{before}" in lines[job], bakes["dependencies"]
    assert sum("afterok:" in line for line in lines.values()) >= len(ids) - 2, bakes["dependencies"]
    assert f"follow:  squeue -j {','.join(ids)}" in bakes["submitted"]

    text = logs(bakes)
    for step in ("pretrain", "sft"):
        assert "1 node(s) × 1 process(es) (CPU, gloo)" in text[step], text[step][-3000:]
    for step in STEPS:
        assert f"{step} done in" in text[step] and "Traceback" not in text[step], text[step][-3000:]

    local, slurm = bakes["local"], bakes["slurm"]
    a, b = load_file(local / "model/model.safetensors"), load_file(slurm / "model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (slurm / "model-q8_0.gguf").is_file() and (slurm / "REPORT.md").is_file()

    # the markers the jobs left are those of a finished bake: run here, it does nothing
    again = fournil("bake", str(recipe), "--out", str(slurm), "--json", "-q")
    assert again.returncode == 0, again.stderr
    assert set(json.loads(again.stdout)["steps"].values()) == {"skipped"}


@pytest.mark.slurm
@pytest.mark.slow
def test_a_bake_training_step_on_two_ranks_records_its_marker_once(bakes, recipe, tmp_path):
    """What a training job does on several GPUs or CPU tasks: `fournil bake --only sft` on every rank of a
    torchrun. Rank 0 alone logs and writes the marker; later steps are left alone."""
    out = tmp_path / "out"
    shutil.copytree(bakes["slurm"], out)
    shutil.rmtree(out / "sft")  # the bake as the SFT job finds it
    for step in ("sft", "eval", "export"):
        (out / ".bake" / f"{step}.json").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "fournil",
         "bake", str(recipe), "--out", str(out), "--only", "sft", "--set", "sft.micro_batch_size=4"],
        capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("[5/7] sft done in") == 1 and result.stderr.count("[1/7] corpus: up to date") == 1
    assert "bake stopped after sft" in result.stderr
    assert json.loads((out / ".bake" / "sft.json").read_text())["inputs"] != json.loads(
        (bakes["slurm"] / ".bake" / "sft.json").read_text())["inputs"]  # the micro-batch is one of its inputs
    assert (out / "sft" / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / ".bake").iterdir()) == sorted(f"{s}.json" for s in STEPS[:5])
