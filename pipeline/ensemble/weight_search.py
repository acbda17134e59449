"""Blend weights searched on validation predictions, and an honest (nested) estimate of the result.

Both searches minimise the validation log loss of the blend: smooth, and less prone than accuracy
to chasing a handful of images. `stack` is (runs, images, classes), `targets` (images,) class indices.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.ensemble.arithmetic import EPS, chunks, log_probs, softmax
from pipeline.ensemble.combiners import Combiner
from pipeline.errors import PipelineError

CombinerFit = Callable[[np.ndarray, np.ndarray], Combiner]  # (stack, targets) -> a fitted combiner


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(-1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(-1, keepdims=True)))[..., 0]


def _mean_loss(summed: np.ndarray, k: int, targets: np.ndarray, mean: str) -> np.ndarray:
    """Log loss of ensembles given as the sum of k members' terms: (..., images) true-class
    probabilities (arithmetic) or (..., images, classes) log probabilities (geometric)."""
    if mean == "geometric":
        z = summed / k
        return (_logsumexp(z) - z[..., np.arange(len(targets)), targets]).mean(-1)
    # a mean of probability rows sums to 1: the true class's probability is all log loss needs
    return -np.log(np.clip(summed / k, EPS, 1.0)).mean(-1)


def _terms(stack: np.ndarray, targets: np.ndarray, mean: str) -> np.ndarray:
    return log_probs(stack) if mean == "geometric" else stack[:, np.arange(len(targets)), targets]


def _select(terms: np.ndarray, targets: np.ndarray, mean: str, steps: int, init: int) -> np.ndarray:
    """Caruana et al. (2004) ensemble selection on one bag: start from the `init` best runs (sorted
    initialisation), then `steps` times add, with replacement, the run that lowers the loss most;
    keep the ensemble of the best step. Returns how many times each run was picked."""
    n = len(terms)

    def with_each(total: np.ndarray, k: int) -> np.ndarray:
        out = np.empty(n)
        for s in chunks(n, terms[0].size):
            out[s] = _mean_loss(total + terms[s], k + 1, targets, mean)
        return out

    counts = np.zeros(n, dtype=np.int64)
    counts[np.argsort(with_each(np.zeros(terms.shape[1:], terms.dtype), 0), kind="stable")[:init]] = 1
    total, k = np.tensordot(counts.astype(terms.dtype), terms, axes=1), int(counts.sum())
    best_loss, best = float(_mean_loss(total, k, targets, mean)), counts.copy()
    for _ in range(steps):
        losses = with_each(total, k)
        pick = int(np.argmin(losses))
        counts[pick] += 1
        total += terms[pick]
        k += 1
        if losses[pick] < best_loss:
            best_loss, best = float(losses[pick]), counts.copy()
    return best


def greedy_weights(
    stack: np.ndarray,
    targets: np.ndarray,
    mean: str,
    *,
    steps: int,
    init: int,
    bags: int,
    bag_fraction: float,
    seed: int,
) -> np.ndarray:
    """Ensemble selection with replacement; with bags > 1, run on `bags` random subsets of
    `bag_fraction` of the runs and average their weights (Caruana's bagged selection). The options'
    ranges (blend.greedy.*) are checked at start-up by pipeline.config.check_ranges."""
    n = len(stack)
    terms = _terms(stack, targets, mean)
    if bags == 1:
        counts = _select(terms, targets, mean, steps, min(init, n))
        return counts / counts.sum()
    rng = np.random.default_rng(seed)
    size = max(1, round(bag_fraction * n))
    weights = np.zeros(n)
    for _ in range(bags):
        bag = np.sort(rng.choice(n, size=size, replace=False))
        counts = _select(terms[bag], targets, mean, steps, min(init, size))
        weights[bag] += counts / counts.sum()
    return weights / bags


def optimize_weights(stack: np.ndarray, targets: np.ndarray, mean: str) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the blend's log loss (scipy L-BFGS-B).

    The loss is taken at v / sum(v) with v >= 0: the simplex without an equality constraint, so the
    search scales to thousands of runs and a useless run can get exactly 0."""
    from scipy.optimize import minimize

    n_runs, n_images = len(stack), len(targets)
    rows = np.arange(n_images)
    if mean == "geometric":
        logp = log_probs(stack)
        true = logp[:, rows, targets].sum(1)

        def loss_and_grad_u(u: np.ndarray) -> tuple[float, np.ndarray]:
            z = np.tensordot(u.astype(logp.dtype), logp, axes=1).astype(np.float64)
            loss = float((_logsumexp(z) - z[rows, targets]).mean())
            soft = softmax(z).astype(logp.dtype)
            return loss, (np.einsum("rnc,nc->r", logp, soft).astype(np.float64) - true) / n_images

    else:
        q = stack[:, rows, targets].astype(np.float64)  # (runs, images) true-class probabilities

        def loss_and_grad_u(u: np.ndarray) -> tuple[float, np.ndarray]:
            p = np.clip(u @ q, EPS, None)
            return float(-np.log(p).mean()), -(q / p).mean(1)

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        total = v.sum()
        u = v / total
        loss, g = loss_and_grad_u(u)
        return loss, (g - g @ u) / total  # chain rule through u = v / sum(v)

    result = minimize(objective, np.full(n_runs, 1 / n_runs), jac=True, method="L-BFGS-B", bounds=[(0, None)] * n_runs)
    return result.x / result.x.sum()


def cross_fitted(fit: CombinerFit, stack: np.ndarray, targets: np.ndarray, seed: int) -> np.ndarray:
    """The blend's probabilities for every validation image, each from a combiner (weights, or stack's
    model) fitted on the other half of the images (halves drawn with `seed`, then swapped): scoring these
    is a nested estimate, free of the flattery of scoring a fit on the images it was fitted on."""
    n = len(targets)
    if n < 2:
        raise PipelineError(f"{n} validation image(s) cannot be halved for a nested estimate")
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2 :])
    out = np.empty((n, stack.shape[2]))
    for fit_on, score_on in (halves, halves[::-1]):
        out[score_on] = fit(stack[:, fit_on], targets[fit_on]).probs(stack[:, score_on])
    return out
