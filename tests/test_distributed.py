"""One run on two processes (DDP, gloo on this machine's CPUs): started by torchrun, by train.devices=2 and by a
SLURM job of two tasks, each a real tiny run. Two runs started once per session serve several tests: torchrun's
and train.devices=2's, with a one-process run of the same effective batch beside them."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from pipeline import predictions
from pipeline.launchers.report import sweep_jobs
from tests import warm_python
from tests.conftest import REPO, compose, tiny_run_overrides
from tests.test_launchers import _slurm, processes

pytestmark = pytest.mark.slow

RUN = "tiny_squish32_32_sgd_seed0"  # the recipe tags the name
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # one torch thread per rank


def variant(name: str | None = None, epochs: int = 1) -> str:
    extra = f", name: {name}" if name else ""
    return f"{{resize: squish, item_size: [32], size: [32], epochs: {epochs}{extra}}}"


def overrides(demo_root, weights_dir, outputs: Path, *extra: str, variants: str = "", callbacks: str = "") -> list[str]:
    """The tiny run (batch 16 in micro-batches of 8, so each of two ranks steps on 8), seeded, with SGD, trained without
    randomness beyond the data's order (tests.callbacks.Deterministic), its weights saved after each fit;
    `callbacks`: more of them."""
    skip = ("model.variants=", "train.epochs=")
    tiny = [o for o in tiny_run_overrides(demo_root, weights_dir, outputs / "preds") if not o.startswith(skip)]
    weights = f"{{_target_: tests.callbacks.SaveWeights, path: '{outputs / 'weights.pt'}'}}"
    return [
        *tiny,
        f"model.variants=[{variants or variant()}]",
        f"paths.outputs={outputs}",
        "train.seed=0",
        "optimizer=sgd",  # Adam's first steps divide by the gradient's size: it magnifies rounding (6e-5 here)
        f"train.callbacks=[{{_target_: tests.callbacks.Deterministic}}, {weights}{callbacks}]",
        *extra,
    ]


def the_log(outputs: Path) -> str:
    """The log of the command's one run folder (rank 0's: the other ranks make none)."""
    (folder,) = (outputs / "runs" / "train").iterdir()
    (log,) = folder.glob("*.log")
    return log.read_text()


@pytest.fixture(scope="session")
def ddp_runs(demo_root, weights_dir, tmp_path_factory):
    """The same seeded tiny run trained by torchrun's 2 ranks and by train.devices=2 (each in its own outputs).
    Once per session, on the one worker that runs its tests (tests/conftest.py: FIXTURE_GROUPS): a module fixture
    was built again whenever xdist handed that worker another module's test in between."""
    runs = {}
    for how in ("torchrun", "devices"):
        outputs = tmp_path_factory.mktemp(how)
        args = overrides(demo_root, weights_dir, outputs)
        if how == "torchrun":
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "pipeline.train",
                *args,
            ]
        else:
            command = [sys.executable, "-m", "pipeline.train", *args, "train.devices=2"]
        out = warm_python.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        runs[how] = (outputs, out)
    return runs


def test_torchrun_trains_one_run_on_two_ranks_each_on_half_of_every_epoch(ddp_runs):
    outputs, out = ddp_runs["torchrun"]
    log = the_log(outputs)
    print(log)  # the per-rank lines and the training table, shown with -s
    assert [p.name for p in (outputs / "preds").glob("*.pt")] == [f"{RUN}.pt"]
    preds = predictions.load(outputs / "preds" / f"{RUN}.pt")  # checked: finite probabilities summing to 1
    assert preds.environment["world_size"] == 2 and preds.run_spec["accum"] == 2  # as configured
    assert len(preds.test_ids) == len(preds.test_probs) == 20 and len(preds.valid_ids) == 12
    # fine_tune: the frozen epoch, then the run's one epoch; 48 training images, 24 a rank, none twice
    for rank in (0, 1):
        assert log.count(f"run {RUN} epoch 1/1: rank {rank} of 2 trained on 24 of 48 images") == 2
    assert log.count(f"run {RUN} epoch 1/1: 2 ranks trained on 48 distinct images, 0 twice, 0 left out") == 2
    assert re.search(rf"{RUN}\s+trained", log)  # the results table
    assert "DDP: 2 ranks (gloo" in log
    assert "[rank 1]" not in out.stdout + out.stderr  # rank 1 logs warnings only: none here


def test_train_devices_gives_torchruns_result(ddp_runs):
    (a, _), (b, _) = ddp_runs["torchrun"], ddp_runs["devices"]
    first, second = (predictions.load(o / "preds" / f"{RUN}.pt") for o in (a, b))
    assert first.run_hash == second.run_hash
    for field in ("test_probs", "valid_probs", "valid_probs_plain"):
        assert torch.allclose(getattr(first, field), getattr(second, field), atol=1e-6), field
    w1, w2 = (torch.load(o / "weights.pt", weights_only=True) for o in (a, b))
    assert max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1) <= 1e-6
    assert "train.devices=2: starting 2 ranks" in the_log(b)


def test_two_ranks_step_as_one_process_with_the_same_batch(ddp_runs, demo_root, weights_dir, tmp_path):
    """Each step's 16 images are the one-process run's (every other image of its order to each rank), and
    the ranks' averaged gradients its gradient: the weights after the run match to float rounding."""
    from pipeline.training.jobs import train_model

    ddp_outputs, _ = ddp_runs["torchrun"]
    # one process, micro-batches of 16 (accum 1): the same steps at the same points of the schedule
    train_model(compose("config", [*overrides(demo_root, weights_dir, tmp_path), "train.accum=1"]))
    one, two = (torch.load(o / "weights.pt", weights_only=True) for o in (tmp_path, ddp_outputs))
    differences = {k: float((one[k].float() - two[k].float()).abs().max()) for k in one}
    largest = max(differences, key=differences.get)
    print(f"largest weight difference, one process vs 2 ranks: {differences[largest]:.3g} ({largest})")
    assert differences[largest] < 1e-6


def test_time_budget_kill_of_a_rank_and_resume_with_a_finished_run_skipped(ddp_runs, demo_root, weights_dir, tmp_path):
    """Under train.devices=2: a job whose first run is torchrun's finished one (skipped) and a 3-epoch run that
    the time budget stops after its first epoch; then a rank killed mid-epoch; then the run resumed and done."""
    done, _ = ddp_runs["torchrun"]
    outputs = tmp_path / "outputs"
    (outputs / "preds").mkdir(parents=True)
    shutil.copy(done / "preds" / f"{RUN}.pt", outputs / "preds")
    both = f"{variant()}, {variant('long', epochs=3)}"

    def command(callbacks: str = "") -> list[str]:
        args = overrides(demo_root, weights_dir, outputs, variants=both, callbacks=callbacks)
        return [sys.executable, "-m", "pipeline.train", "train.devices=2", *args]

    def run(*extra: str) -> subprocess.CompletedProcess:
        shutil.rmtree(outputs / "runs", ignore_errors=True)
        return warm_python.run([*command(), *extra], cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)

    stopped = run("train.time_budget_h=0.00001")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    log = the_log(outputs)
    assert f"run {RUN}: already trained with this config" in log
    assert "run tiny_long_sgd_seed0: time budget spent" in log
    saved = [p.name for p in (outputs / "checkpoints").glob("tiny_long_sgd_seed0-*/epoch*.pth")]
    assert [name for name in saved if re.fullmatch(r"epoch\d+\.pth", name)] == ["epoch1.pth"]

    # slow batches once the second epoch is saved: the test kills rank 1 in the third
    after = f"{outputs}/checkpoints/tiny_long_sgd_seed0-*/epoch2.pth"
    slow = f", {{_target_: tests.callbacks.SlowBatches, seconds: 1.0, after: '{after}'}}"
    shutil.rmtree(outputs / "runs", ignore_errors=True)
    err = (tmp_path / "stderr.log").open("w")
    job = warm_python.Popen(
        command(slow), cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=ENV, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not list((outputs / "checkpoints").glob("tiny_long_sgd_seed0-*/epoch2.pth")):
            assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()[-3000:]
            time.sleep(0.2)
        pids = re.findall(r"host:pid by rank: \S+:(\d+) \S+:(\d+)", the_log(outputs))[-1]
        killed = time.monotonic()
        os.kill(int(pids[1]), signal.SIGKILL)  # rank 1, mid-epoch
        assert job.wait(timeout=60) == 2
        ended = time.monotonic() - killed
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = (tmp_path / "stderr.log").read_text()
    print(text, f"ended {ended:.1f} s after the kill")
    assert ended < 15
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: rank 1 of 2 failed (ended by SIGKILL); the other ranks were stopped. Finished prediction files and "
        "the last epoch checkpoint are kept: run the same command again to continue"
    ], text[-3000:]
    assert "Traceback" not in text
    left, gone_by = processes(job.pid, mark=str(outputs)), time.monotonic() + 10
    while left and time.monotonic() < gone_by:  # the killed rank's zombie, until init reaps it
        time.sleep(0.2)
        left = processes(job.pid, mark=str(outputs))
    assert not left, f"a rank outlived the command: {left}"

    resumed = run()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = the_log(outputs)
    assert re.search(r"run tiny_long_sgd_seed0: resuming from .*epoch2\.pth \(2 of 3 epochs done\)", log)
    assert f"run {RUN}: already trained with this config" in log
    assert predictions.load(outputs / "preds" / "tiny_long_sgd_seed0.pt").environment["world_size"] == 2
    assert not list((outputs / "checkpoints").iterdir())


@pytest.mark.xdist_group("ddp_runs")  # with the suite's other elastic launches, whose torchelastic_* it would count
def test_a_rank_out_of_memory_is_one_line_from_its_error_file_and_the_launch_leaves_nothing_in_tmp(
    demo_root, weights_dir, tmp_path
):
    """Under train.devices=2 an out-of-memory error ends its rank (no retry under DDP); the command's one line is
    the rank's own error, read from the error file in the elastic agent's log folder, which goes with the launch,
    and names the file in the job's folder that keeps that rank's traceback."""
    oom = ", {_target_: tests.callbacks.OutOfMemory}"
    args = overrides(demo_root, weights_dir, tmp_path / "outputs", callbacks=oom)
    elastic = set(Path(tempfile.gettempdir()).glob("torchelastic_*"))
    out = warm_python.run(
        [sys.executable, "-m", "pipeline.train", "train.devices=2", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr[-3000:]
    said = re.fullmatch(
        rf"error: rank (?P<rank>[01]) of 2: run {RUN} failed: OutOfMemoryError: CUDA out of memory\. .*; "
        r"under DDP the out-of-memory retry is off .* \(traceback: (?P<path>\S+)\); the other ranks were stopped\. "
        r".*run the same command again to continue",
        lines[0],
    )
    assert said, lines[0]
    saved = Path(said["path"])  # rank 0's under the run's name, another rank's with its number
    assert saved.name == (f"{RUN}.traceback.txt" if said["rank"] == "0" else f"{RUN}.rank1.traceback.txt")
    text = saved.read_text()
    assert text.startswith("Traceback") and "`before_batch`:\n\tCUDA out of memory. Tried to allocate" in text, text
    assert set(Path(tempfile.gettempdir()).glob("torchelastic_*")) == elastic


def test_a_slurm_job_of_two_tasks_trains_one_kfold_run_with_lr_find_on_two_ranks_and_resumes_when_requeued(
    demo_root, weights_dir, tmp_path, slurm_env
):
    outputs = tmp_path / "outputs"
    run = RUN.replace("_sgd", "_sgd_lrfind12") + "_fold1"
    # slow batches in the last epoch only: the stretch in which the test signals the job
    after = f"{outputs}/checkpoints/{run}-*/epoch1.pth"
    args = overrides(
        demo_root,
        weights_dir,
        outputs,
        "data.split=kfold",
        "data.folds=2",
        "train.fold=1",
        "train.lr=find",  # on rank 0 alone, its lr every rank's, kept for the requeued attempt
        "train.lr_find_steps=12",
        "hydra/launcher=slurm",
        "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.gpus_per_node=null",  # this cluster has no GPUs
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        variants=variant(epochs=2),
        callbacks=f", {{_target_: tests.callbacks.SlowBatches, seconds: 1.0, after: '{after}'}}",
    )
    log = (tmp_path / "sweep.log").open("w")
    sweep = warm_python.Popen(
        [sys.executable, "-m", "pipeline.train", "-m", *args],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=slurm_env | ENV | {"SLURM_CONF": slurm_env["SLURM_CONF"]},
    )
    try:
        deadline = time.monotonic() + 400
        while not list((outputs / "checkpoints").glob(f"{run}-*/epoch1.pth")):
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            queue = subprocess.run(["squeue"], capture_output=True, text=True, env=slurm_env).stdout
            assert time.monotonic() < deadline, f"the run never checkpointed its first epoch; the queue:\n{queue}"
            time.sleep(0.2)
        job_id = _slurm("squeue", "-h", "-n", run, "-o", "%i", env=slurm_env).strip()
        _slurm("scancel", "--signal=USR2", job_id, env=slurm_env)  # SLURM's time-out signal
        requeued = None
        while not requeued:
            job = _slurm("scontrol", "-o", "show", "job", job_id, env=slurm_env)
            requeued = re.search(r"JobState=(PENDING|RUNNING) .*Restarts=1", job)
            assert time.monotonic() < deadline, f"the job was not requeued: {job}"
            time.sleep(0.2)
        if requeued.group(1) == "PENDING":  # SLURM holds a requeued batch job 121 s: start it now
            _slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now", env=slurm_env)
        assert sweep.wait(timeout=max(deadline - time.monotonic(), 1)) == 0, (tmp_path / "sweep.log").read_text()
    finally:
        if sweep.poll() is None:
            sweep.kill()
            subprocess.run(["scancel", "-n", run], env=slurm_env)
    assert "1 jobs, 1 ok, 0 failed" in (tmp_path / "sweep.log").read_text()
    sweep_dir = next((outputs / "runs" / "train-multi").iterdir())
    (record,) = sweep_jobs(sweep_dir)  # rank 0's alone
    assert (record["job_id"], record["attempts"], record["restarts"]) == (job_id, 2, 1)
    (job_log,) = Path(record["folder"]).glob("*.log")  # rank 1 writes no log file
    text = job_log.read_text()
    print(text, *(p.read_text() for p in sorted((sweep_dir / ".submitit" / job_id).glob("*_log.out"))), sep="\n")
    assert text.count("DDP: 2 ranks (gloo") == 2  # the first attempt, then the requeued one
    assert re.search(rf"run {run}: resuming from .*epoch1\.pth \(1 of 2 epochs done\)", text)
    found = re.findall(rf"run {run}: lr_find suggests lr (\S+)", text)
    assert len(found) == 2 and found[0] == found[1]  # found once, remembered by the requeued attempt
    assert re.search(rf"run {run} epoch 2/2: rank 1 of 2 trained on 8 of 30 images", text)  # after the requeue
    # submitit's line, logged by rank 0's task before it asks for the requeue (its "Requeued job" line comes after
    # `scontrol requeue`, and SLURM may end the step before it is written: seen once in test_launchers)
    assert "Caught signal SIGUSR2" in text
    preds = predictions.load(outputs / "preds" / f"{run}.pt")
    assert (preds.environment["world_size"], preds.environment["restarts"], preds.split["fold"]) == (2, 1, 1)
    assert not list((outputs / "checkpoints").iterdir())
