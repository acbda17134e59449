"""The Kaggle notebook that trains one job: its config as it runs there, its code and kernel-metadata.json.

The code is notebook_script.py with JOB filled in (the job's composed config among it), pushed as a
private script notebook with a GPU, the competition, the code dataset and, when resuming, the notebook's
own previous output attached.
"""

from __future__ import annotations

import json
import pprint
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from pipeline.config import PathsConfig
from pipeline.kaggle.code_dataset import CodeDataset
from pipeline.training.loggers import LOGGERS
from pipeline.training.recipe import GROUPS

if TYPE_CHECKING:
    from pipeline.config import TrainAppConfig

CODE_FILE = "train_job.py"
TEMPLATE = Path(__file__).with_name("notebook_script.py")
JOB_LINE = "JOB: dict = {}  # filled in when pushed: see pipeline/kaggle/notebooks.py\n"
INPUT = "/kaggle/input"


def kaggle_config(cfg: TrainAppConfig, time_budget_h: float) -> TrainAppConfig:
    """The job's config as it runs in the notebook: data.root on Kaggle's read-only input, every path
    under the working folder (the notebook script sets paths.outputs), a time budget, and logger=csv for a
    tracker's logger (its package is not in the notebook; each run's history comes home in its prediction
    file). What shapes the predictions is left as composed here, so its runs have the same run hashes as here."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
    out.paths = OmegaConf.structured(PathsConfig)
    out.data.root = f"{INPUT}/{cfg.data.competition}"
    if out.logger.name in ("mlflow", "tensorboard"):  # no tracker there: histories come home in prediction files
        out.logger = {"name": "csv", "dir": None}
    if out.train.get("time_budget_h") is None:
        out.train.time_budget_h = time_budget_h
    return out


def config_yaml(cfg: TrainAppConfig) -> str:
    """A primary config for `pipeline.train --config-path DIR --config-name config`: the composed job
    on top of the schema and its recipe options' and logger's schemas (e.g. optimizer/adam_schema, which has
    the `mom` that the base OptimizerConfig lacks), so that it is type-checked there as here."""
    groups = GROUPS | {"logger": LOGGERS}
    schemas = [f"  - {group}: {cfg[group].name}_schema" for group, known in groups.items() if cfg[group].name in known]
    return "\n".join(["defaults:", "  - train_schema", *schemas, "  - _self_", "", OmegaConf.to_yaml(cfg)])


def slug_for(prefix: str, model: str, job_hash: str) -> str:
    """Kaggle notebook slugs: lowercase letters, digits and dashes, at most 50 characters."""
    name = re.sub(r"[^a-z0-9]+", "-", f"{prefix}-{model}".lower()).strip("-")
    return f"{name[: 50 - len(job_hash) - 1]}-{job_hash}"


def write_notebook(
    folder: Path, ref: str, session: int, competition: str, code: CodeDataset, config: str, opts: Any
) -> Path:
    """The folder `kaggle kernels push` takes: kernel-metadata.json and the notebook's code."""
    slug = ref.split("/")[1]
    job = {
        "slug": slug,
        "session": session,
        "resume": session > 1,
        "competition": competition,
        "code_dataset": code.ref.split("/")[1],
        "wheel": code.wheel,
        "internet": bool(opts.internet),
    }
    # The config as a block of YAML, readable in Kaggle's editor; repr() when it holds quotes or escapes.
    literal = f'"""\\\n{config}"""' if '"""' not in config and "\\" not in config else repr(config)
    job_code = f'JOB = {pprint.pformat(job, width=110, sort_dicts=False)}\nJOB["config"] = {literal}\n'
    template = TEMPLATE.read_text()
    assert JOB_LINE in template, f"{TEMPLATE} lost its JOB line"
    folder.mkdir(parents=True, exist_ok=True)
    script = template.replace(JOB_LINE, job_code)
    (folder / CODE_FILE).write_text(script)
    metadata = {
        "id": ref,
        "title": slug,  # Kaggle derives the slug from the title: the same text keeps them the same
        "code_file": CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": bool(opts.accelerator),
        "enable_tpu": False,
        "enable_internet": bool(opts.internet),
        "dataset_sources": [code.ref, *opts.datasets],
        "competition_sources": [competition],
        "kernel_sources": [ref] if session > 1 else [],  # the previous session's output, to resume from
        "model_sources": [],
    }
    if opts.accelerator:
        metadata["machine_shape"] = opts.accelerator
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata, indent=1))
    return folder
