"""Many runs side by side: Hydra launchers for a multirun (`-m`), and the sweep's report.

The jobs stay `pipeline.train` jobs; the engines schedule them: Ray gives each job its own GPU and
queues the rest (`hydra/launcher=gpus`, `ray_pool`), SLURM runs one job per run through submitit
(`hydra/launcher=slurm`, `slurm`). Every job leaves a small record in its folder, from which `report`
tells what ran where, whichever launcher ran it.
"""
