"""What every launcher of this project shares with Hydra's: the context Hydra gives it before a sweep,
each job's config composed the way Hydra's own launchers compose it, and the check that no two jobs of a
sweep overwrite each other's prediction files."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict


class SweepLauncher(Launcher):
    config: DictConfig | None = None
    hydra_context: HydraContext | None = None
    task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def job_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        """Job `idx`'s config: the sweep's config with its overrides, numbered as Hydra numbers jobs."""
        assert self.config is not None and self.hydra_context is not None, "setup() comes first"
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = f"job_id_for_{idx}"
            cfg.hydra.job.num = idx
        return cfg

    def refuse_clashing_runs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
        """Before any job starts: two jobs of the sweep that would write the same prediction file with
        different run hashes (an option swept that is not part of the run name, e.g. data.seed) are refused
        in one line naming the option, since the second would overwrite the first's finished file."""
        from hydra.core.utils import setup_globals

        setup_globals()  # the resolvers a sweep folder's name uses (${now:...})
        configs = [self.job_config(idx, o) for idx, o in enumerate(job_overrides, start=initial_job_idx)]
        if error := clashing_runs([(cfg, filter_overrides(o)) for cfg, o in zip(configs, job_overrides, strict=True)]):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)


def clashing_runs(jobs: list[tuple[DictConfig, list[str]]]) -> str | None:
    """What is wrong when two of these jobs (config, overrides) would train a run of the same name into
    the same file with different run hashes; None when no two do. A job whose config fails is left to fail
    on its own. The data folder stands in for the data's fingerprint, which only the job computes."""
    from pipeline.errors import PipelineError
    from pipeline.training.provenance import run_hash
    from pipeline.training.specs import resolve_runs

    seen: dict[Path, tuple[str, int, list[str]]] = {}
    for num, (cfg, overrides) in enumerate(jobs):
        if "train" not in cfg or "model" not in cfg:
            return None  # not a training sweep
        try:
            runs = resolve_runs(cfg)
        except PipelineError:
            continue
        for run in runs:
            path = (Path(str(cfg.paths.preds)) / f"{run.name}.pt").resolve()
            identity = run_hash(run, cfg.data, cfg.tta, str(Path(str(cfg.data.root)).resolve()))
            first = seen.setdefault(path, (identity, num, overrides))
            if first[0] != identity:
                return _clash_message(path, first[1], first[2], num, overrides)
    return None


def _clash_message(path: Path, a: int, a_overrides: list[str], b: int, b_overrides: list[str]) -> str:
    only_a = [o for o in a_overrides if o not in b_overrides]
    only_b = [o for o in b_overrides if o not in a_overrides]
    options = sorted({o.split("=", 1)[0].lstrip("+~") for o in only_a + only_b}) or ["an option"]
    example = f"{only_b[0]} paths.preds={path.parent}-{only_b[0].lstrip('+~').replace('=', '')}" if only_b else ""
    return (
        f"jobs {a} ({' '.join(only_a)}) and {b} ({' '.join(only_b)}) would both write {path} with different "
        f"run hashes: {', '.join(options)} is not part of a run's name; run one command per value, each with "
        f"its own paths.preds" + (f" (e.g. {example})" if example else "")
    )
