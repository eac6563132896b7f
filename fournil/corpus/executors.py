"""Where `fournil corpus run` runs its stages: datatrove's local, Slurm or Ray executor, the same stages for all.

fournil schedules nothing itself. Locally and on Ray the stages run one after the other (each executor waits for
its tasks); on Slurm every stage is one array job, chained to the previous stage with datatrove's `depends=`, and
`corpus run` returns once they are submitted (`--wait` follows them). Progress and resumption come from datatrove's
completion markers, logs/<stage>/completions/<rank>: a rerun skips every task that has one.

Bad cluster settings (no `sbatch`, an unknown partition, Ray missing or unreachable) are refused by `preflight`
before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader

from fournil import artifacts
from fournil.console import FournilError, UsageError, is_quiet, progress_bar
from fournil.corpus.config import CorpusConfig, ExecutorConfig, slurm_seconds

log = logging.getLogger(__name__)
SLURM_JOBS = "slurm_jobs.json"  # under logs/: {stage: job id} of the last submission
_SLURM_TOOLS = ("sbatch", "squeue", "sinfo", "scancel")


class StageReader(JsonlReader):
    """Reads the file the same rank of the filter stage wrote (`<rank:05d>.jsonl`); no file (the filters dropped
    all of that task's documents) is empty input. Rank to rank, not datatrove's share of the folder's files: the
    MinHash signatures made in the filter stage number each task's documents, and the dedup stage's rank r must
    read the documents filter task r numbered."""

    name = "📖 fournil stage output"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        name = f"{rank:05d}.jsonl"
        if self.data_folder.exists(name):
            for doc in self.read_files_shard([name]):
                self.update_doc_stats(doc)
                yield doc


class Finalise(PipelineStep):
    """The last stage: exact dedup, docs/, stats.json, the datasheet and the manifest (`pipeline.complete`)."""

    type = "🏁 FINALISE"
    name = "🏁 fournil finalise"

    def __init__(self, config: CorpusConfig, out: str, max_errors: int):
        super().__init__()
        self.config, self.out, self.max_errors = config, out, max_errors

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from fournil.corpus.pipeline import complete

        with self.track_time():
            stats = complete(self.config, Path(self.out), self.max_errors)
        self.stat_update("documents", value=sum(c["documents"] for c in stats["categories"].values()))


# ---------------------------------------------------------------------------------------------------- preflight


def preflight(executor: ExecutorConfig) -> ExecutorConfig:
    """Refuse settings that cannot work, before any work, saying what to fix; fill in the Slurm partition."""
    if executor.kind == "slurm":
        return _preflight_slurm(executor)
    if executor.kind == "ray":
        _connect_ray(executor)
    return executor


def _preflight_slurm(executor: ExecutorConfig) -> ExecutorConfig:
    missing = [tool for tool in _SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        raise UsageError(f"--executor slurm: {', '.join(f'`{t}`' for t in missing)} not on PATH. Run on a machine "
                         "of the Slurm cluster (a login node), add Slurm's bin folder to PATH, or try it on this "
                         "machine with a local cluster: scripts/cluster/slurm-local up")
    launcher = Path(sys.executable).parent / "launch_pickled_pipeline"
    if not launcher.is_file():
        raise UsageError(f"--executor slurm: datatrove's launcher is not installed next to {sys.executable} "
                         f"(no {launcher}); reinstall fournil in this environment")
    listed = _slurm(["sinfo", "-h", "-o", "%P"], "list the partitions")
    partitions = listed.split()
    if executor.partition:
        if not _slurm(["sinfo", "-h", "-p", executor.partition, "-o", "%P"], "check the partition").strip():
            raise UsageError(f"corpus.executor.partition (--partition): {executor.partition!r} is not a partition of "
                             f"this cluster; `sinfo` lists: {', '.join(partitions) or 'none'}")
        return executor
    default = [p.rstrip("*") for p in partitions if p.endswith("*")]
    if not default:
        raise UsageError("--executor slurm: the cluster has no default partition; set corpus.executor.partition (or "
                         f"--partition) to one of: {', '.join(partitions) or 'none (sinfo lists no partition)'}")
    return dataclasses.replace(executor, partition=default[0])


def _slurm(cmd: list[str], what: str) -> str:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise UsageError(f"--executor slurm: `{' '.join(cmd)}` did not answer in 60 s; is slurmctld up?") from exc
    if result.returncode != 0:
        raise UsageError(f"--executor slurm: could not {what} (`{' '.join(cmd)}`: "
                         f"{result.stderr.strip() or f'exit {result.returncode}'}); is the Slurm controller up "
                         "(`sinfo`)?")
    return result.stdout


def _connect_ray(executor: ExecutorConfig) -> None:
    try:
        import ray
    except ImportError as exc:
        raise UsageError(f"--executor ray: the `ray` package cannot be imported ({exc}); install it in this "
                         "environment: pip install -c constraints.txt ray") from exc
    address = executor.address or os.environ.get("RAY_ADDRESS") or "auto"
    # the tasks run in the environment the Ray nodes started with: give them the recipe's variables and the
    # driver's PYTHONPATH (a source checkout), as Slurm's `--export=ALL` does
    env = dict(executor.env)
    if os.environ.get("PYTHONPATH"):
        env.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
    if ray.is_initialized():
        ray.shutdown()
    _ray_answers(address)
    try:
        with _quiet_fd(2):
            ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False,
                     logging_level=logging.ERROR)
    except Exception as exc:  # ray raises ConnectionError, RuntimeError or ValueError for a bad address
        raise UsageError(f"--executor ray: no Ray cluster answers at {address!r} ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}). Start one "
                         "(`ray start --head`, or scripts/cluster/ray-local up on this machine) or point "
                         "RAY_ADDRESS (or corpus.executor.address) at a running cluster") from exc
    resources = ray.cluster_resources()
    cpus, memory = resources.get("CPU", 0), resources.get("memory", 0)
    want = executor.mem_per_cpu_gb * executor.cpus_per_task * 2**30
    if cpus < executor.cpus_per_task or memory < want:
        ray.shutdown()
        raise UsageError(f"--executor ray: one task asks {executor.cpus_per_task} CPU(s) and "
                         f"{want / 2**30:.1f} GiB but the cluster at {address!r} has {cpus:g} CPU(s) and "
                         f"{memory / 2**30:.1f} GiB: lower corpus.executor.cpus_per_task or mem_per_cpu_gb")


def _ray_answers(address: str) -> None:
    """ray.init() retries an address where nothing listens for ever: look for a listener first."""
    import socket

    from ray._private.services import canonicalize_bootstrap_address_or_die

    hint = ("Start one (`ray start --head`, or scripts/cluster/ray-local up on this machine) or point RAY_ADDRESS "
            "(or corpus.executor.address) at a running cluster")
    target = address.removeprefix("ray://")
    if target == address:
        try:
            target = canonicalize_bootstrap_address_or_die(address)  # `auto`: the cluster started on this host
        except Exception as exc:
            raise UsageError(f"--executor ray: no Ray cluster found at {address!r} ({exc}). {hint}") from exc
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UsageError(f"--executor ray: no Ray cluster answers at {address!r} ({target}: {exc}). {hint}") from exc


@contextlib.contextmanager
def _quiet_fd(fd: int):
    """Send a file descriptor to /dev/null (Ray prints its connection banner on the driver's stderr)."""
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)


# ------------------------------------------------------------------------------------------------ local and Ray


def run_in_order(out: Path, stages: list, executor: ExecutorConfig, max_errors: int) -> None:
    """Local and Ray: each stage's executor runs its tasks and returns; the next stage starts after it.

    (datatrove's Ray `depends=` polls a failed dependency every two minutes for ever; checking each stage's
    completion markers as it ends fails at once, with the stage's logs.)"""
    from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor

    from fournil.corpus.pipeline import _raise_input_errors, start_forkserver

    logs, errors = out / "logs", out / "work" / "errors"
    workers = executor.workers or os.cpu_count() or 1
    if executor.kind == "local" and any(min(workers, stage.tasks) > 1 for stage in stages):
        start_forkserver()
    if executor.kind == "local":  # finalise draws the datasheet in this process: import the plotting library
        # while the workers filter and this process waits, not after
        threading.Thread(target=_import_plotting, daemon=True).start()

    def make(stage):
        if executor.kind == "ray":
            return RayPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=executor.workers or -1,
                                       logging_dir=str(logs / stage.name), skip_completed=True,
                                       cpus_per_task=executor.cpus_per_task,
                                       mem_per_cpu_gb=executor.mem_per_cpu_gb, time=slurm_seconds(executor.time))
        return LocalPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=min(workers, stage.tasks),
                                     logging_dir=str(logs / stage.name), skip_completed=True)

    for i, stage in enumerate(stages, 1):
        try:
            _run_stage(lambda stage=stage: make(stage), f"{i}/{len(stages)} {stage.name}", logs / stage.name,
                       stage.tasks, logs / "datatrove.log")
        except Exception as exc:
            _raise_input_errors(errors, max_errors)
            raise FournilError(f"stage {stage.name} failed: {type(exc).__name__}: {exc} "
                               f"(see {logs / stage.name}/logs)") from exc
        if stage.name == "filter":
            _raise_input_errors(errors, max_errors)


def _import_plotting() -> None:
    with contextlib.suppress(Exception):  # finalise imports it again and reports a failure there
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot


def completed(logging_dir: Path) -> int:
    directory = logging_dir / "completions"
    return sum(1 for _ in directory.iterdir()) if directory.is_dir() else 0


def _run_stage(make_executor, label: str, logging_dir: Path, n_tasks: int, logfile: Path) -> None:
    """Make and run one executor with datatrove's own logging sent to a file and a task progress bar on our
    stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    logfile.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    console = Console(file=os.fdopen(os.dup(saved), "w"), stderr=True)
    done = threading.Event()

    def poll(bar: Progress, task) -> None:
        while not done.wait(0.5):
            bar.update(task, completed=completed(logging_dir))

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=False, disable=is_quiet())
    with bar, open(logfile, "a") as sink:
        task = bar.add_task(f"stage {label}", total=n_tasks)
        poller = threading.Thread(target=poll, args=(bar, task), daemon=True)
        poller.start()
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            make_executor().run()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            done.set()
            poller.join()
            bar.update(task, completed=completed(logging_dir))
    if completed(logging_dir) < n_tasks:
        raise FournilError(f"{n_tasks - completed(logging_dir)} task(s) did not complete")


# ------------------------------------------------------------------------------------------------------- Slurm


def submit_slurm(out: Path, stages: list, executor: ExecutorConfig, *, follow: bool) -> dict[str, int]:
    """Submit one array job per stage, each depending on the previous one (datatrove's `depends=`); completed
    tasks are not submitted again and fully completed stages not at all. {stage: job id}.

    Jobs of an earlier submission that are still queued are not submitted twice: their ids are returned."""
    from datatrove.executor import SlurmPipelineExecutor
    from datatrove.utils.logging import logger

    jobs_file = out / "logs" / SLURM_JOBS
    if jobs_file.is_file():
        earlier = {k: int(v) for k, v in json.loads(jobs_file.read_text())["jobs"].items()}
        queue = _Queue(earlier)
        if queue.progressing:
            log.info("jobs of this corpus are still in the Slurm queue (%s): %s them, nothing submitted",
                     ", ".join(map(str, earlier.values())), "following" if follow else "leaving")
            return earlier
        _cancel(queue.doomed)  # they wait on a stage that failed and would never start

    activate = Path(sys.prefix) / "bin" / "activate"
    venv = str(activate) if sys.prefix != sys.base_prefix and activate.is_file() else None
    exports = " && ".join(f"export {k}={shlex.quote(v)}" for k, v in executor.env.items())
    if not venv:  # an interpreter outside a venv: its bin folder holds datatrove's launcher
        exports = " && ".join(filter(None, [f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH",
                                            exports]))
    env_command = " && ".join(filter(None, [f"source {shlex.quote(venv)}" if venv else "", exports])) or None
    sbatch_args = {"mem-per-cpu": f"{math.ceil(executor.mem_per_cpu_gb * 1024)}M"}
    sbatch_args |= {k.lstrip("-"): v for k, v in executor.sbatch_args.items()}
    runners, previous = [], None
    for stage in stages:
        previous = SlurmPipelineExecutor(
            stage.pipeline, tasks=stage.tasks, time=executor.time, partition=executor.partition,
            cpus_per_task=executor.cpus_per_task, workers=executor.workers or -1,
            job_name=f"{executor.job_name}-{stage.name}", qos=executor.qos or "", venv_path=venv,
            env_command=env_command if exports else None, sbatch_args=dict(sbatch_args), depends=previous,
            logging_dir=str(out / "logs" / stage.name), skip_completed=True)
        runners.append(previous)
    logger.disable("datatrove")  # its "Launching…" lines; sbatch's own errors still reach stderr
    try:
        runners[-1].launch_job()  # launches the stages it depends on first, in order
    except subprocess.CalledProcessError as exc:
        submitted = [int(r.job_id) for r in runners if r.job_id not in (None, -1)]
        _cancel(submitted + _Queue({str(j): j for j in submitted}).waiting_on(submitted))  # their merge_stats too
        raise FournilError(f"sbatch refused a stage ({exc}); the error is above. Check corpus.executor "
                           "(partition, time, mem_per_cpu_gb, sbatch_args) against the cluster's limits"
                           + (f"; the {len(submitted)} job(s) already submitted were cancelled" if submitted else "")
                           ) from exc
    finally:
        logger.enable("datatrove")
    jobs = {stage.name: int(r.job_id) for stage, r in zip(stages, runners, strict=True) if r.job_id not in (None, -1)}
    artifacts.write_json(jobs_file, {"jobs": jobs, "submitted": time.time()})
    return jobs


def follow_slurm(out: Path, stages: list, jobs: dict[str, int], max_errors: int = 100) -> None:
    """Wait for the stages' jobs with a progress bar of completed tasks; a stage whose jobs left the queue
    with tasks unfinished is a failure (its Slurm log is quoted)."""
    from fournil.corpus.pipeline import _raise_input_errors

    logs = out / "logs"
    total = sum(s.tasks for s in stages)

    def progress() -> tuple[int, str | None]:
        done, current = 0, None
        for stage in stages:
            n = min(completed(logs / stage.name), stage.tasks)
            done += n
            if n < stage.tasks and current is None:
                current = stage.name
        return done, current

    with progress_bar(transient=False) as bar:
        task = bar.add_task("slurm", total=total)
        while True:
            queue = _Queue(jobs)
            done, current = progress()  # after the queue: a job that just left it has written its markers
            bar.update(task, completed=done, description=f"slurm: {current or 'done'}")
            if current is None:
                return
            if not queue.progressing:
                _cancel(queue.doomed)
                break
            time.sleep(1)
    _raise_input_errors(out / "work" / "errors", max_errors)
    stage = next(s for s in stages if completed(logs / s.name) < s.tasks)
    raise FournilError(f"stage {stage.name} failed: {completed(logs / stage.name)}/{stage.tasks} tasks completed "
                       f"and its jobs have left the queue{_last_log(logs / stage.name)}\nFix the cause and rerun "
                       "the same command: completed tasks are skipped"
                       + (f" (the {len(queue.doomed)} job(s) waiting on it were cancelled)" if queue.doomed else ""))


def _last_log(logging_dir: Path, lines: int = 15) -> str:
    logs = sorted((logging_dir / "slurm_logs").glob("*.out"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return f" (no Slurm log in {logging_dir / 'slurm_logs'})"
    tail = logs[-1].read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f". Last lines of {logs[-1]}:\n  " + "\n  ".join(tail)


class _Queue:
    """What squeue says about one submission's stage jobs (chained: stage k waits on stage k-1)."""

    def __init__(self, jobs: dict[str, int]):
        result = subprocess.run(["squeue", "-h", "-o", "%F|%T|%r|%E"], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise FournilError(f"squeue failed: {result.stderr.strip() or result.returncode}")
        ours = list(jobs.values())
        rows = [line.split("|") for line in result.stdout.splitlines() if line.count("|") == 3]
        rows = [(int(j), state, reason, {int(d) for d in re.findall(r"\d+", deps)})
                for j, state, reason, deps in rows if j.isdigit() and state != "COMPLETING"]
        self.live = {j for j, *_ in rows if j in ours}
        # a stage whose dependency failed never starts, nor does any later stage; datatrove's per-stage
        # `merge_stats` jobs wait on our jobs too
        failed = [i for i, j in enumerate(ours) if any(r[0] == j and r[2] == "DependencyNeverSatisfied" for r in rows)]
        chain = set(ours[failed[0]:]) if failed else set()
        culprit = set(ours[failed[0] - 1:failed[0]]) if failed else set()  # the stage that failed
        waiting = {j for j, state, reason, deps in rows if state == "PENDING" and deps & set(ours)
                   and (reason == "DependencyNeverSatisfied" or deps & (chain | culprit))}
        self.doomed = sorted((chain & self.live) | waiting)
        self.progressing = bool(self.live - chain)
        self._rows = rows

    def waiting_on(self, job_ids) -> list[int]:
        """Pending jobs whose dependency names one of these jobs."""
        return [j for j, state, _, deps in self._rows if state == "PENDING" and deps & set(job_ids)]


def _cancel(job_ids) -> None:
    ids = [str(j) for j in job_ids]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def describe_submission(out: Path, jobs: dict[str, int]) -> list[str]:
    """How to follow, cancel and resume what `submit_slurm` queued."""
    ids = ",".join(map(str, jobs.values()))
    return [f"follow:  squeue -j {ids}   (or rerun the same command with --wait: a progress bar, no new jobs)",
            f"logs:    {out}/logs/<stage>/slurm_logs/ (Slurm output), {out}/logs/<stage>/logs/ (each task)",
            f"cancel:  scancel {ids.replace(',', ' ')}",
            "resume:  rerun the same command: completed tasks are skipped"]
