"""The launcher classes that conf/hydra/launcher/ names. Hydra instantiates plugins only from the
hydra_plugins namespace and imports every module here at start-up, so this module stays light: the
code is in pipeline.launchers, and Ray and submitit are imported only when a launcher launches."""

from pipeline.launchers import kaggle_launcher, local, ray_pool, slurm


class Local(local.Local):
    """hydra/launcher=local"""


class GpuPool(ray_pool.GpuPool):
    """hydra/launcher=gpus"""


class Slurm(slurm.Slurm):
    """hydra/launcher=slurm"""


class KaggleLauncher(kaggle_launcher.KaggleLauncher):
    """hydra/launcher=kaggle"""
