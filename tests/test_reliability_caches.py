"""Decoded-data caches repair themselves, and bad data stops at load time with one line.

The MHIST and BioVid caches (``mhist-<size>-<key>.npz``, ``biovid-<key>.npz``) are
damaged the way it happens: 64 bytes flipped (size kept), the file cut short or
emptied, the folder unwritable. Each load must still give the arrays a fresh decode
gives, say so in one line naming the cache, and rewrite the cache. Then the data
checks that run before any training: an MHIST split with one class, a BioVid file
holding ``inf``, and one BioVid window stored both plain and gzip-compressed.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_mhist import ROWS, SIZE, _write
from test_signals import gsr_values, per_subject_tree, sample_text, write

from kdjax.data import DataError, image_folder
from kdjax.data.mhist import load_mhist
from kdjax.data.signals import load_biovid


def load_mhist_logged(folder: Path, cache: Path):
    messages: list[str] = []
    dataset = load_mhist(folder, image_size=SIZE, cache_dir=cache, log=messages.append)
    return dataset, messages


def load_biovid_logged(root: Path, cache: Path):
    messages: list[str] = []
    dataset = load_biovid(root, cache_dir=cache, log=messages.append)
    return dataset, messages


def mhist_key(dataset) -> tuple:
    return dataset.train.fingerprint(), dataset.test.fingerprint()


def biovid_key(dataset) -> tuple:
    return dataset.fingerprint(), dataset.names.tolist(), dataset.subject_names


@pytest.fixture
def mhist(tmp_path):
    """(load function, reference key, cache file) of a cached synthetic MHIST folder."""
    folder = _write(tmp_path / "MHIST")
    cache = tmp_path / "cache"
    first, _ = load_mhist_logged(folder, cache)
    (cache_file,) = cache.glob("mhist-*.npz")
    return (lambda: load_mhist_logged(folder, cache)), mhist_key(first), cache_file, mhist_key


@pytest.fixture
def biovid(tmp_path):
    root = per_subject_tree(tmp_path / "data")
    cache = tmp_path / "cache"
    first, _ = load_biovid_logged(root, cache)
    (cache_file,) = cache.glob("biovid-*.npz")
    return (lambda: load_biovid_logged(root, cache)), biovid_key(first), cache_file, biovid_key


@pytest.fixture(params=["mhist", "biovid"])
def cached(request):
    return request.getfixturevalue(request.param)


def flip(path: Path, offset: int, count: int = 64) -> None:
    payload = bytearray(path.read_bytes())
    payload[offset : offset + count] = bytes(255 - b for b in payload[offset : offset + count])
    path.write_bytes(bytes(payload))


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if ".tmp" in path.name)


# --- 1. damaged caches are rebuilt from the source --------------------------------------------


@pytest.mark.parametrize("damage", ["flip-start", "flip-middle", "flip-end", "truncate", "empty"])
def test_a_damaged_cache_is_rebuilt_and_said_in_one_line(cached, damage):
    load, reference, cache_file, key = cached
    size = cache_file.stat().st_size
    if damage.startswith("flip"):
        offset = {"flip-start": 0, "flip-middle": size // 2 - 32, "flip-end": size - 64}
        flip(cache_file, offset[damage])
        assert cache_file.stat().st_size == size
    else:
        payload = cache_file.read_bytes()
        cache_file.write_bytes(payload[: size * 2 // 3] if damage == "truncate" else b"")
    dataset, messages = load()
    assert key(dataset) == reference
    said = [m for m in messages if str(cache_file) in m and "rebuild" in m]
    assert len(said) == 1 and "\n" not in said[0], messages
    assert "unreadable" in said[0] or "does not match" in said[0]
    again, messages = load()  # the rebuilt cache is whole again and used
    assert key(again) == reference
    assert any("from the cache" in m for m in messages), messages
    assert not leftovers(cache_file.parent)


def test_64_flipped_bytes_anywhere_in_a_cache_never_break_a_load(cached):
    """A sweep: every 64-byte block of the cache file flipped in turn."""
    load, reference, cache_file, key = cached
    original = cache_file.read_bytes()
    for offset in range(0, len(original), 64):
        cache_file.write_bytes(original)
        flip(cache_file, offset)
        dataset, _ = load()
        assert key(dataset) == reference, offset


def test_a_cache_of_other_data_under_the_right_name_is_rebuilt(cached, tmp_path):
    """A whole, readable ``.npz`` whose arrays do not fit the source."""
    load, reference, cache_file, key = cached
    with np.load(cache_file) as stored:
        arrays = {name: stored[name] for name in stored.files}
    first = next(name for name in ("images", "names") if name in arrays)
    arrays[first] = arrays[first][:-1]
    with cache_file.open("wb") as handle:
        np.savez(handle, **arrays)
    dataset, messages = load()
    assert key(dataset) == reference
    assert any(str(cache_file) in m and "does not match" in m for m in messages), messages


# --- 1. a cache that cannot be written costs a decode, nothing more ----------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failed_cache_write_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, code):
    folder = _write(tmp_path / "MHIST")
    root = per_subject_tree(tmp_path / "data")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(np, "savez", fail)
    for name, load in (
        ("mhist", lambda cache: load_mhist_logged(folder, cache)),
        ("biovid", lambda cache: load_biovid_logged(root, cache)),
    ):
        cache = tmp_path / f"cache-{name}"
        dataset, messages = load(cache)
        assert dataset is not None
        said = [m for m in messages if "Could not write" in m]
        assert len(said) == 1 and "continuing without it" in said[0], messages
        assert str(cache) in said[0] and "\n" not in said[0]
        assert not list(cache.iterdir())


def test_a_cache_folder_that_cannot_be_created_is_one_line(tmp_path):
    """``cache_dir`` below a plain file: mkdir fails for root too."""
    folder = _write(tmp_path / "MHIST")
    root = per_subject_tree(tmp_path / "data")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = blocker / "cache"
    for dataset, messages in (load_mhist_logged(folder, cache), load_biovid_logged(root, cache)):
        assert dataset is not None
        said = [m for m in messages if "cache" in m and str(cache) in m]
        assert len(said) == 1 and "Could not write" in said[0], messages


def _mount_read_only_copy(source: Path, target: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    target.mkdir()
    if subprocess.run(
        ["mount", "--bind", str(source), str(target)], capture_output=True
    ).returncode:
        return False
    subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
    return True


def test_a_read_only_cache_folder_is_read_and_never_written(tmp_path):
    """A real read-only bind mount (root only): a whole cache is used, a missing one
    costs a decode and one line."""
    folder = _write(tmp_path / "MHIST")
    root = per_subject_tree(tmp_path / "data")
    writable = tmp_path / "cache"
    load_mhist_logged(folder, writable)
    load_biovid_logged(root, writable)
    empty = tmp_path / "empty"
    empty.mkdir()
    read_only, read_only_empty = tmp_path / "ro", tmp_path / "ro-empty"
    if not _mount_read_only_copy(writable, read_only):
        pytest.skip("needs root and mount")
    try:
        assert _mount_read_only_copy(empty, read_only_empty)
        try:
            for _, messages in (
                load_mhist_logged(folder, read_only),
                load_biovid_logged(root, read_only),
            ):
                assert any("from the cache" in m for m in messages), messages
            for _, messages in (
                load_mhist_logged(folder, read_only_empty),
                load_biovid_logged(root, read_only_empty),
            ):
                said = [m for m in messages if "Could not write" in m]
                assert len(said) == 1 and "read-only" in said[0].lower(), messages
        finally:
            subprocess.run(["umount", str(read_only_empty)], check=True)
    finally:
        subprocess.run(["umount", str(read_only)], check=True)


def test_the_three_loaders_share_one_cache_helper():
    import inspect

    from kdjax.data import mhist
    from kdjax.data.signals import dataset

    for module in (image_folder, mhist, dataset):
        source = inspect.getsource(module)
        assert "npz_cache." in source and "np.savez" not in source, module.__name__


# --- 2. an MHIST split with one class is refused before any training --------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_mhist_split_with_one_class_is_refused_naming_the_csv_and_split(tmp_path, split):
    rows = [row for row in ROWS if not (row[3] == split and row[1] == "SSA")]
    folder = _write(tmp_path / "MHIST", rows=rows)
    messages: list[str] = []
    with pytest.raises(DataError) as caught:
        load_mhist(folder, image_size=SIZE, cache_dir=tmp_path / "cache", log=messages.append)
    message = str(caught.value)
    assert str(folder / "annotations.csv") in message and "\n" not in message
    assert f"{split} split" in message and "only HP" in message
    assert not any("Decoding" in m for m in messages)  # refused before decoding


# --- 4. BioVid: a non-finite value, a window stored twice --------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity"])
def test_an_infinite_value_is_refused_naming_file_row_and_column(tmp_path, value):
    root = per_subject_tree(tmp_path / "data")
    bad = root / "081609_w_40" / "081609_w_40-PA3-030_bio.csv"
    lines = bad.read_text().splitlines()
    fields = lines[7].split("\t")
    fields[1] = value
    lines[7] = "\t".join(fields)
    bad.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning on the way
        with pytest.raises(DataError) as caught:
            load_biovid(root, log=lambda _: None)
    message = str(caught.value)
    assert str(bad) in message and "row 8 column gsr" in message and "\n" not in message
    assert "not a finite number" in message


@pytest.mark.parametrize("layout", ["per-subject", "pain-level"])
def test_one_window_stored_plain_and_gzipped_is_refused(tmp_path, layout):
    if layout == "per-subject":
        root = per_subject_tree(tmp_path / "data")
        plain = root / "072414_m_23" / "072414_m_23-PA2-020_bio.csv"
    else:
        root = tmp_path / "data"
        for label in range(2):
            write(root / str(label) / f"s{label}.csv", sample_text(gsr_values(label, 0)))
        plain = root / "1" / "s1.csv"
    packed = plain.with_name(plain.name + ".gz")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(DataError) as caught:
        load_biovid(root, log=lambda _: None)
    message = str(caught.value)
    assert str(plain) in message and packed.name in message and "\n" not in message
    assert "twice" in message
