"""`fournil bake RECIPE --plan --emit DIR`: the bake as a chain of Slurm jobs, one per step, and DIR/submit.sh.

Every job runs what `fournil bake` runs for its step, `fournil bake RECIPE --out OUT --only STEP`: a job whose
step is done ends at once, and a requeued or resubmitted one resumes (step markers, datatrove's completions and
training checkpoints). Pretraining and SFT run that same command on every rank under torchrun, launched by
scripts/slurm/train.sbatch (`--bake`), fournil's one training launcher on Slurm: GPU or CPU nodes, preemption,
requeue near the time limit. Their rank 0 records the step's marker, so the next job, and a later `fournil bake`
anywhere, sees the step done. The resources come from the recipe's `plan` section (`plan.slurm`).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fournil import artifacts
from fournil.bake.config import DEFAULT_TIME
from fournil.bake.pipeline import STEPS, TRAINING, recipe_inputs
from fournil.bake.plan import training_resources
from fournil.console import UsageError

log = logging.getLogger(__name__)

PRODUCER = "fournil.bake.slurm"
TRAIN_SBATCH = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "train.sbatch"


@dataclass
class Job:
    step: str
    options: list[str]  # sbatch options, the dependency left out (submit.sh adds it)
    command: list[str]  # the job script and its arguments


def check_training(recipe) -> None:
    """The bake's training steps must be able to run on the plan's ranks: refused here rather than by the job
    hours into the chain."""
    p = recipe.plan
    problems = []
    for step, t, nodes in (("train", recipe.train, p.nodes), ("sft", recipe.sft, p.slurm.sft_nodes)):
        if t is None:
            problems.append("the recipe has no `sft` section: the bake fine-tunes with it")
            continue
        ranks = nodes * p.ranks_per_node
        sequences = t.batch_tokens // t.seq_len
        if sequences % (ranks * t.micro_batch_size):
            problems.append(f"{step}.batch_tokens: {sequences} sequences per step do not split into {ranks} ranks "
                            f"({nodes} node(s) × {p.ranks_per_node}) × {step}.micro_batch_size {t.micro_batch_size}"
                            f"; change them or the plan's {'gpus' if step == 'train' else 'slurm.sft_nodes'}")
    if problems:
        raise UsageError(f"{recipe.name}: the plan cannot run the bake: " + "; ".join(problems))


def resources(plan, step: str) -> list[str]:
    """sbatch options for `step`: a training step per `training_resources`, any other step one task on one node;
    then the time limit and the cluster's options (partition, account, extra arguments)."""
    s = plan.slurm
    if step in TRAINING:
        options = training_resources(plan, plan.nodes if step == "pretrain" else s.sft_nodes)
    else:
        options = ["--nodes=1", "--ntasks=1", f"--cpus-per-task={s.cpus_per_task}"]
    options.append(f"--time={s.time.get(step, DEFAULT_TIME)}")
    options += [f"--partition={s.partition}"] * (s.partition is not None)
    options += [f"--account={s.account}"] * (s.account is not None)
    return options + list(s.sbatch_args)


def jobs(recipe, spec: str, out: Path, directory: Path, overrides: list[str], cwd: Path) -> list[Job]:
    """The bake's jobs in order. `spec` is the recipe as given (a path is made absolute), `overrides` the
    `--set KEY=VALUE` pairs every job passes on."""
    result = []
    for n, step in enumerate(STEPS, 1):
        options = [f"--job-name=fournil-bake-{recipe.name}-{step}", *resources(recipe.plan, step),
                   f"--chdir={cwd}", f"--output={directory}/logs/{n}-{step}-%j.out"]
        if step in TRAINING:
            command = [str(TRAIN_SBATCH), "--bake", _recipe_arg(spec), str(out), step, *_sets(overrides)]
        else:
            command = [str(directory / f"{n}-{step}.sbatch")]
        result.append(Job(step, options, command))
    return result


def _recipe_arg(spec: str) -> str:
    """The recipe as the jobs name it: a file by its absolute path, a preset by its name."""
    return str(Path(spec).resolve()) if Path(spec).is_file() else spec


def _sets(overrides: list[str]) -> list[str]:
    return [arg for pair in overrides for arg in ("--set", pair)]


def step_script(recipe, spec: str, out: Path, step: str, overrides: list[str]) -> str:
    n = STEPS.index(step) + 1
    command = shlex.join(["fournil", "bake", _recipe_arg(spec), "--out", str(out), "--only", step,
                          *_sets(overrides)])
    return f"""#!/bin/bash
# fournil bake {_comment(recipe.name)}, step {n}/{len(STEPS)}: {step}. Written by `fournil bake --plan --emit`,
# submitted by submit.sh beside it. It runs what `fournil bake` runs for this step: a done step ends at once, an
# interrupted one resumes. PYTHON names the interpreter that has fournil (submit.sh sets it).
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-${{SLURM_CPUS_PER_TASK:-1}}}}
echo "fournil-bake: job ${{SLURM_JOB_ID:-}} start ${{SLURM_RESTART_COUNT:-0}}: {step}" >&2
exec "${{PYTHON:-python}}" -m {command}
"""


def submit_script(recipe, jobs: list[Job], directory: Path, out: Path, emitted_by: str) -> str:
    cases = "\n".join(f"    {job.step}) JOB=({shlex.join([*job.options, *job.command])}) ;;" for job in jobs)
    partition = recipe.plan.slurm.partition
    check_partition = "" if partition is None else f"""
if command -v sinfo >/dev/null && ! sinfo -h -o %R | grep -qx {shlex.quote(partition)}; then
  fail "partition {partition} is not one of this cluster's ($(sinfo -h -o %R | tr '\\n' ' ')): emit again with --partition"
fi"""
    return f"""#!/usr/bin/env bash
# fournil bake {_comment(recipe.name)} on Slurm: {len(jobs)} jobs, each starting once the one before it has
# succeeded (afterok):  {' → '.join(STEPS)}  into {_comment(str(out))}
# Written by: {_comment(emitted_by)}
# Every job runs `fournil bake RECIPE --out OUT --only STEP` (pretraining and SFT on every rank under torchrun,
# through scripts/slurm/train.sbatch), so finished steps end at once: run this script again to resume a bake that
# failed or was cancelled.
set -euo pipefail
DIR={shlex.quote(str(directory))}
OUT={shlex.quote(str(out))}
NAME={shlex.quote(recipe.name)}
export PYTHON=${{PYTHON:-{shlex.quote(sys.executable)}}}  # the interpreter the jobs run fournil with
STEPS=({' '.join(STEPS)})

job() {{  # JOB = the sbatch options, job script and arguments of step $1 (its dependency is added below)
  case $1 in
{cases}
  esac
}}

fail() {{ echo "submit.sh: $*" >&2; exit 2; }}
command -v sbatch >/dev/null || fail "sbatch is not on PATH: run this where Slurm's commands are (a login node of the cluster)"{check_partition}
# Slurm checks every job before the first is submitted: a request it cannot grant submits nothing
for step in "${{STEPS[@]}}"; do
  job "$step"
  answer=$(sbatch --test-only "${{JOB[@]}}" 2>&1) || fail "Slurm refuses the $step job: $answer"
done

mkdir -p "$DIR/logs"
ids=()
for step in "${{STEPS[@]}}"; do
  job "$step"
  after=()
  [ ${{#ids[@]}} -eq 0 ] || after=("--dependency=afterok:${{ids[-1]}}" --kill-on-invalid-dep=yes)
  id=$(sbatch --parsable "${{after[@]}}" "${{JOB[@]}}") ||
    {{ echo "submit.sh: the $step job was not submitted; submitted before it: ${{ids[*]:-none}}" >&2; exit 1; }}
  ids+=("${{id%%;*}}")
done

echo "fournil bake $NAME: ${{#ids[@]}} jobs submitted, each starting once the one before it has succeeded"
for i in "${{!STEPS[@]}}"; do printf '  %-10s %s\\n' "${{STEPS[i]}}" "${{ids[i]}}"; done
echo "follow:  squeue -j $(IFS=,; echo "${{ids[*]}}")    logs: $DIR/logs/<n>-<step>-<job id>.out"
echo "cancel:  scancel ${{ids[*]}}    (a job that fails or is cancelled cancels the ones after it)"
echo "resume:  $DIR/submit.sh again (finished steps end at once)"
echo "result:  $OUT/model, $OUT/model-q8_0.gguf, $OUT/REPORT.md"
"""


def _comment(text: str) -> str:
    """Text for a line of a script's comment: a newline in a name or path would end the comment."""
    return " ".join(text.splitlines())


def check_partition(partition: str | None, option: str) -> None:
    """When this machine has Slurm's sinfo, the partition must be one of its cluster's (submit.sh checks again
    where it runs)."""
    if partition is None or shutil.which("sinfo") is None:
        return
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("sinfo did not answer (%s): partition %s not checked here; submit.sh checks it", exc, partition)
        return
    if result.returncode != 0:
        log.warning("sinfo failed (%s): partition %s not checked here; submit.sh checks it",
                    result.stderr.strip(), partition)
        return
    known = result.stdout.split()
    if partition not in known:
        raise UsageError(f"{option} {partition}: not a partition of this Slurm cluster (sinfo lists: "
                         f"{', '.join(known) or 'none'})")


def emit(recipe, spec: str, directory: Path, out: Path, overrides: list[str] = (), emitted_by: str = "",
         partition_option: str = "plan.slurm.partition") -> list[Job]:
    """Write DIR/<n>-<step>.sbatch for the steps that are not training, and DIR/submit.sh; check everything
    first, so bad settings leave nothing written."""
    directory, out, cwd = Path(directory).resolve(), Path(out).resolve(), Path.cwd()
    if not TRAIN_SBATCH.is_file():
        raise UsageError(f"{TRAIN_SBATCH}: not found; the emitted pretraining and SFT jobs run it: emit from a "
                         "source checkout of fournil, whose scripts/slurm/train.sbatch launches torchrun")
    check_training(recipe)
    if directory == out or out in directory.parents or directory in out.parents:
        raise UsageError(f"--emit {directory} and --out {out}: one holds the other; the job scripts and the "
                         "bake's output need directories of their own")
    inputs = recipe_inputs(spec, recipe)
    artifacts.claim_output(out, "fournil.bake", inputs=inputs, resume=True, signature=(".bake",))
    artifacts.claim_output(directory, PRODUCER, inputs=inputs, resume=True, option="--emit",
                           signature=("submit.sh",))
    check_partition(recipe.plan.slurm.partition, partition_option)

    chain = jobs(recipe, spec, out, directory, list(overrides), cwd)
    directory.mkdir(parents=True, exist_ok=True)
    artifacts.mark_incomplete(directory, PRODUCER)
    (directory / "logs").mkdir(exist_ok=True)
    for job in chain:
        if job.step not in TRAINING:
            artifacts.write_text(job.command[0], step_script(recipe, spec, out, job.step, list(overrides)))
    submit = directory / "submit.sh"
    artifacts.write_text(submit, submit_script(recipe, chain, directory, out, emitted_by))
    submit.chmod(0o755)
    artifacts.write_manifest(directory, PRODUCER, recipe=recipe.name, out=str(out),
                             jobs=[{"step": j.step, "sbatch": [*j.options, *j.command]} for j in chain])
    return chain
