"""Blend arithmetic on stacked probabilities, vectorised over runs and images.

A stack is (runs, images, classes). Weights are one per run, non-negative, and need not sum to 1.
Arithmetic mean: sum_m w_m p_m. Geometric mean: exp(sum_m w_m log p_m), renormalised over classes;
it punishes a class any confident run rules out, where the arithmetic mean lets the others outvote it.
"""

from __future__ import annotations

import numpy as np

# Probabilities are clipped here before a log, as scikit-learn's log_loss clips them.
EPS = float(np.finfo(np.float64).eps)
# Bound the (chunk, images, classes) temporaries when every run is tried at once (greedy, leave-one-out).
CHUNK_ELEMENTS = 2**24


def log_probs(stack: np.ndarray) -> np.ndarray:
    return np.log(np.clip(stack, EPS, 1.0))


def _normalised(weights: np.ndarray, dtype: np.dtype) -> np.ndarray:
    total = weights.sum()
    if total <= 0:
        raise ValueError(f"blend weights must have a positive sum, got {weights.tolist()}")
    # the stack's dtype: a float64 weight vector would make numpy copy a float32 stack to float64
    return (weights / total).astype(dtype)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis, stable."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def as_probs(probs: np.ndarray) -> np.ndarray:
    """float64 rows summing to 1 to float64 precision (float32 files sum to 1 only within 1e-7,
    which scikit-learn's log_loss warns about)."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum(-1, keepdims=True)


def blend_probs(stack: np.ndarray, weights: np.ndarray, mean: str) -> np.ndarray:
    """(runs, images, classes) -> (images, classes): the weighted blend, float64 rows summing to 1."""
    w = _normalised(weights, stack.dtype)
    if mean == "geometric":
        return as_probs(softmax(np.tensordot(w, log_probs(stack), axes=1)))
    return as_probs(np.tensordot(w, stack, axes=1))


def chunks(n_runs: int, per_run: int) -> list[slice]:
    """Slices over runs whose temporaries (`per_run` elements a run) stay under CHUNK_ELEMENTS."""
    size = max(1, CHUNK_ELEMENTS // max(1, per_run))
    return [slice(i, min(i + size, n_runs)) for i in range(0, n_runs, size)]


def leave_one_out_accuracy(stack: np.ndarray, weights: np.ndarray, targets: np.ndarray, mean: str) -> np.ndarray:
    """(runs,) accuracy of the blend without each run (the others keep their weights); NaN where
    nothing would be left. Only argmax matters, so neither mean needs renormalising."""
    w = weights.astype(stack.dtype)
    terms = log_probs(stack) if mean == "geometric" else stack
    total = np.tensordot(w, terms, axes=1)
    out = np.empty(len(stack))
    for s in chunks(len(stack), stack[0].size):
        without = total[None] - w[s, None, None] * terms[s]
        out[s] = (without.argmax(-1) == targets[None]).mean(1)
    out[(weights.sum() - weights) <= 0] = np.nan
    return out
