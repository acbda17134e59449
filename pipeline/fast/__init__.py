"""Fast paths that give fastai's results sooner: the decoded-image cache, fused augmentation, one-load TTA,
and the benchmark that measures them against the plain recipe."""
