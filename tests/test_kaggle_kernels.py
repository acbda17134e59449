"""Training in Kaggle notebooks (hydra/launcher=kaggle) with the real kaggle client, against the loopback
stand-in, which runs every pushed notebook for real: the uploaded wheel installed with --target, the
pushed script run with this Python on a read-only copy of a tiny demo competition (tests/kaggle_stand_in.py).

The sweeps run as a user runs them, in subprocesses (tests/routed_cli.py routes the client); the code
upload and a refused push are also driven in-process. Runs are tiny: tf_efficientnet_lite0 from random
weights at 32 px on 30 training images.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline import predictions
from pipeline.config import KaggleLauncherConfig
from pipeline.data.competition import scan_competition
from pipeline.data.demo import build_demo
from pipeline.data.submission_csv import validate_submission
from pipeline.errors import PipelineError
from pipeline.kaggle import code_dataset, notebook_ledger
from pipeline.kaggle.kernels import Job, run_jobs
from pipeline.training.jobs import train_model
from pipeline.training.provenance import run_hash
from pipeline.training.recipe import GROUPS
from pipeline.training.specs import resolve_runs
from tests import warm_python
from tests.conftest import FASHION_MNIST, compose
from tests.kaggle_stand_in import KEY, USERNAME, KaggleStandIn, route_kaggle_api, tree_digest

REPO = Path(__file__).resolve().parents[1]
COMPETITION = "paddy-disease-classification"
CODE = f"{USERNAME}/paddy-pipeline-code"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist"),
]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    """10 labels x 3 training images, 20 test images: a notebook session trains on it in seconds."""
    root = tmp_path_factory.mktemp("demo") / "demo"
    return build_demo(FASHION_MNIST, root, train_per_class=3, test_per_class=2, seed=0)


@pytest.fixture
def stand_in(kaggle_env, tiny_demo, tmp_path):
    with KaggleStandIn(
        COMPETITION, b"", USERNAME, KEY, competition_root=tiny_demo, kernels_dir=tmp_path / "kaggle-side"
    ) as server:
        yield server


def job_overrides(demo: Path, outputs: Path, *extra: str) -> list[str]:
    """One tiny run per job, as composed on this machine (no launcher)."""
    return [
        "+model=effnet_lite0",
        "model.pretrained=false",
        "model.weights=null",
        "model.batch_size=16",
        "model.variants=[{resize: squish, item_size: [32], size: [32]}]",
        "data=demo",
        f"data.root={demo}",
        "data.num_workers=0",
        f"paths.outputs={outputs}",
        *extra,
    ]


LAUNCHER = [
    "hydra/launcher=kaggle",
    "hydra.launcher.poll_s=0.3",
    "hydra.launcher.max_poll_s=1",
    "hydra.launcher.kaggle.backoff_s=0",
]


def routed(stand_in: KaggleStandIn, module: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "tests/routed_cli.py", stand_in.base_url, module, *args]
    return warm_python.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def session_log(stand_in: KaggleStandIn, ref: str, number: int) -> str:
    return "".join(event["data"] for event in stand_in.kernels[ref][number - 1].log)


def test_a_sweep_trains_in_kaggle_notebooks_resumes_after_the_time_budget_and_blends_at_home(
    stand_in, tiny_demo, tmp_path
):
    outputs, ledger = tmp_path / "outputs", tmp_path / "outputs" / "kaggle_kernels.json"
    # Two jobs of two epochs; each session's budget is spent by its first epoch, so each job needs two.
    jobs = job_overrides(tiny_demo, outputs, "train.epochs=2", "train.time_budget_h=1.0e-6")
    sweep = [*jobs, "model.name=tiny_a,tiny_b", *LAUNCHER]
    stand_in.fail_next(429, endpoint="SaveKernel", retry_after="0", message="Too many requests")

    # The laptop goes away once both notebooks are pushed: they go on on Kaggle.
    command = [sys.executable, "tests/routed_cli.py", stand_in.base_url, "pipeline.train", "-m", *sweep]
    first = warm_python.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len([n for n in notebook_ledger.read(ledger).values() if n.get("version")]) < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.1)
    first.kill()
    early = first.communicate()[0]
    assert "Too many requests; retry 1 of 3" in early  # the 429 on the first push waited and retried
    assert stand_in.count("SaveKernel") == 3

    listed = routed(stand_in, "pipeline.kernels", f"paths.outputs={outputs}")  # asks Kaggle how they are
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert stand_in.count("GetAcceleratorQuotaStatistics") == 1 and "Kaggle GPU quota: " in listed.stdout

    done = routed(stand_in, "pipeline.train", "-m", *sweep)  # follows them: does not push them again

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count(": following notebook ") == 2
    assert KEY not in early + listed.stdout + listed.stderr + done.stdout + done.stderr
    assert [r.endpoint for r in stand_in.requests].count("CreateDataset") == 1
    assert stand_in.count("CreateDatasetVersion") == 0 and stand_in.count("SaveKernel") == 5
    refs = sorted(stand_in.kernels)
    assert [ref.split("/")[1][:12] for ref in refs] == ["paddy-tiny-a", "paddy-tiny-b"]
    for ref in refs:
        first, second = stand_in.kernels[ref]
        assert (first.status, second.status) == ("COMPLETE", "COMPLETE")
        meta = first.request
        assert (meta["isPrivate"], meta["enableGpu"], meta["machineShape"]) == (True, True, "NvidiaTeslaT4")
        assert meta["competitionDataSources"] == [COMPETITION] and meta["datasetDataSources"] == [CODE]
        assert "kernelDataSources" not in meta and second.request["kernelDataSources"] == [ref]  # [] is not sent
        log = session_log(stand_in, ref, 1)
        assert f"{first.root}/temp/site-packages/pipeline/__init__.py" in log  # the wheel's code ran
        assert "stopped: time budget" in log and "(pipeline.train exited 3)" in log
        log = session_log(stand_in, ref, 2)
        assert "restored checkpoints" in log and "(1 of 2 epochs done)" in log and "session 2: complete" in log
        assert not [n for n in second.outputs() if "checkpoints/" in n]  # the finished run removed its checkpoint
    assert done.stdout.count("stopped by its time budget; resuming from its output") == 2
    assert tree_digest(stand_in.competition_copy) == stand_in.competition_digest  # the input was never written

    # What came home: checked prediction files, with the run hashes a local run computes.
    local = compose("config", [*jobs, "model.name=tiny_a"])
    for name in ("tiny_a", "tiny_b"):
        preds = predictions.load(outputs / "preds" / f"{name}_squish32_32.pt")
        cfg = compose("config", [*jobs, f"model.name={name}"])
        (run,) = resolve_runs(cfg)
        local_data = scan_competition(cfg.data.root).fingerprint  # the same competition, here
        assert preds.run_hash == run_hash(run, cfg.data, cfg.tta, local_data)
        assert preds.config["data"]["root"].endswith(f"/input/{COMPETITION}") and preds.run_spec["epochs"] == 2
    (result,) = train_model(local)
    assert result.status == "skipped"  # a local run takes what came home as trained
    notebooks = notebook_ledger.read(outputs / "kaggle_kernels.json")
    sessions = [s for n in notebooks.values() for s in n["sessions"]]
    assert [s["state"] for s in sessions] == ["stopped", "complete"] * 2 and all(s["seconds"] > 0 for s in sessions)
    assert [(n["status"], len(n["sessions"]), n["home"]) for n in notebooks.values()] == [
        ("complete", 2, ["tiny_a_squish32_32"]),
        ("complete", 2, ["tiny_b_squish32_32"]),
    ]

    blended = routed(stand_in, "pipeline.blend", "data=demo", f"data.root={tiny_demo}", f"paths.outputs={outputs}")
    assert blended.returncode == 0, blended.stderr[-3000:]
    csv = outputs / "submissions" / "submission.csv"
    labels = sorted(p.name for p in (tiny_demo / "train_images").iterdir())
    assert len(validate_submission(csv, tiny_demo / "sample_submission.csv", labels)) == 20
    assert "tiny_a_squish32_32" in blended.stdout and "tiny_b_squish32_32" in blended.stdout

    requests = len(stand_in.requests)
    again = routed(stand_in, "pipeline.train", "-m", *sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("are already home") == 2 and len(stand_in.requests) == requests  # not even asked

    listed = routed(stand_in, "pipeline.kernels", f"paths.outputs={outputs}")
    assert listed.returncode == 0 and len(stand_in.requests) == requests  # nothing unfinished: nothing asked
    for ref in refs:
        (row,) = [line.split() for line in listed.stdout.splitlines() if line.startswith(ref)]
        assert row[-5:-1] == ["2", "complete", row[-3], "1/1"]  # sessions, status, GPU hours, home


def test_a_failing_notebook_shows_its_log_tail_and_is_not_pushed_again(stand_in, tiny_demo, tmp_path):
    outputs = tmp_path / "outputs"
    opts = launcher_options(outputs)
    with route_kaggle_api(stand_in.base_url):  # the code of this checkout, uploaded before the sweep
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        code_dataset.ensure(api, USERNAME, opts)
    uploads = stand_in.count("StartBlobUpload")
    jobs = job_overrides(tiny_demo, outputs, "model.batch_size=512")  # more than the 24 training images

    done = routed(stand_in, "pipeline.train", "-m", *jobs, *LAUNCHER)

    assert done.returncode == 2
    (ref,) = stand_in.kernels
    (line, job_line) = [line for line in done.stderr.strip().splitlines() if line.strip()][-2:]
    assert line == "error: 1 job(s) failed:" and job_line.startswith("  job 0 (+model=effnet_lite0")
    assert f"notebook {ref} (session 1, version 1) failed" in job_line
    assert "batch" in job_line and "(log: " in job_line
    tail = done.stdout.split("the end of its log:")[1]
    assert "[notebook] session 1: failed (pipeline.train exited 2)" in tail
    assert stand_in.count("StartBlobUpload") == uploads and stand_in.count("CreateDatasetVersion") == 0  # unchanged
    assert stand_in.count("SaveKernel") == 1
    assert tree_digest(stand_in.competition_copy) == stand_in.competition_digest

    again = routed(stand_in, "pipeline.train", "-m", *jobs, *LAUNCHER)
    assert again.returncode == 2 and "failed before with this code" in again.stderr
    assert stand_in.count("SaveKernel") == 1  # not pushed again blindly


def launcher_options(outputs: Path, **values):
    opts = OmegaConf.structured(KaggleLauncherConfig)
    return OmegaConf.merge(
        opts,
        {"ledger": str(outputs / "kaggle_kernels.json"), "poll_s": 0.3, "max_poll_s": 1, "kaggle": {"backoff_s": 0}},
        values,
    )


def test_the_code_is_uploaded_once_per_source_and_a_change_or_extra_wheels_make_a_new_version(stand_in, tmp_path):
    source = tmp_path / "source"
    for f in code_dataset.source_files(REPO):
        (source / f.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, source / f.relative_to(REPO))
    opts = launcher_options(tmp_path)
    with route_kaggle_api(stand_in.base_url):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        first = code_dataset.ensure(api, USERNAME, opts, root=source)
        second = code_dataset.ensure(api, USERNAME, opts, root=source)
        (source / "pipeline" / "kaggle" / "notebooks.py").write_text("# changed\n", encoding="utf-8")
        third = code_dataset.ensure(api, USERNAME, opts, root=source)
        wheels = tmp_path / "wheels"  # for notebooks with the internet off
        wheels.mkdir()
        (wheels / "hydra_core-1.3.2-py3-none-any.whl").write_bytes(b"a wheel")
        fourth = code_dataset.ensure(api, USERNAME, OmegaConf.merge(opts, {"wheels": str(wheels)}), root=source)

    assert (first.uploaded, second.uploaded, third.uploaded, fourth.uploaded) == (True, False, True, True)
    assert first.source_hash == second.source_hash != third.source_hash != fourth.source_hash
    dataset = stand_in.datasets[CODE]
    assert dataset.private and len(dataset.versions) == 3
    assert stand_in.count("CreateDataset") == 1 and stand_in.count("CreateDatasetVersion") == 2
    assert sorted(dataset.versions[1]) == [third.wheel, f"source-{third.source_hash}.sha256"]
    assert dataset.versions[2]["hydra_core-1.3.2-py3-none-any.whl"] == b"a wheel"
    assert not list(source.glob("build")) and not list(source.glob("*.egg-info"))  # built from a copy
    assert not (REPO / "build").exists()


def test_a_refused_push_and_a_local_weights_file_are_one_line_each(stand_in, tiny_demo, tmp_path):
    outputs = tmp_path / "outputs"
    stand_in.push_error = "Notebook title must be unique"
    local = tmp_path / "weights.safetensors"
    local.write_bytes(b"0")
    weights = ["model.pretrained=true", f"model.weights={local}"]
    jobs = [
        Job(0, "a", compose("config", job_overrides(tiny_demo, outputs, "model.name=a")), tmp_path / "job0"),
        Job(1, "b", compose("config", job_overrides(tiny_demo, outputs, "model.name=b", *weights)), tmp_path / "job1"),
    ]
    with route_kaggle_api(stand_in.base_url):
        errors = run_jobs(jobs, launcher_options(outputs))

    pushed = stand_in.requests[-1].json["slug"]
    assert errors[0] == f"Kaggle refused notebook {pushed}: Notebook title must be unique"
    assert errors[1].startswith(f"model.weights={local} is a file here, which a Kaggle notebook cannot read")
    assert stand_in.count("SaveKernel") == 1  # the second job never got as far as Kaggle


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("max_parallel", r"hydra.launcher.max_parallel must be >= 1, got 0"),
        ("time_budget_h", r"hydra.launcher.time_budget_h must be in \(0, 12\), got 12.0"),
    ],
)
def test_launcher_options_out_of_range_stop_at_once(tmp_path, option, expected):
    with pytest.raises(PipelineError, match=expected):
        run_jobs([], launcher_options(tmp_path, **{option: 0 if option == "max_parallel" else 12}))


def test_without_credentials_nothing_is_asked_or_built(stand_in, tiny_demo, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")

    done = routed(stand_in, "pipeline.train", "-m", *job_overrides(tiny_demo, tmp_path / "outputs"), *LAUNCHER)

    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: no Kaggle credentials: save kaggle.json")
    assert stand_in.requests == [] and not (tmp_path / "outputs" / "kaggle_kernels.json").exists()
    assert not (tmp_path / "outputs" / "runs").exists()  # no sweep folder left behind
    assert KEY not in done.stdout + done.stderr


def test_without_m_the_kaggle_launcher_refuses_to_train_here(tiny_demo, tmp_path):
    command = [sys.executable, "-m", "pipeline.train", *job_overrides(tiny_demo, tmp_path / "outputs"), *LAUNCHER]
    done = warm_python.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)

    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: hydra/launcher=kaggle launches a sweep's jobs: add -m")
    assert not (tmp_path / "outputs" / "preds").exists()


def test_the_session_log_tail_reads_kaggles_json_log(tmp_path):
    from pipeline.kaggle.kernels import log_tail

    events = [{"stream_name": "stdout", "time": 1.0, "data": f"line {i}\n"} for i in range(30)]
    events.append({"stream_name": "stderr", "time": 2.0, "data": "10% |##  \r100% |####|\nerror: it broke\n"})
    (tmp_path / "k.log").write_text(json.dumps(events))
    (tmp_path / "plain.log").write_text("a\n\nb\n")

    tail = log_tail(tmp_path / "k.log")
    assert len(tail) == 15 and tail[-2:] == ["100% |####|", "error: it broke"] and tail[0] == "line 17"
    assert log_tail(tmp_path / "plain.log") == ["a", "b"]


@pytest.mark.parametrize("config", ['a: 1\nb: "x"\n', 'a: "q\\"\\"\\"x"\nb: \\n\n'])
def test_the_pushed_script_carries_the_job_config_exactly(tmp_path, config):
    from types import SimpleNamespace

    from pipeline.kaggle.notebooks import CODE_FILE, write_notebook

    opts = SimpleNamespace(internet=False, accelerator=None, datasets=["me/weights"])
    code = code_dataset.CodeDataset(CODE, "abc", "paddy_pipeline-0.1.0-py3-none-any.whl", uploaded=False)
    folder = write_notebook(tmp_path, f"{USERNAME}/paddy-x-0123456789", 2, COMPETITION, code, config, opts)

    namespace: dict = {}
    exec(compile((folder / CODE_FILE).read_text(), CODE_FILE, "exec"), namespace)  # __name__ is not __main__
    assert namespace["JOB"]["config"] == config
    assert namespace["JOB"]["session"] == 2 and namespace["JOB"]["resume"] and not namespace["JOB"]["internet"]
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert (meta["enable_gpu"], meta["enable_internet"], "machine_shape" in meta) == (False, False, False)
    assert meta["dataset_sources"] == [CODE, "me/weights"] and meta["kernel_sources"] == [meta["id"]]


@pytest.mark.parametrize(
    "group, option",
    [(group, option) for group, registry in GROUPS.items() for option in registry],
)
def test_the_notebooks_job_config_composes_there_as_it_was_composed_here(tmp_path, group, option):
    """Every recipe option's keys (adam's mom, ranger's ...) survive the trip to the notebook's Hydra."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.kaggle.notebooks import config_yaml, kaggle_config

    job = kaggle_config(compose("config", ["+model=effnet_lite0", f"{group}={option}"]), time_budget_h=11.5)
    (tmp_path / "config.yaml").write_text(config_yaml(job))

    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        there = hydra_compose(config_name="config")

    assert OmegaConf.to_container(there) == OmegaConf.to_container(job)
    assert there[group].name == option and OmegaConf.get_type(there[group]) is GROUPS[group][option].schema


@pytest.mark.parametrize("option", ["none", "csv", "mlflow", "tensorboard"])
def test_the_notebooks_logger_composes_there_a_trackers_as_csv(tmp_path, option):
    """A tracker's package is not in the notebook: its runs log as csv there, their histories come home in
    the prediction files."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.kaggle.notebooks import config_yaml, kaggle_config
    from pipeline.training.loggers import LOGGERS

    job = kaggle_config(compose("config", ["+model=effnet_lite0", f"logger={option}"]), time_budget_h=11.5)
    (tmp_path / "config.yaml").write_text(config_yaml(job))
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        there = hydra_compose(config_name="config")
    expected = "none" if option == "none" else "csv"
    assert there.logger.name == expected and OmegaConf.get_type(there.logger) is LOGGERS[expected].schema


def test_a_push_accepted_behind_a_5xx_is_followed_not_pushed_again(stand_in, tiny_demo, tmp_path):
    outputs = tmp_path / "outputs"
    stand_in.accept_then_fail = 502  # Kaggle starts the session, the answer is lost on the way back
    job = Job(0, "a", compose("config", job_overrides(tiny_demo, outputs, "model.name=a")), tmp_path / "job0")
    with route_kaggle_api(stand_in.base_url):
        errors = run_jobs([job], launcher_options(outputs))

    assert errors == [None]
    assert stand_in.count("SaveKernel") == 1  # one GPU session, the one Kaggle accepted
    assert stand_in.count("GetKernel") == 2  # asked before the push (none yet), and again after the 502
    ((ref, versions),) = stand_in.kernels.items()
    assert [v.status for v in versions] == ["COMPLETE"]
    assert (outputs / "preds" / "a_squish32_32.pt").is_file()
    entry = notebook_ledger.read(outputs / "kaggle_kernels.json")[ref]
    assert (entry["status"], entry["version"], entry["home"]) == ("complete", 1, ["a_squish32_32"])


def test_a_fetched_file_with_another_run_hash_is_kept_aside_and_never_blended(stand_in, tiny_demo, tmp_path):
    outputs = tmp_path / "outputs"
    # the notebook runs another split than pushed (data.seed: in the run hash, not the name)
    stand_in.script_edit = ("  seed: 42\n", "  seed: 43\n")
    job = Job(0, "a", compose("config", job_overrides(tiny_demo, outputs, "model.name=a")), tmp_path / "job0")
    with route_kaggle_api(stand_in.base_url):
        (error,) = run_jobs([job], launcher_options(outputs))

    ((ref, (version,)),) = stand_in.kernels.items()
    assert version.status == "COMPLETE"  # it trained; what it trained is not the job
    aside = outputs / "kaggle_rejected" / ref.split("/")[1]
    assert f"notebook {ref} (session 1, version 1) sent back a prediction file that cannot be used: " in error
    assert f"a_squish32_32.pt has run hash {predictions.load(aside / 'a_squish32_32.pt').run_hash}, not " in error
    assert f"kept aside in {aside}, not blended" in error and "\n" not in error
    assert not (outputs / "preds").exists() or not list((outputs / "preds").iterdir())
    entry = notebook_ledger.read(outputs / "kaggle_kernels.json")[ref]
    assert (entry["status"], entry["home"]) == ("failed", [])


def wheel_of_installed(name: str, folder: Path) -> Path:
    """A real wheel of the distribution installed here (its files as RECORD lists them): what a user would
    `pip download` for a notebook with the internet off."""
    import importlib.metadata
    import zipfile

    dist = importlib.metadata.distribution(name)
    files = [f for f in dist.files if not f.as_posix().startswith("..") and "__pycache__" not in f.parts]
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    wheel = folder / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            if f.name != "RECORD":
                zf.write(dist.locate_file(f), f.as_posix())
        zf.writestr(f"{info}/RECORD", "".join(f"{f.as_posix()},,\n" for f in files))
    return wheel


def test_a_package_older_than_the_wheel_asks_is_installed_in_the_notebook(stand_in, tiny_demo, tmp_path):
    import importlib.metadata

    image = tmp_path / "image"  # the image's fastai 2.7: no fasttransform, so this project cannot import it
    (image / "fastai").mkdir(parents=True)
    (image / "fastai" / "__init__.py").write_text("raise ImportError('the image fastai 2.7.0 was imported')\n")
    (image / "fastai-2.7.0.dist-info").mkdir()
    (image / "fastai-2.7.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fastai\nVersion: 2.7.0\n")
    stand_in.image_path = [image]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    offered = wheel_of_installed("fastai", wheels)
    outputs = tmp_path / "outputs"
    job = Job(0, "a", compose("config", job_overrides(tiny_demo, outputs, "model.name=a")), tmp_path / "job0")
    with route_kaggle_api(stand_in.base_url):
        errors = run_jobs([job], launcher_options(outputs, wheels=str(wheels)))

    ((ref, (version,)),) = stand_in.kernels.items()
    log = session_log(stand_in, ref, 1)
    assert errors == [None], log[-3000:]
    assert offered.name in stand_in.datasets[CODE].versions[-1]  # offered with the code, internet off
    assert "the image's fastai 2.7.0 is older than fastai>=2.8 asks" in log
    assert f"installing into {version.root}/temp/site-packages: fastai>=2.8\n" in log
    installed = importlib.metadata.version("fastai")
    assert (version.root / "temp" / "site-packages" / f"fastai-{installed}.dist-info").is_dir()
    assert "the image fastai 2.7.0 was imported" not in log
    assert (outputs / "preds" / "a_squish32_32.pt").is_file()


@pytest.mark.parametrize(
    ("installed", "req", "older"),
    [
        ("2.7.19", "fastai>=2.8", True),
        ("2.8.0", "fastai>=2.8", False),
        ("2.8.0rc1", "fastai>=2.8", False),  # pre-release tags are not compared
        ("1.3.2", "hydra-core>=1.3.2,<1.4", False),
        ("1.4.0", "hydra-core>=1.3.2,<1.4", False),  # newer than an upper bound: kept
        ("2.4", "torch[cuda]>2.4", True),
        ("0.0.2", "fasttransform~=0.0.3", True),
        ("1.0", "six", False),
    ],
)
def test_the_notebook_finds_a_package_below_the_wheels_floor(installed, req, older):
    from pipeline.kaggle.notebook_script import below_floor

    assert below_floor(installed, req) is older
