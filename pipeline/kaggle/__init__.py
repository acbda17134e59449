"""Kaggle round trip through the official client: credentials and retries, competition download,
submission upload with scoring, and the local ledger of submissions."""
