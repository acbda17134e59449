"""What every launcher of this project shares with Hydra's: the context Hydra gives it before a sweep,
and each job's config composed the way Hydra's own launchers compose it."""

from __future__ import annotations

from collections.abc import Sequence

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
