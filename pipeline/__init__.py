"""Config-driven Kaggle image-classification ensembles: train timm models with fastai, blend, submit."""

__version__ = "0.1.0"
