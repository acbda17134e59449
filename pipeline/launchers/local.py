"""hydra/launcher=local: Hydra's basic launcher (the jobs one after the other in this process), which
first refuses a sweep whose jobs would overwrite each other's prediction files (`base.SweepLauncher`)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn

from pipeline.launchers.base import SweepLauncher


class Local(SweepLauncher, BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        self.refuse_clashing_runs(job_overrides, initial_job_idx)
        return BasicLauncher.launch(self, job_overrides, initial_job_idx)
