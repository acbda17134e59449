"""Training runs: resolving a model file into runs, pretrained weights, the Learner, checkpoints,
provenance, the runner that trains a model's runs, and the memory probe."""
