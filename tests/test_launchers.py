"""Many runs at once through the real engines: a Ray cluster with two declared GPUs (hydra/launcher=gpus)
and a single-node SLURM cluster (hydra/launcher=slurm, scripts/slurm.sh), each running real tiny runs."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline import predictions
from pipeline.ensemble.writing import blend
from pipeline.launchers.report import sweep_jobs
from tests import warm_python
from tests.conftest import REPO, compose, tiny_run_overrides

pytestmark = pytest.mark.slow


def variants(*specs: str) -> str:
    """model.variants of 32 px squish runs (one shared image cache), `name` or `name:key=value`."""
    items = []
    for spec in specs:
        name, _, extra = spec.partition(":")
        extra = ", " + extra.replace("=", ": ") if extra else ""
        items.append(f"{{resize: squish, item_size: [32], size: [32], name: {name}{extra}}}")
    return f"model.variants=[{', '.join(items)}]"


def sweep_command(demo_root, weights_dir, outputs: Path, *overrides: str, replaces=("model.variants=",)) -> list[str]:
    """The tiny runs' overrides (less those that `replaces` names) as a multirun into `outputs`."""
    tiny = tiny_run_overrides(demo_root, weights_dir, outputs / "preds")
    tiny = [o for o in tiny if not o.startswith(replaces)]
    return [sys.executable, "-m", "pipeline.train", "-m", *tiny, f"paths.outputs={outputs}", *overrides]


def the_sweep_dir(outputs: Path) -> Path:
    (sweep_dir,) = (outputs / "runs" / "train-multi").iterdir()
    return sweep_dir


def run_statuses(outputs: Path) -> dict[str, str]:
    """What each run of the sweep did (trained, skipped, ...), from the jobs' records."""
    return {run["run"]: run["status"] for job in sweep_jobs(the_sweep_dir(outputs)) for run in job.get("runs", [])}


def sweep_twice_over_tta(command: list[str], outputs: Path) -> None:
    """A sweep over tta.n (not in the run name before) leaves a file per value; the same sweep again skips both."""
    for expected in ("trained", "skipped"):
        shutil.rmtree(outputs / "runs", ignore_errors=True)  # this sweep's records only
        out = warm_python.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0 and "2 jobs, 2 ok, 0 failed" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
        names = ["tiny_squish32_32_tta1", "tiny_squish32_32_tta2"]
        assert sorted(p.stem for p in (outputs / "preds").glob("*.pt")) == names
        assert run_statuses(outputs) == dict.fromkeys(names, expected)
    for n in (1, 2):
        preds = predictions.load(outputs / "preds" / f"tiny_squish32_32_tta{n}.pt")
        assert preds.config["tta"]["n"] == n


def mlflow_runs(store: str) -> dict[str, object]:
    """The runs of the `paddy` experiment in an MLflow store, by name (each name once)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("paddy").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert len(by_name) == len(runs), sorted(r.info.run_name for r in runs)
    return by_name


def test_local_sweep_over_an_option_outside_run_names_is_tagged_or_refused_and_a_rerun_logs_nothing(
    demo_root, weights_dir, tmp_path
):
    outputs, store = tmp_path / "outputs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    refused = warm_python.run(
        sweep_command(demo_root, weights_dir, outputs, "data.seed=1,7", replaces=()),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and not (outputs / "preds").exists()
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: jobs 0 (data.seed=1) and 1 (data.seed=7) would both write ")
    assert "data.seed is not part of a run's name" in line and "paths.preds=" in line

    logger = ("logger=mlflow", f"logger.tracking_uri={store}")
    sweep_twice_over_tta(sweep_command(demo_root, weights_dir, outputs, "tta.n=1,2", *logger, replaces=()), outputs)
    # each run logged once: the second sweep skipped both and logged nothing
    assert sorted(mlflow_runs(store)) == ["tiny_squish32_32_tta1", "tiny_squish32_32_tta2"]


# --- Ray: hydra/launcher=gpus ---


@pytest.fixture
def ray_cluster():
    """A local Ray cluster declaring 2 GPUs on 2 CPUs (Ray assigns CUDA_VISIBLE_DEVICES per task even on a
    machine without GPUs), small, owned by this test and shut down after it: its address for RAY_ADDRESS."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    context = ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def check_ray_jobs_mlflow_runs(store: str, jobs: list[dict]) -> None:
    """The Ray sweep's runs in its MLflow store: a and b finished with a loss per epoch, boom failed; each
    tagged with its job's launcher and GPU."""
    from mlflow import MlflowClient

    runs = mlflow_runs(store)
    assert {name: run.info.status for name, run in runs.items()} == {
        "tiny_a": "FINISHED",
        "tiny_b": "FINISHED",
        "tiny_boom": "FAILED",
    }
    for job, name in zip(jobs, ("tiny_a", "tiny_b", "tiny_boom"), strict=True):
        tags = runs[name].data.tags
        assert (tags["launcher"], tags["cuda_visible_devices"]) == ("gpus", job["cuda_visible_devices"]), name
    for name in ("tiny_a", "tiny_b"):  # fine_tune's frozen epoch and the run's one: an MLflow step each
        history = MlflowClient(tracking_uri=store).get_metric_history(runs[name].info.run_id, "train_loss")
        assert [m.step for m in history] == [0, 1], name


def test_ray_sweep_one_gpu_per_job_queued_failure_isolated_logged_to_one_mlflow_store_then_blended(
    demo_root, weights_dir, tmp_path, ray_cluster
):
    outputs, store = tmp_path / "outputs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = sweep_command(
        demo_root,
        weights_dir,
        outputs,
        variants("a", "b", "boom:lr=1.0e+12"),  # boom's loss diverges: its job fails
        "train.variant=a,b,boom",
        "hydra/launcher=gpus",
        # jobs running two at a time on Ray's two GPUs log to one SQLite store (made by whichever comes first)
        "logger=mlflow",
        f"logger.tracking_uri={store}",
    )
    out = warm_python.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ | {"RAY_ADDRESS": ray_cluster}
    )
    print(out.stdout)  # the sweep's report, shown with -s
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: 1 job(s) failed:" in out.stderr and "train.variant=boom" in out.stderr
    assert "NonFiniteLoss" in out.stderr and "Traceback" not in out.stderr
    assert "3 jobs, 2 ok, 1 failed" in out.stdout

    # every run was given a GPU of its own: the two GPUs alternate, never shared by jobs running together
    jobs = sweep_jobs(the_sweep_dir(outputs))
    assert [j["status"] for j in jobs] == ["ok", "ok", "failed"]
    assert {j["cuda_visible_devices"] for j in jobs} == {"0", "1"} and {j["launcher"] for j in jobs} == {"gpus"}
    for job in jobs:  # the most jobs run at once at some job's start: count those running then
        running = [o for o in jobs if o["started"] <= job["started"] < o["ended"]]
        assert len(running) <= 2 and len({o["cuda_visible_devices"] for o in running}) == len(running)
    first_end = min(j["ended"] for j in jobs)
    assert sum(j["started"] >= first_end for j in jobs) >= 1  # a job waited for a GPU to be free
    report = out.stdout[out.stdout.index("sweep ") :]
    for job in jobs:
        assert re.search(rf"^{job['num']} .* gpu {job['cuda_visible_devices']} job ", report, re.M)

    preds = outputs / "preds"
    assert sorted(p.name for p in preds.glob("*.pt")) == ["tiny_a.pt", "tiny_b.pt"]
    for job, name in zip(jobs, "ab", strict=False):
        env = predictions.load(preds / f"tiny_{name}.pt").environment
        assert env["cuda_visible_devices"] == job["cuda_visible_devices"] and env["launcher"] == "gpus"
        assert env["job_id"] == job["job_id"] and env["host"]

    check_ray_jobs_mlflow_runs(store, jobs)

    output = tmp_path / "submission.csv"
    blend(compose("blend", ["data=demo", f"data.root={demo_root}", f"paths.preds={preds}", f"blend.output={output}"]))
    submission = pd.read_csv(output)
    assert list(submission.image_id) == list(pd.read_csv(demo_root / "sample_submission.csv").image_id)


def processes(pgid: int, mark: str) -> list[str]:
    """The processes of process group `pgid`, or whose command line holds `mark`: pid and command."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue  # not a process, or it ended meanwhile
        if proc.name.isdigit() and (int(stat.rsplit(")", 1)[1].split()[2]) == pgid or mark in cmdline):
            found.append(f"{proc.name} {cmdline[:200]}")
    return found


def test_ctrl_c_stops_a_ray_sweep_keeping_checkpoints_and_leaving_no_process(demo_root, weights_dir, tmp_path):
    outputs = tmp_path / "outputs"
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    command = sweep_command(
        demo_root,
        weights_dir,
        outputs,
        variants("a:epochs=8", "b:epochs=8"),  # long enough that Ctrl-C comes before a run ends
        "train.variant=a,b",
        "train.callbacks=[{_target_: tests.callbacks.SlowBatches, seconds: 1.0}]",
        "hydra/launcher=gpus",  # a local Ray started by the command: 2 declared GPUs on 2 CPUs
        "hydra.launcher.ray.init.num_cpus=2",
        "hydra.launcher.ray.init.num_gpus=2",
        f"+hydra.launcher.ray.init._temp_dir={ray_dir}",
        replaces=("model.variants=", "train.epochs="),
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"OMP_NUM_THREADS": "1"}
    stdout, stderr = (tmp_path / "stdout.log").open("w"), (tmp_path / "stderr.log").open("w")
    sweep = warm_python.Popen(command, cwd=REPO, stdout=stdout, stderr=stderr, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not list((outputs / "checkpoints").glob("tiny_*-*/epoch*.pth")):
            assert sweep.poll() is None, (tmp_path / "stderr.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no run checkpointed an epoch"
            time.sleep(0.2)
        os.killpg(sweep.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert sweep.wait(timeout=120) == 130, (tmp_path / "stderr.log").read_text()[-3000:]
        left = processes(sweep.pid, ray_dir)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = processes(sweep.pid, ray_dir)
        assert not left, left
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        shutil.rmtree(ray_dir, ignore_errors=True)
    err = (tmp_path / "stderr.log").read_text()
    print(err)  # the command's stderr, shown with -s
    assert [line for line in err.splitlines() if "interrupted" in line] == [
        "interrupted: 2 job(s) stopped, each keeping its last epoch checkpoint; run the same command again to continue"
    ]
    assert "Traceback" not in err
    written = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*.p*"))
    assert list((outputs / "checkpoints").glob("tiny_*-*/epoch*.pth")), written  # kept: the same command resumes
    assert not list((outputs / "preds").glob("*.pt")), written


# --- SLURM: hydra/launcher=slurm ---


def _slurm(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=True).stdout


def test_slurm_sweep_one_job_per_run_and_a_timed_out_job_requeued_resumes(demo_root, weights_dir, tmp_path, slurm_env):
    outputs = tmp_path / "outputs"
    command = sweep_command(
        demo_root,
        weights_dir,
        outputs,
        variants("long:epochs=2", "short:epochs=1"),
        "train.variant=long,short",
        # slow batches in the long run's last epoch only: the stretch in which the test signals its job
        "train.callbacks=[{_target_: tests.callbacks.SlowBatches, seconds: 1.0,"
        f" after: '{outputs}/checkpoints/tiny_long-*/epoch1.pth'}}]",
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=null",  # this cluster has no GPUs
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        replaces=("model.variants=", "train.epochs="),
    )
    log = (tmp_path / "sweep.log").open("w")
    env = slurm_env | {"OMP_NUM_THREADS": "1"}  # one torch thread per job, as the one core it was given
    sweep = warm_python.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 400
        while not list((outputs / "checkpoints").glob("tiny_long-*/epoch1.pth")):
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the long run never checkpointed its first epoch"
            time.sleep(0.2)
        # each job is named after its run: find the long run's job and send it SLURM's time-out signal
        job_id = _slurm("squeue", "-h", "-n", "tiny_long", "-o", "%i", env=slurm_env).strip()
        _slurm("scancel", "--signal=USR2", job_id, env=slurm_env)
        requeued = None
        while not requeued:
            job = _slurm("scontrol", "-o", "show", "job", job_id, env=slurm_env)
            requeued = re.search(r"JobState=(PENDING|RUNNING) .*Restarts=1", job)
            assert time.monotonic() < deadline, f"the job was not requeued: {job}"
            time.sleep(0.2)
        if requeued.group(1) == "PENDING":  # SLURM holds a requeued batch job 121 s (fixed in slurmctld): start it now
            _slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now", env=slurm_env)
        returncode = sweep.wait(timeout=max(deadline - time.monotonic(), 1))
        assert returncode == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
            subprocess.run(["scancel", "-n", "tiny_long,tiny_short"], env=slurm_env)
    text = (tmp_path / "sweep.log").read_text()
    assert "2 jobs, 2 ok, 0 failed" in text

    sweep_dir = the_sweep_dir(outputs)
    long_job, short_job = sweep_jobs(sweep_dir)
    assert (long_job["job_id"], long_job["attempts"], long_job["restarts"]) == (job_id, 2, 1)
    assert short_job["attempts"] == 1 and short_job["job_id"] != job_id
    submitit_log = (sweep_dir / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    # not submitit's "Requeued job" line: it follows `scontrol requeue`, and SLURM may end the step before it is
    # written (seen once); the requeue itself is shown by the restarts and attempts above and the resume below
    assert "Caught signal SIGUSR2" in submitit_log
    train_log = Path(long_job["log"]).read_text()
    assert re.search(r"run tiny_long: resuming from .*epoch\d\.pth \(1 of 2 epochs done\)", train_log)
    env = predictions.load(outputs / "preds" / "tiny_long.pt").environment
    assert (env["launcher"], env["job_id"], env["restarts"]) == ("slurm", job_id, 1)
    assert predictions.load(outputs / "preds" / "tiny_short.pt").environment["restarts"] == 0
    assert not list((outputs / "checkpoints").iterdir())  # the resumed run finished and cleaned up


def test_ctrl_c_leaves_slurm_jobs_running_and_says_how_to_follow_or_cancel_them(
    demo_root, weights_dir, tmp_path, slurm_env
):
    outputs = tmp_path / "outputs"
    command = sweep_command(
        demo_root,
        weights_dir,
        outputs,
        "train.epochs=8",  # long enough that Ctrl-C comes before the job ends
        "train.callbacks=[{_target_: tests.callbacks.SlowBatches, seconds: 1.0}]",
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=null",  # this cluster has no GPUs
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.name=tiny_ctrl_c",
        replaces=("train.epochs=",),
    )
    env = slurm_env | {"OMP_NUM_THREADS": "1"}
    out, err = (tmp_path / "stdout.log").open("w"), (tmp_path / "stderr.log").open("w")
    sweep = warm_python.Popen(command, cwd=REPO, stdout=out, stderr=err, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # Ctrl-C while the command waits for its job: once sbatch has returned and the job id is logged
        while not (submitted := re.search(r"-> SLURM job (\d+)", (tmp_path / "stdout.log").read_text())):
            assert sweep.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()
            time.sleep(0.2)
        job_id = submitted[1]
        os.killpg(sweep.pid, signal.SIGINT)
        try:
            assert sweep.wait(timeout=60) == 130
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within 60 s of Ctrl-C: {(tmp_path / 'stderr.log').read_text()[-3000:]}")
        still = _slurm("squeue", "-h", "-j", job_id, "-o", "%i", env=slurm_env).strip()
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        subprocess.run(["scancel", "-n", "tiny_ctrl_c"], env=slurm_env)
    text = (tmp_path / "stderr.log").read_text()
    print(text)  # the command's stderr, shown with -s
    assert still == job_id  # Ctrl-C ended the wait, not the job
    assert [line for line in text.splitlines() if "interrupted" in line] == [
        f"interrupted: 1 SLURM job(s) go on; follow them with squeue -j {job_id}, cancel them with scancel {job_id}; "
        "once they end, the same command trains what is missing"
    ]
