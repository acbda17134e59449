"""Many runs at once through the real engines: a Ray cluster with two declared GPUs (hydra/launcher=gpus)
and a single-node SLURM cluster (hydra/launcher=slurm, scripts/slurm.sh), each running real tiny runs."""

import os
import re
import shutil
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


def test_ray_sweep_one_gpu_per_job_queued_failure_isolated_then_blended(demo_root, weights_dir, tmp_path, ray_cluster):
    outputs = tmp_path / "outputs"
    command = sweep_command(
        demo_root,
        weights_dir,
        outputs,
        variants("a", "b", "c", "boom:lr=1.0e+12"),  # boom's loss diverges: its job fails
        "train.variant=a,b,c,boom",
        "hydra/launcher=gpus",
    )
    out = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ | {"RAY_ADDRESS": ray_cluster}
    )
    print(out.stdout)  # the sweep's report, shown with -s
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: 1 job(s) failed:" in out.stderr and "train.variant=boom" in out.stderr
    assert "NonFiniteLoss" in out.stderr and "Traceback" not in out.stderr
    assert "4 jobs, 3 ok, 1 failed" in out.stdout

    # every run was given a GPU of its own: the two GPUs alternate, never shared by jobs running together
    jobs = sweep_jobs(the_sweep_dir(outputs))
    assert [j["status"] for j in jobs] == ["ok", "ok", "ok", "failed"]
    assert {j["cuda_visible_devices"] for j in jobs} == {"0", "1"} and {j["launcher"] for j in jobs} == {"gpus"}
    for job in jobs:
        running = [o for o in jobs if o["started"] < job["ended"] and job["started"] < o["ended"]]
        assert len(running) <= 2 and len({o["cuda_visible_devices"] for o in running}) == len(running)
    first_end = min(j["ended"] for j in jobs)
    assert sum(j["started"] >= first_end for j in jobs) >= 2  # two jobs waited for a GPU to be free
    report = out.stdout[out.stdout.index("sweep ") :]
    for job in jobs:
        assert re.search(rf"^{job['num']} .* gpu {job['cuda_visible_devices']} job ", report, re.M)

    preds = outputs / "preds"
    assert sorted(p.name for p in preds.glob("*.pt")) == ["tiny_a.pt", "tiny_b.pt", "tiny_c.pt"]
    for job, name in zip(jobs, "abc", strict=False):
        env = predictions.load(preds / f"tiny_{name}.pt").environment
        assert env["cuda_visible_devices"] == job["cuda_visible_devices"] and env["launcher"] == "gpus"
        assert env["job_id"] == job["job_id"] and env["host"]

    output = tmp_path / "submission.csv"
    blend(compose("blend", ["data=demo", f"data.root={demo_root}", f"paths.preds={preds}", f"blend.output={output}"]))
    submission = pd.read_csv(output)
    assert list(submission.image_id) == list(pd.read_csv(demo_root / "sample_submission.csv").image_id)


# --- SLURM: hydra/launcher=slurm ---


def _slurm(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=True).stdout


@pytest.fixture(scope="session")
def slurm_env():
    """A single-node SLURM cluster (scripts/slurm.sh; installs slurm-wlm and munge with apt-get if missing),
    stopped at the end if this session started it; the environment its commands need."""
    start = subprocess.run(["bash", "scripts/slurm.sh", "start"], cwd=REPO, capture_output=True, text=True)
    if start.returncode == 3:
        pytest.skip(f"no SLURM cluster on this machine: {start.stderr.strip()}")
    assert start.returncode == 0, start.stdout + start.stderr
    conf = re.search(r"SLURM_CONF=(\S+)", start.stdout).group(1)
    yield os.environ | {"SLURM_CONF": conf}
    if "already running" not in start.stdout:
        subprocess.run(["bash", "scripts/slurm.sh", "stop"], cwd=REPO, check=True, capture_output=True)


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
    sweep = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
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
    assert "Caught signal SIGUSR2" in submitit_log and f"Requeued job {job_id}" in submitit_log
    train_log = Path(long_job["log"]).read_text()
    assert re.search(r"run tiny_long: resuming from .*epoch\d\.pth \(1 of 2 epochs done\)", train_log)
    env = predictions.load(outputs / "preds" / "tiny_long.pt").environment
    assert (env["launcher"], env["job_id"], env["restarts"]) == ("slurm", job_id, 1)
    assert predictions.load(outputs / "preds" / "tiny_short.pt").environment["restarts"] == 0
    assert not list((outputs / "checkpoints").iterdir())  # the resumed run finished and cleaned up
