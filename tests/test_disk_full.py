"""A real full disk (a small tmpfs mounted here, as root) for every writer, and a blend set killed at
every rename."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.fileio import DiskFull
from pipeline.kaggle import ledger
from tests import warm_python
from tests.conftest import REPO, tiny_run_overrides
from tests.factories import make_preds


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs of a given size in KB; unmounted at the end."""
    mounted = []

    def mount(name: str, kb: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(folder)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path, leave_kb: int = 0) -> Path:
    """Fill `folder`'s disk up to `leave_kb` free with one file; delete it to free the space."""
    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave_kb * 1024, 0))
    return filler


def error_lines(stderr: str) -> list[str]:
    """The command's own lines on stderr: without the FutureWarnings libraries print on import."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if "Warning: " not in line and line.strip() != "warnings.warn("]


def _train(*overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline.train", *overrides]
    return warm_python.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_train_on_a_full_disk_keeps_its_checkpoint_and_the_rerun_only_predicts(demo_root, weights_dir, tmp_path, tmpfs):
    preds = tmpfs("preds", 1024)
    filler = fill(preds)
    batches = tmp_path / "batches.log"
    overrides = [
        *tiny_run_overrides(demo_root, weights_dir, preds),
        f"paths.outputs={tmp_path / 'outputs'}",
        f"perf.cache_dir={tmp_path / 'cache'}",
        f"train.callbacks=[{{_target_: tests.callbacks.LogBatches, path: {batches}}}]",
    ]
    full = _train(*overrides)
    print(full.stderr)
    assert full.returncode == 2, full.stderr[-3000:]
    (line,) = error_lines(full.stderr)
    assert line.startswith(f"error: no space left on device writing {preds / 'tiny_squish32_32.pt'} (")
    assert f"free on {preds}): free space and run the same command again" in line
    (folder,) = (tmp_path / "outputs" / "checkpoints").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["epoch1.callbacks.pth", "epoch1.pth"]  # + the history
    trained = batches.read_text()

    filler.unlink()
    again = _train(*overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(1 of 1 epochs done)" in again.stdout
    assert batches.read_text() == trained  # not one training batch again: only TTA and the save
    assert (preds / "tiny_squish32_32.pt").is_file() and not list(folder.parent.iterdir())


@pytest.mark.slow
def test_a_checkpoint_on_a_full_disk_is_one_line(demo_root, weights_dir, tmp_path, tmpfs):
    checkpoints = tmpfs("checkpoints", 4096)  # a tiny run's checkpoint (model and Adam's state) is ~40 MB
    out = _train(
        *tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds"),
        f"paths.outputs={tmp_path / 'outputs'}",
        f"paths.checkpoints={checkpoints}",
    )
    print(out.stderr)
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = error_lines(out.stderr)
    assert line.startswith(f"error: no space left on device writing {checkpoints}/tiny_squish32_32-")
    assert "/epoch1.pth (more than " in line and f"free on {checkpoints}): free space" in line
    assert not list((tmp_path / "preds").glob("*.pt"))


def _blend_set(folder: Path) -> dict[str, bytes]:
    names = ["sub.csv", "sub.report.html", "sub.csv.json", "sub.confusion.png", "sub.probs.pt"]
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}


@pytest.fixture
def blend_inputs(tmp_path) -> list[str]:
    """Two runs' prediction files and a sample submission: what `python -m pipeline.blend` reads."""
    from pipeline import predictions

    root = tmp_path / "comp"
    root.mkdir()
    sample = pd.DataFrame({"image_id": ["c.jpg", "a.jpg", "b.jpg"], "label": ""})
    sample.to_csv(root / "sample_submission.csv", index=False)
    for preds in (make_preds("x"), make_preds("y", seed=1)):
        predictions.save(preds, tmp_path / "preds" / f"{preds.run}.pt")
    return [f"data.root={root}", f"paths.preds={tmp_path / 'preds'}"]


@pytest.mark.slow
def test_blend_on_a_full_disk_is_one_line_and_keeps_the_set(blend_inputs, tmpfs):
    out = tmpfs("submissions", 1024)
    command = [sys.executable, "-m", "pipeline.blend", *blend_inputs, f"blend.output={out / 'sub.csv'}"]
    warm_python.run(command, cwd=REPO, check=True, capture_output=True)
    before = _blend_set(out)
    filler = fill(out, leave_kb=8)
    full = warm_python.run([*command, "+blend.weights.y=5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    print(full.stderr)
    assert full.returncode == 2
    (line,) = error_lines(full.stderr)
    assert line.startswith(f"error: no space left on device writing {out / 'sub.csv'} (")
    assert f"free on {out}): free space and run the same command again" in line
    assert _blend_set(out) == before and len(before) == 5
    filler.unlink()
    warm_python.run([*command, "+blend.weights.y=5"], cwd=REPO, check=True, capture_output=True)
    assert _blend_set(out)["sub.csv.json"] != before["sub.csv.json"]


KILLED_WRITES = """
import os, shutil, signal, sys
from pathlib import Path
from pipeline.ensemble.compute import compute_blend
from pipeline.ensemble.writing import write_blend
from tests.conftest import compose

pristine, out, results = map(Path, sys.argv[1:4])
result = compute_blend(compose("blend", sys.argv[4:]))  # once: each writer below is a fork of this process
replace, symlink = os.replace, os.symlink

def killing(step, kill_at, calls):
    def call(*args, **kwargs):
        calls.append(step)  # one count over renames and symlinks
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(*args, **kwargs)
    return call

k = 0
while True:  # a writer killed at its k-th rename or symlink, for every k, each from the old state
    k += 1
    shutil.rmtree(out)
    shutil.copytree(pristine, out, symlinks=True)
    pid = os.fork()
    if pid == 0:
        calls = []
        os.replace, os.symlink = killing(replace, k, calls), killing(symlink, k, calls)
        write_blend(result)
        os._exit(0)
    status = os.waitpid(pid, 0)[1]
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        break  # k is past the writer's last step: it wrote the new set whole
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    shutil.copytree(out, results / str(k), symlinks=True)
shutil.copytree(out, results / "whole", symlinks=True)
shutil.rmtree(out)  # and a writer after the last kill
shutil.copytree(results / str(k - 1), out, symlinks=True)
write_blend(result)
print(k - 1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("first", [True, False], ids=["first set", "over an old set"])
def test_a_kill_at_any_rename_leaves_the_old_set_or_the_new_one(blend_inputs, tmp_path, first):
    out, pristine, results = tmp_path / "out", tmp_path / "pristine", tmp_path / "results"
    old_overrides = [*blend_inputs, f"blend.output={out / 'sub.csv'}"]
    out.mkdir()
    if not first:
        warm_python.run([sys.executable, "-m", "pipeline.blend", *old_overrides], cwd=REPO, check=True)
    old = _blend_set(out)
    shutil.copytree(out, pristine, symlinks=True)  # the old state, restored before each kill
    script = [sys.executable, "-c", KILLED_WRITES, str(pristine), str(out), str(results)]
    done = warm_python.run([*script, *old_overrides, "+blend.weights.y=5"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = int(done.stdout)
    assert steps >= (10 if first else 2)  # first: each name's link (a symlink and a rename each), then the switch
    new = _blend_set(results / "whole")
    assert len(new) == 5 and new != old
    for k in range(1, steps + 1):
        assert _blend_set(results / str(k)) in (old, new), f"a kill at step {k} of {steps} left a mixed set"
    assert _blend_set(out) == new  # the write after a kill
    sets = [p for p in (out / ".sub.csv.sets").iterdir() if not p.is_symlink()]
    assert len(sets) == 1  # older sets and killed writers' sets are pruned


def test_a_ledger_on_a_full_disk_is_one_line(tmpfs):
    folder = tmpfs("ledger", 64)
    fill(folder, leave_kb=0)
    with pytest.raises(DiskFull, match=r"writing .*kaggle_submissions.csv \(1 KB needed, 0 KB free on .*ledger\)"):
        ledger.append(folder / "kaggle_submissions.csv", dict.fromkeys(ledger.COLUMNS, "x"))
