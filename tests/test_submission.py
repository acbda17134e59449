import pandas as pd
import pytest

from pipeline.data.submission_csv import accuracy_against, validate_submission, write_submission
from pipeline.errors import PipelineError

VOCAB = ["blast", "normal"]


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample_submission.csv"
    pd.DataFrame({"image_id": ["200002.jpg", "200001.jpg", "200003.jpg"], "label": ""}).to_csv(path, index=False)
    return path


def write(tmp_path, ids, labels, name="sub.csv"):
    return write_submission(tmp_path / name, ids, labels)


def test_valid_submission(tmp_path, sample):
    sub = write(tmp_path, ["200002.jpg", "200001.jpg", "200003.jpg"], ["blast", "normal", "blast"])
    assert list(validate_submission(sub, sample, VOCAB).label) == ["blast", "normal", "blast"]
    assert sub.read_text().splitlines()[0] == "image_id,label"


def test_rows_in_another_order(tmp_path, sample):
    sub = write(tmp_path, ["200001.jpg", "200002.jpg", "200003.jpg"], ["blast"] * 3)
    with pytest.raises(PipelineError, match="rows are not in the order of"):
        validate_submission(sub, sample, VOCAB)
    assert len(validate_submission(sub, sample, VOCAB, same_order=False)) == 3


def test_missing_and_unknown_rows(tmp_path, sample):
    sub = write(tmp_path, ["200002.jpg", "200001.jpg", "209999.jpg"], ["blast"] * 3)
    with pytest.raises(PipelineError, match=r"1 image ids missing \(e.g. \['200003.jpg'\]\), 1 unknown"):
        validate_submission(sub, sample, VOCAB)


def test_label_outside_vocab(tmp_path, sample):
    sub = write(tmp_path, ["200002.jpg", "200001.jpg", "200003.jpg"], ["blast", "hispa", "blast"])
    with pytest.raises(PipelineError, match="1 label\\(s\\) outside the vocab, e.g. 'hispa'"):
        validate_submission(sub, sample, VOCAB)


def test_wrong_columns(tmp_path, sample):
    path = tmp_path / "sub.csv"
    pd.DataFrame({"id": ["200001.jpg"], "label": ["blast"]}).to_csv(path, index=False)
    with pytest.raises(PipelineError, match="has columns"):
        validate_submission(path, sample, VOCAB)


def test_repeated_ids(tmp_path, sample):
    sub = write(tmp_path, ["200002.jpg", "200002.jpg", "200003.jpg"], ["blast"] * 3)
    with pytest.raises(PipelineError, match="repeats image_id 200002.jpg"):
        validate_submission(sub, sample, VOCAB)


def test_accuracy_against_true_labels(tmp_path, sample):
    truth = write(tmp_path, ["200001.jpg", "200002.jpg", "200003.jpg"], ["normal", "blast", "normal"], "truth.csv")
    sub = validate_submission(
        write(tmp_path, ["200002.jpg", "200001.jpg", "200003.jpg"], ["blast", "normal", "blast"]), sample, VOCAB
    )
    assert accuracy_against(sub, truth) == pytest.approx(2 / 3)
