"""Training runs: resolving a model file into runs, pretrained weights, the Learner, checkpoints,
provenance, the job that schedules a model's runs, the run itself, a run's events, and the memory probe."""
