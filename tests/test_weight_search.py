"""Blend arithmetic and weight search on hand-made probability arrays with known answers."""

import functools

import numpy as np
import pytest
from sklearn.metrics import log_loss

from pipeline.ensemble.arithmetic import blend_probs, leave_one_out_accuracy
from pipeline.ensemble.combiners import Unfittable, WeightedMean
from pipeline.ensemble.stacking import fit_stacker
from pipeline.ensemble.weight_search import cross_fitted, greedy_weights, optimize_weights
from tests.conftest import compose

GREEDY = dict(steps=20, init=1, bags=1, bag_fraction=0.5, seed=0)


def noisy_runs(n_runs, n_images, n_classes, skill, seed=0):
    """Softmax probabilities whose true-class logit is raised by `skill[r]` for run r."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, n_classes, n_images)
    logits = rng.normal(size=(n_runs, n_images, n_classes))
    logits[:, np.arange(n_images), targets] += np.asarray(skill, dtype=float)[:, None]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return probs.astype(np.float32), targets


def test_weighted_arithmetic_mean_known_answer():
    stack = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert blend_probs(stack, np.array([3.0, 1.0]), "arithmetic").tolist() == [[0.75, 0.25]]
    assert blend_probs(stack, np.array([1.0, 1.0]), "arithmetic").tolist() == [[0.5, 0.5]]


def test_geometric_mean_known_answer():
    stack = np.array([[[0.5, 0.5]], [[0.9, 0.1]]])
    # sqrt(0.5 * 0.9) : sqrt(0.5 * 0.1) = 3 : 1
    np.testing.assert_allclose(blend_probs(stack, np.ones(2), "geometric"), [[0.75, 0.25]])


def test_geometric_mean_lets_a_confident_run_veto_a_class():
    # run 1 favours class 0, run 2 rules class 0 out: the arithmetic mean still picks class 0,
    # the geometric mean picks the class both find plausible.
    stack = np.array([[[0.8, 0.2, 0.0]], [[0.0, 0.3, 0.7]]])
    arithmetic = blend_probs(stack, np.ones(2), "arithmetic")
    geometric = blend_probs(stack, np.ones(2), "geometric")
    np.testing.assert_allclose(arithmetic, [[0.4, 0.25, 0.35]])
    assert arithmetic.argmax(1).tolist() == [0] and geometric.argmax(1).tolist() == [1]
    np.testing.assert_allclose(geometric.sum(1), [1.0])


def test_both_means_agree_on_identical_runs():
    stack = np.array([[[0.2, 0.3, 0.5]], [[0.2, 0.3, 0.5]]])
    for mean in ("arithmetic", "geometric"):
        np.testing.assert_allclose(blend_probs(stack, np.array([1.0, 4.0]), mean), [[0.2, 0.3, 0.5]])


@pytest.mark.parametrize("mean", ["arithmetic", "geometric"])
def test_greedy_picks_the_better_of_two_runs(mean):
    # run 0 is a coin toss, run 1 knows the answer: adding run 0 can only hurt
    targets = np.array([0, 1, 0, 1])
    good = np.eye(2)[targets] * 0.8 + 0.1
    stack = np.stack([np.full((4, 2), 0.5), good])
    np.testing.assert_allclose(greedy_weights(stack, targets, mean, **GREEDY), [0.0, 1.0])


def test_greedy_mixes_runs_right_on_different_images():
    # each run is confidently right on half the images and unsure on the other half
    targets = np.array([0, 0, 1, 1])
    a = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    b = np.array([[0.4, 0.6], [0.4, 0.6], [0.1, 0.9], [0.1, 0.9]])
    weights = greedy_weights(np.stack([a, b]), targets, "arithmetic", **GREEDY)
    np.testing.assert_allclose(weights, [0.5, 0.5])


def test_greedy_with_bagging_and_sorted_initialisation():
    stack, targets = noisy_runs(6, 300, 5, skill=[0.0, 0.0, 0.5, 1.0, 2.0, 3.0])
    weights = greedy_weights(stack, targets, "arithmetic", steps=10, init=3, bags=8, bag_fraction=0.5, seed=1)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    assert weights.argmax() == 5 and weights[:2].sum() < weights[4:].sum()


@pytest.mark.parametrize("mean", ["arithmetic", "geometric"])
def test_optimized_weights_are_non_negative_sum_to_one_and_beat_equal(mean):
    stack, targets = noisy_runs(5, 400, 10, skill=[0.0, 0.5, 1.0, 2.0, 3.0])
    weights = optimize_weights(stack, targets, mean)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    assert weights[0] == 0.0  # the useless run is dropped, exactly

    def loss(w):
        return log_loss(targets, blend_probs(stack, w, mean), labels=range(10))

    assert loss(weights) < loss(np.ones(5)) and loss(weights) <= loss(np.eye(5)[4]) + 1e-9


def test_optimizer_finds_the_symmetric_optimum():
    targets = np.array([0, 0, 1, 1])
    a = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    b = a[::-1, ::-1]  # the mirror image: by symmetry the best blend weighs both alike
    np.testing.assert_allclose(optimize_weights(np.stack([a, b]), targets, "arithmetic"), [0.5, 0.5], atol=1e-4)


def test_a_search_scored_on_its_own_images_flatters_itself():
    # 30 runs of pure noise: the in-sample optimum looks better than chance, the nested estimate does not
    stack, targets = noisy_runs(30, 200, 4, skill=np.zeros(30))

    def fit(s, t):
        return WeightedMean(optimize_weights(s, t, "arithmetic"), "arithmetic")

    in_sample = log_loss(targets, fit(stack, targets).probs(stack))
    nested = log_loss(targets, cross_fitted(fit, stack, targets, seed=0))
    assert in_sample < nested


def test_cross_fitted_with_fixed_weights_is_the_plain_blend():
    stack, targets = noisy_runs(3, 51, 4, skill=[1, 2, 3])
    weights = np.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(
        cross_fitted(lambda s, t: WeightedMean(weights, "geometric"), stack, targets, seed=3),
        blend_probs(stack, weights, "geometric"),
    )


def test_leave_one_out_accuracy_known_answer():
    # a confident right vote outweighs an unsure wrong one; run 2 is never right
    targets = np.array([0, 0, 0])
    right, wrong = [0.9, 0.1], [0.4, 0.6]
    stack = np.array([[right, right, wrong], [right, wrong, right], [wrong, wrong, wrong]])
    assert (blend_probs(stack, np.ones(3), "arithmetic").argmax(1) == targets).all()
    # without run 0 image 1 is lost, without run 1 image 2; without run 2 nothing is
    np.testing.assert_allclose(leave_one_out_accuracy(stack, np.ones(3), targets, "arithmetic"), [2 / 3, 2 / 3, 1.0])
    assert np.isnan(leave_one_out_accuracy(stack[:1], np.ones(1), targets, "arithmetic")).all()


def test_search_scales_to_many_runs_and_images():
    stack, targets = noisy_runs(300, 2000, 10, skill=np.linspace(0, 2, 300))
    # 300 runs x 2000 images x 10 classes in one (vectorised) pass each; speed is the benchmark's business
    greedy = greedy_weights(stack, targets, "arithmetic", **GREEDY)
    optimized = optimize_weights(stack, targets, "arithmetic")
    leave_one_out_accuracy(stack, optimized, targets, "arithmetic")
    assert greedy.sum() == pytest.approx(1.0) and optimized.sum() == pytest.approx(1.0)


def test_best_puts_all_weight_on_the_run_with_the_lowest_log_loss():
    from pipeline.ensemble.weightings import WEIGHTINGS

    stack, targets = noisy_runs(3, 400, 5, skill=[0.5, 3.0, 1.5])
    best, blend = WEIGHTINGS["best"].build, compose("blend").blend
    assert best.searched and best.fit(stack, targets, [None] * 3, blend).weights.tolist() == [0.0, 1.0, 0.0]
    # refitted on each half for the nested estimate, it still finds the clearly better run
    nested = cross_fitted(lambda s, t: best.fit(s, t, [None] * 3, blend), stack, targets, seed=0)
    np.testing.assert_allclose(nested, stack[1], rtol=1e-6)


def specialists(n_images, seed=0):
    """Two runs over 4 classes, each right on two of them and on the other two sure of the next class:
    run 0 knows classes 0 and 1 and calls 2 "3" and 3 "0"; run 1 knows 2 and 3 and calls 0 "1" and 1 "2".
    Together they name every class (the pair of their answers is unique to it), but a weighted mean of
    the two sees, on every image, one run for the truth and one run for the class after it."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 4, n_images)
    says = np.array([[0, 1, 3, 0], [1, 2, 2, 3]])  # [run, true class] -> the class it is sure of
    logits = rng.normal(scale=0.5, size=(2, n_images, 4))
    for r in range(2):
        logits[r, np.arange(n_images), says[r, targets]] += rng.uniform(1.5, 3.0, n_images)
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), targets


def test_stack_learns_what_no_weighted_mean_can():
    stack, targets = specialists(400)
    fit = functools.partial(fit_stacker, folds=5, grid=[0.01, 0.1, 1.0, 10.0], seed=0)
    nested = cross_fitted(fit, stack, targets, seed=0)  # scored only on images it was not fitted on
    stacked_acc, stacked_loss = (nested.argmax(1) == targets).mean(), log_loss(targets, nested)
    best_acc, best_loss = 0.0, np.inf
    for w in np.linspace(0, 1, 101):  # every weighted mean of the two, in-sample: as flattering as it gets
        for mean in ("arithmetic", "geometric"):
            probs = blend_probs(stack, np.array([w, 1 - w]), mean)
            best_acc = max(best_acc, (probs.argmax(1) == targets).mean())
            best_loss = min(best_loss, log_loss(targets, probs, labels=range(4)))
    assert stacked_acc > 0.95 and best_acc < 0.8
    assert stacked_loss < best_loss / 3
    assert fit(stack, targets).weights is None and "C=" in fit(stack, targets).describe()


def test_stack_needs_as_many_images_of_every_class_as_inner_folds():
    stack, targets = specialists(40)
    targets[targets == 3] = 2
    targets[:3] = 3  # class 3: three images, fewer than five inner folds
    with pytest.raises(Unfittable) as e:
        fit_stacker(stack, targets, folds=5, grid=[1.0], seed=0)
    assert str(e.value) == (
        "1 of 4 classes have fewer than blend.stack.folds=5 of the 40 images it is fitted on (the rarest: 3)"
    )
    assert fit_stacker(stack, targets, folds=3, grid=[1.0], seed=0).probs(stack).shape == (40, 4)
