import os

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
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_file_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": predictions.FORMAT, "version": 1, "extra": Payload()}, path)
    with pytest.raises(PipelineError, match="holds objects other than tensors and plain data; refusing"):
        predictions.load(path)


def test_a_truncated_file_is_one_clear_error(tmp_path):
    path = predictions.save(make_preds(), tmp_path / "r1.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(PipelineError, match="is not a readable prediction file"):
        predictions.load(path)


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

    def dies_midway(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        predictions.save(make_preds(seed=2), tmp_path / "r1.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["r1.pt"]  # no temporary file left behind
    assert (tmp_path / "r1.pt").read_bytes() == before  # the earlier complete file is intact


def test_a_finished_run_is_recognised_wherever_its_data_lives_but_only_on_the_same_data(tmp_path):
    from omegaconf import OmegaConf

    from pipeline.data.competition import Competition
    from pipeline.training.provenance import run_hash
    from pipeline.training.runner import finished
    from tests.factories import make_run

    run, tta = make_run(), OmegaConf.create({"n": 4, "beta": 0.25})
    data = OmegaConf.create({"name": "paddy", "root": "/home/me/paddy", "seed": 42, "num_workers": 2})
    identity = run_hash(run, data, tta)
    # a Kaggle notebook reads the same competition from /kaggle/input: same run
    assert run_hash(run, OmegaConf.merge(data, {"root": "/kaggle/input/paddy", "num_workers": 0}), tta) == identity
    assert run_hash(run, OmegaConf.merge(data, {"seed": 1}), tta) != identity

    path = predictions.save(make_preds(run_hash=identity), tmp_path / "r1.pt")
    same = Competition(tmp_path, ["cat", "dog"], [], [tmp_path / n for n in ("c.jpg", "a.jpg", "b.jpg")])
    assert finished(path, identity, same) is not None
    other_test_images = Competition(tmp_path, ["cat", "dog"], [], [tmp_path / "z.jpg"])
    other_labels = Competition(tmp_path, ["cat", "cow"], [], same.test_files)
    assert finished(path, identity, other_test_images) is None and finished(path, identity, other_labels) is None
    assert finished(path, "another-hash", same) is None
