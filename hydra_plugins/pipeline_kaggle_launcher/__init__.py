"""Hydra discovers launchers in the `hydra_plugins` namespace package: this one runs a sweep's jobs as
Kaggle notebooks (hydra/launcher=kaggle). The logic is in pipeline/kaggle/kernels.py."""
