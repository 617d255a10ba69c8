"""Image-folder and CIFAR-10 sources: class mapping, ids, tar = folder, the decoded cache."""

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from kdjax import data
from kdjax.data import DataError, image_folder
from kdjax.data.image_folder import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    is_image_folder,
    load_cifar,
    load_cifar10,
    load_image_folder,
)

PIL = pytest.importorskip("PIL.Image")


def write_image_folder(
    root: Path,
    classes=("cat", "airplane", "dog"),
    per_class: dict | None = None,
    size=(6, 5),
    suffix=".png",
) -> dict:
    """Writes root/{train,test}/<class>/NNNN<suffix>; each image's pixels encode
    (split, class index in *given* order, file number) so tests can recognise it."""
    per_class = per_class or {"train": 3, "test": 2}
    written = {}
    for split_index, split in enumerate(("train", "test")):
        for class_index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(per_class[split]):
                pixels = np.zeros((size[1], size[0], 3), np.uint8)
                pixels[..., 0] = 10 * split_index + 1
                pixels[..., 1] = 20 * class_index + 5
                pixels[..., 2] = 30 * number + 7
                path = folder / f"{number:04d}{suffix}"
                PIL.fromarray(pixels).save(path)
                written[(split, name, number)] = pixels
    return written


def _decoded_key(image: np.ndarray) -> tuple:
    return int(image[0, 0, 0]), int(image[0, 0, 1]), int(image[0, 0, 2])


def test_classes_follow_sorted_folder_names_and_ids_follow_class_then_file(tmp_path):
    write_image_folder(tmp_path / "set")
    dataset = load_image_folder(tmp_path / "set", cache_dir=tmp_path / "cache", log=lambda _: None)
    assert dataset.num_classes == 3
    assert dataset.source == "image-folder"
    # Sorted names: airplane 0, cat 1, dog 2 (given order was cat, airplane, dog).
    np.testing.assert_array_equal(dataset.train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(dataset.test.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(dataset.train.ids, np.arange(9))
    written_class = {"cat": 0, "airplane": 1, "dog": 2}
    for index, (label, image) in enumerate(
        zip(dataset.train.labels, dataset.train.images, strict=True)
    ):
        name = ("airplane", "cat", "dog")[label]
        number = index % 3
        assert _decoded_key(image) == (1, 20 * written_class[name] + 5, 30 * number + 7)
    assert dataset.train.images.shape == (9, 5, 6, 3)
    assert dataset.train.images.dtype == np.uint8


def test_a_class_list_sets_the_label_order(tmp_path):
    write_image_folder(tmp_path / "set")
    dataset = load_image_folder(
        tmp_path / "set",
        classes=["dog", "cat", "airplane", "bird"],
        cache_dir=tmp_path / "cache",
        log=lambda _: None,
    )
    assert dataset.num_classes == 4
    np.testing.assert_array_equal(dataset.train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert _decoded_key(dataset.train.images[0])[1] == 20 * 2 + 5  # dog was written third


def test_a_folder_missing_from_the_class_list_is_an_error(tmp_path):
    write_image_folder(tmp_path / "set")
    with pytest.raises(DataError, match="not in the given class list"):
        load_image_folder(tmp_path / "set", classes=["cat", "dog"], use_cache=False)


def test_tar_archive_gives_the_same_data_set_as_the_folder(tmp_path):
    write_image_folder(tmp_path / "extracted" / "images")
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as handle:
        handle.add(tmp_path / "extracted" / "images", arcname="images")
    from_tar = load_image_folder(archive, use_cache=False, log=lambda _: None)
    # An extracted archive (one folder level down) is found too.
    from_folder = load_image_folder(tmp_path / "extracted", use_cache=False, log=lambda _: None)
    assert is_image_folder(archive) and is_image_folder(tmp_path / "extracted")
    assert from_tar.train.fingerprint() == from_folder.train.fingerprint()
    assert from_tar.test.fingerprint() == from_folder.test.fingerprint()


def test_decoded_arrays_are_cached_and_a_changed_file_rebuilds_the_cache(tmp_path):
    written = write_image_folder(tmp_path / "set")
    cache = tmp_path / "cache"
    messages = []
    first = load_image_folder(tmp_path / "set", cache_dir=cache, log=messages.append)
    assert any("Decoding 15 images" in m for m in messages)
    assert len(list(cache.glob("*.npz"))) == 1

    messages.clear()
    second = load_image_folder(tmp_path / "set", cache_dir=cache, log=messages.append)
    assert any("read from the cache" in m for m in messages)
    assert second.train.fingerprint() == first.train.fingerprint()

    # Rewrite one image with new pixels (and a new mtime): the cache must not be used.
    changed = written[("train", "dog", 1)].copy()
    changed[...] = 200
    path = tmp_path / "set" / "train" / "dog" / "0001.png"
    PIL.fromarray(changed).save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    messages.clear()
    third = load_image_folder(tmp_path / "set", cache_dir=cache, log=messages.append)
    assert any("Decoding" in m for m in messages)
    assert third.train.fingerprint() != first.train.fingerprint()
    assert (third.train.images[7] == 200).all()  # dog is class 2: rows 6, 7, 8


def test_a_corrupt_cache_is_rebuilt(tmp_path):
    write_image_folder(tmp_path / "set")
    cache = tmp_path / "cache"
    first = load_image_folder(tmp_path / "set", cache_dir=cache, log=lambda _: None)
    (cache_file,) = cache.glob("*.npz")
    cache_file.write_bytes(b"not an npz")
    again = load_image_folder(tmp_path / "set", cache_dir=cache, log=lambda _: None)
    assert again.train.fingerprint() == first.train.fingerprint()


def test_images_of_different_sizes_are_an_error_naming_the_file(tmp_path):
    write_image_folder(tmp_path / "set")
    PIL.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "set/train/dog/0002.png")
    with pytest.raises(DataError, match=r"dog/0002\.png.*one size"):
        load_image_folder(tmp_path / "set", use_cache=False, log=lambda _: None)


def test_an_undecodable_image_is_an_error_naming_the_file(tmp_path):
    write_image_folder(tmp_path / "set")
    (tmp_path / "set/test/cat/0001.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cat/0001\.png: cannot decode"):
        load_image_folder(tmp_path / "set", use_cache=False, log=lambda _: None)


def test_a_missing_split_is_an_error(tmp_path):
    write_image_folder(tmp_path / "set")
    for path in sorted((tmp_path / "set" / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "set" / "test").rmdir()
    with pytest.raises(DataError, match="no images under test/"):
        load_image_folder(tmp_path / "set", use_cache=False)


def test_grayscale_and_jpeg_images_decode_to_rgb(tmp_path):
    root = tmp_path / "set"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        PIL.fromarray(np.full((4, 4), 90, np.uint8)).save(root / split / "a" / "0.jpg")
    dataset = load_image_folder(root, use_cache=False, log=lambda _: None)
    assert dataset.train.images.shape == (1, 4, 4, 3)
    assert abs(int(dataset.train.images[0, 0, 0, 0]) - 90) <= 2


# --- Incomplete sets --------------------------------------------------------------------


def make_tar(root: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w") as handle:
        handle.add(root, arcname=root.name)
    return archive


def tar_headers(archive: Path) -> list[tuple[str, int]]:
    """(name, header offset) of every file member, in archive order."""
    with tarfile.open(archive) as handle:
        return [(m.name, m.offset) for m in handle.getmembers() if m.isfile()]


@pytest.mark.parametrize("cut", ["inside_header", "inside_data", "before_marker"])
def test_a_tar_cut_short_is_refused_naming_the_archive(tmp_path, cut):
    write_image_folder(tmp_path / "images")
    archive = make_tar(tmp_path / "images", tmp_path / "images.tar")
    headers = tar_headers(archive)
    name, offset = headers[-4]
    size = {
        "inside_header": offset + 100,
        "inside_data": offset + 512 + 20,
        "before_marker": tar_headers_end(archive),
    }[cut]
    os.truncate(archive, size)
    with pytest.raises(DataError, match="no end-of-archive marker") as error:
        load_image_folder(archive, use_cache=False, log=lambda _: None)
    message = str(error.value)
    assert message.startswith(f"{archive} is incomplete: ") and "\n" not in message
    assert "allow_partial=True" in message


def tar_headers_end(archive: Path) -> int:
    """Where the end-of-archive marker starts: after the last member's data."""
    with tarfile.open(archive) as handle:
        last = handle.getmembers()[-1]
        return last.offset_data + -(-last.size // 512) * 512


def test_allow_partial_loads_a_cut_tar_and_says_so(tmp_path):
    write_image_folder(tmp_path / "images")
    archive = make_tar(tmp_path / "images", tmp_path / "images.tar")
    name, offset = tar_headers(archive)[-1]
    os.truncate(archive, offset + 512 + 20)  # the last image is cut inside its data
    messages = []
    dataset = load_image_folder(archive, use_cache=False, allow_partial=True, log=messages.append)
    split = PurePosixPath(name).parts[1]  # 9 train and 6 test images were written
    assert len(dataset.train) + len(dataset.test) == 14  # the cut one is dropped
    assert len(getattr(dataset, split)) == {"train": 9, "test": 6}[split] - 1
    assert dataset.notice.startswith(f"PARTIAL DATA SET {archive}: ")
    assert "no end-of-archive marker after 14 files" in dataset.notice
    assert dataset.summary()["notice"] == dataset.notice
    assert dataset.notice in messages


def test_a_class_missing_from_one_split_is_refused(tmp_path):
    write_image_folder(tmp_path / "set")
    shutil.rmtree(tmp_path / "set" / "test" / "dog")
    with pytest.raises(DataError, match=r"test/ has no images of dog \(found in train/\)"):
        load_image_folder(tmp_path / "set", use_cache=False, log=lambda _: None)
    dataset = load_image_folder(
        tmp_path / "set", use_cache=False, allow_partial=True, log=lambda _: None
    )
    assert "test/ has no images of dog" in dataset.notice
    assert dataset.num_classes == 3 and sorted(set(dataset.test.labels)) == [0, 1]


def test_a_complete_set_has_no_notice(tmp_path):
    write_image_folder(tmp_path / "set")
    archive = make_tar(tmp_path / "set", tmp_path / "set.tar")
    for source in (tmp_path / "set", archive):
        dataset = load_image_folder(
            source, use_cache=False, per_class={"train": 3, "test": 2}, log=lambda _: None
        )
        assert dataset.notice is None


def test_per_class_counts_are_checked(tmp_path):
    write_image_folder(tmp_path / "set")
    (tmp_path / "set" / "train" / "cat" / "0002.png").unlink()
    with pytest.raises(DataError, match=r"train/ needs 3 images per class, has cat 2\."):
        load_image_folder(
            tmp_path / "set",
            use_cache=False,
            per_class={"train": 3, "test": 2},
            log=lambda _: None,
        )


def test_cifar10_needs_5000_and_1000_per_class(tmp_path):
    write_image_folder(
        tmp_path / "cifar",
        classes=CIFAR10_CLASSES,
        size=(32, 32),
        per_class={"train": 2, "test": 1},
    )
    with pytest.raises(DataError) as error:
        load_cifar10(str(tmp_path / "cifar"), use_cache=False, log=lambda _: None)
    message = str(error.value)
    assert "train/ needs 5,000 images per class, has airplane 2, automobile 2" in message
    assert "test/ needs 1,000 images per class, has airplane 1" in message
    assert "\n" not in message


def test_a_garbled_cache_is_rebuilt_and_said(tmp_path):
    write_image_folder(tmp_path / "set")
    cache = tmp_path / "cache"
    first = load_image_folder(tmp_path / "set", cache_dir=cache, log=lambda _: None)
    (cache_file,) = cache.glob("*.npz")
    payload = bytearray(cache_file.read_bytes())
    for damage in ("flip", "truncate"):
        broken = bytearray(payload)
        if damage == "flip":  # inside the train images' bytes, size unchanged
            start = bytes(payload).index(first.train.images.tobytes()[:64])
            broken[start + 8 : start + 72] = bytes(255 - b for b in broken[start + 8 : start + 72])
        else:
            broken = broken[: len(broken) * 2 // 3]
        cache_file.write_bytes(bytes(broken))
        messages = []
        again = load_image_folder(tmp_path / "set", cache_dir=cache, log=messages.append)
        assert any(f"cache {cache_file} is unreadable" in m for m in messages), messages
        assert again.train.fingerprint() == first.train.fingerprint()


def test_an_unwritable_cache_only_costs_a_decode(tmp_path, monkeypatch):
    import errno

    write_image_folder(tmp_path / "set")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_folder.np, "savez", disk_full)
    messages = []
    dataset = load_image_folder(tmp_path / "set", cache_dir=tmp_path / "cache", log=messages.append)
    assert len(dataset.train) == 9
    assert any("Could not write the decoded-image cache" in m for m in messages)
    assert list((tmp_path / "cache").iterdir()) == []


# --- CIFAR-10 -------------------------------------------------------------------------------


def test_cifar10_image_folder_uses_the_canonical_class_order(tmp_path):
    write_image_folder(
        tmp_path / "cifar",
        classes=CIFAR10_CLASSES,
        size=(32, 32),
        per_class={"train": 1, "test": 1},
    )
    dataset = load_cifar10(
        str(tmp_path / "cifar"),
        cache_dir=tmp_path / "cache",
        allow_partial=True,  # one image per class, not 5,000/1,000
        log=lambda _: None,
    )
    assert dataset.name == "cifar10" and dataset.num_classes == 10
    np.testing.assert_array_equal(dataset.train.labels, np.arange(10))
    for label, image in zip(dataset.train.labels, dataset.train.images, strict=True):
        assert _decoded_key(image)[1] == 20 * label + 5


def test_cifar10_rejects_images_of_the_wrong_size(tmp_path):
    write_image_folder(tmp_path / "cifar", classes=CIFAR10_CLASSES, size=(8, 8))
    with pytest.raises(DataError, match="32×32 RGB"):
        load_cifar10(
            str(tmp_path / "cifar"),
            cache_dir=tmp_path / "cache",
            allow_partial=True,
            log=lambda _: None,
        )


def test_cifar10_rejects_a_folder_with_other_classes(tmp_path):
    write_image_folder(tmp_path / "cifar", classes=("cat", "unicorn"), size=(32, 32))
    with pytest.raises(DataError, match="unicorn"):
        load_cifar10(str(tmp_path / "cifar"), cache_dir=tmp_path / "cache", log=lambda _: None)


def test_cifar10_without_any_source_says_how_to_provide_it(monkeypatch):
    monkeypatch.setattr(data, "tfds_prepared", lambda data_dir, name="mnist": False)
    monkeypatch.setattr(data, "network_reachable", lambda address: False)
    with pytest.raises(DataError, match="--data_dir"):
        load_cifar10(None, log=lambda _: None)


def test_cifar10_data_dir_without_cifar_is_an_error(tmp_path):
    with pytest.raises(DataError, match="holds no CIFAR-10"):
        load_cifar10(str(tmp_path), log=lambda _: None)


def test_cifar10_uses_a_prepared_tfds_copy(monkeypatch):
    loaded = {}

    def fake_load_tfds(name, data_dir=None, *, download=False):
        loaded.update(name=name, download=download)
        return "dataset"

    monkeypatch.setattr(data, "tfds_prepared", lambda data_dir, name="mnist": name == "cifar10")
    monkeypatch.setattr(data, "load_tfds", fake_load_tfds)
    assert load_cifar10(None, log=lambda _: None) == "dataset"
    assert loaded == {"name": "cifar10", "download": False}


def test_cifar100_labels_follow_the_fine_label_order_and_counts_are_checked(tmp_path):
    assert len(CIFAR100_CLASSES) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    classes = ("whale", "apple", "bee")  # written in this order; labels are canonical
    write_image_folder(tmp_path / "c100", classes=classes, size=(32, 32))
    messages = []
    dataset = load_cifar(
        "cifar100", str(tmp_path / "c100"), use_cache=False, allow_partial=True, log=messages.append
    )
    assert dataset.name == "cifar100" and dataset.num_classes == 100
    expected = {CIFAR100_CLASSES.index(name) for name in classes}
    assert set(dataset.train.labels.tolist()) == expected == {0, 6, 95}
    assert "train/ needs 500 images per class, has apple 3" in messages[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no CIFAR-100"):
        load_cifar("cifar100", str(tmp_path / "empty"), log=lambda _: None)


def test_cifar100_uses_a_prepared_tfds_copy(monkeypatch):
    loaded = {}

    def fake_load_tfds(name, data_dir=None, *, download=False):
        loaded.update(name=name, download=download)
        return "dataset"

    monkeypatch.setattr(data, "tfds_prepared", lambda data_dir, name="mnist": name == "cifar100")
    monkeypatch.setattr(data, "load_tfds", fake_load_tfds)
    assert load_cifar("cifar100", None, log=lambda _: None) == "dataset"
    assert loaded == {"name": "cifar100", "download": False}


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KDJAX_CACHE_DIR", str(tmp_path))
    assert image_folder.default_cache_dir() == tmp_path


@pytest.mark.slow
def test_real_cifar10():
    location = os.environ.get("KDJAX_CIFAR10")
    if not location:
        pytest.skip("set KDJAX_CIFAR10 to a CIFAR-10 image folder or its .tar")
    dataset = load_cifar10(location, use_cache=False, log=lambda _: None)
    assert (len(dataset.train), len(dataset.test)) == (50_000, 10_000)
    np.testing.assert_array_equal(np.bincount(dataset.train.labels), [5000] * 10)
    mean = dataset.train.images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=0.01)
