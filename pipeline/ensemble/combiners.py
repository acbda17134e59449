"""What a weighting fits: a combiner, which turns the members' probabilities into the blend's.

A stack is (members, images, classes). A weighted mean (config, equal, greedy, optimize, best) is one
kind of combiner, its weights shown in the report; a learned combiner (stack: pipeline.ensemble.stacking)
is another, with no weights to show. The nested estimate (weight_search.cross_fitted), the CSV, the
blend's probabilities file and the report all go through `probs`, so they treat every kind alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.ensemble.arithmetic import blend_probs
from pipeline.errors import PipelineError


class Combiner(Protocol):
    # per member, summing to 1, for a weighted mean; None for a learned combiner (no weights to show)
    weights: np.ndarray | None

    def probs(self, stack: np.ndarray) -> np.ndarray:
        """(members, images, classes) -> (images, classes), float64 rows summing to 1."""
        ...

    def describe(self) -> str:
        """A few words for the report: what was fitted."""
        ...


@dataclass(frozen=True)
class WeightedMean:
    weights: np.ndarray  # (members,), summing to 1
    mean: str  # arithmetic | geometric (blend.mean)

    def probs(self, stack: np.ndarray) -> np.ndarray:
        return blend_probs(stack, self.weights, self.mean)

    def describe(self) -> str:
        return f"weighted {self.mean} mean"


class Unfittable(PipelineError):
    """A weighting that cannot be fitted on these validation images (too few per class): one line saying why.
    Computed for comparison, the weighting is left out with a note; chosen, the blend stops with the line."""
