"""One job of a paddy-pipeline sweep, trained in a Kaggle notebook session (the pushed notebook's code).

pipeline.kaggle.notebooks fills in JOB and pushes this file. In the session it installs the project's
wheel from the attached code dataset (and only the dependencies the Kaggle image lacks), puts back the
checkpoints and finished prediction files of the notebook's previous session, runs
`python -m pipeline.train` on the competition's read-only input with every output under the working
folder, and records how the session ended in outputs/kernel-session.json. Standard library only.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

# Where Kaggle mounts things. The tests' stand-in (tests/kaggle_stand_in.py) maps these three lines.
INPUT = Path("/kaggle/input")  # read-only: the competition, the code dataset, the previous session
WORKING = Path("/kaggle/working")  # the notebook's output: at most 20 GB, kept when the session ends
SCRATCH = Path("/kaggle/temp")  # the rest of the disk, not kept: installed packages, the image cache

JOB: dict = {}  # filled in when pushed: see pipeline/kaggle/notebooks.py

# pipeline.train's exit codes: 0 trained (or already), 3 stopped by train.time_budget_h, else failed.
STATES = {0: "complete", 3: "stopped"}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def say(message: str) -> None:
    print(f"[notebook] {message}", flush=True)


def find(name: str) -> Path | None:
    """The input folder (or file) called `name`, wherever Kaggle mounted it (/kaggle/input/<slug>,
    or a folder deeper in newer layouts)."""
    for depth in range(4):
        hits = sorted(INPUT.glob("/".join(["*"] * depth + [name])))
        if hits:
            return hits[0]
    return None


def requirements(wheel: Path) -> list[str]:
    """The wheel's own dependencies (Requires-Dist lines without an extra), as pip requirements."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    found = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    return [r.split(";")[0].strip() for r in found if "extra ==" not in r]


def release(version: str) -> tuple[int, ...]:
    """A version's release numbers, trailing zeros dropped ("2.8.0rc1" -> (2, 8)): enough to compare
    against the lower bounds of Requires-Dist (pre- and post-release tags are ignored)."""
    found = re.match(r"\d+(?:\.\d+)*", version.strip())
    numbers = [int(n) for n in found.group(0).split(".")] if found else [0]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def below_floor(installed: str, req: str) -> bool:
    """Whether `installed` misses a lower bound of `req` (>=, >, ==, ~=). An upper bound is not checked:
    a newer package is kept (reinstalling the image's torch would break its CUDA build)."""
    have = release(installed)
    for spec in re.sub(r"^[A-Za-z0-9._-]+(\[[^\]]*\])?", "", req).split(","):
        found = re.match(r"\s*(>=|~=|==|>)\s*([^\s*]+)", spec)
        if found and (have < release(found.group(2)) or (found.group(1) == ">" and have == release(found.group(2)))):
            return True
    return False


def outdated(reqs: list[str]) -> list[str]:
    """The requirements whose distribution is absent or older than they ask, as sys.path finds it."""
    todo, present = [], []
    for req in reqs:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            todo.append(req)
            continue
        present.append(f"{name} {version}")
        if below_floor(version, req):
            say(f"the image's {name} {version} is older than {req} asks")
            todo.append(req)
    say("the image has " + ", ".join(present))
    return todo


def installed_requirements(site: Path, reqs: list[str]) -> list[str]:
    """What the distributions just installed into `site` for `reqs` require in turn (no extras, no markers:
    those are left to the image)."""
    found = []
    for req in reqs:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0)
        try:
            dist = next(metadata.distributions(name=name, path=[str(site)]))
        except StopIteration:
            continue
        found += [r for r in dist.requires or [] if ";" not in r]
    return found


def install(code: Path, site: Path) -> None:
    """The project's wheel into `site` (--no-deps: the image has torch, timm, fastai); then whatever the image
    lacks or has older than the wheel asks (and what those need in turn), into `site`, which comes first on the
    path: from the code dataset's own wheels when there are any (internet off), else from PyPI."""
    wheel = code / JOB["wheel"]
    if not wheel.is_file():
        raise SystemExit(f"the code dataset has no {JOB['wheel']} (looked in {code})")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", "--target", str(site), str(wheel)], check=True)
    say(f"installed {wheel.name} into {site}")
    sys.path.insert(0, str(site))  # what is installed there is what pipeline.train imports
    source = ["--find-links", str(code)] + ([] if JOB["internet"] else ["--no-index"])
    reqs = requirements(wheel)
    for _ in range(5):  # a few rounds: an upgraded package may need newer packages of its own
        todo = outdated(reqs)
        if not todo:
            return
        say(f"installing into {site}: {' '.join(todo)}")
        if subprocess.run([*pip, *source, "--no-deps", "--upgrade", "--target", str(site), *todo]).returncode:
            say("could not install them (with the internet off, upload their wheels with the code: README)")
            return
        reqs = installed_requirements(site, todo)


def restore(outputs: Path) -> None:
    """Checkpoints and finished prediction files of the previous session (attached as kernel_sources),
    back where pipeline.train looks: it resumes the first and skips the runs of the second."""
    if not JOB["resume"]:
        return
    previous = find(JOB["slug"])
    if previous is None or not (previous / "outputs").is_dir():
        say(f"no output of a previous session of {JOB['slug']} attached: starting afresh")
        return
    for sub in ("checkpoints", "preds"):
        if (previous / "outputs" / sub).is_dir():
            shutil.copytree(previous / "outputs" / sub, outputs / sub, dirs_exist_ok=True)
            say(f"restored {sub} from {previous / 'outputs' / sub}")


def main() -> int:
    started = time.time()
    outputs = WORKING / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    record = {"session": JOB["session"], "started": now()}
    code, data = find(JOB["code_dataset"]) or INPUT / JOB["code_dataset"], INPUT / JOB["competition"]
    if not data.is_dir():
        data = find(JOB["competition"]) or data
    say(f"session {JOB['session']} of {JOB['slug']}: code {code}, data {data}")
    site = SCRATCH / "site-packages"
    install(code, site)
    restore(outputs)
    job_conf = outputs / "job"
    job_conf.mkdir(exist_ok=True)
    (job_conf / "config.yaml").write_text(JOB["config"])
    command = [
        sys.executable,
        "-m",
        "pipeline.train",
        "--config-path",
        str(job_conf),
        "--config-name",
        "config",
        f"data.root={data}",
        f"paths.outputs={outputs}",
        f"perf.cache_dir={SCRATCH / 'image-cache'}",
        f"hydra.run.dir={outputs / 'run'}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    where = [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"]
    say("pipeline from " + subprocess.run(where, env=env, capture_output=True, text=True).stdout.strip())
    say("running " + " ".join(command[1:]))
    returncode = subprocess.run(command, env=env, cwd=WORKING).returncode
    state = STATES.get(returncode, "failed")
    record.update(state=state, returncode=returncode, seconds=round(time.time() - started, 1))
    record["ended"] = now()
    (outputs / "kernel-session.json").write_text(json.dumps(record, indent=1))
    say(f"session {JOB['session']}: {state} (pipeline.train exited {returncode}) after {record['seconds']:.0f} s")
    return 0 if state != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
