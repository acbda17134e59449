"""Another competition's shape as config, not code: real Paddy photos laid out as train/<label>/*.jpg, test/*.jpg
and submission_format.csv (id,disease), described by data.* overrides of the paddy data config, trained and
blended for real; and layout names that would leave data.root refused in one line."""

import shutil
import sys

import pandas as pd
import pytest

from pipeline import predictions
from pipeline.data.competition import scan_competition
from pipeline.data.layout import Layout
from pipeline.data.train_csv import read_aux_targets
from pipeline.ensemble.writing import blend
from pipeline.errors import PipelineError
from pipeline.kaggle.uploads import label_vocab
from pipeline.training.jobs import train_model
from pipeline.training.recipe import recipe_from_config
from tests import warm_python
from tests.conftest import PADDY_SAMPLE, REPO, compose, tiny_run_overrides

OTHER = [
    "data.train_dir=train",
    "data.test_dir=test",
    "data.sample_submission=submission_format.csv",
    "data.train_csv=metadata.csv",
    "data.id_column=id",
    "data.label_column=disease",
]


@pytest.fixture(scope="module")
def other_root(tmp_path_factory):
    """The 30 real Paddy photos in the other shape, 8 of them again as the test set under new ids, with the
    sample in shuffled order, a metadata CSV keyed by `id`, and the test images' true labels."""
    if not PADDY_SAMPLE.is_dir():
        pytest.skip(f"{PADDY_SAMPLE} is not there")
    root = tmp_path_factory.mktemp("other")
    photos = sorted((PADDY_SAMPLE / "train_images").glob("*/*.jpg"))
    for f in photos:
        (root / "train" / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / "train" / f.parent.name / f.name)
    (root / "test").mkdir()
    truth = pd.DataFrame({"id": [f"t{n:03}.jpg" for n in range(8)], "disease": [f.parent.name for f in photos[::4]]})
    for name, f in zip(truth.id, photos[::4], strict=True):
        shutil.copy(f, root / "test" / name)
    truth = truth.sample(frac=1, random_state=0)
    truth.assign(disease="").to_csv(root / "submission_format.csv", index=False)
    truth.to_csv(root / "truth.csv", index=False)
    metadata = {"id": [f.name for f in photos], "disease": [f.parent.name for f in photos]}
    pd.DataFrame(metadata | {"site": ["north", "south"] * 15}).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def layout():
    return Layout.from_config(compose("config", OTHER).data)


def test_scan_reads_the_configured_folders_and_columns(other_root, layout, tmp_path):
    comp = scan_competition(other_root, layout)
    assert len(comp.train_files) == 30 and len(comp.vocab) == 10
    assert comp.train_dir == other_root / "train" and comp.sample_path == other_root / "submission_format.csv"
    assert comp.test_ids == list(pd.read_csv(comp.sample_path).id)  # the sample's shuffled order
    (site,) = read_aux_targets(comp, {"site": 1.0})  # metadata.csv, keyed by id
    assert site.vocab == ["north", "south"]
    # errors name the configured folders
    with pytest.raises(PipelineError, match=r"train is missing: data.root must hold train/<label>/ and test/"):
        scan_competition(tmp_path, layout)
    with pytest.raises(PipelineError, match=r"train_images is missing: data.root must hold train_images/<label>/"):
        scan_competition(other_root)  # Paddy's layout, by default


@pytest.mark.parametrize("column", ["disease", "id"])
def test_the_label_and_id_columns_are_not_extra_targets(column):
    with pytest.raises(PipelineError, match="data.aux_targets lists 'disease' or 'id': the label folders are the main"):
        recipe_from_config(compose("config", [*OTHER, f"data.aux_targets=[{column}]"]))


@pytest.mark.slow
def test_train_and_blend_another_competition(other_root, layout, weights_dir, tmp_path):
    preds = tmp_path / "preds"
    (result,) = train_model(compose("config", [*tiny_run_overrides(other_root, weights_dir, preds), *OTHER]))
    assert result.status == "trained"
    run = predictions.load(result.path)
    sample = pd.read_csv(other_root / "submission_format.csv", dtype=str)
    assert run.test_ids == list(sample.id)
    assert all((other_root / "train" / i).is_file() for i in run.valid_ids)  # relative to data.train_dir

    output = tmp_path / "submission.csv"
    overrides = [f"data.root={other_root}", f"paths.preds={preds}", f"blend.output={output}"]
    blended = blend(compose("blend", [*overrides, *OTHER, f"data.test_labels={other_root / 'truth.csv'}"]))
    sub = pd.read_csv(output, dtype=str)
    assert list(sub.columns) == ["id", "disease"] and list(sub.id) == list(sample.id)
    assert set(sub.disease) <= set(run.vocab)
    assert 0 <= blended.chosen.test_acc <= 1  # scored against truth.csv's id,disease rows
    assert label_vocab(other_root / layout.train_dir, None, output) == run.vocab  # what pipeline.submit checks


@pytest.mark.parametrize(
    ("override", "value"),
    [
        ("data.train_dir", "/data/train"),
        ("data.test_dir", "../test"),
        ("data.sample_submission", "sub/../../submission.csv"),
        ("data.train_csv", "C:/metadata.csv"),
        ("data.test_dir", "."),
    ],
)
def test_a_layout_name_outside_data_root_is_refused(override, value):
    with pytest.raises(PipelineError, match=rf"^{override} must be a relative path inside data.root"):
        Layout.from_config(compose("config", [f"{override}={value}"]).data)


def test_the_cli_refuses_an_absolute_folder_in_one_line(tmp_path):
    out = warm_python.run(
        [sys.executable, "-m", "pipeline.blend", "data.train_dir=/data/train", f"paths.outputs={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: data.train_dir must be a relative path inside data.root (no '..', not absolute), got '/data/train'"
    ]
