"""MHIST folders: a tiny synthetic one in MHIST's format, decoded, cached, and refused when bad."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from kdjax.data import DataError, Dataset
from kdjax.data.mhist import VOTES_COLUMN, load_mhist

HEADER = ["Image Name", "Majority Vote Label", VOTES_COLUMN, "Partition"]
# (name, label, SSA votes, partition): CSV order is not name order on purpose.
ROWS = [
    ("MHIST_c.png", "SSA", "5", "train"),
    ("MHIST_a.png", "HP", "0", "train"),
    ("MHIST_b.png", "HP", "3", "test"),
    ("MHIST_d.png", "SSA", "7", "test"),
    ("MHIST_e.png", "HP", "1", "train"),
]
SIZE = 8


def _pixels(name: str) -> np.ndarray:
    value = ord(name[-5])  # 'a'…'e': one distinct colour per image
    return np.full((SIZE, SIZE, 3), (value, 255 - value, value // 2), np.uint8)


def _write(folder, rows=ROWS, header=HEADER, images_beside=False):
    image_dir = folder if images_beside else folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    with open(folder / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    for row in rows:
        Image.fromarray(_pixels(row[0])).save(image_dir / row[0])
    return folder


def _load(folder, tmp_path, **kwargs):
    return load_mhist(folder, cache_dir=tmp_path / "cache", log=lambda _: None, **kwargs)


def test_splits_labels_votes_and_order(tmp_path):
    dataset = _load(_write(tmp_path / "MHIST"), tmp_path, image_size=SIZE)
    assert isinstance(dataset, Dataset) and dataset.num_classes == 2
    assert dataset.image_names == {
        "train": ["MHIST_a.png", "MHIST_c.png", "MHIST_e.png"],
        "test": ["MHIST_b.png", "MHIST_d.png"],
    }
    np.testing.assert_array_equal(dataset.train.labels, [0, 1, 0])
    np.testing.assert_array_equal(dataset.test.labels, [0, 1])
    np.testing.assert_array_equal(dataset.ssa_votes["train"], [0, 5, 1])
    np.testing.assert_array_equal(dataset.ssa_votes["test"], [3, 7])
    np.testing.assert_array_equal(dataset.train.ids, [0, 1, 2])
    assert (
        dataset.train.images.shape == (3, SIZE, SIZE, 3) and dataset.train.images.dtype == np.uint8
    )
    for split in ("train", "test"):
        for name, image in zip(
            dataset.image_names[split], getattr(dataset, split).images, strict=True
        ):
            np.testing.assert_array_equal(image, _pixels(name))


def test_images_beside_the_csv_and_resizing(tmp_path):
    folder = _write(tmp_path / "flat", images_beside=True)
    dataset = _load(folder / "annotations.csv", tmp_path, image_size=4)
    assert dataset.train.images.shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(dataset.train.images[0], _pixels("MHIST_a.png")[:4, :4])


def test_the_cache_is_used_and_notices_a_changed_image(tmp_path):
    folder = _write(tmp_path / "MHIST")
    messages = []
    load_mhist(folder, image_size=SIZE, cache_dir=tmp_path / "cache", log=messages.append)
    load_mhist(folder, image_size=SIZE, cache_dir=tmp_path / "cache", log=messages.append)
    assert "Decoding 5" in messages[0] and "cache" in messages[1]
    changed = np.zeros((SIZE, SIZE, 3), np.uint8)
    path = folder / "images" / "MHIST_a.png"
    Image.fromarray(changed).save(path)

    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock
    dataset = load_mhist(folder, image_size=SIZE, cache_dir=tmp_path / "cache", log=messages.append)
    assert "Decoding 5" in messages[2]
    np.testing.assert_array_equal(dataset.train.images[0], changed)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rows, header: (rows, header[:3]), r"annotations\.csv: no column 'Partition'"),
        (lambda rows, header: ([*rows, ("MHIST_f.png", "SSA")], header), r"line 7: expected 4"),
        (
            lambda rows, header: ([("MHIST_a.png", "TA", "0", "train")], header),
            "unknown label 'TA'",
        ),
        (lambda rows, header: ([("MHIST_a.png", "HP", "0", "val")], header), "unknown partition"),
        (lambda rows, header: ([("MHIST_a.png", "HP", "x", "train")], header), "not an integer"),
        (lambda rows, header: ([("MHIST_a.png", "HP", "5", "train")], header), "contradicts 5/7"),
        (lambda rows, header: ([*rows, rows[0]], header), "listed twice"),
        (lambda rows, header: (rows[:2], header), "no test rows"),
    ],
)
def test_bad_csvs_stop_with_one_line_naming_the_file(tmp_path, mutate, message):
    rows, header = mutate(list(ROWS), list(HEADER))
    folder = _write(tmp_path / "MHIST")
    with open(folder / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    with pytest.raises(DataError, match=message) as caught:
        _load(folder, tmp_path, image_size=SIZE)
    assert "annotations.csv" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_and_unreadable_images_and_folders(tmp_path):
    with pytest.raises(DataError, match="no such MHIST folder"):
        _load(tmp_path / "absent", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"annotations\.csv: missing"):
        _load(empty, tmp_path)
    folder = _write(tmp_path / "MHIST")
    (folder / "images" / "MHIST_d.png").unlink()
    with pytest.raises(DataError, match=r"MHIST_d\.png: image listed in annotations\.csv"):
        _load(folder, tmp_path)
    (folder / "images" / "MHIST_d.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"MHIST_d\.png: cannot decode image"):
        _load(folder, tmp_path)
