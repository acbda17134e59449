"""Kaggle round trip through the official client: credentials and retries, competition download,
submission upload with scoring, the local ledger of submissions, and training in Kaggle notebooks
(hydra/launcher=kaggle: kernels, code_dataset, notebooks, notebook_script, notebook_ledger)."""
