"""Tests for kdjax.data: IDX reading, the embedded sample, the TFDS path and ``Split``.

Every IDX file here is written by the test itself (tiny, synthetic), so nothing
depends on the network or on the shared data folder. The one test on real MNIST
reads the folder named by ``KDJAX_MNIST_DIR`` and is skipped when it is unset.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

from kdjax import data
from kdjax.data import (
    FULL_MNIST_HINT,
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    Split,
    load_mnist,
    load_mnist_embedded,
    load_mnist_idx,
    load_mnist_tfds,
    normalize,
    read_idx,
)

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
STANDARD_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --- helpers ---------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file's bytes: big-endian magic, one uint32 per dimension, raw uint8 data."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.tobytes()


def write_file(path: Path, payload: bytes, *, compress: bool) -> Path:
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def random_mnist(seed: int, train_count: int = 7, test_count: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "train": (
            rng.integers(0, 256, (train_count, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, train_count).astype(np.uint8),
        ),
        "test": (
            rng.integers(0, 256, (test_count, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, test_count).astype(np.uint8),
        ),
    }


def write_mnist(directory: Path, arrays: dict, *, compress: bool) -> dict[str, Path]:
    """Writes the four IDX files for ``arrays``; returns their paths by role."""
    paths = {}
    for split, (image_stem, label_stem) in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        images, labels = arrays[split]
        paths[f"{split}_images"] = write_file(
            directory / image_stem, idx_bytes(images, IMAGE_MAGIC), compress=compress
        )
        paths[f"{split}_labels"] = write_file(
            directory / label_stem, idx_bytes(labels, LABEL_MAGIC), compress=compress
        )
    return paths


def make_split(count: int = 6, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(
        images=rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8),
        labels=rng.integers(0, 10, count).astype(np.int32),
        ids=np.arange(100, 100 + count, dtype=np.int64),
    )


@pytest.fixture(scope="module")
def embedded():
    return load_mnist_embedded()


# --- IDX files -------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("loader", [load_mnist_idx, load_mnist], ids=["idx", "load_mnist"])
def test_idx_round_trip(tmp_path, compress, loader):
    arrays = random_mnist(seed=1)
    write_mnist(tmp_path, arrays, compress=compress)

    dataset = loader(str(tmp_path))

    assert dataset.source == "idx"
    assert dataset.location == str(tmp_path)
    assert dataset.num_classes == 10
    assert dataset.notice is None
    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        images, labels = arrays[split_name]
        assert split.images.dtype == np.uint8
        assert split.images.shape == (len(images), 28, 28, 1)
        np.testing.assert_array_equal(split.images[..., 0], images)
        assert split.labels.dtype == np.int32
        np.testing.assert_array_equal(split.labels, labels)
        np.testing.assert_array_equal(split.ids, np.arange(len(images)))
    summary = dataset.summary()
    assert summary["train_examples"] == 7
    assert summary["test_examples"] == 5
    assert summary["image_shape"] == [28, 28, 1]


def test_read_idx_returns_exact_array(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_file(tmp_path / "x-idx3-ubyte", idx_bytes(array, IMAGE_MAGIC), compress=True)
    result = read_idx(path)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, array)


def _truncate(payload: bytes) -> bytes:
    return payload[:-10]


def _bad_magic(payload: bytes) -> bytes:
    return struct.pack(">I", 0x12345678) + payload[4:]


def _short(payload: bytes) -> bytes:
    return payload[:3]


def _header_only(payload: bytes) -> bytes:
    return payload[:6]


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize(
    "corrupt", [_truncate, _bad_magic, _short, _header_only], ids=lambda f: f.__name__
)
@pytest.mark.parametrize("role", ["train_images", "test_labels"])
def test_corrupt_idx_names_the_file(tmp_path, compress, corrupt, role):
    paths = write_mnist(tmp_path, random_mnist(seed=2), compress=compress)
    target = paths[role]
    payload = gzip.decompress(target.read_bytes()) if compress else target.read_bytes()
    target.write_bytes(gzip.compress(corrupt(payload)) if compress else corrupt(payload))

    with pytest.raises(DataError, match=target.name):
        load_mnist_idx(tmp_path)


def test_truncated_data_reports_sizes(tmp_path):
    paths = write_mnist(tmp_path, random_mnist(seed=3), compress=False)
    target = paths["train_images"]
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"promises 5488 bytes.*found 5487"):
        read_idx(target)


def test_truncated_gzip_stream(tmp_path):
    paths = write_mnist(tmp_path, random_mnist(seed=4), compress=True)
    target = paths["train_images"]
    target.write_bytes(target.read_bytes()[:-20])  # cut inside the compressed stream
    with pytest.raises(DataError, match=target.name):
        load_mnist_idx(tmp_path)


def test_garbage_gzip(tmp_path):
    paths = write_mnist(tmp_path, random_mnist(seed=5), compress=True)
    target = paths["train_labels"]
    target.write_bytes(b"this is not a gzip stream at all" * 4)
    with pytest.raises(DataError, match=target.name):
        load_mnist_idx(tmp_path)


def test_raw_idx_under_gz_name(tmp_path):
    paths = write_mnist(tmp_path, random_mnist(seed=6), compress=True)
    target = paths["test_images"]
    target.write_bytes(gzip.decompress(target.read_bytes()))
    with pytest.raises(DataError, match=target.name):
        load_mnist_idx(tmp_path)


def test_label_count_mismatch(tmp_path):
    arrays = random_mnist(seed=7)
    images, labels = arrays["train"]
    arrays["train"] = (images, labels[:-1])
    paths = write_mnist(tmp_path, arrays, compress=True)
    with pytest.raises(DataError, match=paths["train_labels"].name) as error:
        load_mnist_idx(tmp_path)
    assert "6 labels for 7 images" in str(error.value)


def test_label_out_of_range(tmp_path):
    arrays = random_mnist(seed=8)
    images, labels = arrays["test"]
    labels = labels.copy()
    labels[2] = 10
    arrays["test"] = (images, labels)
    paths = write_mnist(tmp_path, arrays, compress=False)
    with pytest.raises(DataError, match=paths["test_labels"].name) as error:
        load_mnist_idx(tmp_path)
    assert "0..9" in str(error.value)


def test_images_with_wrong_rank(tmp_path):
    arrays = random_mnist(seed=9)
    paths = write_mnist(tmp_path, arrays, compress=True)
    flat = arrays["train"][0].reshape(7, 784)
    paths["train_images"].write_bytes(gzip.compress(idx_bytes(flat, 0x0802)))
    with pytest.raises(DataError, match=paths["train_images"].name):
        load_mnist_idx(tmp_path)


def test_missing_label_file(tmp_path):
    paths = write_mnist(tmp_path, random_mnist(seed=10), compress=True)
    paths["test_labels"].unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_mnist(str(tmp_path))


# --- load_mnist: data_dir given ----------------------------------------------------------


def test_data_dir_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_mnist_embedded", _must_not_be_called)
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match="does not exist") as error:
        load_mnist(str(missing))
    assert str(missing) in str(error.value)


def test_data_dir_is_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_mnist_embedded", _must_not_be_called)
    a_file = tmp_path / "mnist.gz"
    a_file.write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        load_mnist(str(a_file))


def test_data_dir_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_mnist_embedded", _must_not_be_called)
    monkeypatch.setattr(data, "load_mnist_tfds", _must_not_be_called)
    with pytest.raises(DataError, match="holds no MNIST") as error:
        load_mnist(str(tmp_path))
    assert "train-images-idx3-ubyte" in str(error.value)
    assert str(tmp_path) in str(error.value)


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("this source must not be tried")


# --- the embedded sample ----------------------------------------------------------------


def test_embedded_sample(embedded):
    assert embedded.source == "embedded-sample"
    assert embedded.name == "mnist"
    assert embedded.num_classes == 10
    assert len(embedded.train) == 4000
    assert len(embedded.test) == 1000
    np.testing.assert_array_equal(np.bincount(embedded.train.labels, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(embedded.test.labels, minlength=10), [100] * 10)
    for split in (embedded.train, embedded.test):
        assert split.images.dtype == np.uint8
        assert split.images.shape[1:] == (28, 28, 1)
        assert split.labels.dtype == np.int32
    assert not set(embedded.train.ids.tolist()) & set(embedded.test.ids.tolist())
    all_ids = np.sort(np.concatenate([embedded.train.ids, embedded.test.ids]))
    np.testing.assert_array_equal(all_ids, np.arange(5000))
    # The last 100 examples of each class (in file order) are the test set.
    for label in range(10):
        train_ids = embedded.train.ids[embedded.train.labels == label]
        test_ids = embedded.test.ids[embedded.test.labels == label]
        assert train_ids.max() < test_ids.min()
    # Real digits, not blank or constant images.
    assert 0 < embedded.train.images.mean() < 255
    assert embedded.train.images.max() == 255


def test_embedded_notice(embedded):
    assert "EMBEDDED" in embedded.notice
    assert "--data_dir" in embedded.notice
    assert FULL_MNIST_HINT in embedded.notice
    assert embedded.summary()["notice"] == embedded.notice


def test_embedded_is_deterministic(embedded):
    again = load_mnist_embedded()
    assert again.train.fingerprint() == embedded.train.fingerprint()
    assert again.test.fingerprint() == embedded.test.fingerprint()
    np.testing.assert_array_equal(again.train.images, embedded.train.images)
    np.testing.assert_array_equal(again.test.ids, embedded.test.ids)


# --- load_mnist: no data_dir --------------------------------------------------------------


def test_falls_back_to_embedded_without_download(monkeypatch, embedded):
    monkeypatch.setattr(data, "tfds_prepared", lambda data_dir: False)
    monkeypatch.setattr(data, "network_reachable", _must_not_be_called)
    monkeypatch.setattr(data, "load_mnist_tfds", _must_not_be_called)
    monkeypatch.setattr(data, "load_mnist_embedded", lambda: embedded)
    assert load_mnist(None, download=False, log=lambda message: None) is embedded


def test_falls_back_to_embedded_when_offline(monkeypatch, embedded):
    messages = []
    monkeypatch.setattr(data, "tfds_prepared", lambda data_dir: False)
    monkeypatch.setattr(data, "network_reachable", lambda address, timeout=3.0: False)
    monkeypatch.setattr(data, "load_mnist_tfds", _must_not_be_called)
    dataset = load_mnist(None, download=True, log=messages.append)
    assert dataset.source == "embedded-sample"
    assert dataset.train.fingerprint() == embedded.train.fingerprint()
    assert messages == []


def test_falls_back_to_embedded_when_download_fails(monkeypatch, embedded):
    def failing_download(data_dir=None, *, download=False):
        assert download
        raise DataError("TFDS mnist unavailable: simulated failure")

    messages = []
    monkeypatch.setattr(data, "tfds_prepared", lambda data_dir: False)
    monkeypatch.setattr(data, "network_reachable", lambda address, timeout=3.0: True)
    monkeypatch.setattr(data, "load_mnist_tfds", failing_download)
    monkeypatch.setattr(data, "load_mnist_embedded", lambda: embedded)
    assert load_mnist(None, download=True, log=messages.append) is embedded
    assert any("simulated failure" in message for message in messages)


def test_network_probe_refused_is_false():
    # A port that was just free is refused at once: no network access is needed.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert data.network_reachable(("127.0.0.1", port), timeout=1.0) is False


def test_network_probe_listening_is_true():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert data.network_reachable(server.getsockname(), timeout=1.0) is True


# --- TFDS ---------------------------------------------------------------------------------


@pytest.fixture
def mock_tfds(tmp_path):
    """``tfds.testing.mock_data`` for mnist, without TensorFlow.

    ``MockPolicy.USE_CODE`` leaves the split list empty, so ``tfds.data_source``
    without a split returns nothing; ``USE_FILES`` with mnist metadata (written here
    in the array_record format) gives the real train/test splits.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core import naming

    builder = tfds.builder("mnist", data_dir=str(tmp_path), file_format="array_record")
    split_infos = [
        tfds.core.SplitInfo(
            name=name,
            shard_lengths=[count],
            num_bytes=0,
            filename_template=naming.ShardedFileTemplate(
                data_dir=builder.data_dir,
                dataset_name="mnist",
                split=name,
                filetype_suffix="array_record",
            ),
        )
        for name, count in (("train", 6), ("test", 6))
    ]
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(
        num_examples=6, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)
    ):
        yield tmp_path


def _check_tfds_dataset(dataset):
    assert dataset.source == "tfds"
    assert dataset.num_classes == 10
    for split in (dataset.train, dataset.test):
        assert len(split) == 6
        assert split.images.dtype == np.uint8
        assert split.images.shape == (6, 28, 28, 1)
        assert split.labels.dtype == np.int32
        assert split.labels.min() >= 0 and split.labels.max() <= 9
        np.testing.assert_array_equal(split.ids, np.arange(6))


def test_load_mnist_tfds_mocked(mock_tfds):
    import tensorflow_datasets as tfds

    dataset = load_mnist_tfds(str(mock_tfds))
    _check_tfds_dataset(dataset)
    sources = tfds.data_source("mnist", data_dir=str(mock_tfds))
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        for index in range(len(split)):
            record = sources[name][index]
            np.testing.assert_array_equal(split.images[index], record["image"])
            assert split.labels[index] == record["label"]
    assert dataset.train.images.any()


def test_load_mnist_routes_tfds_data_dir(mock_tfds):
    dataset = load_mnist(str(mock_tfds))
    _check_tfds_dataset(dataset)
    assert dataset.location == str(mock_tfds)


def test_load_mnist_uses_prepared_tfds(mock_tfds, monkeypatch):
    monkeypatch.setattr(data, "tfds_prepared", lambda data_dir: True)
    monkeypatch.setattr(data, "load_mnist_embedded", _must_not_be_called)
    _check_tfds_dataset(load_mnist(None, download=False))


def test_load_mnist_tfds_unprepared_dir_raises(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="TFDS mnist unavailable") as error:
        load_mnist_tfds(str(tmp_path), download=False)
    assert str(tmp_path) in str(error.value)


# --- Split ---------------------------------------------------------------------------------


def test_split_rejects_float_images():
    split = make_split()
    with pytest.raises(ValueError, match="uint8"):
        Split(split.images.astype(np.float32), split.labels, split.ids)


def test_split_rejects_images_without_channel_axis():
    split = make_split()
    with pytest.raises(ValueError, match="uint8"):
        Split(split.images[..., 0], split.labels, split.ids)


@pytest.mark.parametrize("field", ["labels", "ids"])
def test_split_rejects_mismatched_lengths(field):
    split = make_split()
    arrays = {"images": split.images, "labels": split.labels, "ids": split.ids}
    arrays[field] = arrays[field][:-1]
    with pytest.raises(ValueError, match=r"must be \(6,\)"):
        Split(**arrays)


def test_split_rejects_two_dimensional_labels():
    split = make_split()
    with pytest.raises(ValueError):
        Split(split.images, split.labels[:, None], split.ids)


def test_split_rejects_duplicate_ids():
    split = make_split()
    ids = split.ids.copy()
    ids[3] = ids[1]
    with pytest.raises(ValueError, match="unique"):
        Split(split.images, split.labels, ids)


def test_fingerprint_equal_for_equal_content():
    first, second = make_split(seed=3), make_split(seed=3)
    assert first.images is not second.images
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 16
    assert make_split(seed=4).fingerprint() != first.fingerprint()


@pytest.mark.parametrize("field", ["images", "labels", "ids"])
def test_fingerprint_changes_with_one_value(field):
    split = make_split()
    arrays = {"images": split.images.copy(), "labels": split.labels.copy(), "ids": split.ids.copy()}
    if field == "images":
        arrays["images"][4, 13, 7, 0] ^= 1
    elif field == "labels":
        arrays["labels"][2] = (arrays["labels"][2] + 1) % 10
    else:
        arrays["ids"][5] = 999
    assert Split(**arrays).fingerprint() != split.fingerprint()


def test_fingerprint_changes_with_order():
    split = make_split()
    order = np.array([1, 0, 2, 3, 4, 5])
    shuffled = Split(split.images[order], split.labels[order], split.ids[order])
    assert shuffled.fingerprint() != split.fingerprint()


def test_fingerprint_of_non_contiguous_view():
    split = make_split(count=10)
    every_other = Split(split.images[::2], split.labels[::2], split.ids[::2])
    copied = Split(split.images[::2].copy(), split.labels[::2].copy(), split.ids[::2].copy())
    assert every_other.fingerprint() == copied.fingerprint()


def test_take():
    split = make_split(count=6)
    head = split.take(4)
    assert isinstance(head, Split)
    assert len(head) == 4
    np.testing.assert_array_equal(head.images, split.images[:4])
    np.testing.assert_array_equal(head.labels, split.labels[:4])
    np.testing.assert_array_equal(head.ids, split.ids[:4])
    assert len(split.take(100)) == 6
    assert len(split.take(0)) == 0


# --- normalize -------------------------------------------------------------------------


def test_normalize_matches_numpy():
    images = np.array([0, 1, 128, 254, 255], np.uint8).reshape(1, 5, 1, 1)
    result = jax.jit(normalize, static_argnums=(1, 2))(images, MNIST_MEAN, MNIST_STD)
    assert result.dtype == np.float32
    assert result.shape == images.shape
    expected = (images.astype(np.float64) / 255.0 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-6, atol=1e-6)


def test_normalize_per_channel():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
    result = normalize(images, mean, std)
    assert result.dtype == np.float32
    expected = (images / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-5, atol=1e-5)


# --- real MNIST (optional) -------------------------------------------------------------------


def test_real_mnist_idx():
    directory = os.environ.get("KDJAX_MNIST_DIR")
    if not directory:
        pytest.skip("set KDJAX_MNIST_DIR to a folder with the four MNIST IDX files")
    dataset = load_mnist_idx(directory)
    assert len(dataset.train) == 60000
    assert len(dataset.test) == 10000
    np.testing.assert_array_equal(np.bincount(dataset.train.labels), STANDARD_TRAIN_COUNTS)
    assert dataset.train.images.shape == (60000, 28, 28, 1)


def test_split_rejects_float_labels():
    with pytest.raises(ValueError, match="labels must be integers"):
        Split(np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2), np.arange(2))


def test_fingerprint_covers_the_image_shape():
    flat = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1) % 251
    a = Split(flat, np.zeros(2, np.int32), np.arange(2))
    b = Split(flat.reshape(2, 14, 56, 1), np.zeros(2, np.int32), np.arange(2))
    assert a.fingerprint() != b.fingerprint()


def test_a_tfrecord_tfds_copy_is_not_taken_for_a_usable_one(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    builder = tfds.builder("mnist", data_dir=str(tmp_path))  # TFRecord by default
    Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)
    assert not data.tfds_prepared(str(tmp_path))
    with pytest.raises(DataError, match="holds no MNIST"):
        data.load_mnist(str(tmp_path))
