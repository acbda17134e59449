"""Many runs side by side: Hydra launchers for a multirun (`-m`), and the sweep's report.

The jobs stay `pipeline.train` jobs; the engines schedule them: Ray gives each job its own GPU and
queues the rest (`hydra/launcher=gpus`, `ray_pool`), SLURM runs one job per run through submitit
(`hydra/launcher=slurm`, `slurm`), Kaggle runs each in a notebook (`hydra/launcher=kaggle`,
`kaggle_launcher`). Every job leaves a small record in its folder, from which `report` tells what ran
where, whichever launcher ran it.

LAUNCHERS is the registry of hydra/launcher's options: each name, the class Hydra instantiates
(`_target_` in conf/hydra/launcher/<name>.yaml; ours are named in hydra_plugins/paddy_pipeline, where
Hydra finds plugins), its schema where the options are ours, and a line of description.
"""

from pipeline.config import KaggleLauncherConfig
from pipeline.registry import Registry

LAUNCHERS: Registry[str] = Registry("launcher", where="conf/hydra/launcher/", group="hydra/launcher")
LAUNCHERS.add(
    "local",
    "hydra_plugins.paddy_pipeline.launchers.Local",
    "the jobs one after the other in this process (Hydra's basic launcher; the default)",
)
LAUNCHERS.add(
    "gpus",
    "hydra_plugins.paddy_pipeline.launchers.GpuPool",
    "the jobs side by side on Ray, a GPU each, the rest queued: a workstation or a Ray cluster",
)
LAUNCHERS.add(
    "slurm",
    "hydra_plugins.paddy_pipeline.launchers.Slurm",
    "a SLURM job per job through submitit, requeued at time-out or preemption",
)
LAUNCHERS.add(
    "kaggle",
    "hydra_plugins.paddy_pipeline.launchers.KaggleLauncher",
    "a Kaggle notebook per job on Kaggle's GPUs, its prediction files brought home",
    KaggleLauncherConfig,
)
