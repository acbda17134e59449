import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from pipeline import predictions
from pipeline.errors import PipelineError
from tests.factories import make_preds


def test_round_trip_with_weights_only(tmp_path):
    original = make_preds()
    path = predictions.save(original, tmp_path / "r1.pt")
    raw = torch.load(path, weights_only=True)  # plain data and tensors only
    assert raw["format"] == predictions.FORMAT and raw["version"] == predictions.VERSION
    loaded = predictions.load(path)
    assert torch.equal(loaded.test_probs, original.test_probs)
    assert loaded.test_ids == original.test_ids and loaded.vocab == original.vocab
    assert loaded.config == original.config and loaded.path == path
    assert loaded.valid_accuracy == 1.0


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would run a shell command
        return (os.system, (f"touch {self.marker}",))


def test_a_file_with_arbitrary_objects_is_refused_without_advice_to_unpickle_it(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"format": predictions.FORMAT, "version": predictions.VERSION, "extra": Payload(marker)}, path)
    with pytest.raises(PipelineError) as e:
        predictions.load(path)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path} holds objects other than tensors")
    assert "(posix.system)" in message and "was not loaded: delete it, or get it from a trusted source" in message
    assert "weights_only" not in message and "will likely succeed" not in message  # torch's advice, not ours
    assert not marker.exists()


def test_a_truncated_file_is_one_clear_error(tmp_path):
    path = predictions.save(make_preds(), tmp_path / "r1.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PipelineError) as e:
        predictions.load(path)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path} is truncated or unreadable")
    assert "delete it or retrain the run (python -m pipeline.train +model=MODEL" in message


def test_a_foreign_file_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(PipelineError, match="is not a prediction file of this pipeline"):
        predictions.load(tmp_path / "model.pt")


def test_inconsistent_shapes_are_refused_before_writing(tmp_path):
    bad = make_preds(test_probs=torch.rand(2, 2))
    with pytest.raises(PipelineError, match=r"test_probs is \(2, 2\), expected \(3, 2\)"):
        predictions.save(bad, tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    predictions.save(make_preds(seed=1), tmp_path / "r1.pt")
    before = (tmp_path / "r1.pt").read_bytes()

    def dies_midway(path, data):  # the file is written from memory, after torch.save
        with open(path, "wb") as fh:
            fh.write(data[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        predictions.save(make_preds(seed=2), tmp_path / "r1.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["r1.pt"]  # no temporary file left behind
    assert (tmp_path / "r1.pt").read_bytes() == before  # the earlier complete file is intact


def _write_unchecked(preds, path):
    """A prediction file as save writes it, without save's checks: what a buggy or older writer leaves."""
    record = {k: v for k, v in asdict(preds).items() if k != "path"}
    torch.save(record | {"format": predictions.FORMAT, "version": predictions.VERSION}, path)
    return path


def _aux(valid_probs):
    """An extra target's record as training writes it (pipeline.training.run), for make_preds' two validation images."""
    return {
        "vocab": ["ADT45", "Ponni", "IR20"],
        "weight": 1.0,
        "valid_probs": valid_probs,
        "valid_targets": torch.tensor([1, 2]),
    }


NOT_PROBABILITIES = [  # (fields replaced, the array named, what is wrong)
    ({"test_probs": torch.full((3, 2), float("nan"))}, "test_probs", "has 6 NaN or infinite values"),
    (
        {"valid_probs_plain": torch.tensor([[0.5, float("inf")], [0.3, 0.7]])},
        "valid_probs_plain",
        "has 1 NaN or infinite value",
    ),
    ({"valid_probs": torch.tensor([[0.5, 0.1], [0.3, 0.7]])}, "valid_probs", "rows do not sum to 1 (one sums to 0.6)"),
    (  # rows that sum to 1 are not enough
        {"test_probs": torch.tensor([[1.5, -0.5], [0.3, 0.7], [0.2, 0.8]])},
        "test_probs",
        "has values outside [0, 1] (from -0.5 to 1.5)",
    ),
    (
        {"aux_targets": {"variety": _aux(torch.tensor([[float("nan"), 0.5, 0.5], [0.2, 0.3, 0.5]]))}},
        "aux target variety's valid_probs",
        "has 1 NaN or infinite values",
    ),
    (
        {"aux_targets": {"variety": _aux(torch.tensor([[-0.25, 0.75, 0.5], [0.2, 0.3, 0.5]]))}},
        "aux target variety's valid_probs",
        "has values outside [0, 1] (from -0.25 to 0.75)",
    ),
]


@pytest.mark.parametrize(("fields", "array", "problem"), NOT_PROBABILITIES, ids=[a for _, a, _ in NOT_PROBABILITIES])
def test_probabilities_that_are_not_finite_or_do_not_sum_to_one_are_not_saved(tmp_path, fields, array, problem):
    path = tmp_path / "r1.pt"
    with pytest.raises(PipelineError) as e:
        predictions.save(make_preds(**{"valid_probs_plain": torch.tensor([[0.9, 0.1], [0.3, 0.7]]), **fields}), path)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and str(path) in message and f"{array} {problem}" in message
    assert "not saved" in message and "retrain the run" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("fields", "array", "problem"), NOT_PROBABILITIES, ids=[a for _, a, _ in NOT_PROBABILITIES])
def test_probabilities_that_are_not_finite_or_do_not_sum_to_one_are_not_loaded(tmp_path, fields, array, problem):
    preds = make_preds(**{"valid_probs_plain": torch.tensor([[0.9, 0.1], [0.3, 0.7]]), **fields})
    path = _write_unchecked(preds, tmp_path / "r1.pt")
    with pytest.raises(PipelineError) as e:
        predictions.load(path)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and str(path) in message and f"{array} {problem}" in message
    assert "delete it or retrain the run" in message


def test_float32_rounding_in_row_sums_is_accepted(tmp_path):
    logits = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)) * 30
    tta_like = torch.lerp(
        torch.stack([logits.softmax(1), logits.roll(1, 0).softmax(1)]).mean(0), logits.softmax(1), 0.25
    )
    off = torch.tensor([[0.9, 0.1 + 5e-4], [0.3, 0.7]])  # within the tolerance of 1e-3
    preds = make_preds(test_ids=[f"{i}.jpg" for i in range(1000)], test_probs=tta_like, valid_probs=off)
    assert predictions.load(predictions.save(preds, tmp_path / "ok.pt")).test_probs.shape == (1000, 2)
