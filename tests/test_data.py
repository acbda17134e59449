import json
import logging
import shutil
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.competition import scan_competition
from pipeline.errors import PipelineError
from tests.conftest import same_size_swap

PADDY_LABELS = [
    "bacterial_leaf_blight",
    "bacterial_leaf_streak",
    "bacterial_panicle_blight",
    "blast",
    "brown_spot",
    "dead_heart",
    "downy_mildew",
    "hispa",
    "normal",
    "tungro",
]


@pytest.fixture
def paddy_copy(paddy_root, tmp_path):
    """A throwaway copy of the paddy competition folder, for tests that damage it."""
    return shutil.copytree(paddy_root, tmp_path / "paddy")


def test_scan_real_paddy_photos(paddy_root):
    comp = scan_competition(paddy_root)
    assert comp.vocab == PADDY_LABELS
    assert len(comp.train_files) == 30 and not comp.skipped
    sample = pd.read_csv(paddy_root / "sample_submission.csv")
    assert comp.test_ids == list(sample.image_id)  # the sample's order, not the folder's
    assert comp.test_ids != sorted(comp.test_ids)


def test_missing_data_folder(tmp_path):
    with pytest.raises(PipelineError, match="does not exist: set data.root"):
        scan_competition(tmp_path / "absent")


def test_missing_test_images_folder(paddy_copy):
    shutil.rmtree(paddy_copy / "test_images")
    with pytest.raises(PipelineError, match="test_images is missing"):
        scan_competition(paddy_copy)


def test_no_label_folders(paddy_copy):
    shutil.rmtree(paddy_copy / "train_images")
    (paddy_copy / "train_images").mkdir()
    with pytest.raises(PipelineError, match="has no label folders"):
        scan_competition(paddy_copy)


def test_label_folder_without_images(paddy_copy):
    (paddy_copy / "train_images" / "empty_label").mkdir()
    with pytest.raises(PipelineError, match="empty_label has no images"):
        scan_competition(paddy_copy)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_training_image_is_skipped_with_a_warning(paddy_copy, caplog):
    bad = next((paddy_copy / "train_images" / "blast").glob("*.jpg"))
    _truncate(bad)
    with caplog.at_level(logging.WARNING):
        comp = scan_competition(paddy_copy)
    assert bad not in comp.train_files and len(comp.train_files) == 29
    assert [p for p, _ in comp.skipped] == [bad]
    assert str(bad) in caplog.text and "truncated" in caplog.text


def test_corrupt_test_image_stops_the_scan(paddy_copy):
    bad = paddy_copy / "test_images" / "200003.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(PipelineError, match=r"1 unreadable test image\(s\), replace them: .*200003.jpg"):
        scan_competition(paddy_copy)


def test_sample_submission_listing_missing_test_images(paddy_copy):
    (paddy_copy / "test_images" / "200002.jpg").unlink()
    with pytest.raises(PipelineError, match="lists 1 image.* not in .*does not match the test images"):
        scan_competition(paddy_copy)


def test_sample_submission_with_wrong_columns(paddy_copy):
    pd.DataFrame({"id": ["200001.jpg"], "label": [""]}).to_csv(paddy_copy / "sample_submission.csv", index=False)
    with pytest.raises(PipelineError, match=r"has columns \['id', 'label'\]; expected \['image_id', 'label'\]"):
        scan_competition(paddy_copy)


def test_missing_sample_submission(paddy_copy):
    (paddy_copy / "sample_submission.csv").unlink()
    with pytest.raises(PipelineError, match="sample submission .* not found"):
        scan_competition(paddy_copy)


def test_extra_test_images_are_ignored_with_a_warning(paddy_copy, caplog):
    shutil.copy(paddy_copy / "test_images" / "200001.jpg", paddy_copy / "test_images" / "299999.jpg")
    with caplog.at_level(logging.WARNING):
        comp = scan_competition(paddy_copy)
    assert "299999.jpg" not in comp.test_ids and len(comp.test_ids) == 10
    assert "1 file(s)" in caplog.text


def test_demo_layout(demo_root):
    comp = scan_competition(demo_root)
    assert len(comp.vocab) == 10 and len(comp.train_files) == 60 and len(comp.test_files) == 20
    truth = pd.read_csv(demo_root / "test_labels.csv")
    assert list(truth.image_id) == comp.test_ids  # truth rows follow the sample's shuffled order
    assert set(truth.label) == set(comp.vocab)
    assert comp.test_ids != sorted(comp.test_ids)


def test_sixteen_bit_grayscale_png_is_refused_naming_it(paddy_copy):
    deep = paddy_copy / "train_images" / "blast" / "deep.png"
    Image.fromarray(np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))).save(deep)
    with Image.open(deep) as im:  # fastai's PILImage.create decodes with convert("RGB"): clipped, near white
        assert im.mode == "I;16" and np.asarray(im.convert("RGB")).mean() > 250
    with pytest.raises(PipelineError) as err:
        scan_competition(paddy_copy)
    assert str(err.value) == (
        f"1 image(s) have more than 8 bits a channel, which training would clip at 255 (white): {deep} (I;16); "
        "convert them to 8-bit (e.g. ImageMagick: mogrify -depth 8 FILE)"
    )


def _png16(path, pixels):
    """A 16-bit colour PNG (PIL cannot write one): `pixels` is (height, width, 3) uint16."""
    h, w, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_sixteen_bit_colour_png_is_scaled_by_pil_and_accepted(paddy_copy):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    deep = paddy_copy / "train_images" / "blast" / "deep.png"
    _png16(deep, np.stack([ramp] * 3, axis=-1))
    with Image.open(deep) as im:
        assert im.mode == "RGB" and np.asarray(im.convert("RGB")).mean() == pytest.approx(127.5, abs=0.5)
    assert deep in scan_competition(paddy_copy).train_files


def test_fingerprint_follows_the_files_not_the_folder(paddy_copy, tmp_path):
    seen = [scan_competition(paddy_copy).fingerprint]
    assert scan_competition(paddy_copy).fingerprint == seen[0]
    moved = shutil.move(paddy_copy, tmp_path / "elsewhere")  # the same files in another place
    assert scan_competition(moved).fingerprint == seen[0]

    train = moved / "train_images"
    image = next((train / "blast").glob("*.jpg"))
    relabelled = image.rename(train / "normal" / image.name)  # moved to another label
    seen.append(scan_competition(moved).fingerprint)
    shutil.copy(relabelled, train / "tungro" / "new.jpg")  # added
    seen.append(scan_competition(moved).fingerprint)
    with open(relabelled, "ab") as f:  # rewritten
        f.write(b"\0")
    seen.append(scan_competition(moved).fingerprint)
    copied = shutil.copytree(moved, tmp_path / "kaggle-input", copy_function=shutil.copy)  # new mtimes
    assert scan_competition(copied).fingerprint == seen[-1]
    sample = pd.read_csv(moved / "sample_submission.csv")
    sample.iloc[::-1].to_csv(moved / "sample_submission.csv", index=False)  # the test rows reordered
    seen.append(scan_competition(moved).fingerprint)
    assert len(set(seen)) == len(seen)


def test_fingerprint_follows_the_bytes_and_keeps_them_in_an_index(paddy_copy, tmp_path):
    cache = tmp_path / "cache"
    first = scan_competition(paddy_copy, cache_dir=cache)
    assert first.fingerprint == scan_competition(paddy_copy).fingerprint  # the index changes nothing
    (index,) = cache.glob("file-hashes-*.json")
    assert len(json.loads(index.read_text())["files"]) == len(first.train_files) + len(first.test_files)

    # the index is what a second scan reads: a hash planted there for an unchanged file is used
    entries = json.loads(index.read_text())
    name = str(first.train_files[0].resolve())
    entries["files"][name][-1] = "0" * 64
    index.write_text(json.dumps(entries))
    assert scan_competition(paddy_copy, cache_dir=cache).fingerprint != first.fingerprint

    a, b = sorted(paddy_copy.glob("train_images/*/*.jpg"))[:2]
    same_size_swap(a, b)
    swapped = scan_competition(paddy_copy, cache_dir=cache)
    assert a in swapped.train_files  # still a readable photo, only another one
    assert swapped.fingerprint == scan_competition(paddy_copy).fingerprint != first.fingerprint  # ctime moved
