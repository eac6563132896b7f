"""`fournil corpus run` on datatrove's Slurm and Ray executors, on real clusters started on this machine by
scripts/cluster/slurm-local and ray-local: the same docs/ bytes and counts as the local executor, a run cancelled
with scancel mid-stage and resubmitted, a failing stage reported, and bad cluster settings refused before any work.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fournil.corpus.config import slurm_seconds
from fournil.corpus.pipeline import load_config
from fournil.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["filter", "minhash-buckets", "minhash-clusters", "dedup", "finalise"]
TASKS = "2"  # with 4 MinHash buckets: 12 tasks in all, a few seconds each on a 2-core node


def corpus_run(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fournil", "corpus", "run", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300", **(env or {})})


@pytest.fixture(scope="session")
def slurm_cluster():
    """The single-node cluster of scripts/cluster/slurm-local (started here when absent: CI runs as root)."""
    script = ROOT / "scripts" / "cluster" / "slurm-local"
    if subprocess.run([script, "status"], capture_output=True).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("no Slurm cluster answers and starting one needs root: scripts/cluster/slurm-local up")
        up = subprocess.run([script, "up"], capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stderr


@pytest.fixture(scope="module", autouse=True)
def ray_head(request):
    """When this module's Ray tests are selected, a head of scripts/cluster/ray-local starts with the module, in
    the background (it takes ~20 s, the Slurm tests run meanwhile), and is stopped at the end if started here."""
    import importlib.util

    selected = [item for item in request.session.items if item.module is request.module]
    if importlib.util.find_spec("ray") is None or not any(item.get_closest_marker("ray") for item in selected):
        yield None
        return
    script = ROOT / "scripts" / "cluster" / "ray-local"
    env = {**os.environ, "RAY": str(Path(sys.executable).parent / "ray")}
    was_up = subprocess.run([script, "status"], env=env, capture_output=True).returncode == 0
    starting = None if was_up else subprocess.Popen([script, "up"], env=env, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.PIPE, text=True)
    yield starting
    if starting is not None:
        starting.communicate(timeout=300)
        # not waited for (`ray stop` takes ~10 s): nothing after this module uses Ray
        subprocess.Popen([script, "down"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)


@pytest.fixture
def ray_cluster(ray_head):
    """The Ray head `ray_head` started (or found running)."""
    pytest.importorskip("ray")
    if ray_head is not None:
        _, stderr = ray_head.communicate(timeout=300)
        assert ray_head.returncode == 0, stderr


@pytest.fixture(scope="module")
def recipe(tree) -> Path:
    """The pipeline tests' sources; 4 MinHash buckets and job names no other test or user shares."""
    root, _ = tree
    path = root / "cluster.yaml"
    path.write_text((root / "corpus.yaml").read_text() + "minhash_buckets: 4\n"
                    f"executor: {{job_name: fc-test-{os.getpid()}, mem_per_cpu_gb: 1, time: '00:10:00'}}\n",
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    from fournil.corpus.pipeline import run

    out = tmp_path_factory.mktemp("local") / "out"
    run(load_config(recipe), out, workers=2, tasks=int(TASKS))
    return out


def assert_same_corpus(out: Path, reference: Path) -> None:
    names = sorted(p.name for p in (reference / "docs").glob("*.jsonl.gz"))
    assert sorted(p.name for p in (out / "docs").glob("*.jsonl.gz")) == names
    for name in names:
        assert (out / "docs" / name).read_bytes() == (reference / "docs" / name).read_bytes(), name
    for name in ("stats.json", "datasheet.json"):
        a, b = (json.loads((d / name).read_text()) for d in (out, reference))
        a.pop("seconds"), b.pop("seconds")
        assert a == b, name
    ids = [json.loads(line)["id"] for p in (out / "docs").glob("*.jsonl.gz")
           for line in gzip.decompress(p.read_bytes()).splitlines()]
    assert len(ids) == len(set(ids)) > 100
    assert json.loads((out / "fournil.json").read_text())["complete"]


def queued(job_ids) -> set[int]:
    rows = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True).stdout.split()
    return {int(j) for j in rows} & {int(j) for j in job_ids}


def stuck_jobs(name_prefix: str) -> list[str]:
    rows = subprocess.run(["squeue", "-h", "-o", "%j %r"], capture_output=True, text=True).stdout.splitlines()
    return [r for r in rows if r.startswith(name_prefix) and "DependencyNeverSatisfied" in r]


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_gives_the_local_corpus_through_scancel_and_resubmit(slurm_cluster, recipe, reference, tmp_path):
    """One Slurm run proves it all: submission returns with the jobs queued; `scancel` in the middle of the MinHash
    buckets stage, then the same command again submits only what is left; `--wait` follows those queued jobs
    without submitting; docs/ and the counts are the local executor's (nothing lost, nothing duplicated), nothing
    waits in the queue, and a rerun of the complete corpus submits nothing."""
    out = tmp_path / "out"
    args = [recipe, "--out", out, "--executor", "slurm", "--tasks", TASKS]
    submitted = corpus_run(*args, "--json")
    assert submitted.returncode == 0, submitted.stderr
    jobs = json.loads(submitted.stdout)["jobs"]
    assert list(jobs) == STAGES and queued(jobs.values())  # returned at submission, the jobs still queued
    assert "squeue -j" in submitted.stderr and "scancel" in submitted.stderr
    assert not (out / "fournil.json").exists()
    script = (out / "logs" / "filter" / "launch_script.slurm").read_text()
    assert f"source {Path(sys.prefix) / 'bin' / 'activate'}" in script and "--array=0-1" in script

    markers = out / "logs" / "minhash-buckets" / "completions"
    deadline = time.time() + 150
    while time.time() < deadline and not (markers.is_dir() and 1 <= len(list(markers.iterdir())) < 4):
        time.sleep(0.1)
    subprocess.run(["scancel", *map(str, jobs.values())], check=True)
    while queued(jobs.values()) and time.time() < deadline + 60:
        time.sleep(0.2)
    assert 1 <= len(list(markers.iterdir())) < 4, "not cancelled in the middle of the MinHash buckets stage"
    assert not (out / "fournil.json").exists()

    resubmitted = corpus_run(*args, "--json")
    assert resubmitted.returncode == 0, resubmitted.stderr
    again = json.loads(resubmitted.stdout)["jobs"]
    assert "filter" not in again and "minhash-buckets" in again  # completed stages are not submitted again
    followed = corpus_run(*args, "--wait", timeout=600)  # the same command with --wait follows the queued jobs
    assert followed.returncode == 0, followed.stderr
    assert "still in the Slurm queue" in followed.stderr and "nothing submitted" in followed.stderr
    assert_same_corpus(out, reference)
    assert stuck_jobs(f"fc-test-{os.getpid()}") == []  # nothing of the cancelled run left waiting in the queue

    complete = corpus_run(*args, "--json")
    assert complete.returncode == 0 and json.loads(complete.stdout)["jobs"] == {}  # complete: nothing submitted


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_failing_stage_is_reported_and_leaves_no_job_behind(slurm_cluster, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ok.jsonl").write_text('{"text": "Bonjour tout le monde."}\n', encoding="utf-8")
    (tmp_path / "src" / "bad.jsonl").write_text("not json\n" * 4, encoding="utf-8")
    name = f"fc-fail-{os.getpid()}"
    (tmp_path / "c.yaml").write_text(f"sources:\n  s: {{path: src, category: fr}}\nexecutor: {{job_name: {name}}}\n",
                                     encoding="utf-8")
    result = corpus_run(tmp_path / "c.yaml", "--out", tmp_path / "out", "--executor", "slurm", "--wait",
                        "--max-errors", "2")
    assert result.returncode == 1, result.stderr
    assert "exceed --max-errors 2" in result.stderr and "bad.jsonl:1: malformed_json" in result.stderr
    jobs = json.loads((tmp_path / "out" / "logs" / "slurm_jobs.json").read_text())["jobs"]
    assert not queued(jobs.values()) and stuck_jobs(name) == []


@pytest.mark.slurm
def test_a_job_sbatch_refuses_stops_the_run(slurm_cluster, tree, tmp_path):
    root, _ = tree
    (tmp_path / "c.yaml").write_text(f"sources: {{fr: {{path: {root / 'fr'}, category: fr}}}}\n"
                                     "executor: {sbatch_args: {constraint: no-such-feature}}\n", encoding="utf-8")
    result = corpus_run(tmp_path / "c.yaml", "--out", tmp_path / "out", "--executor", "slurm")
    assert result.returncode == 1, result.stderr
    assert "Invalid feature specification" in result.stderr and "sbatch refused a stage" in result.stderr
    assert not (tmp_path / "out" / "logs" / "slurm_jobs.json").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_gives_the_local_corpus(ray_cluster, recipe, reference, tmp_path):
    out = tmp_path / "out"
    result = corpus_run(recipe, "--out", out, "--executor", "ray", "--tasks", TASKS, env={"RAY_ADDRESS": "auto"},
                        timeout=600)
    assert result.returncode == 0, result.stderr
    assert_same_corpus(out, reference)
    tasks = {"minhash-buckets": 4, "minhash-clusters": 1, "finalise": 1}  # every stage ran on Ray, to the end
    assert {s: len(list((out / "logs" / s / "completions").iterdir())) for s in STAGES} == \
        {s: tasks.get(s, int(TASKS)) for s in STAGES}


# ------------------------------------------------------------------------ bad settings: refused before any work


def test_no_sbatch_on_path(tree, tmp_path):
    root, _ = tree
    (tmp_path / "bin").mkdir()
    result = corpus_run(root / "corpus.yaml", "--out", tmp_path / "out", "--executor", "slurm",
                        env={"PATH": str(tmp_path / "bin")})
    assert result.returncode == 2, result.stderr
    assert "`sbatch`" in result.stderr and "not on PATH" in result.stderr and "slurm-local up" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slurm
def test_unknown_partition(slurm_cluster, tree, tmp_path):
    root, _ = tree
    result = corpus_run(root / "corpus.yaml", "--out", tmp_path / "out", "--executor", "slurm", "--partition", "gpu9")
    assert result.returncode == 2, result.stderr
    assert "'gpu9' is not a partition of this cluster; `sinfo` lists: debug" in result.stderr
    assert not (tmp_path / "out").exists()


def test_ray_not_importable(tree, tmp_path):
    root, _ = tree
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no ray in this environment')\n")
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    result = corpus_run(root / "corpus.yaml", "--out", tmp_path / "out", "--executor", "ray",
                        env={"PYTHONPATH": path})
    assert result.returncode == 2, result.stderr
    assert "the `ray` package cannot be imported (no ray in this environment)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_ray_not_reachable(tree, tmp_path):
    pytest.importorskip("ray")
    root, _ = tree
    started = time.time()
    result = corpus_run(root / "corpus.yaml", "--out", tmp_path / "out", "--executor", "ray",
                        env={"RAY_ADDRESS": "127.0.0.1:1"}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "no Ray cluster answers at '127.0.0.1:1'" in result.stderr and "RAY_ADDRESS" in result.stderr
    assert time.time() - started < 30 and not (tmp_path / "out").exists()


def test_executor_section_is_validated_with_lines(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "name: x\n"
        "corpus:\n"
        "  sources: {a: {path: d, category: fr}}\n"
        "  executor:\n"
        "    kind: kubernetes\n"
        "    time: tomorrow\n", encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load_config(tmp_path / "r.yaml")
    assert "r.yaml:5: corpus.executor.kind: 'kubernetes' is not allowed; choose one of: local, slurm, ray" in str(err.value)
    (tmp_path / "s.yaml").write_text(
        "sources: {a: {path: d, category: fr}}\n"
        "executor:\n"
        "  kind: slurm\n"
        "  time: tomorrow\n"
        "  tasks: 0\n"
        "  env: {1X: a}\n"
        "  sbatch_args: {array: 0-3, '--partition': cpu, account: abc}\n", encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load_config(tmp_path / "s.yaml")
    text = str(err.value)
    assert "s.yaml:4: executor.time: 'tomorrow' is not a Slurm time" in text
    assert "s.yaml:5: executor.tasks: must be >= 1, got 0" in text
    assert "executor.env.1X: not a valid environment variable name" in text
    assert "executor.sbatch_args.array: --array is not allowed here" in text
    assert "executor.sbatch_args.--partition: --partition is not allowed here: set executor.partition instead" in text
    assert "account" not in text
    (tmp_path / "t.yaml").write_text("sources: {a: {path: d, category: fr}}\n"
                                     "executor: {kind: ray, tasks: 8, env: {HF_HUB_OFFLINE: '1'}}\n", encoding="utf-8")
    executor = load_config(tmp_path / "t.yaml").executor
    assert (executor.kind, executor.tasks, executor.env) == ("ray", 8, {"HF_HUB_OFFLINE": "1"})


def test_slurm_time_formats():
    assert [slurm_seconds(t) for t in ("90", "1:30", "01:00:00", "1-12", "1-0:30", "2-01:02:03")] == \
        [5400, 90, 3600, 129600, 88200, 176523]
    for bad in ("", "1:2:3:4", "1h", "-5"):
        with pytest.raises(ValueError, match="not a Slurm time"):
            slurm_seconds(bad)


def test_executor_is_not_part_of_the_recipe_hash():
    import dataclasses

    from fournil.corpus.config import CorpusConfig, ExecutorConfig
    from fournil.corpus.pipeline import config_hash

    config = CorpusConfig()
    assert config_hash(config) == config_hash(dataclasses.replace(config, executor=ExecutorConfig(kind="slurm")))
    assert config_hash(config) != config_hash(dataclasses.replace(config, min_words=3))


def test_a_rerun_must_keep_the_task_count(tmp_path):
    """Task `rank` reads back its own earlier outputs: a changed task count on a half-done run is refused."""
    (tmp_path / "src").mkdir()
    for i in range(3):
        (tmp_path / "src" / f"{i}.jsonl").write_text('{"text": "Bonjour."}\nnot json\n', encoding="utf-8")
    (tmp_path / "c.yaml").write_text("sources:\n  s: {path: src, category: fr}\n", encoding="utf-8")
    first = corpus_run(tmp_path / "c.yaml", "--out", tmp_path / "out", "--workers", "1", "--tasks", "3",
                       "--max-errors", "2")
    assert first.returncode == 1 and "exceed --max-errors 2" in first.stderr  # stopped after the filter stage
    again = corpus_run(tmp_path / "c.yaml", "--out", tmp_path / "out", "--tasks", "2", "--max-errors", "20")
    assert again.returncode == 2
    assert "was started with 3 tasks per stage, not 2: rerun with --tasks 3" in again.stderr
    plan = tmp_path / "out" / "work" / "stages.json"  # as an older fournil with a MinHash signatures stage left it
    older = json.loads(plan.read_text())
    older["tasks"] = {"minhash-signatures": 3, **older["tasks"]}
    plan.write_text(json.dumps(older))
    other = corpus_run(tmp_path / "c.yaml", "--out", tmp_path / "out", "--tasks", "3", "--max-errors", "20")
    assert other.returncode == 2 and "was started with other stages (minhash-signatures, filter" in other.stderr

